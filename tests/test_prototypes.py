"""The equations of SPEC §2.4–2.6 on hand-made tensors."""

import numpy as np
import torch

from maskdiffusion.core import prototypes as proto
from maskdiffusion.core.tokens import TokenSpan


def test_class_map_is_span_mean_divided_by_its_max():
    tm = torch.zeros(1, 77, 2, 2)
    tm[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    tm[0, 2] = torch.tensor([[3.0, 2.0], [1.0, 0.0]])
    tm[0, 4] = torch.tensor([[0.0, 5.0], [0.0, 0.0]])
    maps = proto.class_maps(tm, [[TokenSpan(0, 1, 3)], [TokenSpan(0, 4, 5)]])
    # mean of tokens 1,2 = [[2,2],[2,2]] -> /2 ; token 4 -> /5
    assert torch.allclose(maps[0], torch.ones(2, 2))
    assert torch.allclose(maps[1], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


def test_several_prompts_of_a_class_are_averaged():
    tm = torch.zeros(2, 77, 1, 2)
    tm[0, 1] = torch.tensor([[2.0, 0.0]])
    tm[1, 3] = torch.tensor([[0.0, 2.0]])
    maps = proto.class_maps(tm, [[TokenSpan(0, 1, 2), TokenSpan(1, 3, 4)]])
    assert torch.allclose(maps[0], torch.tensor([[1.0, 1.0]]))


def test_features_are_unit_length_and_coarse_is_resized():
    torch.manual_seed(0)
    coarse, fine = torch.randn(6, 2, 2), torch.randn(4, 4, 4)
    f = proto.normalize_features(coarse, fine)
    assert f.shape == (10, 4, 4)
    assert torch.allclose(f.norm(dim=0), torch.ones(4, 4), atol=1e-6)
    # where the coarse map is constant the resize keeps it: both halves weigh 1/sqrt(2)
    f = proto.normalize_features(torch.ones(3, 2, 2), torch.ones(5, 4, 4))
    assert torch.allclose(f[:3], torch.full((3, 4, 4), 1 / np.sqrt(2) / np.sqrt(3)), atol=1e-6)


def test_prototypes_assignment_by_hand():
    # two pixels with orthogonal features; class 0 attends to pixel 0, class 1 to both equally
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, None, :]  # (C=2, 1, 2)
    maps = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    c = proto.prototypes(maps, feats)
    assert torch.allclose(c, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    s = proto.class_scores(feats, c)
    assert torch.allclose(s[:, 0, :], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert s.argmax(0).tolist() == [[0, 1]]


def test_shared_prototypes_are_sums_over_tiles():
    torch.manual_seed(1)
    m1, m2 = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    f1, f2 = torch.randn(8, 4, 4), torch.randn(8, 4, 4)
    (n1, d1), (n2, d2) = proto.prototype_sums(m1, f1), proto.prototype_sums(m2, f2)
    whole = proto.prototypes(torch.cat([m1, m2], 2), torch.cat([f1, f2], 2))
    assert torch.allclose((n1 + n2) / (d1 + d2)[:, None], whole, atol=1e-5)


def test_cluster_scores_pick_the_nearest_centroid():
    torch.manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(5, 3, 3), dim=0)
    centers = torch.randn(4, 5)
    nearest = torch.cdist(feats.flatten(1).T, centers).argmin(1).reshape(3, 3)
    assert torch.equal(proto.cluster_scores(feats, centers).argmax(0), nearest)


def test_upsample_is_bilinear_without_corner_alignment():
    x = torch.tensor([[[0.0, 1.0]]])
    assert torch.allclose(proto.upsample(x, (1, 4)), torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
