"""Registration of video datasets with detectron2's catalogs."""

import functools
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .classes import VID_CLASSES
from .cocovid import cocovid_categories, load_cocovid_json
from .imagenet_vid import load_imagenet_det, load_imagenet_vid

__all__ = ["KINDS", "dataset_classes", "register_video_dataset"]

KINDS = ("imagenet_vid", "imagenet_det", "cocovid")


def register_video_dataset(
    name: str,
    *,
    kind: str = "imagenet_vid",
    root: Optional[str] = None,
    image_set: Optional[str] = None,
    split: Optional[str] = None,
    image_ext: str = ".JPEG",
    json_file: Optional[str] = None,
    image_root: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    cache_dir: Optional[str] = None,
    num_workers: Optional[int] = None,
    check_frames: bool = True,
    metadata: Optional[dict] = None,
) -> None:
    """
    Register a video dataset under ``name`` so that ``DATASETS.TRAIN/TEST`` can use it.

    Nothing is read now: the files are parsed when ``DatasetCatalog.get(name)`` is first
    called (ImageNet layouts are then cached on disk, see :mod:`.cache`). A datasets file
    (:mod:`.datasets_file`) registers the same datasets from the command line.

    Examples:
    ::
        register_video_dataset("my_val", kind="cocovid", json_file="val.json", image_root="img")
        register_video_dataset("my_vid", root="MyVID", split="train", class_names=["cat", "dog"])
        register_video_dataset("val", root="ILSVRC2015", image_set="ImageSets/VID/val.txt")

    Args:
        name: the dataset's name.
        kind: ``"imagenet_vid"`` (ILSVRC2015 VID layout), ``"imagenet_det"`` (DET layout, each
            image a one-frame video) or ``"cocovid"`` (CocoVID json).
        root: for the ImageNet kinds, the folder holding ``Data`` and ``Annotations``.
        image_set: for the ImageNet kinds, an image-set list relative to ``root``: FGFA's
            (``ImageSets/VID_val_frames.txt``...) or an official one (``ImageSets/VID/val.txt``,
            ``ImageSets/VID/train_<k>.txt``, ``ImageSets/DET/train_<k>.txt``), see
            :mod:`.image_sets`.
        split: for ``"imagenet_vid"`` without ``image_set``: every frame of
            ``Annotations/VID/<split>``.
        image_ext: for the ImageNet kinds, the extension of the frame files.
        json_file: for ``"cocovid"``, the json.
        image_root: for ``"cocovid"``, the folder image file names are relative to.
        class_names: the classes (contiguous ids in this order). ImageNet kinds default to the
            30 VID classes; CocoVID defaults to the json's categories.
        cache_dir: annotation cache of the ImageNet kinds (default
            :func:`~vod_d2.data.datasets.cache.default_cache_dir`).
        num_workers: processes parsing ImageNet XML files (default: all cores).
        check_frames: check at load time that every frame file exists.
        metadata: extra fields for ``MetadataCatalog.get(name)``.

    Sets ``MetadataCatalog.get(name)``: ``thing_classes`` (for CocoVID without
    ``class_names``: when loaded, or by :func:`dataset_classes`), for CocoVID
    ``thing_dataset_id_to_contiguous_id`` (when loaded), ``evaluator_type="vid"``,
    ``dataset_kind`` and, per kind, ``dataset_root`` with ``image_set`` or ``split``, or
    ``json_file`` with ``image_root``.

    Raises:
        ValueError: naming the dataset, for an unknown kind or a missing or contradictory
            argument. Unknown arguments are a TypeError, as for any Python function.
    """
    if kind not in KINDS:
        raise ValueError(f"Dataset {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if kind == "cocovid":
        _require(name, kind, json_file=json_file, image_root=image_root)
        _forbid(name, kind, root=root, image_set=image_set, split=split)
        if image_ext != ".JPEG":
            raise ValueError(f"Dataset {name!r}: image_ext is for the ImageNet kinds")
        # The dataset's own category ids go to the metadata, for the detections dumps.
        loader = functools.partial(
            load_cocovid_json,
            json_file,
            image_root,
            class_names=class_names,
            dataset_name=name,
            check_frames=check_frames,
        )
        location = dict(json_file=json_file, image_root=image_root)
    else:
        _require(name, kind, root=root)
        _forbid(name, kind, json_file=json_file, image_root=image_root)
        if kind == "imagenet_det" and split is not None:
            raise ValueError(f"Dataset {name!r}: kind 'imagenet_det' reads an image_set, no split")
        if kind == "imagenet_det" or split is None:
            _require(name, kind, image_set=image_set)
        elif image_set is not None:
            raise ValueError(f"Dataset {name!r}: give image_set or split, not both")
        load = load_imagenet_det if kind == "imagenet_det" else load_imagenet_vid
        class_names = tuple(class_names or VID_CLASSES)
        options = dict(
            class_names=class_names,
            image_ext=image_ext,
            cache_dir=cache_dir,
            num_workers=num_workers,
            check_frames=check_frames,
        )
        if split is not None:
            options["split"] = split
        loader = functools.partial(load, root, image_set, **options)
        location = {"dataset_root": root}
        if split is not None:
            location["split"] = split
        else:
            location["image_set"] = image_set
    metadata = dict(metadata or {})
    if class_names:
        metadata["thing_classes"] = list(class_names)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(evaluator_type="vid", dataset_kind=kind, **location, **metadata)


def dataset_classes(name: str) -> Optional[List[str]]:
    """
    The ``thing_classes`` of a registered dataset, or None if its metadata has none.

    For a CocoVID json, the classes and ``thing_dataset_id_to_contiguous_id`` are read from the
    json's categories when the metadata lacks them (without loading the dataset) and set in
    its metadata, so that a process that never loads the dataset (the demo) still draws and
    exports the dataset's class names and category ids.
    """
    metadata = MetadataCatalog.get(name)
    known = metadata.as_dict()
    if known.get("dataset_kind") == "cocovid" and "thing_dataset_id_to_contiguous_id" not in known:
        classes, id_map = cocovid_categories(metadata.json_file, known.get("thing_classes"))
        metadata.set(thing_classes=classes, thing_dataset_id_to_contiguous_id=id_map)
    return list(metadata.thing_classes) if "thing_classes" in metadata.as_dict() else None


def _require(name: str, kind: str, **arguments) -> None:
    for key, value in arguments.items():
        if value is None:
            raise ValueError(f"Dataset {name!r} of kind {kind!r} needs {key}=")


def _forbid(name: str, kind: str, **arguments) -> None:
    for key, value in arguments.items():
        if value is not None:
            raise ValueError(f"Dataset {name!r} of kind {kind!r} takes no {key}= (got {value!r})")
