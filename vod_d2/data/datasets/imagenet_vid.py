"""
ImageNet VID and DET (ILSVRC2015 layout) as frame records.

Layout under ``root``::

    Data/VID/<split>/<snippet>/<frame:06d>.JPEG    Annotations/VID/<split>/<snippet>/<frame:06d>.xml
    Data/DET/<path>.JPEG                           Annotations/DET/<path>.xml
    ImageSets/VID_train_15frames.txt, VID_val_videos.txt, VID_val_frames.txt,
              DET_train_30classes.txt

Image-set lists, in the formats FGFA, MEGA and mmtracking share:

* video lists, one line per frame ``<snippet> <n> <frame_idx> <num_frames>`` (``<n>`` is a running
  number, ignored): ``VID_train_15frames.txt`` (15 evenly spaced frames of each training
  snippet), ``VID_val_videos.txt`` (every val frame). ``frame_idx`` is 0-based: it is the file
  name, as in FGFA and MEGA;
* frame lists ``<snippet>/<frame:06d> [<n>]``: ``VID_val_frames.txt``; the snippet's length is
  its number of annotation files;
* DET lists ``<path> [<n>]``: ``DET_train_30classes.txt``.

Boxes are the XML's ``xmin, ymin, xmax, ymax`` unchanged, as ``XYXY_ABS``: the devkit's pixels
are inclusive (a box's width is ``xmax - xmin + 1``), and the VID evaluator adds that +1 itself
when it applies the devkit's rules, so no coordinate is shifted on the way in.
"""

import gc
import logging
import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
from detectron2.structures import BoxMode

from .cache import cache_file, default_cache_dir, fingerprint_files, load_cached, save_cached
from .vid_xml import AnnotationColumns, parse_annotation_files

__all__ = [
    "VID_CLASSES",
    "VID_WNIDS",
    "load_imagenet_vid",
    "load_imagenet_det",
]

logger = logging.getLogger(__name__)

# The 30 ImageNet VID classes, in the order every VID code base uses, and their WordNet ids.
VID_CLASSES = (
    "airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog",
    "domestic_cat", "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard",
    "monkey", "motorcycle", "rabbit", "red_panda", "sheep", "snake", "squirrel", "tiger",
    "train", "turtle", "watercraft", "whale", "zebra",
)  # fmt: skip
VID_WNIDS = (
    "n02691156", "n02419796", "n02131653", "n02834778", "n01503061", "n02924116", "n02958343",
    "n02402425", "n02084071", "n02121808", "n02503517", "n02118333", "n02510455", "n02342885",
    "n02374451", "n02129165", "n01674464", "n02484322", "n03790512", "n02324045", "n02509815",
    "n02411705", "n01726692", "n02355227", "n02129604", "n04468005", "n01662784", "n04530566",
    "n02062744", "n02391049",
)  # fmt: skip
_WNID_OF_CLASS = dict(zip(VID_CLASSES, VID_WNIDS))

# Bump when the parsed columns change meaning, so older cache entries are parsed again.
_CACHE_VERSION = "imagenet-1"


class FrameList(NamedTuple):
    """
    The frames a dataset lists, before their annotations are read.

    Attributes:
        stems (list[str]): path of each frame under ``Data/<kind>/`` without extension.
        videos (list[str]): video folder (DET: image path) under ``Data/<kind>/``; one string
            object per video.
        frame_idx (ndarray): (F,) int64 0-based index of each frame in its video.
        video_length (ndarray): (F,) int64 number of frames of each frame's video.
    """

    stems: List[str]
    videos: List[str]
    frame_idx: np.ndarray
    video_length: np.ndarray


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
        image_ext: extension of the image files.
        cache_dir: where parsed annotations are cached (default :func:`default_cache_dir`).
        use_cache: read and write the cache.
        num_workers: processes that parse the XML files (default: all cores).

    Returns:
        list[dict]: frame records (see :mod:`vod_d2.data.datasets`), ordered by
        ``(video_id, frame_idx)``, ``video_id`` being ``"VID/<snippet>"``.
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
    )  # fmt: skip


def class_index(class_names: Sequence[str]) -> Dict[str, int]:
    """``<name>`` text -> contiguous index: each class's name and, for VID classes, its wnid."""
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    index = {name: i for i, name in enumerate(class_names)}
    index.update({_WNID_OF_CLASS[n]: i for i, n in enumerate(class_names) if n in _WNID_OF_CLASS})
    return index


def read_vid_image_set(list_file: str, annotation_dir: str) -> FrameList:
    """Frames of a VID list in the 4-column (video) or 1/2-column (frame) format."""
    lines = _read_lines(list_file)
    stems, videos, frame_idx, video_length = [], [], [], []
    known: Dict[str, tuple] = {}  # snippet -> (shared str, length)
    for number, line in lines:
        fields = line.split()
        if len(fields) == 4:
            snippet = fields[0]
            index, length = _int(fields[2], list_file, number), _int(fields[3], list_file, number)
        elif len(fields) in (1, 2):
            snippet, _, frame = fields[0].rpartition("/")
            index = _int(frame, list_file, number)
            length = None
        else:
            raise ValueError(f"{list_file}:{number}: expected 1, 2 or 4 fields, got {line!r}")
        video, known_length = known.get(snippet, (None, None))
        if video is None:
            if length is None:
                length = _count_annotations(os.path.join(annotation_dir, snippet), list_file)
            video, known_length = snippet, length
            known[snippet] = (video, length)
        if length is not None and length != known_length:
            raise ValueError(
                f"{list_file}:{number}: snippet {snippet} has {length} frames here but "
                f"{known_length} on an earlier line"
            )
        if not 0 <= index < known_length:
            raise ValueError(
                f"{list_file}:{number}: frame {index} is outside snippet {snippet} "
                f"({known_length} frames)"
            )
        stems.append(f"{video}/{index:06d}")
        videos.append(video)
        frame_idx.append(index)
        video_length.append(known_length)
    return FrameList(stems, videos, np.asarray(frame_idx, np.int64), np.asarray(video_length))


def read_det_image_set(list_file: str) -> FrameList:
    """Images of a DET list (``<path> [<n>]`` lines), each a one-frame video."""
    stems = []
    for number, line in _read_lines(list_file):
        fields = line.split()
        if len(fields) not in (1, 2):
            raise ValueError(f"{list_file}:{number}: expected 1 or 2 fields, got {line!r}")
        stems.append(fields[0])
    ones = np.ones(len(stems), np.int64)
    return FrameList(stems, stems, ones - 1, ones)


def scan_vid_split(annotation_dir: str, split: str) -> FrameList:
    """Every frame of every snippet (a folder holding ``.xml`` files) under ``split``."""
    top = os.path.join(annotation_dir, split)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"Annotation folder {top} does not exist")
    stems, videos, frame_idx, video_length = [], [], [], []
    for folder, subfolders, files in os.walk(top):
        subfolders.sort()
        names = sorted(f[:-4] for f in files if f.endswith(".xml"))
        video = os.path.relpath(folder, annotation_dir).replace(os.sep, "/")
        stems += [f"{video}/{name}" for name in names]
        videos += [video] * len(names)
        frame_idx += range(len(names))
        video_length += [len(names)] * len(names)
    if not stems:
        raise FileNotFoundError(f"No .xml annotation file under {top}")
    return FrameList(stems, videos, np.asarray(frame_idx, np.int64), np.asarray(video_length))


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
) -> List[dict]:
    """Parse (or read from the cache) the annotations of ``frames`` and build the records."""
    is_det = kind == "DET"
    annotation_dir = os.path.join(root, "Annotations", kind, "")
    annotation_files = [annotation_dir + stem + ".xml" for stem in frames.stems]
    index = class_index(class_names)
    columns = None
    if use_cache:
        salt = f"{_CACHE_VERSION}\0{sorted(index.items())}\0{is_det}"
        key = fingerprint_files(annotation_files, salt)
        identity = (_CACHE_VERSION, kind, os.path.abspath(list_file), *class_names)
        path = cache_file(cache_dir or default_cache_dir(), identity)
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
    video_ids = _prefixed(kind, frames.videos)
    records = records_from_columns(
        image_files, video_ids, frames.frame_idx, frames.video_length, columns, not is_det
    )
    _check_unique_frames(records, list_file)
    logger.info(f"Loaded {len(records)} frames of {len(set(video_ids))} videos from {list_file}")
    return records


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


def _read_lines(list_file: str):
    """Non-blank lines of a list file with their 1-based line numbers."""
    try:
        with open(list_file) as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"Image-set list {list_file} does not exist") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"Image-set list {list_file} is empty")
    return lines


def _int(text: str, list_file: str, number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{list_file}:{number}: {text!r} is not an integer") from None


def _count_annotations(folder: str, list_file: str) -> int:
    try:
        return sum(1 for name in os.listdir(folder) if name.endswith(".xml"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Annotation folder {folder} (a snippet listed in {list_file}) does not exist"
        ) from None
