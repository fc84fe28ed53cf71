"""
Checks of a config against its datasets, run before training or evaluation starts, so that a
wrong name or class count fails in seconds with one line, not after hours of training.
"""

import difflib
import logging
from typing import Iterable, Tuple

from detectron2.data import DatasetCatalog

from .datasets import dataset_classes

__all__ = [
    "NUM_CLASSES_KEYS",
    "check_dataset_contents",
    "check_datasets",
    "model_num_classes",
]

logger = logging.getLogger(__name__)

# Meta-architectures whose class count is not MODEL.ROI_HEADS.NUM_CLASSES: name -> config key.
# A meta-architecture with a key of its own (a query-based detector) adds its entry here.
NUM_CLASSES_KEYS = {"RetinaNet": "MODEL.RETINANET.NUM_CLASSES"}


def model_num_classes(cfg) -> Tuple[str, int]:
    """
    The config key holding the model's number of classes, and its value:
    ``MODEL.ROI_HEADS.NUM_CLASSES`` unless :data:`NUM_CLASSES_KEYS` names another key for
    ``cfg.MODEL.META_ARCHITECTURE``.
    """
    key = NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, "MODEL.ROI_HEADS.NUM_CLASSES")
    node = cfg
    for part in key.split("."):
        node = node[part]
    return key, int(node)


def check_datasets(cfg, *, train: bool = True) -> None:
    """
    Check that every dataset of ``DATASETS.TEST`` (and, if ``train``, ``DATASETS.TRAIN``) is
    registered and has as many classes as the model.

    Args:
        cfg: the config, its datasets registered (see ``DATASETS.FILE``).
        train: also check ``DATASETS.TRAIN``.

    Raises:
        ValueError: one line naming the key and the dataset: an unknown name (with the closest
            registered names), an empty ``DATASETS.TRAIN``, or a class count that differs.
    """
    names = _names(cfg, train)
    for key, name in names:
        _check_registered(cfg, key, name)
    _check_num_classes(cfg, dict.fromkeys(name for _, name in names))


def check_dataset_contents(cfg, *, train: bool = True) -> None:
    """
    Load every dataset of ``DATASETS.TEST`` (and, if ``train``, ``DATASETS.TRAIN``) once and
    drop it, so that bad data (a missing or corrupt frame, a bad box) fails now, in one line,
    rather than in every process of a launch. The ImageNet layouts cache what they parsed and
    checked, so the processes that then train read them from the cache.

    Args:
        cfg: the config, its datasets checked by :func:`check_datasets`.
        train: also load ``DATASETS.TRAIN``.

    Raises:
        ValueError, FileNotFoundError: the loader's one-line error naming the file, video or
            annotation at fault, or one naming the key and a dataset that has no frames.
    """
    keys = {}
    for key, name in _names(cfg, train):
        keys.setdefault(name, key)
    for name, key in keys.items():
        if not DatasetCatalog.get(name):
            raise ValueError(f"{key} names {name!r}, which has no frames")


def _names(cfg, train: bool):
    """(key, dataset name) of every dataset the config reads, training sets first."""
    names = [("DATASETS.TEST", name) for name in cfg.DATASETS.TEST]
    if train:
        if not cfg.DATASETS.TRAIN:
            raise ValueError("DATASETS.TRAIN is empty: name the datasets to train on")
        names = [("DATASETS.TRAIN", name) for name in cfg.DATASETS.TRAIN] + names
    return names


def _check_registered(cfg, key: str, name: str) -> None:
    registered = DatasetCatalog.list()
    if name in registered:
        return
    close = difflib.get_close_matches(name, registered, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    where = (
        f"DATASETS.FILE ({cfg.DATASETS.FILE}) does not define it"
        if cfg.DATASETS.FILE
        else "declare it in a datasets file named by DATASETS.FILE"
    )
    raise ValueError(f"{key} names {name!r}, which is not a registered dataset{hint}; {where}")


def _check_num_classes(cfg, names: Iterable[str]) -> None:
    key, num_classes = model_num_classes(cfg)
    for name in names:
        classes = dataset_classes(name)
        if classes is None:
            logger.warning(
                f"Dataset {name!r} has no thing_classes in its metadata: {key} ({num_classes}) "
                "cannot be checked against it"
            )
        elif len(classes) != num_classes:
            shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
            raise ValueError(
                f"{key} is {num_classes} but dataset {name!r} has {len(classes)} classes "
                f"({shown}): set {key} {len(classes)}"
            )
