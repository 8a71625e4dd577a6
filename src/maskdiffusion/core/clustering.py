"""Unsupervised MaskDiffusion (``docs/algorithm.md`` §3): clusters of the features f̂ instead of text prototypes.

Clustering runs on a sample of grid cells (scikit-learn); every pixel then takes the nearest
centroid, so the cost does not grow with the image beyond one pass over the features.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_centroids", "name_clusters", "MAX_SAMPLES"]

#: Grid cells given to k-means; spectral clustering takes at most ``MAX_SPECTRAL``.
MAX_SAMPLES = 50_000
MAX_SPECTRAL = 3_000


def fit_centroids(features: np.ndarray, k: int, method: str = "kmeans", positions: np.ndarray | None = None,
                  spatial_weight: float = 0.0, seed: int = 0) -> np.ndarray:
    """(k, C) centroids of (N, C) unit feature vectors.

    ``spectral`` clusters a subsample on a nearest-neighbour graph of the features joined with
    ``spatial_weight`` × the cells' (N, 2) positions in [0, 1], then takes each cluster's mean
    feature as its centroid.
    """
    n = len(features)
    if n < k:
        raise ValueError(f"the image has {n} feature cells, too few for {k} clusters: "
                         "use a smaller K or a larger image")
    rng = np.random.default_rng(seed)
    limit = MAX_SPECTRAL if method == "spectral" else MAX_SAMPLES
    idx = rng.choice(n, limit, replace=False) if n > limit else np.arange(n)
    x = features[idx].astype(np.float32)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x).cluster_centers_.astype(np.float32)
    from sklearn.cluster import SpectralClustering

    data = x if positions is None or spatial_weight <= 0 else np.hstack([x, spatial_weight * positions[idx]])
    labels = SpectralClustering(
        n_clusters=k, affinity="nearest_neighbors", n_neighbors=min(10, len(x) - 1),
        assign_labels="cluster_qr", random_state=seed,
    ).fit_predict(data)
    return np.stack([x[labels == j].mean(0) if np.any(labels == j) else x[rng.integers(len(x))] for j in range(k)])


def name_clusters(cluster_ids: np.ndarray, class_maps: np.ndarray, k: int) -> np.ndarray:
    """For each of ``k`` clusters, the class whose (N, K) attention overlaps it most (-1: empty)."""
    out = np.full(k, -1, np.int64)
    if class_maps.shape[1] == 0:
        return out
    for j in range(k):
        members = cluster_ids == j
        if members.any():
            out[j] = int(class_maps[members].mean(0).argmax())
    return out
