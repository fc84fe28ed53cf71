"""
Image-set lists of the ILSVRC2015 layout: the FGFA/MEGA lists and the official devkit lists.

Lists of FGFA, MEGA and mmtracking, in ``ImageSets/``; their paths start with the split
(``<n>`` is a running number, ignored):

* video lists ``<snippet> <n> <frame_idx> <num_frames>``, one line per frame:
  ``VID_train_15frames.txt`` (15 evenly spaced frames of each training snippet, see
  :func:`fgfa_train_frames`) and MEGA's ``VID_val_videos.txt``. ``frame_idx`` is 0-based (the
  file name). FGFA's own ``VID_val_videos.txt`` lists each video once, at frame 0: a list in
  which every snippet has exactly one line, at frame 0, is read as whole videos (logged);
* frame lists ``<snippet>/<frame:06d> [<n>]``: ``VID_val_frames.txt``; a snippet's length is
  its number of annotation files;
* DET lists ``<path> [<n>]``: ``DET_train_30classes.txt`` (an image listed twice, as FGFA's
  list does for images of two classes, is read once).

Official lists of the ILSVRC2015 download, in ``ImageSets/VID/`` and ``ImageSets/DET/``,
named ``<split>.txt`` or ``<split>_<k>.txt``; their paths are relative to that split:

* ``VID/val.txt`` (and ``test.txt``): frame lines ``<snippet>/<frame> <n>``;
* ``VID/train_<k>.txt``: snippet lines ``<snippet> 1|-1``, 1 for the snippets showing class k;
  such a list stands for every frame of its snippets marked 1;
* ``DET/train_<k>.txt``: image lines ``<path> 1|-1``, 1 for the images showing DET class k
  (the ILSVRC2014 devkit's numbering of the 200 DET classes); the lines marked 1 are read;
* ``DET/val.txt``: image lines ``<path> <n>``.

When a built-in name's FGFA list is missing, :func:`derived_image_set` derives it from the
official lists (:func:`derive_vid_train_15frames`, :func:`derive_vid_val_frames`,
:func:`derive_det_train_30classes`) once, next to the annotation cache.
"""

import hashlib
import logging
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .classes import VID_CLASSES, VID_WNIDS

__all__ = [
    "DET_CLASS_INDEX",
    "FrameList",
    "derive_det_train_30classes",
    "derive_vid_train_15frames",
    "derive_vid_val_frames",
    "derived_image_set",
    "fgfa_train_frames",
    "official_list",
    "read_det_image_set",
    "read_vid_image_set",
    "scan_vid_split",
]

logger = logging.getLogger(__name__)

# Index k of each VID class in the 200 ILSVRC DET classes (devkit ``map_det.txt``, 1-based),
# in VID class order: ImageSets/DET/train_<k>.txt lists that class's images.
DET_CLASS_INDEX = {
    "airplane": 2, "antelope": 4, "bear": 20, "bicycle": 24, "bird": 26, "bus": 33, "car": 37,
    "cattle": 39, "dog": 58, "domestic_cat": 59, "elephant": 64, "fox": 70, "giant_panda": 74,
    "hamster": 84, "horse": 92, "lion": 103, "lizard": 105, "monkey": 113, "motorcycle": 114,
    "rabbit": 141, "red_panda": 144, "sheep": 155, "snake": 159, "squirrel": 166, "tiger": 182,
    "train": 185, "turtle": 188, "watercraft": 197, "whale": 198, "zebra": 200,
}  # fmt: skip
# At most this many DET images per class in DET_train_30classes.txt, as in FGFA's list.
DET_IMAGES_PER_CLASS = 2000
# Official lists: ImageSets/<VID|DET>/<split>[_<k>].txt.
_OFFICIAL_NAME = re.compile(r"^(train|val|test)(_\d+)?\.txt$")


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


def fgfa_train_frames(length: int) -> List[int]:
    """
    The training frames FGFA's rule picks in a snippet of ``length`` frames: the centres
    ``floor((2k + 1) * length / 30)``, k = 0..14, of 15 equal parts; all frames of snippets
    shorter than 15 (repeats removed). FGFA's own ``VID_train_15frames.txt`` agrees on 3430 of
    its 3862 snippets; the others differ by one frame at one or two of the 15 positions.
    """
    return sorted({length * (2 * k + 1) // 30 for k in range(15)})


def official_list(list_file: str) -> Optional[Tuple[str, str, bool]]:
    """
    ``(kind, split, per_class)`` of an official list ``ImageSets/<VID|DET>/<split>[_<k>].txt``
    (``per_class``: a ``_<k>`` list with 1/-1 flags), else None.
    """
    folder, name = os.path.split(os.path.normpath(list_file))
    match = _OFFICIAL_NAME.match(name)
    kind = os.path.basename(folder)
    if match is None or kind not in ("VID", "DET"):
        return None
    if os.path.basename(os.path.dirname(folder)) != "ImageSets":
        return None
    return kind, match.group(1), match.group(2) is not None


def read_vid_image_set(list_file: str, annotation_dir: str) -> FrameList:
    """Frames of a VID list in any of the formats of the module docstring."""
    official = official_list(list_file)
    prefix = f"{official[1]}/" if official else ""
    if official and official[2]:
        return _read_vid_snippet_list(list_file, annotation_dir, prefix)
    lines = _read_lines(list_file)
    stems, videos, frame_idx, video_length = [], [], [], []
    known: Dict[str, tuple] = {}  # snippet -> (shared str, length)
    for number, line in lines:
        fields = line.split()
        if len(fields) == 4 and not official:
            snippet = fields[0]
            index, length = _int(fields[2], list_file, number), _int(fields[3], list_file, number)
        elif len(fields) in (1, 2):
            snippet, _, frame = fields[0].rpartition("/")
            snippet = prefix + snippet
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
    if len(lines[0][1].split()) == 4 and len(known) == len(stems) and not any(frame_idx):
        logger.info(
            f"{list_file} lists each of its {len(known)} snippets once, at frame 0 (FGFA's "
            "video list): reading every frame of each"
        )
        return _whole_videos([(video, length) for video, length in known.values()])
    return FrameList(stems, videos, np.asarray(frame_idx, np.int64), np.asarray(video_length))


def _read_vid_snippet_list(list_file: str, annotation_dir: str, prefix: str) -> FrameList:
    """Every frame of the snippets marked 1 in an official ``VID/train_<k>.txt``."""
    snippets = [prefix + path for path in _positives(list_file)]
    return _whole_videos(
        [(s, _count_annotations(os.path.join(annotation_dir, s), list_file)) for s in snippets]
    )


def _whole_videos(videos: List[Tuple[str, int]]) -> FrameList:
    stems, names, frame_idx, video_length = [], [], [], []
    for video, length in videos:
        stems += [f"{video}/{t:06d}" for t in range(length)]
        names += [video] * length
        frame_idx += range(length)
        video_length += [length] * length
    return FrameList(stems, names, np.asarray(frame_idx, np.int64), np.asarray(video_length))


def read_det_image_set(list_file: str) -> FrameList:
    """Images of a DET list (see the module docstring), each a one-frame video."""
    official = official_list(list_file)
    prefix = f"{official[1]}/" if official else ""
    if official and official[2]:
        paths = _positives(list_file)
    else:
        paths = []
        for number, line in _read_lines(list_file):
            fields = line.split()
            if len(fields) not in (1, 2):
                raise ValueError(f"{list_file}:{number}: expected 1 or 2 fields, got {line!r}")
            paths.append(fields[0])
    stems = list(dict.fromkeys(prefix + path for path in paths))
    if len(stems) < len(paths):
        logger.info(f"{list_file} lists {len(paths) - len(stems)} images twice; read once each")
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


def derive_vid_train_15frames(root: str, output: str) -> str:
    """
    Write FGFA's ``VID_train_15frames.txt`` for ``root``: :func:`fgfa_train_frames` of every
    training snippet marked 1 in an official ``ImageSets/VID/train_<k>.txt``, in name order.

    Returns:
        str: ``output``.
    """
    lists = _official_lists(root, "VID", "train_*.txt")
    snippets = sorted({path for list_file in lists for path in _flagged(list_file)})
    annotation_dir = os.path.join(root, "Annotations", "VID", "train")
    lines = []
    for snippet in snippets:
        length = _count_annotations(os.path.join(annotation_dir, snippet), lists[0])
        lines += [f"train/{snippet} 1 {t} {length}" for t in fgfa_train_frames(length)]
    _write_lines(output, lines)
    return output


def derive_vid_val_frames(root: str, output: str) -> str:
    """Write ``VID_val_frames.txt``: the lines of ``ImageSets/VID/val.txt`` under ``val/``."""
    (list_file,) = _official_lists(root, "VID", "val.txt")
    _write_lines(output, [f"val/{line.split()[0]} {n}" for n, line in _read_lines(list_file)])
    return output


def derive_det_train_30classes(root: str, output: str) -> str:
    """
    Write ``DET_train_30classes.txt``: for each VID class in order, the first
    :data:`DET_IMAGES_PER_CLASS` images marked 1 in its ``ImageSets/DET/train_<k>.txt``
    (:data:`DET_CLASS_INDEX`), an image of several classes listed once. FGFA's list follows the
    same per-class cap for most classes but is not reproducible from the official lists alone.

    Raises:
        ValueError: when the first image of a class's list has no object of that class (the
            lists are numbered differently from the devkit's).
    """
    folder = os.path.join(root, "ImageSets", "DET")
    images: Dict[str, None] = {}
    for name, wnid in zip(VID_CLASSES, VID_WNIDS):
        list_file = os.path.join(folder, f"train_{DET_CLASS_INDEX[name]}.txt")
        paths = _flagged(list_file)[:DET_IMAGES_PER_CLASS]
        if paths:
            _check_det_class(root, list_file, paths[0], name, wnid)
        images.update(dict.fromkeys(f"train/{path}" for path in paths))
    _write_lines(output, [f"{path} 1" for path in images])
    return output


_DERIVATIONS = {
    "VID_train_15frames.txt": (derive_vid_train_15frames, "ImageSets/VID/train_*.txt"),
    "VID_val_frames.txt": (derive_vid_val_frames, "ImageSets/VID/val.txt"),
    "DET_train_30classes.txt": (derive_det_train_30classes, "ImageSets/DET/train_<k>.txt"),
}


def derived_image_set(root: str, name: str, cache_dir: str) -> str:
    """
    Path of FGFA's list ``name`` derived from the official lists of ``root``, written under
    ``cache_dir`` the first time (and again when an official list is newer).

    Args:
        root: the ILSVRC2015 folder.
        name: ``VID_train_15frames.txt``, ``VID_val_frames.txt`` or ``DET_train_30classes.txt``.
        cache_dir: the annotation cache folder.

    Raises:
        FileNotFoundError: naming both the FGFA list and the official lists, when there are
            no official lists to derive it from.
    """
    derive, sources = _DERIVATIONS[name]
    kind = "DET" if name.startswith("DET") else "VID"
    pattern = "train_*.txt" if "train" in name else "val.txt"
    try:
        official = _official_lists(root, kind, pattern)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{os.path.join(root, 'ImageSets', name)} does not exist, and neither do the "
            f"official lists ({os.path.join(root, sources)}) to derive it from"
        ) from None
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
    output = os.path.join(cache_dir, "image_sets", digest, name)
    if os.path.exists(output) and os.path.getmtime(output) >= max(map(os.path.getmtime, official)):
        return output
    os.makedirs(os.path.dirname(output), exist_ok=True)
    derive(root, output)
    logger.info(
        f"{os.path.join(root, 'ImageSets', name)} does not exist: derived it from "
        f"{os.path.join(root, sources)} ({_count_lines(output)} lines) into {output}"
    )
    return output


def _official_lists(root: str, kind: str, pattern: str) -> List[str]:
    folder = os.path.join(root, "ImageSets", kind)
    regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
    found = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    lists = [os.path.join(folder, f) for f in found if regex.match(f)]
    if not lists:
        raise FileNotFoundError(f"No official list {os.path.join(folder, pattern)}")
    return lists


def _flagged(list_file: str) -> List[str]:
    """The paths marked 1 in an official per-class list (``<path> 1|-1`` lines)."""
    paths = []
    for number, line in _read_lines(list_file):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("1", "-1"):
            raise ValueError(f"{list_file}:{number}: expected '<path> 1|-1', got {line!r}")
        if fields[1] == "1":
            paths.append(fields[0])
    return paths


def _positives(list_file: str) -> List[str]:
    """:func:`_flagged`, which must not be empty: the list stands for its positives."""
    paths = _flagged(list_file)
    if not paths:
        raise ValueError(f"{list_file} marks no line with 1")
    return paths


def _check_det_class(root: str, list_file: str, path: str, name: str, wnid: str) -> None:
    xml_file = os.path.join(root, "Annotations", "DET", "train", path + ".xml")
    try:
        names = {(n.text or "").strip() for n in ET.parse(xml_file).getroot().iter("name")}
    except (OSError, ET.ParseError) as e:
        raise ValueError(f"Cannot read {xml_file}, the first image of {list_file}: {e}") from None
    if wnid not in names:
        raise ValueError(
            f"{list_file} should list the DET images of {name} ({wnid}), but its first image "
            f"{xml_file} has none; are the DET lists numbered as in the ILSVRC2014 devkit?"
        )


def _write_lines(path: str, lines: List[str]) -> None:
    """Write atomically: another process never reads a half-written list."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


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
