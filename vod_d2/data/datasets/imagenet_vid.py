"""
ImageNet VID and DET (ILSVRC2015 layout) as frame records.

Layout under ``root``::

    Data/VID/<split>/<snippet>/<frame:06d>.JPEG    Annotations/VID/<split>/<snippet>/<frame:06d>.xml
    Data/DET/<path>.JPEG                           Annotations/DET/<path>.xml
    ImageSets/VID_train_15frames.txt, VID_val_videos.txt, VID_val_frames.txt,
              DET_train_30classes.txt

Image-set lists: those FGFA, MEGA and mmtracking share (``ImageSets/VID_train_15frames.txt``
...) and the official ones of the download (``ImageSets/VID/val.txt``, ``train_<k>.txt``,
``ImageSets/DET/train_<k>.txt``), see :mod:`.image_sets`.

Every frame file a dataset may read (the listed frames and, for videos, all the frames of their
snippets, which can be support frames) is checked to exist when the dataset is loaded
(:mod:`.frame_files`), with the check cached next to the annotations.

Boxes are the XML's ``xmin, ymin, xmax, ymax`` unchanged, as ``XYXY_ABS``: the devkit's pixels
are inclusive (a box's width is ``xmax - xmin + 1``), and the VID evaluator adds that +1 itself
when it applies the devkit's rules, so no coordinate is shifted on the way in.
"""

import gc
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.structures import BoxMode

from .cache import cache_file, default_cache_dir, fingerprint_files, load_cached, save_cached
from .classes import VID_CLASSES, VID_WNIDS
from .frame_files import check_frame_files
from .image_sets import FrameList, read_det_image_set, read_vid_image_set, scan_vid_split
from .vid_xml import AnnotationColumns, parse_annotation_files

__all__ = ["load_imagenet_vid", "load_imagenet_det"]

logger = logging.getLogger(__name__)

_WNID_OF_CLASS = dict(zip(VID_CLASSES, VID_WNIDS))

# Bump when the parsed columns change meaning, so older cache entries are parsed again.
_CACHE_VERSION = "imagenet-2"


def load_imagenet_vid(
    root: str,
    image_set: Optional[str] = None,
    *,
    split: Optional[str] = None,
    class_names: Sequence[str] = VID_CLASSES,
    image_ext: str = ".JPEG",
    cache_dir: Optional[str] = None,
    use_cache: bool = True,
    num_workers: Optional[int] = None,
    check_frames: bool = True,
) -> List[dict]:
    """
    Frame records of ImageNet VID snippets.

    Args:
        root: the ILSVRC2015 folder (holding ``Data``, ``Annotations``, ``ImageSets``).
        image_set: image-set list, relative to ``root`` or absolute (see the module doc).
        split: without ``image_set``, every frame of every snippet under
            ``Annotations/VID/<split>`` (frames ordered by file name).
        class_names: the dataset's classes; an object's ``<name>`` is a class name or, for the
            VID classes, its WordNet id. Any other name is an error.
        image_ext: extension of the frame files (``.JPEG`` in ILSVRC2015, e.g. ``.jpg``).
        cache_dir: where parsed annotations are cached (default :func:`default_cache_dir`).
        use_cache: read and write the cache.
        num_workers: processes that parse the XML files (default: all cores).
        check_frames: check that every frame file of the listed snippets exists (all their
            frames, as any may be a support frame).

    Returns:
        list[dict]: frame records (see :mod:`vod_d2.data.datasets`), ordered by
        ``(video_id, frame_idx)``, ``video_id`` being ``"VID/<snippet>"``.

    Raises:
        FileNotFoundError: naming the first missing list, annotation or frame file.
        ValueError: naming the file and line, for a malformed list or annotation.
    """
    if (image_set is None) == (split is None):
        raise ValueError("load_imagenet_vid needs exactly one of image_set and split")
    annotation_dir = os.path.join(root, "Annotations", "VID")
    if image_set is not None:
        list_file = os.path.join(root, image_set)
        frames = read_vid_image_set(list_file, annotation_dir)
    else:
        list_file = os.path.join(annotation_dir, split)
        frames = scan_vid_split(annotation_dir, split)
    return _load(
        "VID", root, frames, list_file, class_names=class_names, image_ext=image_ext,
        cache_dir=cache_dir, use_cache=use_cache, num_workers=num_workers,
        check_frames=check_frames,
    )  # fmt: skip


def load_imagenet_det(
    root: str,
    image_set: str,
    *,
    class_names: Sequence[str] = VID_CLASSES,
    image_ext: str = ".JPEG",
    cache_dir: Optional[str] = None,
    use_cache: bool = True,
    num_workers: Optional[int] = None,
    check_frames: bool = True,
) -> List[dict]:
    """
    Frame records of ImageNet DET images, each a one-frame video: ``video_id`` is
    ``"DET/<path>"``, ``frame_idx`` 0, ``video_length`` 1 and every ``track_id`` -1. Objects of
    classes outside ``class_names`` (the other DET classes) are left out.

    Args: as :func:`load_imagenet_vid`, ``image_set`` being a DET list
        (``ImageSets/DET_train_30classes.txt``).
    """
    list_file = os.path.join(root, image_set)
    frames = read_det_image_set(list_file)
    return _load(
        "DET", root, frames, list_file, class_names=class_names, image_ext=image_ext,
        cache_dir=cache_dir, use_cache=use_cache, num_workers=num_workers,
        check_frames=check_frames,
    )  # fmt: skip


def class_index(class_names: Sequence[str]) -> Dict[str, int]:
    """``<name>`` text -> contiguous index: each class's name and, for VID classes, its wnid."""
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    index = {name: i for i, name in enumerate(class_names)}
    index.update({_WNID_OF_CLASS[n]: i for i, n in enumerate(class_names) if n in _WNID_OF_CLASS})
    return index


def records_from_columns(
    image_files: Sequence[str],
    video_ids: Sequence[str],
    frame_idx: np.ndarray,
    video_length: np.ndarray,
    columns: AnnotationColumns,
    with_tracks: bool = True,
) -> List[dict]:
    """
    Frame records ordered by ``(video_id, frame_idx)``; ``image_id`` is the record's position.

    Python objects that repeat (video ids, sizes, lengths, box coordinates) are shared
    between records rather than copied, which keeps large datasets small in memory.
    """
    # Millions of new containers would trigger many full garbage collections, none of which
    # can free anything here: pause the collector while building.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_records(image_files, video_ids, frame_idx, video_length, columns, with_tracks)
    finally:
        if gc_was_enabled:
            gc.enable()


def _build_records(image_files, video_ids, frame_idx, video_length, columns, with_tracks):
    rank = {video: r for r, video in enumerate(sorted(set(video_ids)))}
    video_rank = np.fromiter((rank[v] for v in video_ids), np.int64, len(video_ids))
    order = np.lexsort((frame_idx, video_rank)).tolist()
    heights, widths = _shared(columns.image_size[:, 0]), _shared(columns.image_size[:, 1])
    frame_idx, lengths = _shared(frame_idx), _shared(video_length)
    coordinates = _shared(columns.boxes)  # 4 per object, few distinct values
    category = columns.category.tolist()
    track_id = columns.track_id.tolist() if with_tracks else [-1] * len(category)
    # All annotations at once; each frame then takes a slice (no per-frame Python loop).
    annotations = [
        {
            "bbox": coordinates[k : k + 4],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": c,
            "track_id": t,
            "occluded": o,
            "generated": g,
        }
        for k, c, t, o, g in zip(
            range(0, len(coordinates), 4),
            category,
            track_id,
            columns.occluded.tolist(),
            columns.generated.tolist(),
        )
    ]
    # Visible fractions only where the files give them (vod_d2's synthetic data).
    if not np.isnan(columns.visible).all():
        for annotation, visible in zip(annotations, columns.visible.tolist()):
            annotation["visible"] = visible
    offsets = columns.offsets.tolist()
    records = [
        {
            "file_name": image_files[i],
            "height": heights[i],
            "width": widths[i],
            "image_id": image_id,
            "video_id": video_ids[i],
            "frame_idx": frame_idx[i],
            "video_length": lengths[i],
            "annotations": annotations[offsets[i] : offsets[i + 1]],
        }
        for image_id, i in enumerate(order)
    ]
    # A frame's condition tags, only on the frames that have some.
    tagged = np.flatnonzero(columns.conditions != "")
    if len(tagged):
        image_id = np.empty(len(order), np.int64)
        image_id[order] = np.arange(len(order))
        for i in tagged.tolist():
            records[image_id[i]]["conditions"] = tuple(str(columns.conditions[i]).split())
    return records


def _load(
    kind: str,
    root: str,
    frames: FrameList,
    list_file: str,
    *,
    class_names: Sequence[str],
    image_ext: str,
    cache_dir: Optional[str],
    use_cache: bool,
    num_workers: Optional[int],
    check_frames: bool,
) -> List[dict]:
    """Parse (or read from the cache) the annotations of ``frames`` and build the records."""
    is_det = kind == "DET"
    annotation_dir = os.path.join(root, "Annotations", kind, "")
    annotation_files = [annotation_dir + stem + ".xml" for stem in frames.stems]
    index = class_index(class_names)
    columns = None
    identity = (_CACHE_VERSION, kind, os.path.abspath(list_file), *class_names)
    cache_dir = cache_dir or default_cache_dir()
    if use_cache:
        salt = f"{_CACHE_VERSION}\0{sorted(index.items())}\0{is_det}"
        key = fingerprint_files(annotation_files, salt)
        path = cache_file(cache_dir, identity)
        cached = load_cached(path, key)
        if cached is not None:
            logger.info(f"Loaded the annotations of {list_file} from the cache {path}")
            columns = AnnotationColumns(**cached)
    if columns is None:
        columns = parse_annotation_files(
            annotation_files, index, skip_unknown=is_det, num_workers=num_workers
        )
        if use_cache:
            save_cached(path, key, columns._asdict())
    data_dir = os.path.join(root, "Data", kind, "")
    image_files = [data_dir + stem + image_ext for stem in frames.stems]
    if check_frames:
        frames_cache = (
            cache_file(cache_dir, (*identity, image_ext), "frames") if use_cache else None
        )
        _check_frames(data_dir, frames, image_ext, is_det, list_file, frames_cache)
    video_ids = _prefixed(kind, frames.videos)
    records = records_from_columns(
        image_files, video_ids, frames.frame_idx, frames.video_length, columns, not is_det
    )
    _check_unique_frames(records, list_file)
    logger.info(f"Loaded {len(records)} frames of {len(set(video_ids))} videos from {list_file}")
    return records


def _check_frames(data_dir, frames: FrameList, image_ext, is_det, list_file, cache_path) -> None:
    """Every listed DET image, every frame of every listed snippet (support frames) exists."""
    if is_det:
        groups: Dict[str, List[str]] = {}
        for stem in frames.stems:
            folder, name = os.path.split(data_dir + stem + image_ext)
            groups.setdefault(folder, []).append(name)
        folders, names = list(groups), list(groups.values()).__getitem__
        requirement = "\0".join(frames.stems)
    else:
        lengths = dict(zip(frames.videos, frames.video_length.tolist()))
        folders, counts = [data_dir + video for video in lengths], list(lengths.values())
        requirement = f"{image_ext}\0{counts}"

        def names(i):
            return (f"{t:06d}{image_ext}" for t in range(counts[i]))

    check_frame_files(
        folders, names, requirement=requirement, dataset=list_file, cache_path=cache_path
    )


def _shared(values: np.ndarray) -> list:
    """``values.ravel().tolist()`` with one Python object per distinct value, shared by repeats."""
    unique, inverse = np.unique(values, return_inverse=True)
    objects = np.empty(len(unique), object)
    objects[:] = unique.tolist()
    return objects[inverse.ravel()].tolist()


def _prefixed(kind: str, videos: List[str]) -> List[str]:
    """``kind/video`` for every entry, one string object per distinct video."""
    shared: Dict[str, str] = {}
    return [shared.get(v) or shared.setdefault(v, f"{kind}/{v}") for v in videos]


def _check_unique_frames(records: List[dict], list_file: str) -> None:
    for prev, cur in zip(records, records[1:]):
        if prev["video_id"] == cur["video_id"] and prev["frame_idx"] == cur["frame_idx"]:
            raise ValueError(f"{list_file} lists frame {cur['file_name']} more than once")
