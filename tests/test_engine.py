"""The engine on the tiny random SD-layout model, loaded through the real loading code."""

import numpy as np
import pytest

from maskdiffusion import iter_segment, segment
from maskdiffusion.core.classes import ClassListError, preset_classes
from maskdiffusion.core.image import InputImageError
from maskdiffusion.core.params import ParamsError
from maskdiffusion.model.loading import load_model
from reference_maskdiffusion import reference_segment

POTSDAM = [c.name for c in preset_classes("potsdam6")]


@pytest.fixture(scope="module")
def sd(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def image():
    from maskdiffusion.geo.synthetic import make_potsdam_like_tile

    rgbir, _ = make_potsdam_like_tile(256, seed=3)
    return rgbir[..., :3]


def test_one_tile_agrees_with_the_equations(sd, image):
    """SPEC §2: two implementations agree on >= 99 % of pixels on the same weights."""
    result = segment(image, "preset:potsdam6", sd, tile_size=256)
    expected, maps = reference_segment(image, POTSDAM, sd.tokenizer, sd.text_encoder, sd.vae, sd.unet)
    assert result.labels.shape == (256, 256)
    agreement = (result.labels == expected + 1).mean()  # the reference gives the argmax, 0-based
    assert agreement >= 0.99, agreement
    assert np.allclose(result.attention, maps, rtol=1e-3, atol=1e-5)
    assert len(np.unique(expected)) > 1, "the check needs more than one class to mean anything"


def test_results_are_deterministic(sd, image):
    a = segment(image, "road,building,tree", sd, tile_size=128, overlap=32)
    b = segment(image, "road,building,tree", sd, tile_size=128, overlap=32)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)


def test_result_arrays_and_metadata(sd, image):
    r = segment(image, "road, building=house|roof, tree", sd, tile_size=128, overlap=32, return_scores=True)
    assert r.labels.dtype == np.uint8 and r.labels.shape == image.shape[:2]
    assert r.scores.shape == (3, 256, 256) and r.confidence.shape == (256, 256)
    assert np.array_equal(r.labels, r.scores.argmax(0) + 1), "value k is the class whose score is highest"
    top2 = np.sort(r.scores, 0)[-2:]
    assert np.allclose(r.confidence, top2[1] - top2[0], atol=1e-6)
    assert r.attention.shape == (3, 16, 16) and r.attention_stride == 16
    meta = r.metadata()
    assert [c["name"] for c in meta["classes"]] == ["road", "building", "tree"]
    assert meta["classes"][1]["prompts"] == ["house", "roof"]
    assert meta["parameters"]["tile_size"] == 128 and meta["model"] == sd.source
    assert (meta["device"], meta["precision"]) == ("cpu", sd.precision)
    assert meta["label_values"] == {"0": "unlabelled", "1": "road", "2": "building", "3": "tree"}
    assert [c["value"] for c in meta["classes"]] == [1, 2, 3]


def test_progress_per_tile_and_stop_between_tiles(sd, image):
    gen = iter_segment(image, "road,tree", sd, tile_size=128, overlap=0)
    steps = [next(gen), next(gen), next(gen)]
    assert [s.stage for s in steps[:2]] == ["load", "load"] and steps[2].done == 1 and steps[2].total == 4
    assert steps[1].message == f"model {sd.source} on cpu, {sd.precision}"
    gen.close()  # a cancelled run: no exception, the model is left as it was
    processor = sd.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert type(processor).__name__ != "CrossAttentionCaptureProcessor"
    steps = list(_drain(iter_segment(image, "road,tree", sd, tile_size=128, overlap=0)))
    assert [s.done for s in steps] == [0, 0, 1, 2, 3, 4]


def _drain(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def test_shared_prototypes_equal_per_tile_on_a_single_tile(sd, image):
    a = segment(image, "road,building,tree", sd, tile_size=256)
    b = segment(image, "road,building,tree", sd, tile_size=256, prototypes="image")
    assert (a.labels == b.labels).mean() > 0.99  # float16 feature cache


def test_more_classes_than_one_prompt_holds(sd):
    names = [f"class {i} of many" for i in range(40)]
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    r = segment(img, names, sd)
    assert len(r.classes) == 40 and r.labels.dtype == np.uint8
    assert 1 <= r.labels.min() and r.labels.max() <= 40
    assert r.attention.shape[0] == 40
    assert np.allclose(r.attention.reshape(40, -1).max(1), 1.0), "classes past the first prompt have maps too"


@pytest.mark.parametrize("shape, dtype", [((1, 1), np.uint8), ((1, 1, 3), np.float32), ((37, 90, 4), np.uint16),
                                          ((20, 30), np.uint8)])
def test_any_small_image_any_type(sd, shape, dtype):
    img = (np.random.default_rng(1).random(shape) * (255 if dtype == np.uint8 else 4000)).astype(dtype)
    r = segment(img, "a,b", sd)
    assert r.labels.shape == shape[:2]


def test_long_thin_image_is_tiled(sd):
    img = np.random.default_rng(2).integers(0, 255, (40, 3000, 3), dtype=np.uint8)
    steps = []
    r = segment(img, "a,b", sd, tile_size=512, overlap=64, progress=steps.append)
    assert r.labels.shape == (40, 3000) and steps[-1].total == 7


def test_a_20000_px_side(sd):
    img = np.random.default_rng(3).integers(0, 255, (20, 20_000), dtype=np.uint8)
    r = segment(img, "a,b", sd, tile_size=512, overlap=64)
    assert r.labels.shape == (20, 20_000) and r.confidence.shape == (20, 20_000)
    assert r.attention.shape == (2, 2, 1250)


def test_scale_returns_results_on_the_input_grid(sd, image):
    r = segment(image, "a,b", sd, scale=0.5, return_scores=True)
    assert r.labels.shape == (256, 256) and r.scores.shape == (2, 256, 256)
    assert r.attention_stride == 32


def test_unsupervised_clusters_named_by_classes(sd, image):
    r = segment(image, None, sd, tile_size=128, overlap=32, unsupervised=3, return_scores=True)
    assert [c.name for c in r.classes] == ["cluster 1", "cluster 2", "cluster 3"]
    assert np.array_equal(r.labels, r.scores.argmax(0) + 1), "value j + 1 is the cluster of best score"
    assert set(np.unique(r.labels)) == {1, 2, 3}, "every cluster takes pixels, none is unlabelled"
    named = segment(image, "road,tree", sd, tile_size=128, overlap=32, unsupervised=3)
    assert all(c.name.split(" ")[0] == ("road", "tree")[k] for c, k in zip(named.classes, named.clusters_to_classes))
    spectral = segment(image, None, sd, unsupervised=2, clustering="spectral", spatial_weight=0.5)
    assert spectral.labels.shape == (256, 256) and set(np.unique(spectral.labels)) <= {1, 2}


def test_clusters_are_the_nearest_centroids_and_named_by_overlap(sd, image):
    """One tile, every grid cell in the k-means sample: the cells' clusters are a k-means fixed
    point, and each cluster is named after the class whose attention covers it most."""
    r = segment(image, "road,tree", sd, tile_size=256, unsupervised=3, keep_features=True)
    cells = r.grid_scores.argmax(0).ravel()
    assert set(cells) == {0, 1, 2}
    f = r.features.astype(np.float32).reshape(r.features.shape[0], -1).T
    centroids = np.stack([f[cells == j].mean(0) for j in range(3)])
    nearest = ((f[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == cells).mean() > 0.99
    overlap = np.stack([r.attention.reshape(2, -1)[:, cells == j].mean(1) for j in range(3)])
    assert np.array_equal(r.clusters_to_classes, overlap.argmax(1))


@pytest.mark.parametrize("classes, kwargs, error, message", [
    ([], {}, ClassListError, "no classes"),
    ("road,road", {}, ClassListError, "duplicate"),
    (["road", " "], {}, ClassListError, "empty"),
    ("road", {"tile_size": 100}, ParamsError, "multiple of 64"),
    ("road", {"overlap": 400}, ParamsError, "overlap"),
    ("road", {"unsupervised": 1}, ParamsError, "between 2"),
    ("road", {"bands": (5, 0, 1)}, InputImageError, "band 5 does not exist"),
])
def test_bad_input_fails_before_any_work(sd, image, classes, kwargs, error, message):
    with pytest.raises(error, match=message):
        iter_segment(image, classes, sd, **kwargs)


def test_too_many_clusters_for_a_tiny_image(sd):
    with pytest.raises(ValueError, match="too few"):
        segment(np.zeros((8, 8, 3), np.uint8), None, sd, unsupervised=20)


def test_kept_features_reproduce_the_assignment(sd, image):
    """One tile: prototypes from the kept grid features and attention give the same labels."""
    import torch

    from maskdiffusion.core import prototypes as proto

    r = segment(image, "road,building,tree", sd, tile_size=256, keep_features=True)
    assert r.features.dtype == np.float16 and r.features.shape[1:] == (16, 16)
    f = torch.from_numpy(r.features.astype(np.float32))
    a = torch.from_numpy(r.attention)
    scores = proto.upsample(proto.class_scores(f, proto.prototypes(a, f)), (256, 256))
    assert (scores.argmax(0).numpy() + 1 == r.labels).mean() > 0.99


def _regions(steps):
    """Run an iter_segment generator; return its result and the regions its steps carried."""
    regions = []
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value, regions
        if step.region is not None:
            regions.append((step.done, step.total, step.region, step.labels, step.final))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_finished_regions_stream_in_and_equal_the_result(sd, scale):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, (500, 300, 3), dtype=np.uint8)
    result, regions = _regions(iter_segment(image, "road,tree,roof", sd, tile_size=128, overlap=32, scale=scale))
    assert regions and all(final for *_, final in regions)
    covered = np.zeros(result.labels.shape, int)
    for _, _, (y0, y1, x0, x1), labels, _ in regions:
        assert np.array_equal(labels, result.labels[y0:y1, x0:x1])
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all(), "every pixel arrives once"
    from maskdiffusion.core.tiling import tile_grid

    tiles = tile_grid(result.labels.shape if scale == 1 else (250, 150), 128, 32)
    per_row = sum(t.row == 0 for t in tiles)
    done, total = regions[0][:2]
    assert done <= per_row + 1 < total, "the first rows are final after the first row of tiles"


def test_image_wide_prototypes_give_a_draft_then_the_final_labels(sd, image):
    result, regions = _regions(iter_segment(image, "road,tree", sd, tile_size=128, overlap=0, prototypes="image"))
    drafts = [r for r in regions if not r[4]]
    finals = [r for r in regions if r[4]]
    assert len(drafts) == 4 and drafts[0][0] == 1, "one provisional draft per tile in the first pass"
    assert finals and finals[0][0] > 4, "final labels only in the second pass"
    for _, _, (y0, y1, x0, x1), labels, _ in finals:
        assert np.array_equal(labels, result.labels[y0:y1, x0:x1])


def test_confidence_only_when_asked(sd, image):
    assert segment(image, "road,tree", sd, tile_size=128, return_confidence=False).confidence is None
