import torch

from vod_d2.modeling.meta_arch import FeatureWindow


def _run(window, num_frames):
    """Push frames whose feature value is their index; return what each emitted frame saw."""
    seen, max_cached = [], 0
    for t in range(num_frames):
        window.push({"t": t}, {"res5": torch.full((1, 1, 1, 1), float(t))}, (8, 8))
        max_cached = max(max_cached, len(window))
        for meta, feats, _, support, offsets in window.pop_ready():
            seen.append((meta["t"], support.flatten().tolist(), offsets))
            assert feats["res5"].item() == meta["t"]
    for meta, _, _, support, offsets in window.pop_ready(final=True):
        seen.append((meta["t"], support.flatten().tolist(), offsets))
    return seen, max_cached


def test_symmetric_window_pads_by_repeating_border_frames():
    seen, _ = _run(FeatureWindow([-2, -1, 1, 2], "res5"), 3)
    # Frame t sees clamp(t + o, 0, 2): frame 0 repeats itself twice before, frame 2 after.
    assert seen == [
        (0, [0.0, 0.0, 1.0, 2.0], [0, 0, 1, 2]),
        (1, [0.0, 0.0, 2.0, 2.0], [-1, -1, 1, 1]),
        (2, [0.0, 1.0, 2.0, 2.0], [-2, -1, 0, 0]),
    ]


def test_every_frame_emitted_once_in_order_with_bounded_cache():
    for before, after, stride in [(0, 0, 1), (3, 0, 1), (0, 3, 1), (13, 13, 1), (2, 2, 2)]:
        offsets = [stride * j for j in range(-before, after + 1) if j != 0]
        seen, max_cached = _run(FeatureWindow(offsets, "res5"), 40)
        assert [t for t, _, _ in seen] == list(range(40)), (before, after, stride)
        assert max_cached <= stride * (before + after) + 1, (before, after, stride, max_cached)
        for t, values, offs in seen:
            assert values == [float(min(max(t + o, 0), 39)) for o in offsets]
            assert offs == [v - t for v in values]


def test_look_ahead_delays_results_until_the_window_is_complete():
    window = FeatureWindow([-1, 1, 2], "res5")
    ready = []
    for t in range(4):
        window.push({"t": t}, {"res5": torch.zeros(1, 1, 1, 1)}, (8, 8))
        ready.append([m["t"] for m, *_ in window.pop_ready()])
    assert ready == [[], [], [0], [1]]
    assert [m["t"] for m, *_ in window.pop_ready(final=True)] == [2, 3]
