"""
STMN at test time (STMNTestStream): each frame's window memories, computed as frames arrive,
are those of the window computed on its own; what the stream holds is bounded (and counted).
"""

import pytest
import torch
from _testing import random_video
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from vod_d2.engine import run_on_video
from vod_d2.modeling.frames import FrameInfo, WindowSupport
from vod_d2.modeling.temporal.stmn import STMNAggregation


def _module(before, after, stride, channels=6, memory=4, **kwargs):
    torch.manual_seed(0)
    return STMNAggregation(
        input_shape=ShapeSpec(channels=channels, stride=16),
        memory_channels=memory,
        test_window=(before, after),
        test_stride=stride,
        **kwargs,
    )


def _offsets(before, after, stride):
    return [stride * j for j in range(-before, after + 1) if j != 0]


def _stream(module, features, offsets, known_length=True, on_step=None):
    """
    Stream (T, C, H, W) ``features`` through the eval-mode module as the streaming core does:
    each frame encoded when it arrives, each frame detected (in order) once the frames of its
    window have arrived, the rest when the video ends. Returns the memories of every frame.
    """
    length = len(features)
    plan = WindowSupport(offsets).plan(length if known_length else None)
    module.eval().reset()
    pending, outputs = {}, []

    def detect_ready(seen, final):
        while len(outputs) < seen:
            t = len(outputs)
            window = plan.support(t, length if known_length or final else None)
            if any(i >= seen for i in window):
                return
            offsets_t = torch.tensor([[i - t for i in window]])
            ref = {"forward_memory": pending.pop(t)}
            outputs.append(module(ref, {}, offsets_t, [FrameInfo(t)]))

    with torch.no_grad():
        for u in range(length):
            info = FrameInfo(u, length if known_length else None)
            pending[u] = module.encode(features[u : u + 1], [info])["forward_memory"]
            if on_step is not None:  # the most is held now: detections only release
                on_step(pending)
            detect_ready(u + 1, final=False)
        detect_ready(length, final=True)
    return outputs


def _window_memories(module, features, t, window):
    """Frame t's memories computed on its window alone (the training path, frame by frame)."""
    module.train()
    # Each frame encoded on its own, as the stream does (a batched conv may round otherwise).
    encode = [module.encode(features[i : i + 1]) for i in [t] + window]
    support = {k: torch.cat([e[k] for e in encode[1:]])[None] for k in encode[0]}
    with torch.no_grad():
        return module(encode[0], support, torch.tensor([[i - t for i in window]]))


@pytest.mark.parametrize(
    "before,after,stride,length,known_length,normalization,bidirectional,matchtrans",
    [
        (2, 2, 1, 7, True, "sum", True, True),
        (3, 3, 2, 14, True, "cosine", True, True),
        (5, 5, 10, 23, False, "cosine", True, True),  # video shorter than the window
        (2, 1, 3, 4, True, "softmax", True, True),
        (1, 3, 4, 17, False, "sum", True, False),
        (3, 0, 2, 9, True, "cosine", False, True),
        (0, 2, 2, 5, True, "cosine", True, True),
    ],
)
def test_stream_gives_each_window_its_own_memories(
    before, after, stride, length, known_length, normalization, bidirectional, matchtrans
):
    module = _module(
        before,
        after,
        stride,
        per_frame_loss=False,
        matchtrans_normalization=normalization,
        bidirectional=bidirectional,
        matchtrans=matchtrans,
    )
    g = torch.Generator().manual_seed(length)
    features = torch.relu(torch.randn(length, 6, 5, 7, generator=g))
    features[:, :, 0, :2] = 0  # zero vectors: MatchTrans's zero-mass case
    offsets = _offsets(before, after, stride)
    streamed = _stream(module, features, offsets, known_length)
    plan = WindowSupport(offsets).plan(length)
    assert len(streamed) == length
    for t, memories in enumerate(streamed):
        expected = _window_memories(module, features, t, plan.support(t, length))
        # The same steps on the same tensors: the same bits.
        assert torch.equal(memories, expected), t


def _held_channels(module, pending):
    """Channels per map position of every tensor the stream and the core's payloads hold."""
    held = {id(t): t for t in module._stream.held_tensors()}
    held.update({id(t): t for t in pending.values()})
    return sum(t.shape[1] for t in held.values())


def _peak_channels(channels, memory, length=111):
    module = _module(5, 5, 10, channels=channels, memory=memory)
    features = torch.relu(torch.randn(length, channels, 2, 3))
    peaks = []
    _stream(
        module,
        features,
        _offsets(5, 5, 10),
        on_step=lambda pending: peaks.append(_held_channels(module, pending)),
    )
    return max(peaks)


def _paper_window_channels(channels, memory):
    """
    What the stream and the core hold at most with the paper's (5, 5) window at stride 10 and
    MatchTrans k = 2, in channels per map position: when frame u has arrived, before frame
    u - 50 is detected. The backward projections (3 M) of frames u-50..u; the forward memories
    (M) of frames u-50..u awaiting detection and of the 50 windows in progress (u+1..u+50); the
    features (C_in) of frames u-9..u for MatchTrans; the backward coefficients (25) of the pairs
    (a, a + 10) for a = u-50..u-10.
    """
    return 51 * 3 * memory + (51 + 50) * memory + 10 * channels + 41 * 25


def test_cache_at_the_paper_config_is_counted():
    # Two widths, so that each term's multiplicity is checked, not only their sum.
    for channels, memory in [(16, 4), (24, 8)]:
        assert _peak_channels(channels, memory) == _paper_window_channels(channels, memory)
    # At the paper's widths (res5: 2048, memories: 512) and a 600 x 1000 frame (38 x 63 cells
    # at stride 16), in float32, against the window cache of every frame's features and both
    # projections (101 frames x (2048 + 2 x 1536) channels, about 4.95 GB).
    positions = 38 * 63 * 4
    streamed = _paper_window_channels(2048, 512) * positions
    windowed = 101 * (2048 + 2 * 3 * 512) * positions
    assert streamed < 1.46e9 and streamed < windowed / 3.4


def _held_bytes(module, pending):
    """Bytes per map position of every tensor the stream and the core's payloads hold."""
    held = {id(t): t for t in module._stream.held_tensors()}
    held.update({id(t): t for t in pending.values()})
    return sum(t.shape[1] * t.element_size() for t in held.values())


def test_half_cache_at_the_paper_config_is_counted_and_under_1_gb():
    channels, memory = 24, 8
    module = _module(5, 5, 10, channels=channels, memory=memory, test_cache_dtype="float16")
    peaks = []
    _stream(
        module,
        torch.relu(torch.randn(111, channels, 2, 3)),
        _offsets(5, 5, 10),
        on_step=lambda pending: peaks.append(_held_bytes(module, pending)),
    )

    def paper_window_bytes(channels, memory):
        # As _paper_window_channels, the backward projections and the 51 forward memories
        # awaiting detection in float16, the rest in float32.
        return 2 * (51 * 3 * memory + 51 * memory) + 4 * (50 * memory + 10 * channels + 41 * 25)

    assert max(peaks) == paper_window_bytes(channels, memory)
    # The paper's widths at 600 x 1000 (38 x 63 cells): at most 1 GB (1.45 GB in float32).
    assert paper_window_bytes(2048, 512) * 38 * 63 < 0.96e9


def _memories_with_cache(dtype, features):
    module = _module(2, 2, 3, per_frame_loss=False, test_cache_dtype=dtype)
    return module, _stream(module, features, _offsets(2, 2, 3))


def test_half_cache_rounds_each_waiting_tensor_once():
    features = torch.relu(torch.randn(16, 6, 5, 7, generator=torch.Generator().manual_seed(1)))
    _, exact = _memories_with_cache("float32", features)
    _, half = _memories_with_cache("float16", features)
    for t, (e, h) in enumerate(zip(exact, half)):
        assert h.dtype == torch.float32
        assert not torch.equal(h, e), t  # the cache did round
        torch.testing.assert_close(h, e, rtol=2e-3, atol=1e-4), t


def test_half_cache_keeps_values_beyond_float16_range_exact():
    # Projections and memories of ~1e6, beyond float16's 65504: each stays in float32.
    features = 1e6 * torch.relu(
        torch.randn(10, 6, 5, 7, generator=torch.Generator().manual_seed(2))
    )
    _, exact = _memories_with_cache("float32", features)
    _, half = _memories_with_cache("float16", features)
    for t, (e, h) in enumerate(zip(exact, half)):
        assert e.abs().max() > 65504 and torch.isfinite(e).all()
        assert torch.equal(h, e), t


def test_unknown_cache_dtype_is_refused():
    with pytest.raises(ValueError, match="TEST_CACHE_DTYPE"):
        _module(2, 2, 1, test_cache_dtype="bfloat16")


def test_stream_holds_one_memory_per_window_in_progress():
    module = _module(5, 5, 10, channels=4, memory=2)
    features = torch.relu(torch.randn(70, 4, 2, 2))
    sizes = []
    _stream(module, features, _offsets(5, 5, 10), on_step=lambda _: sizes.append(dict(
        chains=len(module._stream.chains),
        projections=len(module._stream.backward_projections),
        features=len(module._stream.features),
    )))  # fmt: skip
    for u, size in enumerate(sizes):
        # Frame u has arrived: windows u+1..u+50 have started; frames detected so far (up to
        # u - 51) are gone.
        assert size["chains"] == 50, u
        assert size["projections"] == min(u + 1, 51), u
        assert size["features"] == min(u + 1, 10), u


def test_stream_refuses_frames_out_of_order_and_foreign_windows():
    module = _module(2, 2, 2).eval()
    module.reset()
    features = torch.relu(torch.randn(6, 6, 3, 3))
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="in order"):
            module.encode(features[:1], [FrameInfo(1)])
        memory = module.encode(features[:1], [FrameInfo(0)])["forward_memory"]
        for u in range(1, 6):
            module.encode(features[u : u + 1], [FrameInfo(u)])
        # Frame 0's past is frame 0 alone; a stride-1 window would read frame 1 as its future
        # but also claim frames before it: the (2, 2) window at stride 2 has none.
        with pytest.raises(ValueError, match="TEST_WINDOW"):
            module({"forward_memory": memory}, {}, torch.tensor([[-1, 0, 1, 2]]), [FrameInfo(2)])
    with pytest.raises(RuntimeError, match="reset"):
        _module(2, 2, 2).eval().encode(features[:1], [FrameInfo(0)])


def test_model_streams_through_the_core_with_the_stream(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.MODEL.VIDEO.AGGREGATION = "STMNAggregation"
    cfg.MODEL.VIDEO.TEST_WINDOW = (2, 2)
    cfg.MODEL.VIDEO.TEST_STRIDE = 2
    cfg.MODEL.STMN.MEMORY_CHANNELS = 8
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    module = model.temporal_aggregation
    assert model.support_keys and module.support_keys == ()  # eval: the core keeps nothing
    pushed = []
    push = STMNAggregation.encode

    def counting(self, feature, frames=()):
        pushed.append([f.index for f in frames])
        return push(self, feature, frames)

    module.encode = counting.__get__(module)
    done = list(run_on_video(model, random_video(9, seed=5)))
    assert [meta["frame_idx"] for meta, _ in done] == list(range(9))
    assert pushed == [[t] for t in range(9)]
    # Once a frame is detected, nothing of it stays: its payload is the forward memory alone.
    assert module._stream.backward_projections == {}
    assert module.training is False and module.support_keys == ()
    model.train()  # e.g. after a periodic evaluation: the last video's state is dropped
    assert module._stream is None
    assert module.support_keys == ("feature", "forward_projection", "backward_projection")
