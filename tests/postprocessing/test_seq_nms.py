import itertools
import re
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from torchvision.ops import box_iou

from vod_d2.config import add_vod_config
from vod_d2.postprocessing import seq_nms, seq_nms_instances, seq_nms_kwargs_from_config

seq_nms_module = sys.modules["vod_d2.postprocessing.seq_nms"]


def _video(frames):
    """frames: list over frames of lists of (x0, y0, x1, y1, score, label) -> seq_nms inputs."""
    boxes = [torch.tensor([d[:4] for d in f], dtype=torch.float32).reshape(-1, 4) for f in frames]
    scores = [torch.tensor([d[4] for d in f], dtype=torch.float32) for f in frames]
    labels = [torch.tensor([d[5] for d in f], dtype=torch.int64) for f in frames]
    return boxes, scores, labels


def _as_dicts(results):
    """Per frame: {box index: (new score, sequence id)}."""
    return [
        {k: (s, i) for k, s, i in zip(r.keep.tolist(), r.scores.tolist(), r.sequence_ids.tolist())}
        for r in results
    ]


def _track(scores, label=0, step=1.0, size=20.0):
    """One object drifting right by ``step`` px per frame (adjacent IoU ~0.9): one box/frame."""
    return [[(t * step, 0.0, t * step + size, size, s, label)] for t, s in enumerate(scores)]


@pytest.mark.parametrize("rescore", ["avg", "max"])
def test_flickering_box_inside_a_strong_track_is_rescored(rescore):
    track_scores = [0.9, 0.8, 0.05, 0.85, 0.9]
    out = _as_dicts(seq_nms(*_video(_track(track_scores)), rescore=rescore))
    expected = sum(track_scores) / 5 if rescore == "avg" else max(track_scores)
    ids = set()
    for t, frame in enumerate(out):
        assert list(frame) == [0], t
        assert frame[0][0] == pytest.approx(expected, abs=1e-6), t
        ids.add(frame[0][1])
    assert len(ids) == 1
    # The flicker (0.05) is lifted to the track's level: the point of Seq-NMS.
    assert out[2][0][0] >= 0.7 - 1e-6


def test_unlinked_boxes_are_untouched():
    frames = _track([0.9, 0.9, 0.9])
    frames[1].append((200.0, 200.0, 230.0, 230.0, 0.3, 0))  # far from everything
    frames[2].append((0.0, 60.0, 20.0, 80.0, 0.2, 0))  # below the track: IoU 0
    out = _as_dicts(seq_nms(*_video(frames)))
    assert out[1][1][0] == pytest.approx(0.3)
    assert out[2][1][0] == pytest.approx(0.2)
    track_id = out[0][0][1]
    assert len({track_id, out[1][1][1], out[2][1][1]}) == 3


def test_link_threshold_is_strict_and_configurable():
    # A 20 x 20 box, then its top half: IoU = 200 / 400 = 0.5 exactly.
    frames = [[(0.0, 0.0, 20.0, 20.0, 0.9, 0)], [(0.0, 0.0, 20.0, 10.0, 0.1, 0)]]
    apart = _as_dicts(seq_nms(*_video(frames), link_iou=0.5))
    assert apart[1][0][0] == pytest.approx(0.1)
    assert apart[0][0][1] != apart[1][0][1]
    linked = _as_dicts(seq_nms(*_video(frames), link_iou=0.49))
    assert linked[1][0][0] == pytest.approx(0.5)
    assert linked[0][0][1] == linked[1][0][1]


def test_branch_of_a_selected_track_becomes_its_own_sequence():
    # A -> B -> {C1, C2}: A = B = (2, 3, 22, 28); C1 and C2 each have IoU 340 / 560 = 0.61 with
    # B and 180 / 620 = 0.29 with each other. The best sequence A-B-C1 (2.7) is taken first;
    # C2's best path then runs through removed boxes, and what is left of it is C2 alone.
    frames = [
        [(2.0, 3.0, 22.0, 28.0, 0.9, 0)],
        [(2.0, 3.0, 22.0, 28.0, 0.9, 0)],
        [(2.0, 0.0, 22.0, 20.0, 0.9, 0), (2.0, 11.0, 22.0, 31.0, 0.8, 0)],
    ]
    out = _as_dicts(seq_nms(*_video(frames)))
    assert sorted(out[2]) == [0, 1]
    assert out[2][0][0] == pytest.approx(0.9) and out[2][0][1] == out[0][0][1]
    assert out[2][1][0] == pytest.approx(0.8) and out[2][1][1] != out[0][0][1]


def test_suppression_within_frames():
    frames = _track([0.9, 0.9, 0.9])
    # Frame 1: a duplicate shifted by 8 px (IoU 240 / 560 = 0.43 > 0.3, linked to nothing):
    # suppressed; a neighbour shifted by 14 px (IoU 120 / 680 = 0.18): kept.
    frames[1].append((1.0 + 8.0, 0.0, 21.0 + 8.0, 20.0, 0.6, 0))
    frames[1].append((1.0 + 14.0, 0.0, 21.0 + 14.0, 20.0, 0.5, 0))
    out = _as_dicts(seq_nms(*_video(frames), suppress_iou=0.3))
    assert sorted(out[1]) == [0, 2]
    assert out[1][2][0] == pytest.approx(0.5)
    # With a looser threshold the duplicate survives as its own sequence (and the neighbour,
    # IoU 280 / 520 = 0.54 with it).
    out = _as_dicts(seq_nms(*_video(frames), suppress_iou=0.6))
    assert sorted(out[1]) == [0, 1, 2]
    assert out[1][1][1] != out[1][0][1]


def test_classes_are_separate():
    strong = _track([0.9, 0.9, 0.9], label=0)
    weak = _track([0.2, 0.1, 0.3], label=1)  # same boxes, another class
    frames = [a + b for a, b in zip(strong, weak)]
    out = _as_dicts(seq_nms(*_video(frames)))
    for t, frame in enumerate(out):
        assert sorted(frame) == [0, 1], t  # no cross-class suppression
        assert frame[0][0] == pytest.approx(0.9), t
        assert frame[1][0] == pytest.approx(0.2), t  # averaged over its own class only
        assert frame[0][1] != frame[1][1], t


def test_empty_frames_and_videos():
    assert seq_nms([], [], []) == []
    out = seq_nms(*_video([[], []]))
    assert len(out) == 2
    for r in out:
        assert len(r.keep) == len(r.scores) == len(r.sequence_ids) == 0
        assert r.keep.dtype == r.sequence_ids.dtype == torch.int64
        assert r.scores.dtype == torch.float32
    # An empty frame cuts a track in two sequences, each averaged on its own.
    frames = _track([0.9, 0.7, 0.0, 0.2, 0.4])
    frames[2] = []
    out = _as_dicts(seq_nms(*_video(frames)))
    assert out[2] == {}
    assert out[0][0][0] == pytest.approx(0.8) and out[1][0][0] == pytest.approx(0.8)
    assert out[3][0][0] == pytest.approx(0.3) and out[4][0][0] == pytest.approx(0.3)
    assert out[0][0][1] != out[3][0][1]


def test_degenerate_boxes_are_kept_alone():
    # Zero-area boxes have an empty union with each other (IoU 0 / 0): never linked, never
    # suppressing, each its own sequence.
    frames = [[(5.0, 5.0, 5.0, 5.0, 0.4, 0), (5.0, 5.0, 5.0, 5.0, 0.3, 0)]]
    frames.append([(5.0, 5.0, 5.0, 5.0, 0.9, 0)])
    out = _as_dicts(seq_nms(*_video(frames)))
    assert [sorted(f) for f in out] == [[0, 1], [0]]
    assert [f[0][0] for f in out] == pytest.approx([0.4, 0.9])
    assert len({i for f in out for _, i in f.values()}) == 3


def _brute_force_seq_nms(boxes, scores, labels, link_iou, suppress_iou, rescore):
    """Seq-NMS by enumerating every sequence of alive boxes at every step (tiny inputs only)."""
    T = len(boxes)
    scores = [s.tolist() for s in scores]
    labels = [lab.tolist() for lab in labels]
    links = [box_iou(boxes[t], boxes[t + 1]) > link_iou for t in range(T - 1)]
    overlaps = [box_iou(b, b) > suppress_iou for b in boxes]
    alive = {(t, i) for t in range(T) for i in range(len(boxes[t]))}

    def sequences_from(path):
        yield path
        t, i = path[-1]
        for j in range(len(boxes[t + 1]) if t + 1 < T else 0):
            if (t + 1, j) in alive and labels[t + 1][j] == labels[t][i] and links[t][i, j]:
                yield from sequences_from(path + [(t + 1, j)])

    new_scores, sequences = {}, set()
    while alive:
        candidates = itertools.chain.from_iterable(sequences_from([b]) for b in sorted(alive))
        best = max(candidates, key=lambda p: sum(scores[t][i] for t, i in p))
        values = [scores[t][i] for t, i in best]
        for t, i in best:
            new_scores[(t, i)] = sum(values) / len(values) if rescore == "avg" else max(values)
        sequences.add(frozenset(best))
        for t, i in best:
            alive -= {
                (t, j)
                for j in range(len(boxes[t]))
                if labels[t][j] == labels[t][i] and (j == i or overlaps[t][i, j])
            }
    return new_scores, sequences


def _random_video(generator, device):
    """A few objects of two classes, drawn with jitter around two slowly moving anchors, so that
    boxes link, branch and overlap a lot."""
    T = int(torch.randint(1, 8, (1,), generator=generator))
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [8.0, 4.0, 30.0, 26.0]])
    boxes, scores, labels = [], [], []
    for t in range(T):
        n = int(torch.randint(0, 7, (1,), generator=generator))
        which = torch.randint(0, 2, (n,), generator=generator)
        jitter = (torch.rand(n, 4, generator=generator) - 0.5) * 12.0
        boxes.append((anchors[which] + 2.0 * t + jitter).to(device))
        scores.append((0.01 + torch.rand(n, generator=generator)).to(device))
        labels.append(torch.randint(0, 2, (n,), generator=generator).to(device))
    return boxes, scores, labels


def check_matches_brute_force(device):
    generator = torch.Generator().manual_seed(0)
    for trial, rescore in itertools.product(range(80), ["avg", "max"]):
        boxes, scores, labels = _random_video(generator, device)
        cpu = [[x.cpu() for x in xs] for xs in (boxes, scores, labels)]
        expected, expected_sequences = _brute_force_seq_nms(*cpu, 0.5, 0.3, rescore)
        results = seq_nms(boxes, scores, labels, link_iou=0.5, suppress_iou=0.3, rescore=rescore)
        assert len(results) == len(boxes), trial
        members = {}
        for t, r in enumerate(results):
            assert r.keep.device == r.scores.device == r.sequence_ids.device == scores[t].device
            want = sorted(i for (f, i) in expected if f == t)
            assert r.keep.tolist() == want, (trial, rescore, t)
            want_scores = torch.tensor([expected[(t, i)] for i in want], dtype=torch.float32)
            torch.testing.assert_close(r.scores.cpu(), want_scores, msg=f"{trial} {rescore} {t}")
            for i, sid in zip(r.keep.tolist(), r.sequence_ids.tolist()):
                members.setdefault(sid, set()).add((t, i))
        assert {frozenset(m) for m in members.values()} == expected_sequences, (trial, rescore)


def test_matches_brute_force_cpu(monkeypatch):
    # The random videos must exercise the recomputation after a broken best path: count the
    # forward passes of each video.
    forward_pass, select_sequences = seq_nms_module._forward_pass, seq_nms_module._select_sequences
    passes, passes_per_video = [], []

    def counting_forward_pass(*args):
        passes.append(1)
        forward_pass(*args)

    def counting_select_sequences(*args):
        passes.clear()
        out = select_sequences(*args)
        passes_per_video.append(len(passes))
        return out

    monkeypatch.setattr(seq_nms_module, "_forward_pass", counting_forward_pass)
    monkeypatch.setattr(seq_nms_module, "_select_sequences", counting_select_sequences)
    check_matches_brute_force("cpu")
    assert sum(n > 1 for n in passes_per_video) >= 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matches_brute_force_cuda():
    check_matches_brute_force("cuda")


def test_chunked_pair_search_gives_the_same_result(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    videos = [_random_video(generator, "cpu") for _ in range(10)]
    expected = [seq_nms(*v) for v in videos]
    monkeypatch.setattr(seq_nms_module, "_PAIRS_PER_CHUNK", 3)
    for video, want in zip(videos, expected):
        for got, w in zip(seq_nms(*video), want):
            assert torch.equal(got.keep, w.keep) and torch.equal(got.scores, w.scores)


def test_links_and_overlaps_match_torchvision_box_iou():
    generator = torch.Generator().manual_seed(2)
    T, N = 4, 30
    boxes = torch.rand(T * N, 2, generator=generator) * 50.0
    boxes = torch.cat([boxes, boxes + 5.0 + torch.rand(T * N, 2, generator=generator) * 30.0], 1)
    labels = torch.randint(0, 3, (T * N,), generator=generator)
    frames = torch.arange(T).repeat_interleave(N)
    order = torch.argsort(frames * 3 + labels, stable=True)
    boxes, labels = boxes[order], labels[order]
    graph = seq_nms_module._VideoGraph(
        boxes.numpy(), frames[order].numpy(), labels.numpy(), T, 3, 0.5, 0.3
    )

    same_class = labels[:, None] == labels[None, :]
    iou = box_iou(boxes, boxes)
    next_frame = frames[None, :] == frames[:, None] + 1
    want_links = set(zip(*((iou > 0.5) & same_class & next_frame).nonzero().T.tolist()))
    assert set(zip(graph.src.tolist(), graph.dst.tolist())) == want_links
    same_frame = frames[None, :] == frames[:, None]
    other = ~torch.eye(T * N, dtype=torch.bool)
    overlap = (iou > 0.3) & same_class & same_frame & other
    for m in range(T * N):
        row = graph.suppressed[graph.suppress_start[m] : graph.suppress_start[m + 1]]
        assert row.tolist() == overlap[m].nonzero().flatten().tolist(), m


def test_seq_nms_instances_keeps_fields_consistent():
    frames = _track([0.9, 0.1, 0.8])
    frames[1].append((1.0 + 8.0, 0.0, 21.0 + 8.0, 20.0, 0.6, 0))  # suppressed duplicate
    boxes, scores, labels = _video(frames)
    instances = []
    for t, (b, s, lab) in enumerate(zip(boxes, scores, labels)):
        inst = Instances((64, 64), pred_boxes=Boxes(b), scores=s, pred_classes=lab)
        inst.marker = torch.arange(len(b)) + 10 * t  # any other field follows its box
        instances.append(inst)
    out = seq_nms_instances(instances, rescore="max")
    assert [len(o) for o in out] == [1, 1, 1]
    for t, o in enumerate(out):
        assert o.image_size == (64, 64)
        assert o.marker.tolist() == [10 * t], t
        assert torch.equal(o.pred_boxes.tensor, boxes[t][:1]), t
        assert o.scores.tolist() == pytest.approx([0.9]), t
        assert o.seq_ids.tolist() == out[0].seq_ids.tolist(), t
    with pytest.raises(ValueError, match="frame 1 has no field"):
        seq_nms_instances([instances[0], Instances((64, 64), scores=scores[1])])


def test_kwargs_from_config():
    cfg = get_cfg()
    add_vod_config(cfg)
    assert seq_nms_kwargs_from_config(cfg) == {
        "link_iou": 0.5,
        "suppress_iou": 0.3,
        "rescore": "avg",
    }
    cfg.merge_from_list(["TEST.SEQ_NMS.LINK_IOU", 0.3, "TEST.SEQ_NMS.RESCORE", "max"])
    kwargs = seq_nms_kwargs_from_config(cfg)
    frames = [[(0.0, 0.0, 20.0, 20.0, 0.9, 0)], [(10.0, 0.0, 30.0, 20.0, 0.1, 0)]]
    out = _as_dicts(seq_nms(*_video(frames), **kwargs))  # IoU 1/3 now links
    assert out[1][0][0] == pytest.approx(0.9)


@pytest.mark.parametrize(
    "frames_or_kwargs, message",
    [
        ({"rescore": "mean"}, "rescore='mean'"),
        ({"link_iou": 1.5}, "link_iou=1.5"),
        ({"scores": [torch.tensor([-0.1])]}, "frame 0: scores must be finite and non-negative"),
        ({"scores": [torch.tensor([0.1, 0.2])]}, "frame 0: expected boxes"),
        ({"labels": [torch.tensor([0.0])]}, "frame 0: labels must be integers"),
        ({"scores": []}, "one entry per frame"),
    ],
)
def test_bad_input_is_reported(frames_or_kwargs, message):
    inputs = {
        "boxes": [torch.tensor([[0.0, 0.0, 1.0, 1.0]])],
        "scores": [torch.tensor([0.5])],
        "labels": [torch.tensor([0])],
    }
    options = {}
    for key, value in frames_or_kwargs.items():
        (inputs if key in inputs else options)[key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        seq_nms(inputs["boxes"], inputs["scores"], inputs["labels"], **options)
