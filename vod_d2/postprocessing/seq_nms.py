"""
Seq-NMS (Han et al. 2016, "Seq-NMS for video object detection"): temporal re-scoring of a whole
video's detections, the post-processing of STSN+ (stsn.md, Table 1) and STMN (stmn.md, §3.4).

For each class, boxes of adjacent frames whose IoU exceeds ``link_iou`` are linked; the sequence
of linked boxes over consecutive frames with the largest score sum is found by dynamic
programming, its boxes are re-scored with the sequence's average (or maximum) score, and the
boxes of each of its frames that overlap its box there by more than ``suppress_iou`` are
suppressed. This repeats until no box is left.

How it stays fast without changing the result:

* The video is a sparse graph. Boxes are sorted by (frame, class), so a class's boxes of a frame
  are contiguous; links (adjacent frames) and suppression pairs (same frame) are found by testing
  only same-class pairs, in bounded chunks: memory grows with the number of same-class pairs,
  not with the square of the number of boxes.
* The forward pass ``V(j) = s(j) + max(0, max_{i linked to j} V(i))`` is one scatter-max per
  frame for all classes at once. It is not rerun after every sequence: removing boxes can only
  lower ``V``, so the best remaining box whose stored best path is still intact ends the next
  sequence. Sequences are taken in decreasing ``V`` until a box with a broken path comes first;
  only then is ``V`` recomputed, from the earliest frame that changed.
* A box with neither links nor an overlapping box of its class in its frame is its own sequence
  whatever happens: it is kept with its score without entering the greedy loop.
"""

from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Instances
from torch import Tensor

__all__ = ["SeqNmsResult", "seq_nms", "seq_nms_instances", "seq_nms_kwargs_from_config"]

RESCORE_MODES = ("avg", "max")
# Box pairs whose IoU is computed at once: bounds the temporary memory (a few tens of MB) and
# keeps it in cache (four times larger chunks run twice slower).
_PAIRS_PER_CHUNK = 1 << 18


class SeqNmsResult(NamedTuple):
    """
    Seq-NMS output for one frame.

    Attributes:
        keep (Tensor): (K,) int64 indices of the frame's surviving boxes into its input boxes,
            in increasing order.
        scores (Tensor): (K,) new scores of the surviving boxes (dtype of the input scores).
        sequence_ids (Tensor): (K,) int64 id of the sequence each surviving box belongs to,
            unique within the video; a box linked to no other box is a sequence of its own.
    """

    keep: Tensor
    scores: Tensor
    sequence_ids: Tensor


def seq_nms_kwargs_from_config(cfg) -> Dict:
    """
    Map ``cfg.TEST.SEQ_NMS`` to the keyword arguments of :func:`seq_nms` and
    :func:`seq_nms_instances` (checking ``ENABLED`` is the caller's job).
    """
    return {
        "link_iou": cfg.TEST.SEQ_NMS.LINK_IOU,
        "suppress_iou": cfg.TEST.SEQ_NMS.SUPPRESS_IOU,
        "rescore": cfg.TEST.SEQ_NMS.RESCORE,
    }


def seq_nms(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    link_iou: float = 0.5,
    suppress_iou: float = 0.3,
    rescore: str = "avg",
) -> List[SeqNmsResult]:
    """
    Seq-NMS over the detections of one video, class-wise.

    Args:
        boxes: one (N_t, 4) XYXY tensor per frame, in frame order.
        scores: one (N_t,) tensor of non-negative confidences per frame.
        labels: one (N_t,) integer tensor of class ids per frame.
        link_iou: boxes of adjacent frames and the same class are linked when their IoU is
            strictly above this.
        suppress_iou: a box whose IoU with a selected sequence's box of its frame and class is
            strictly above this is discarded.
        rescore: ``"avg"`` or ``"max"``: the new score of a sequence's boxes is the average or
            the maximum of their input scores.

    Returns:
        list[SeqNmsResult]: one per frame: surviving box indices, their new scores and their
        sequence ids, on the device of the inputs. The computation itself runs on CPU: it is a
        chain of small sequential steps, which a GPU would only slow down.
    """
    _check_inputs(boxes, scores, labels, link_iou, suppress_iou, rescore)
    if len(boxes) == 0:
        return []
    device, score_dtype = scores[0].device, scores[0].dtype
    counts = np.array([len(s) for s in scores], dtype=np.int64)
    box_dtype = torch.promote_types(boxes[0].dtype, torch.float32)
    flat_boxes = torch.cat([b.detach().to("cpu", box_dtype) for b in boxes]).reshape(-1, 4).numpy()
    flat_scores = torch.cat([s.detach().to("cpu", torch.float64) for s in scores]).numpy()
    flat_labels = torch.cat([lab.detach().to("cpu", torch.int64) for lab in labels]).numpy()
    frames = np.repeat(np.arange(len(counts)), counts)
    _check_scores(flat_scores, frames)

    classes, class_idx = np.unique(flat_labels, return_inverse=True)
    order = np.argsort(frames * len(classes) + class_idx, kind="stable")
    graph = _VideoGraph(
        flat_boxes[order],
        frames[order],
        class_idx[order],
        len(counts),
        len(classes),
        link_iou,
        suppress_iou,
    )
    kept_w, scores_w, ids_w = _select_sequences(flat_scores[order], graph, rescore)

    kept, new_scores, seq_ids = np.empty_like(kept_w), np.empty_like(scores_w), np.empty_like(ids_w)
    kept[order], new_scores[order], seq_ids[order] = kept_w, scores_w, ids_w
    results = []
    for lo, hi in zip(np.cumsum(counts) - counts, np.cumsum(counts)):
        keep = np.flatnonzero(kept[lo:hi])
        results.append(
            SeqNmsResult(
                torch.from_numpy(keep).to(device),
                torch.from_numpy(new_scores[lo:hi][keep]).to(device, score_dtype),
                torch.from_numpy(seq_ids[lo:hi][keep]).to(device),
            )
        )
    return results


def seq_nms_instances(instances_per_frame: Sequence[Instances], **kwargs) -> List[Instances]:
    """
    :func:`seq_nms` over a video's detectron2 predictions.

    Args:
        instances_per_frame: one ``Instances`` per frame, in frame order, with ``pred_boxes``
            (Boxes), ``scores`` (N_t,) and ``pred_classes`` (N_t,).
        kwargs: ``link_iou``, ``suppress_iou``, ``rescore`` of :func:`seq_nms`
            (see :func:`seq_nms_kwargs_from_config`).

    Returns:
        list[Instances]: per frame, the surviving instances in their input order, every field
        indexed alike, with their new ``scores`` and a ``seq_ids`` (N'_t,) int64 field holding
        their sequence ids (to colour a sequence consistently over time, for instance).
    """
    for t, inst in enumerate(instances_per_frame):
        missing = [f for f in ("pred_boxes", "scores", "pred_classes") if not inst.has(f)]
        if missing:
            raise ValueError(f"seq_nms_instances: frame {t} has no field(s) {missing}")
    results = seq_nms(
        [inst.pred_boxes.tensor for inst in instances_per_frame],
        [inst.scores for inst in instances_per_frame],
        [inst.pred_classes for inst in instances_per_frame],
        **kwargs,
    )
    outputs = []
    for inst, res in zip(instances_per_frame, results):
        out = inst[res.keep]
        out.scores = res.scores
        out.seq_ids = res.sequence_ids
        outputs.append(out)
    return outputs


def _check_inputs(boxes, scores, labels, link_iou, suppress_iou, rescore):
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"seq_nms: boxes, scores and labels must have one entry per frame, got "
            f"{len(boxes)}, {len(scores)} and {len(labels)} frames"
        )
    if rescore not in RESCORE_MODES:
        raise ValueError(f"seq_nms: rescore={rescore!r} is not one of {RESCORE_MODES}")
    for name, value in (("link_iou", link_iou), ("suppress_iou", suppress_iou)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"seq_nms: {name}={value} is not in [0, 1]")
    for t, (b, s, lab) in enumerate(zip(boxes, scores, labels)):
        if b.dim() != 2 or b.shape[1] != 4 or s.shape != (len(b),) or lab.shape != (len(b),):
            raise ValueError(
                f"seq_nms: frame {t}: expected boxes (N, 4), scores (N,) and labels (N,), got "
                f"{tuple(b.shape)}, {tuple(s.shape)} and {tuple(lab.shape)}"
            )
        if lab.is_floating_point() or lab.is_complex():
            raise ValueError(f"seq_nms: frame {t}: labels must be integers, got {lab.dtype}")


def _check_scores(scores: np.ndarray, frames: np.ndarray):
    # The dynamic programming extends every sequence as far as links go, which is only the best
    # choice when no score is negative.
    bad = ~(np.isfinite(scores) & (scores >= 0))
    if bad.any():
        t = int(frames[np.argmax(bad)])
        raise ValueError(f"seq_nms: frame {t}: scores must be finite and non-negative")


class _VideoGraph:
    """
    Links and suppression pairs of a video's boxes, sorted by (frame, class).

    Everything here and in the greedy loop is numpy: the loops read single entries and small
    slices, where numpy is cheap, and torch's CPU thread pool can stall for milliseconds per op
    on a busy machine (measured: a torch version ran 6x slower with 2 threads on 2 busy cores).

    Attributes:
        frames (ndarray): (M,) int64 frame of each box.
        num_frames (int): T.
        frame_start (list[int]): T + 1 offsets: frame t's boxes are ``frame_start[t]:
            frame_start[t + 1]``.
        src, dst (ndarray): (E,) int64 linked boxes, ``src`` in the frame before ``dst``'s,
            ordered by ``src``, hence by ``dst``'s frame.
        link_start (list[int]): T + 1 offsets: the links into frame t are
            ``link_start[t]:link_start[t + 1]``.
        dst_in_frame (ndarray): (E,) int64 position of ``dst`` within its frame.
        suppress_start (ndarray): (M + 1,) int64 offsets into ``suppressed``: box m suppresses
            ``suppressed[suppress_start[m]:suppress_start[m + 1]]`` (same frame and class,
            IoU above the threshold, m itself excluded).
        suppressed (ndarray): (S,) int64.
    """

    def __init__(
        self,
        boxes: np.ndarray,
        frames: np.ndarray,
        classes: np.ndarray,
        num_frames: int,
        num_classes: int,
        link_iou: float,
        suppress_iou: float,
    ):
        """
        Args:
            boxes (ndarray): (M, 4) float XYXY boxes sorted by (frame, class).
            frames (ndarray): (M,) int64 frame of each box.
            classes (ndarray): (M,) int64 class of each box, in [0, num_classes).
            num_frames, num_classes (int): T and C.
            link_iou, suppress_iou (float): as in :func:`seq_nms`.
        """
        T, C, M = num_frames, num_classes, len(boxes)
        self.frames, self.num_frames = frames, T
        # One contiguous array per coordinate: the pair IoUs gather from them.
        self.coords = np.ascontiguousarray(boxes.T)
        x0, y0, x1, y1 = self.coords
        self.area = (x1 - x0) * (y1 - y0)
        # Cells (frame, class) hold contiguous boxes: cell_start[k]:cell_start[k] + count[k].
        cell = frames * C + classes
        count = np.bincount(cell, minlength=(T + 1) * C)  # + an empty frame T
        cell_start = np.cumsum(count) - count
        frame_start = np.zeros(T + 1, dtype=np.int64)
        frame_start[1:] = np.cumsum(count[: T * C].reshape(T, C).sum(1))
        self.frame_start = frame_start.tolist()

        # Links: each box against its class's boxes of the next frame.
        self.src, self.dst = self._pairs_above(cell_start[cell + C], count[cell + C], link_iou)
        self.link_start = np.searchsorted(frames[self.dst], np.arange(T + 1)).tolist()
        self.dst_in_frame = self.dst - frame_start[frames[self.dst]]

        # Suppression: each box against the other boxes of its cell.
        first, second = self._pairs_above(cell_start[cell], count[cell], suppress_iou)
        other = first != second
        self.suppressed = second[other]
        self.suppress_start = np.zeros(M + 1, dtype=np.int64)
        self.suppress_start[1:] = np.cumsum(np.bincount(first[other], minlength=M))

    def _pairs_above(
        self, start: np.ndarray, count: np.ndarray, threshold: float
    ) -> Tuple[np.ndarray, np.ndarray]:
        """
        Every pair (m, j) with ``start[m] <= j < start[m] + count[m]`` and IoU > threshold.

        Args:
            start, count (ndarray): (M,) int64 range of candidate partners of each box.
            threshold (float): IoU threshold.

        Returns:
            tuple: (P,) int64 m and (P,) int64 j, ordered by m, then j.
        """
        total = np.cumsum(count)
        firsts, seconds = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        begin = 0
        while begin < len(count):
            done = total[begin - 1] if begin else 0
            end = max(int(np.searchsorted(total, done + _PAIRS_PER_CHUNK, "right")), begin + 1)
            num = count[begin:end]
            local = np.repeat(np.arange(end - begin), num)
            first = local + begin
            second = np.arange(len(local)) + (start[begin:end] - np.cumsum(num) + num)[local]
            above = self._iou(first, second) > threshold
            firsts.append(first[above])
            seconds.append(second[above])
            begin = end
        return np.concatenate(firsts), np.concatenate(seconds)

    def _iou(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(P,) IoU of the box pairs (first[p], second[p]), NaN for an empty union (0 / 0), so
        that it is above no threshold; torchvision's ``box_iou`` formula."""
        x0, y0, x1, y1 = self.coords
        inter = np.minimum(x1[first], x1[second]) - np.maximum(x0[first], x0[second])
        height = np.minimum(y1[first], y1[second]) - np.maximum(y0[first], y0[second])
        inter = np.maximum(inter, 0) * np.maximum(height, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return inter / (self.area[first] + self.area[second] - inter)


def _select_sequences(scores: np.ndarray, graph: _VideoGraph, rescore: str):
    """
    The greedy loop of Seq-NMS.

    Args:
        scores (ndarray): (M,) float64 box scores, in the graph's order.
        graph (_VideoGraph): the video's links and suppression pairs.
        rescore (str): "avg" or "max".

    Returns:
        tuple: kept (M,) bool, new scores (M,) float64 and sequence ids (M,) int64 (-1 where
        not kept), ndarrays.
    """
    M = len(scores)
    degree = np.bincount(graph.src, minlength=M) + np.bincount(graph.dst, minlength=M)
    degree += np.diff(graph.suppress_start)
    alone = degree == 0
    kept = alone.copy()
    new_scores = np.where(alone, scores, 0.0)
    seq_ids = np.full(M, -1, dtype=np.int64)
    seq_ids[alone] = np.arange(np.count_nonzero(alone))
    next_id = np.count_nonzero(alone)

    alive = ~alone
    value = np.full(M, -np.inf)
    best_prev = np.full(M, -np.inf)
    pred = np.full(M, -1, dtype=np.int64)
    suppress_start, suppressed = graph.suppress_start, graph.suppressed
    reduce = np.mean if rescore == "avg" else np.max

    first_changed = 0
    while alive.any():
        _forward_pass(scores, alive, graph, value, best_prev, pred, first_changed)
        first_changed = graph.num_frames
        candidates = np.flatnonzero(alive)
        candidates = candidates[np.argsort(-value[candidates], kind="stable")]
        for end in candidates.tolist():
            if not alive[end]:
                continue
            path, node = [end], pred[end]
            while node >= 0:
                path.append(node)
                node = pred[node]
            path = np.array(path)
            if not alive[path].all():
                # This box's stored value may now be too high: recompute before going on.
                break
            new_scores[path] = reduce(scores[path])
            kept[path] = True
            seq_ids[path] = next_id
            next_id += 1
            alive[path] = False
            alive[suppressed[_concat_ranges(suppress_start[path], suppress_start[path + 1])]] = (
                False
            )
            first_changed = min(first_changed, int(graph.frames[path[-1]]))
        if first_changed == graph.num_frames:
            # A fresh pass always leaves the best box with an intact path; failing that, this
            # loop would never end.
            raise RuntimeError("seq_nms: a forward pass selected no sequence")
    return kept, new_scores, seq_ids


def _forward_pass(scores, alive, graph, value, best_prev, pred, start):
    """
    Best-sequence dynamic programming over the alive boxes, in place from frame ``start`` on
    (earlier frames are unchanged since the last pass):
    ``value[j] = scores[j] + max(0, best_prev[j])`` with ``best_prev[j] = max_{i linked to j}
    value[i]`` (-inf for dead boxes and for boxes without alive predecessor), and ``pred[j]``
    the i reaching that max (-1 if none).

    Args:
        scores (ndarray): (M,) float64.
        alive (ndarray): (M,) bool.
        graph (_VideoGraph): links.
        value, best_prev (ndarray): (M,) float64, updated in place.
        pred (ndarray): (M,) int64, updated in place.
        start (int): first frame to recompute.
    """
    frame_start, link_start = graph.frame_start, graph.link_start
    own = np.where(alive, scores, -np.inf)
    for t in range(start, graph.num_frames):
        lo, hi = frame_start[t], frame_start[t + 1]
        best = best_prev[lo:hi]
        best.fill(-np.inf)
        a, b = link_start[t], link_start[t + 1]
        if a < b:
            np.maximum.at(best, graph.dst_in_frame[a:b], value[graph.src[a:b]])
        np.add(own[lo:hi], np.maximum(best, 0.0), out=value[lo:hi])
    # Back-pointers for all links at once: a link is a best one where it attains the max.
    a = link_start[start]
    src, dst = graph.src[a:], graph.dst[a:]
    pred[frame_start[start] :] = -1
    src_value = value[src]
    is_best = (src_value == best_prev[dst]) & (src_value > -np.inf)
    pred[dst[is_best]] = src[is_best]


def _concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair of (n,) ``starts`` and ``ends``."""
    lengths = ends - starts
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(len(offsets))
