"""Registration of video datasets with detectron2's catalogs."""

import functools
from typing import Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cocovid import load_cocovid_json
from .imagenet_vid import VID_CLASSES, load_imagenet_det, load_imagenet_vid

__all__ = ["register_video_dataset"]

_KINDS = ("imagenet_vid", "imagenet_det", "cocovid")


def register_video_dataset(
    name: str,
    *,
    kind: str = "imagenet_vid",
    root: Optional[str] = None,
    image_set: Optional[str] = None,
    split: Optional[str] = None,
    json_file: Optional[str] = None,
    image_root: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    cache_dir: Optional[str] = None,
    num_workers: Optional[int] = None,
    **metadata,
) -> None:
    """
    Register a video dataset under ``name`` so that ``DATASETS.TRAIN/TEST`` can use it.

    Nothing is read now: the files are parsed when ``DatasetCatalog.get(name)`` is first
    called (ImageNet layouts are then cached on disk, see :mod:`.cache`).

    Examples:
    ::
        register_video_dataset("my_val", kind="cocovid", json_file="val.json", image_root="img")
        register_video_dataset("my_vid", root="MyVID", split="train", class_names=["cat", "dog"])
        register_video_dataset("val", root="ILSVRC2015", image_set="ImageSets/VID_val_videos.txt")

    Args:
        name: the dataset's name.
        kind: ``"imagenet_vid"`` (ILSVRC2015 VID layout), ``"imagenet_det"`` (DET layout, each
            image a one-frame video) or ``"cocovid"`` (CocoVID json).
        root: for the ImageNet kinds, the folder holding ``Data`` and ``Annotations``.
        image_set: for the ImageNet kinds, an image-set list relative to ``root``.
        split: for ``"imagenet_vid"`` without ``image_set``: every frame of
            ``Annotations/VID/<split>``.
        json_file: for ``"cocovid"``, the json.
        image_root: for ``"cocovid"``, the folder image file names are relative to.
        class_names: the classes (contiguous ids in this order). ImageNet kinds default to the
            30 VID classes; CocoVID defaults to the json's categories.
        cache_dir: annotation cache of the ImageNet kinds (default
            :func:`~vod_d2.data.datasets.cache.default_cache_dir`).
        num_workers: processes parsing ImageNet XML files (default: all cores).
        metadata: extra fields for ``MetadataCatalog.get(name)``.

    Sets ``MetadataCatalog.get(name)``: ``thing_classes`` (for CocoVID without
    ``class_names``: when loaded), ``evaluator_type="vid"``, ``dataset_kind`` and, per kind,
    ``dataset_root`` with ``image_set`` or ``split``, or ``json_file`` with ``image_root``.
    """
    if kind not in _KINDS:
        raise ValueError(f"Dataset {name!r}: kind must be one of {_KINDS}, got {kind!r}")
    if kind == "cocovid":
        _require(name, kind, json_file=json_file, image_root=image_root)
        loader = functools.partial(
            load_cocovid_json,
            json_file,
            image_root,
            class_names=class_names,
            dataset_name=None if class_names else name,
        )
        location = dict(json_file=json_file, image_root=image_root)
    else:
        _require(name, kind, root=root)
        if kind == "imagenet_det" and split is not None:
            raise ValueError(f"Dataset {name!r}: kind 'imagenet_det' reads an image_set, no split")
        if kind == "imagenet_det" or split is None:
            _require(name, kind, image_set=image_set)
        elif image_set is not None:
            raise ValueError(f"Dataset {name!r}: give image_set or split, not both")
        load = load_imagenet_det if kind == "imagenet_det" else load_imagenet_vid
        class_names = tuple(class_names or VID_CLASSES)
        options = dict(class_names=class_names, cache_dir=cache_dir, num_workers=num_workers)
        if split is not None:
            options["split"] = split
        loader = functools.partial(load, root, image_set, **options)
        location = {"dataset_root": root}
        if split is not None:
            location["split"] = split
        else:
            location["image_set"] = image_set
    DatasetCatalog.register(name, loader)
    if class_names:
        metadata["thing_classes"] = list(class_names)
    MetadataCatalog.get(name).set(evaluator_type="vid", dataset_kind=kind, **location, **metadata)


def _require(name: str, kind: str, **arguments) -> None:
    for key, value in arguments.items():
        if value is None:
            raise ValueError(f"Dataset {name!r} of kind {kind!r} needs {key}=")
