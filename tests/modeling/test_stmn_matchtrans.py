"""MatchTrans as the STMN authors implemented it (PositiveCosineMatchTrans) against the paper's."""

import math

import pytest
import torch

from vod_d2.layers import MatchTransAlign
from vod_d2.modeling.temporal.match_trans import PositiveCosineMatchTrans, build_match_trans

CENTRE = 4  # displacement (0, 0) of a 3 x 3 window (k = 1)


def _row(*vectors, device="cpu"):
    """(1, C, 1, W) features of a one-row map from W C-dim vectors."""
    return torch.tensor(vectors, dtype=torch.float32, device=device).t()[None, :, None, :]


def check_cosine_weights_on_a_hand_example(device):
    # Frame t at x = 1 is (1, 0); frame t-1 has (1, 1), (2, 0), (0, 3) at x = 0, 1, 2. With
    # k = 1 on a one-row map, only the middle row of the window (displacements 3, 4, 5) is
    # inside. Cosines: 1/sqrt(2), 1, 0; their sum 1 + 1/sqrt(2); the weights are the cosines
    # over that sum. Raw dot products (the paper's "sum") would give 1, 2, 0 -> 1/3, 2/3, 0.
    features = _row((0, 1), (1, 0), (1, 1), device=device)
    prev = _row((1, 1), (2, 0), (0, 3), device=device)
    mass = 1 + 1 / math.sqrt(2)
    expected = torch.tensor([1 / math.sqrt(2) / mass, 1 / mass, 0.0], device=device)
    gamma = PositiveCosineMatchTrans(k=1).transform_coefficients(features, prev)
    torch.testing.assert_close(gamma[0, 3:6, 0, 1], expected)
    assert gamma[0, [0, 1, 2, 6, 7, 8], 0, 1].abs().max() == 0  # outside the map
    paper = MatchTransAlign(k=1, normalization="sum").transform_coefficients(features, prev)
    torch.testing.assert_close(
        paper[0, 3:6, 0, 1], torch.tensor([1 / 3, 2 / 3, 0.0], device=device), atol=1e-5, rtol=0
    )


def test_cosine_weights_on_a_hand_example_cpu():
    check_cosine_weights_on_a_hand_example("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cosine_weights_on_a_hand_example_cuda():
    check_cosine_weights_on_a_hand_example("cuda")


def test_negative_affinities_are_clipped():
    # At x = 1: cosines with (-1, 0), (1, 0), (3, -3) are -1, 1, 1/sqrt(2). The negative one
    # gets no weight and does not reduce the mass: 1 / (1 + 1/sqrt(2)) and (1/sqrt(2)) / (...).
    features = _row((1, 0), (1, 0), (1, 0))
    prev = _row((-1, 0), (1, 0), (3, -3))
    mass = 1 + 1 / math.sqrt(2)
    gamma = PositiveCosineMatchTrans(k=1).transform_coefficients(features, prev)
    torch.testing.assert_close(
        gamma[0, 3:6, 0, 1], torch.tensor([0.0, 1 / mass, 1 / math.sqrt(2) / mass])
    )
    # The paper's normalisation of raw dot products lets the negative affinity in (-1 / 3).
    paper = MatchTransAlign(k=1, normalization="sum").transform_coefficients(features, prev)
    assert paper[0, 3, 0, 1] < -0.3


def test_zero_mass_copies_the_memory():
    # x = 0: frame t's feature is a zero vector (cosine 0 everywhere); x = 2: (-1, 1) against
    # (1, 0) and (-1, -1) at x = 1, 2 has cosines -1/sqrt(2) and 0. Neither has positive mass:
    # the memory is copied.
    features = _row((0, 0), (-1, 0), (-1, 1))
    prev = _row((-1, 0), (1, 0), (-1, -1))
    memory = torch.tensor([[[[5.0, 7.0, 11.0]]], [[[2.0, 3.0, 4.0]]]]).view(1, 2, 1, 3)
    aligned = PositiveCosineMatchTrans(k=1)(features, prev, memory)
    for x in (0, 2):
        torch.testing.assert_close(aligned[..., x], memory[..., x])
    # x = 1 has mass: (-1, 0) against (-1, 0), (1, 0), (-1, -1) has cosines 1, -1, 1/sqrt(2),
    # so it averages the memories of x = 0 and x = 2 (the test fails if all were copied).
    mass = 1 + 1 / math.sqrt(2)
    expected = (memory[..., 0] + memory[..., 2] / math.sqrt(2)) / mass
    torch.testing.assert_close(aligned[..., 1], expected)
    gamma = PositiveCosineMatchTrans(k=1).transform_coefficients(features, prev)
    assert gamma[0, CENTRE, 0, 0] == 1 and gamma[0, CENTRE, 0, 2] == 1
    # The paper's normalisation erases the memory where the affinities are all zero.
    paper = MatchTransAlign(k=1, normalization="sum")(
        features, _row((0, 0), (0, 0), (0, 0)), memory
    )
    assert paper.abs().max() == 0


def test_weights_are_a_distribution_over_the_window():
    g = torch.Generator().manual_seed(0)
    module = PositiveCosineMatchTrans(k=2)
    for trial in range(4):
        features = torch.randn(2, 5, 6, 7, generator=g)
        prev = torch.randn(2, 5, 6, 7, generator=g)
        features[:, :, trial, :trial] = 0  # some zero vectors
        gamma = module.transform_coefficients(features, prev)
        assert gamma.shape == (2, 25, 6, 7)
        assert (gamma >= 0).all(), trial
        torch.testing.assert_close(gamma.sum(dim=1), torch.ones(2, 6, 7), msg=str(trial))


def test_unit_non_negative_features_match_the_papers_weights():
    # With unit-norm, non-negative features the cosine is the dot product and nothing is
    # clipped, so both normalisations give the same weights wherever there is mass.
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        features = torch.rand(1, 4, 5, 6, generator=g) + 0.1
        prev = torch.rand(1, 4, 5, 6, generator=g) + 0.1
        features = features / features.norm(dim=1, keepdim=True)
        prev = prev / prev.norm(dim=1, keepdim=True)
        ours = PositiveCosineMatchTrans(k=2).transform_coefficients(features, prev)
        paper = MatchTransAlign(k=2, normalization="sum").transform_coefficients(features, prev)
        torch.testing.assert_close(ours, paper, atol=1e-5, rtol=1e-4)


def test_no_gradient_reaches_the_features():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 3, 4, 5, generator=g, requires_grad=True)
    prev = torch.randn(1, 3, 4, 5, generator=g, requires_grad=True)
    memory = torch.randn(1, 2, 4, 5, generator=g, requires_grad=True)
    PositiveCosineMatchTrans(k=1)(features, prev, memory).square().sum().backward()
    assert features.grad is None and prev.grad is None
    assert memory.grad is not None and memory.grad.abs().sum() > 0
    # The paper's variant does backpropagate into them (the check above can fail).
    features.grad = prev.grad = None
    MatchTransAlign(k=1, normalization="sum")(features, prev, memory).square().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_config_names_pick_the_aligner():
    assert type(build_match_trans(2, "cosine")) is PositiveCosineMatchTrans
    for name in ("sum", "softmax"):
        aligner = build_match_trans(3, name)
        assert type(aligner) is MatchTransAlign and aligner.normalization == name
        assert aligner.k == 3
    with pytest.raises(ValueError, match="MODEL.STMN.MATCHTRANS.NORMALIZATION"):
        build_match_trans(2, "dot")
    with pytest.raises(ValueError, match="k must be"):
        PositiveCosineMatchTrans(k=-1)


def _smooth(seed, channels=64, size=24):
    """(1, C, size, size) random features that vary over about two cells."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, size // 2 + 2, size // 2 + 2, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size + 4, size + 4), mode="bilinear")


@pytest.mark.parametrize("normalization", ["cosine", "sum", "softmax"])
@pytest.mark.parametrize("shift", [(1, 0), (0, -2), (2, 1)])
def test_matchtrans_aligns_shifted_content_better_than_no_alignment(normalization, shift):
    # Frame t is frame t-1 moved by `shift` cells, and so is the memory: MatchTrans's aligned
    # memory must be closer to the moved memory than the memory left where it was.
    dy, dx = shift
    features, memory = _smooth(0), _smooth(1)

    def moved(x):  # content at x of frame t-1 is at x + shift in frame t (2-cell margin)
        return x[..., 2 - dy : 26 - dy, 2 - dx : 26 - dx]

    prev, prev_memory = features[..., 2:26, 2:26], memory[..., 2:26, 2:26]
    aligner = build_match_trans(2, normalization)
    aligned = aligner(moved(features), prev, prev_memory)
    inside = (slice(None), slice(None), slice(4, 20), slice(4, 20))  # away from the border

    def error(x):
        target = moved(memory)[inside]
        return ((x[inside] - target).norm() / target.norm()).item()

    assert error(aligned) < 0.75 * error(prev_memory), (error(aligned), error(prev_memory))


@pytest.mark.parametrize("name", ["stmn", "stmn_rfcn"])
def test_synthetic_configs_keep_the_papers_window_to_map_ratio(name):
    # The paper's (2k + 1) = 5 cells of a 38-cell-high res5 map (600 px at stride 16) is 13% of
    # it; the synthetic maps are 8 cells high (128 px), where k = 2 would span 5/8 of the frame.
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(f"configs/synthetic/{name}.yaml")
    cells = math.ceil(cfg.INPUT.MIN_SIZE_TEST / 16)
    window = 2 * cfg.MODEL.STMN.MATCHTRANS.K + 1
    assert window / cells <= 5 / math.ceil(600 / 16)
