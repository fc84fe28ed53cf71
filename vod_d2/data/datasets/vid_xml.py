"""
Parser of ILSVRC2015 (ImageNet VID / DET) XML annotation files into compact numpy columns.

This module imports only the standard library and numpy, so the worker processes that parse
large annotation trees start fast.
"""

import concurrent.futures
import multiprocessing
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["AnnotationColumns", "parse_annotation_files"]

# Below this many files a process pool costs more than it saves.
_MIN_FILES_PER_WORKER = 512


class AnnotationColumns(NamedTuple):
    """
    Annotations of F files holding O objects in all, in file order: the objects of file i are
    rows ``offsets[i]:offsets[i + 1]`` of the object columns.

    Attributes:
        image_size (ndarray): (F, 2) int32 ``(height, width)`` of each image.
        offsets (ndarray): (F + 1,) int64 start of each file's objects; ``offsets[-1] == O``.
        boxes (ndarray): (O, 4) float64 ``xmin, ymin, xmax, ymax`` exactly as written.
        category (ndarray): (O,) int32 contiguous class index.
        track_id (ndarray): (O,) int64 ``<trackid>``, -1 where the file has none (DET).
        occluded (ndarray): (O,) bool ``<occluded>`` is 1.
        generated (ndarray): (O,) bool ``<generated>`` is 1 (box interpolated by the tool).
        visible (ndarray): (O,) float64 ``<visible>``, the fraction of the object that is
            visible (vod_d2's synthetic data writes it), NaN where the file has none.
        conditions (ndarray): (F,) str, each file's ``<conditions>`` (space-separated tags of
            the frame's condition, e.g. ``"motion_blur defocus"``; vod_d2's synthetic data
            writes them), empty where it has none.
    """

    image_size: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    category: np.ndarray
    track_id: np.ndarray
    occluded: np.ndarray
    generated: np.ndarray
    visible: np.ndarray
    conditions: np.ndarray

    @staticmethod
    def concatenate(parts: Sequence["AnnotationColumns"]) -> "AnnotationColumns":
        """Columns of the files of ``parts``, one after the other."""
        counts = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return AnnotationColumns(
            image_size=np.concatenate([p.image_size for p in parts]),
            offsets=offsets,
            **{
                field: np.concatenate([getattr(p, field) for p in parts])
                for field in AnnotationColumns._fields[2:]
            },
        )


def parse_annotation_files(
    paths: Sequence[str],
    class_index: Dict[str, int],
    *,
    skip_unknown: bool = False,
    num_workers: Optional[int] = None,
    chunk_size: Optional[int] = None,
) -> AnnotationColumns:
    """
    Parse ILSVRC XML annotation files, in parallel over ``num_workers`` processes.

    Args:
        paths: the XML files.
        class_index: ``<name>`` text (WordNet id or class name) -> contiguous class index.
        skip_unknown: drop objects whose ``<name>`` is not in ``class_index`` (the DET images
            of the 30 VID classes also hold objects of the other 170 DET classes); otherwise
            such an object is an error.
        num_workers: processes to use; ``None`` uses every core this process may run on.
        chunk_size: files per task; ``None`` splits the files into 4 tasks per worker.

    Returns:
        AnnotationColumns: the annotations of ``paths``, in order.

    Raises:
        ValueError: naming the file, for malformed XML, a missing field or an unknown class.
        FileNotFoundError: naming the file, when a file is missing.
    """
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    num_workers = max(1, min(num_workers, len(paths) // _MIN_FILES_PER_WORKER))
    if chunk_size is None:
        chunk_size = max(1, -(-len(paths) // (4 * num_workers)))
    chunks = [paths[i : i + chunk_size] for i in range(0, len(paths), chunk_size)] or [[]]
    if num_workers == 1 or len(chunks) == 1:
        parts = [_parse_chunk(chunk, class_index, skip_unknown) for chunk in chunks]
    else:
        # fork starts workers without re-importing the caller's (heavy) modules.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            futures = [
                pool.submit(_parse_chunk, chunk, class_index, skip_unknown) for chunk in chunks
            ]
            parts = [f.result() for f in futures]
    return AnnotationColumns.concatenate(parts)


def _parse_chunk(
    paths: Sequence[str], class_index: Dict[str, int], skip_unknown: bool
) -> AnnotationColumns:
    image_size = np.zeros((len(paths), 2), np.int32)
    offsets = np.zeros(len(paths) + 1, np.int64)
    conditions: List[str] = []
    objects: List[tuple] = []
    for i, path in enumerate(paths):
        image_size[i], frame_conditions = _parse_file(path, class_index, skip_unknown, objects)
        conditions.append(frame_conditions)
        offsets[i + 1] = len(objects)
    if objects:
        boxes, category, track_id, occluded, generated, visible = zip(*objects)
    else:
        boxes, category, track_id, occluded, generated, visible = np.zeros((0, 4)), *[[]] * 5
    return AnnotationColumns(
        image_size=image_size,
        offsets=offsets,
        boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
        category=np.asarray(category, np.int32),
        track_id=np.asarray(track_id, np.int64),
        occluded=np.asarray(occluded, bool),
        generated=np.asarray(generated, bool),
        visible=np.asarray(visible, np.float64),
        conditions=np.asarray(conditions, dtype=str),
    )


def _parse_file(path: str, class_index: Dict[str, int], skip_unknown: bool, objects: list):
    """
    Append the objects of one file to ``objects``; return its ``(height, width)`` and its
    ``<conditions>`` (normalised to single spaces).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"Malformed XML annotation file {path}: {e}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"Annotation file {path} does not exist") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"Annotation file {path} has no <size>")
    height, width = _number(size, "height", path, int), _number(size, "width", path, int)
    for obj in root.iterfind("object"):
        name = (obj.findtext("name") or "").strip()
        category = class_index.get(name)
        if category is None:
            if skip_unknown:
                continue
            raise ValueError(
                f"Annotation file {path} has an object of unknown class {name!r}, "
                f"which is not one of the dataset's {len(set(class_index.values()))} classes"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"Annotation file {path} has an object without <bndbox>")
        box = tuple(_number(bndbox, k, path, float) for k in ("xmin", "ymin", "xmax", "ymax"))
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"Annotation file {path} has an inverted box {box} (x0, y0, x1, y1)")
        trackid = obj.findtext("trackid")
        visible = np.nan if obj.find("visible") is None else _number(obj, "visible", path, float)
        if not (np.isnan(visible) or 0.0 <= visible <= 1.0):
            raise ValueError(f"Annotation file {path}: <visible> is {visible}, not in [0, 1]")
        objects.append(
            (
                box,
                category,
                -1 if trackid is None else _number(obj, "trackid", path, int),
                obj.findtext("occluded", "0").strip() == "1",
                obj.findtext("generated", "0").strip() == "1",
                visible,
            )
        )
    return (height, width), " ".join((root.findtext("conditions") or "").split())


def _number(parent: ET.Element, tag: str, path: str, kind):
    text = parent.findtext(tag)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"Annotation file {path}: <{tag}> is {text!r}, not a number") from None
