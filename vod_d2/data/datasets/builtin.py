"""
Built-in video datasets, registered lazily under fixed names.

They live under ``$DETECTRON2_DATASETS`` (default ``datasets``), read when a dataset is
loaded (not at import):

* ``imagenet_vid_train_15frames``, ``imagenet_vid_val``, ``imagenet_det_train_30classes``:
  ``ILSVRC2015/`` with the ``ImageSets/VID_train_15frames.txt``, ``VID_val_videos.txt`` (or,
  when absent, ``VID_val_frames.txt``; both stand for all 176,126 val frames) and
  ``DET_train_30classes.txt`` lists FGFA, MEGA and mmtracking share. Where they are missing,
  they are derived once from the official lists of the ILSVRC2015 download
  (``ImageSets/VID/train_<k>.txt``, ``VID/val.txt``, ``DET/train_<k>.txt``) into the
  annotation cache folder (see :func:`~vod_d2.data.datasets.image_sets.derived_image_set`).
* ``synthetic_vid_train``, ``synthetic_vid_val``, ``synthetic_det_train``: the same layout
  under ``vod_d2_synthetic/``, generated on first use (see :mod:`vod_d2.data.synthetic`): the
  main command's small set (30 train and 8 val videos).
* ``synthetic_bench_vid_train``, ``synthetic_bench_vid_val``, ``synthetic_bench_det_train``:
  the accuracy benchmark's larger and harder set under ``vod_d2_synthetic_bench/``
  (:data:`vod_d2.data.synthetic.BENCHMARK_OPTIONS`), generated on first use.
"""

import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cache import default_cache_dir
from .classes import SYNTHETIC_CLASSES, VID_CLASSES
from .image_sets import derived_image_set
from .imagenet_vid import load_imagenet_det, load_imagenet_vid

__all__ = ["BUILTIN_DATASETS", "datasets_root", "register_all_builtin"]

# name -> (folder under $DETECTRON2_DATASETS, loader kind, image-set lists: the first existing
# one is read; for ILSVRC2015, when none exists, the last one is derived from the official lists)
BUILTIN_DATASETS = {
    "imagenet_vid_train_15frames": ("ILSVRC2015", "imagenet_vid", ("VID_train_15frames.txt",)),
    "imagenet_vid_val": (
        "ILSVRC2015",
        "imagenet_vid",
        ("VID_val_videos.txt", "VID_val_frames.txt"),
    ),
    "imagenet_det_train_30classes": ("ILSVRC2015", "imagenet_det", ("DET_train_30classes.txt",)),
    "synthetic_vid_train": ("vod_d2_synthetic", "imagenet_vid", ("VID_train_15frames.txt",)),
    "synthetic_vid_val": ("vod_d2_synthetic", "imagenet_vid", ("VID_val_videos.txt",)),
    "synthetic_det_train": ("vod_d2_synthetic", "imagenet_det", ("DET_train_30classes.txt",)),
    "synthetic_bench_vid_train": (
        "vod_d2_synthetic_bench",
        "imagenet_vid",
        ("VID_train_15frames.txt",),
    ),
    "synthetic_bench_vid_val": ("vod_d2_synthetic_bench", "imagenet_vid", ("VID_val_videos.txt",)),
    "synthetic_bench_det_train": (
        "vod_d2_synthetic_bench",
        "imagenet_det",
        ("DET_train_30classes.txt",),
    ),
}
# The folders of generated synthetic trees.
_SYNTHETIC_FOLDERS = ("vod_d2_synthetic", "vod_d2_synthetic_bench")


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, default ``datasets``, read at each call."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _load_builtin(name: str):
    folder, kind, image_sets = BUILTIN_DATASETS[name]
    root = os.path.join(datasets_root(), folder)
    options = {}
    if folder in _SYNTHETIC_FOLDERS:
        # Imported on use: nothing imported by ``import vod_d2`` may import the generator, or
        # ``python -m vod_d2.data.synthetic`` warns that runpy finds it already imported.
        from ..synthetic import BENCHMARK_OPTIONS, ensure_synthetic_dataset

        ensure_synthetic_dataset(root, **(BENCHMARK_OPTIONS if folder.endswith("bench") else {}))
        # The cache goes with the generated tree (and is removed with it).
        options = dict(class_names=SYNTHETIC_CLASSES, cache_dir=os.path.join(root, ".cache"))
    lists = [os.path.join("ImageSets", image_set) for image_set in image_sets]
    image_set = next((s for s in lists if os.path.exists(os.path.join(root, s))), None)
    if image_set is None:
        if folder != "ILSVRC2015":
            raise FileNotFoundError(f"Image-set list {os.path.join(root, lists[0])} does not exist")
        image_set = derived_image_set(root, image_sets[-1], default_cache_dir())
    load = load_imagenet_det if kind == "imagenet_det" else load_imagenet_vid
    return load(root, image_set, **options)


def register_all_builtin() -> None:
    """Register every name of :data:`BUILTIN_DATASETS` (reads nothing)."""
    for name, (folder, kind, _) in BUILTIN_DATASETS.items():
        DatasetCatalog.register(name, functools.partial(_load_builtin, name))
        classes = SYNTHETIC_CLASSES if folder in _SYNTHETIC_FOLDERS else VID_CLASSES
        MetadataCatalog.get(name).set(
            thing_classes=list(classes), evaluator_type="vid", dataset_kind=kind
        )
