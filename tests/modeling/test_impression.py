import pytest
import torch
from detectron2.config import get_cfg

from vod_d2 import add_vod_config
from vod_d2.modeling.flow import FlowNetwork, build_flow_net
from vod_d2.modeling.temporal.impression import TABLE1_VARIANTS, ImpressionMemory

C, H, W = 4, 5, 6


class _ShiftFlow(FlowNetwork):
    """A flow network giving a uniform integer flow and S = 1; records (cur, ref) of each call."""

    def __init__(self, dx=0.0, dy=0.0):
        super().__init__(C, "BGR")
        self.dx, self.dy, self.calls = dx, dy, []

    def forward(self, cur_images, ref_images):
        self.calls.append((cur_images, ref_images))
        n = cur_images.shape[0]
        flow = torch.empty(n, 2, H, W)
        flow[:, 0], flow[:, 1] = self.dx, self.dy
        return flow, torch.ones(n, C, H, W)


def _cfg(variant="d", identity_init=False, **impression):
    """Table 1's row ``variant``; the tests of Eq. 1-4 build it without the residual gate."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.MODEL.VIDEO.IDENTITY_INIT = identity_init
    for key, value in {**TABLE1_VARIANTS[variant], **impression}.items():
        cfg.MODEL.IMPRESSION[key] = value
    cfg.MODEL.IMPRESSION.QUALITY_DIMS = (8, 4)
    return cfg


def _video(num_keys, seed, n=1):
    """Key features (n, C, H, W) and key frames (n, 3, 16 H, 16 W), one per key frame."""
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(n, C, H, W, generator=g) for _ in range(num_keys)]
    images = [torch.rand(n, 3, 16 * H, 16 * W, generator=g) * 255 for _ in range(num_keys)]
    return features, images


def test_quality_weights_sum_to_one_at_every_position():
    torch.manual_seed(0)
    memory = ImpressionMemory(_cfg("d"), C)
    for seed in range(3):
        (f_imp, f_k), _ = _video(2, seed, n=2)
        task, _, weights = memory.fuse(f_k, f_imp, return_weights=True)
        assert weights.shape == (2, 2, 1, H, W)
        torch.testing.assert_close(weights.sum(dim=0), torch.ones(2, 1, H, W))
        assert not torch.allclose(weights, torch.full_like(weights, 0.5))
        # Eq. 3: (1 - w_k) f_imp' + w_k f_k, the impression's weight first.
        torch.testing.assert_close(task, weights[0] * f_imp + weights[1] * f_k)
    fixed = ImpressionMemory(_cfg("c"), C)
    _, _, weights = fixed.fuse(f_k, f_imp, return_weights=True)
    assert torch.equal(weights, torch.full((2, 2, 1, H, W), 0.5))


def test_with_identity_init_every_key_frame_starts_as_its_own_feature():
    # The residual gate starts closed and N_q at equal weights: a trained single-frame
    # detector's key features are its task features at iteration 0, and the gate, once open,
    # gives Eq. 3 with weights 0.5 (Table 1 (c)).
    torch.manual_seed(0)
    memory = ImpressionMemory(_cfg("d", identity_init=True), C).eval()
    (f_imp, f_k), _ = _video(2, seed=1, n=2)
    task, _, weights = memory.fuse(f_k, f_imp, return_weights=True)
    assert torch.equal(task, f_k)
    assert torch.equal(weights, torch.full_like(weights, 0.5))
    memory.residual_gate.fix_opening(1.0)
    torch.testing.assert_close(memory.fuse(f_k, f_imp)[0], (f_imp + f_k) / 2)
    paper = ImpressionMemory(_cfg("d"), C)
    assert paper.residual_gate is None and not torch.equal(paper.fuse(f_k, f_imp)[0], f_k)


def test_the_first_key_frame_s_task_feature_and_impression_are_f0():
    torch.manual_seed(1)
    flow = _ShiftFlow()
    for variant in ("c", "d"):
        memory = ImpressionMemory(_cfg(variant), C)
        (f0,), (i0,) = _video(1, seed=2)
        task = memory.update(f0, i0, flow)
        assert torch.equal(task, f0)  # Eq. 1
        assert torch.equal(memory.impression, f0)
        assert flow.calls == []  # nothing to warp yet


def test_gate_zero_keeps_only_the_previous_key_feature():
    torch.manual_seed(2)
    flow = _ShiftFlow()
    features, images = _video(4, seed=3)
    memory = ImpressionMemory(_cfg("d", GATE=0.0), C)
    for k, (f_k, i_k) in enumerate(zip(features, images)):
        task = memory.update(f_k, i_k, flow)
        # Eq. 4 with g = 0: f_k^imp = f_k, the key feature itself, not the fused task feature.
        assert torch.equal(memory.impression, f_k), k
        if k:
            assert not torch.allclose(task, f_k), k
    # So the task feature of key frame k fuses f_{k-1} and f_k and nothing older: changing f_0
    # and f_1 changes nothing from key frame 3 on, whereas with g = 1 it does.
    other_start, _ = _video(2, seed=4)
    for gate, unchanged in ((0.0, True), (1.0, False)):
        tasks = []
        for video in (features, other_start + features[2:]):
            torch.manual_seed(5)  # the same N_q for both videos
            memory = ImpressionMemory(_cfg("d", GATE=gate), C)
            tasks.append([memory.update(f, i, flow) for f, i in zip(video, images)][-1])
        assert torch.equal(tasks[0], tasks[1]) == unchanged, gate


def test_fixed_weights_and_gate_one_weigh_older_key_frames_geometrically():
    flow = _ShiftFlow()
    features, images = _video(4, seed=6)
    memory = ImpressionMemory(_cfg("c", GATE=1.0), C)
    tasks = [memory.update(f, i, flow) for f, i in zip(features, images)]
    # Table 1 (c), g = 1, zero flow: f_k^task = (f_{k-1}^task + f_k) / 2, so f_3^task gives
    # f_0..f_3 the weights 1/8, 1/8, 1/4, 1/2 (Fig. 6: contributions fall with the offset).
    f0, f1, f2, f3 = features
    torch.testing.assert_close(tasks[3], f0 / 8 + f1 / 8 + f2 / 4 + f3 / 2)
    assert torch.equal(memory.impression, tasks[3])  # g = 1: f^imp = f^task
    half = ImpressionMemory(_cfg("c", GATE=0.5), C)
    tasks = [half.update(f, i, flow) for f, i in zip(features[:2], images)]
    # g = 0.5: f_1^imp = f_1 / 2 + ((f_0 + f_1) / 2) / 2.
    torch.testing.assert_close(half.impression, f1 / 2 + (f0 + f1) / 4)


def test_the_impression_is_warped_from_the_previous_to_the_new_key_frame():
    flow = _ShiftFlow(dx=1.0)
    features, images = _video(2, seed=7)
    memory = ImpressionMemory(_cfg("c"), C)
    memory.update(features[0], images[0], flow)
    task = memory.update(features[1], images[1], flow)
    assert len(flow.calls) == 1
    cur, ref = flow.calls[0]
    assert cur is images[1] and ref is images[0]  # F(I_k^key, I_{k-1}^key)
    # A flow of +1 in x brings f_0[..., x + 1] to x (zeros past the last column).
    warped = torch.zeros_like(features[0])
    warped[..., :-1] = features[0][..., 1:]
    torch.testing.assert_close(task, (warped + features[1]) / 2)


def test_the_flow_runs_once_per_key_frame_after_the_first():
    flow = _ShiftFlow()
    features, images = _video(5, seed=8)
    memory = ImpressionMemory(_cfg("d"), C)
    for k, (f, i) in enumerate(zip(features, images)):
        memory.update(f, i, flow)
        assert len(flow.calls) == k


def test_memory_does_not_leak_between_videos():
    torch.manual_seed(9)
    flow = _ShiftFlow()
    video_a, images_a = _video(3, seed=10)
    video_b, images_b = _video(3, seed=11)
    memory = ImpressionMemory(_cfg("d"), C)
    fresh = [memory.update(f, i, flow) for f, i in zip(video_b, images_b)]
    memory.reset()
    for f, i in zip(video_a, images_a):
        memory.update(f, i, flow)
    memory.reset()
    calls = len(flow.calls)
    after_a = [memory.update(video_b[0], images_b[0], flow)]
    # A new first key frame: Eq. 1 again, nothing warped from video A.
    assert torch.equal(after_a[0], video_b[0]) and len(flow.calls) == calls
    after_a += [memory.update(f, i, flow) for f, i in zip(video_b[1:], images_b[1:])]
    for k, (x, y) in enumerate(zip(fresh, after_a)):
        assert torch.equal(x, y), k


def test_without_memory_the_key_feature_is_the_task_feature_and_no_flow_runs():
    flow = _ShiftFlow()
    features, images = _video(3, seed=12)
    for variant in ("a", "b"):
        memory = ImpressionMemory(_cfg(variant), C)
        assert not memory.enabled and not list(memory.parameters())
        for f, i in zip(features, images):
            assert memory.update(f, i, flow) is f
        assert memory.impression is None and flow.calls == []
        with pytest.raises(RuntimeError, match="MEMORY is off"):
            memory.fuse(features[0], features[1])


def test_fusion_is_differentiable_end_to_end():
    torch.manual_seed(13)
    memory = ImpressionMemory(_cfg("d"), C)
    f_imp, f_k = (f.requires_grad_() for f in _video(2, seed=14)[0])
    task, impression = memory.fuse(f_k, f_imp)
    (task.square().sum() + impression.sum()).backward()
    for grad in [f_imp.grad, f_k.grad] + [p.grad for p in memory.parameters()]:
        assert grad is not None and grad.abs().sum() > 0


def test_with_a_flownet_at_initialisation_the_impression_is_carried_unchanged():
    torch.manual_seed(15)
    cfg = _cfg("c")
    cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR = 16
    flow_net = build_flow_net(cfg, C)  # zero flow, S = 1: propagation is the identity
    features, images = _video(2, seed=16)
    memory = ImpressionMemory(cfg, C)
    memory.update(features[0], images[0], flow_net)
    assert torch.equal(
        memory.update(features[1], images[1], flow_net), (features[0] + features[1]) / 2
    )


def test_every_table1_variant_builds_and_bad_settings_are_refused():
    for variant in TABLE1_VARIANTS:
        memory = ImpressionMemory(_cfg(variant), C)
        assert memory.enabled == TABLE1_VARIANTS[variant]["MEMORY"]
    assert _cfg("d").MODEL.IMPRESSION.GATE == 1.0  # Table 1's g
    with pytest.raises(ValueError, match="QUALITY_AWARE.*MEMORY"):
        ImpressionMemory(_cfg("b", QUALITY_AWARE=True), C)
    with pytest.raises(ValueError, match=r"GATE .*\[0, 1\], got 1.5"):
        ImpressionMemory(_cfg("d", GATE=1.5), C)
    memory = ImpressionMemory(_cfg("d"), C)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        memory.fuse(torch.zeros(1, 3, H, W), None)
    features, images = _video(2, seed=17)
    memory.update(features[0], images[0], _ShiftFlow())
    with pytest.raises(ValueError, match="reset"):
        memory.update(features[1], images[1][..., :-16], _ShiftFlow())
