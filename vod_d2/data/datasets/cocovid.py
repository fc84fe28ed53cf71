"""
CocoVID json (the video format of mmtracking and other VID toolkits) as frame records.

The json holds COCO's ``images``, ``annotations`` and ``categories`` plus ``videos``; an image
has ``video_id`` and ``frame_id`` (0-based), an annotation ``instance_id`` (its track) and
optionally ``occluded``/``generated``. The evaluation's conditions
(:mod:`vod_d2.evaluation.conditions`) come from an image's optional ``conditions`` (a list of
tags such as ``"motion_blur"``) and an annotation's ``occluded``, or else its ``visibility``
(the visible fraction, as MOT's ground truth has it: occluded below 0.5). Boxes are COCO
``[x, y, w, h]``, converted to ``[x, y, x + w, y + h]`` XYXY_ABS. A box with a negative width
or height, or wholly outside its image, is an error naming the file and the annotation id (as
the XML loader rejects inverted boxes); a box partly outside its image is clipped to it.
"""

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from .frame_files import check_frame_files

__all__ = ["cocovid_categories", "load_cocovid_json"]

logger = logging.getLogger(__name__)

# An annotation with a ``visibility`` below this (and no ``occluded``) is occluded.
_OCCLUDED_BELOW_VISIBLE = 0.5
_REQUIRED = {
    "videos": ("id",),
    "images": ("id", "file_name", "height", "width", "video_id", "frame_id"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def load_cocovid_json(
    json_file: str,
    image_root: str,
    *,
    class_names: Optional[Sequence[str]] = None,
    dataset_name: Optional[str] = None,
    vid_train_frames_only: bool = False,
    check_frames: bool = True,
) -> List[dict]:
    """
    Frame records of a CocoVID json.

    Args:
        json_file: the json.
        image_root: folder the images' ``file_name`` are relative to.
        class_names: the dataset's classes, matched with the categories' ``name``; ``None``
            takes the json's categories in id order.
        dataset_name: if given, its metadata receives ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id``, as detectron2's ``load_coco_json`` does.
        vid_train_frames_only: keep only images flagged ``is_vid_train_frame`` (the 15-frame
            training subset in mmtracking's ImageNet VID json). The other frames can still be
            support frames when their names are numbered by frame index.
        check_frames: check that every image file of the json exists.

    Returns:
        list[dict]: frame records ordered by ``(video_id, frame_idx)``; ``video_id`` is the
        video's ``name`` (its id when it has none), ``image_id`` the image's id and
        ``video_length`` one more than the video's largest ``frame_id``.

    Raises:
        ValueError: naming the file (and the entry), for malformed json, a missing key, an
            unknown video, image or category, a category outside ``class_names``, or a box of
            negative size or outside its image.
        FileNotFoundError: naming the json, or the first missing image files.
    """
    data = _read_json(json_file)
    class_names, id_map = _categories(data, json_file, class_names)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=list(class_names), thing_dataset_id_to_contiguous_id=id_map
        )

    video_names = {}
    for video in data["videos"]:
        video_names[video["id"]] = str(video.get("name", video["id"]))
    if len(set(video_names.values())) != len(video_names):
        raise ValueError(f"{json_file}: two videos have the same name")

    records_by_id: Dict[int, dict] = {}
    lengths: Dict[str, int] = {}
    seen_frames = set()
    for image in data["images"]:
        video_id = video_names.get(image["video_id"])
        if video_id is None:
            raise ValueError(
                f"{json_file}: image {image['id']} is in video {image['video_id']}, "
                "which is not in 'videos'"
            )
        frame = (video_id, image["frame_id"])
        if image["id"] in records_by_id or frame in seen_frames or image["frame_id"] < 0:
            raise ValueError(
                f"{json_file}: image {image['id']} repeats an image id or is a repeated or "
                f"negative frame_id {image['frame_id']} of video {video_id!r}"
            )
        seen_frames.add(frame)
        lengths[video_id] = max(lengths.get(video_id, 0), image["frame_id"] + 1)
        if vid_train_frames_only and not image.get("is_vid_train_frame", False):
            continue
        records_by_id[image["id"]] = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image["id"],
            "video_id": video_id,
            "frame_idx": image["frame_id"],
            "annotations": [],
        }
        conditions = image.get("conditions", [])
        if not (isinstance(conditions, list) and all(isinstance(c, str) for c in conditions)):
            raise ValueError(
                f"{json_file}: image {image['id']} has conditions {conditions!r}, not a list of "
                "strings"
            )
        if conditions:
            records_by_id[image["id"]]["conditions"] = tuple(conditions)
    image_ids = {image["id"] for image in data["images"]}
    for ann in data["annotations"]:
        record = records_by_id.get(ann["image_id"])
        if record is None:
            if ann["image_id"] in image_ids:
                continue  # an image left out by vid_train_frames_only
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} is on image {ann['image_id']}, "
                "which is not in 'images'"
            )
        if ann["category_id"] not in id_map:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
                "which is not in 'categories'"
            )
        if len(ann["bbox"]) != 4:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} has bbox {ann['bbox']}, not [x, y, w, h]"
            )
        obj = {
            "bbox": _checked_box(ann, record, json_file),
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": id_map[ann["category_id"]],
            "track_id": int(ann.get("instance_id", -1)),
            "occluded": bool(ann.get("occluded", False)),
            "generated": bool(ann.get("generated", False)),
        }
        if "visibility" in ann:
            visible = ann["visibility"]
            if not (isinstance(visible, (int, float)) and 0 <= visible <= 1):
                raise ValueError(
                    f"{json_file}: annotation {ann.get('id')} has visibility {visible!r}, not a "
                    "number in [0, 1]"
                )
            obj["visible"] = float(visible)
            obj["occluded"] = bool(ann.get("occluded", visible < _OCCLUDED_BELOW_VISIBLE))
        if ann.get("iscrowd", 0):
            obj["iscrowd"] = 1
        record["annotations"].append(obj)

    records = sorted(records_by_id.values(), key=lambda r: (r["video_id"], r["frame_idx"]))
    for record in records:
        record["video_length"] = lengths[record["video_id"]]
    if check_frames:
        _check_frames(data["images"], image_root, json_file)
    logger.info(f"Loaded {len(records)} frames of {len(lengths)} videos from {json_file}")
    return records


def cocovid_categories(
    json_file: str, class_names: Optional[Sequence[str]] = None
) -> Tuple[List[str], Dict[int, int]]:
    """
    The classes of a CocoVID json, without building its records.

    Args:
        json_file: the json.
        class_names: as in :func:`load_cocovid_json`.

    Returns:
        tuple: the class names (``class_names``, else the categories' names in id order) and
        ``{category id: contiguous index}``.
    """
    return _categories(_read_json(json_file), json_file, class_names)


def _categories(data: dict, json_file: str, class_names: Optional[Sequence[str]]):
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if class_names is None:
        class_names = [c["name"] for c in categories]
    name_index = {name: i for i, name in enumerate(class_names)}
    id_map: Dict[int, int] = {}
    for category in categories:
        if category["name"] not in name_index:
            raise ValueError(
                f"{json_file}: category {category['name']!r} (id {category['id']}) is not one "
                f"of the dataset's classes {list(class_names)}"
            )
        id_map[category["id"]] = name_index[category["name"]]
    return list(class_names), id_map


def _checked_box(ann: dict, record: dict, json_file: str) -> List[float]:
    """``[x0, y0, x1, y1]`` of an annotation's COCO box, clipped to its image."""
    x, y, w, h = ann["bbox"]
    width, height = record["width"], record["height"]
    if w < 0 or h < 0:
        raise ValueError(
            f"{json_file}: annotation {ann.get('id')} (image {record['image_id']}) has bbox "
            f"{ann['bbox']} with a negative width or height; COCO boxes are [x, y, w, h]"
        )
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(
            f"{json_file}: annotation {ann.get('id')} has bbox {ann['bbox']} (x, y, w, h), "
            f"wholly outside its {width}x{height} image {record['image_id']}"
        )
    return [max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)]


def _check_frames(images: List[dict], image_root: str, json_file: str) -> None:
    groups: Dict[str, List[str]] = {}
    for image in images:
        folder, name = os.path.split(os.path.join(image_root, image["file_name"]))
        groups.setdefault(folder, []).append(name)
    folders, required = list(groups), list(groups.values())
    check_frame_files(folders, required.__getitem__, requirement="", dataset=json_file)


def _read_json(json_file: str) -> dict:
    """The json's content, checked for the lists and keys the loader reads."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Malformed json file {json_file}: {e}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"CocoVID json {json_file} does not exist") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a json object, got {type(data).__name__}")
    for section, keys in _REQUIRED.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise ValueError(f"{json_file} has no {section!r} list")
        for entry in entries:
            missing = [k for k in keys if k not in entry]
            if missing:
                raise ValueError(
                    f"{json_file}: an entry of {section!r} has no {missing[0]!r}: "
                    f"{str(entry)[:200]}"
                )
    return data
