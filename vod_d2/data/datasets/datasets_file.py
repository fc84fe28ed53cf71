"""
Datasets declared in a file, so that a config (``DATASETS.FILE``) registers them in every
process that reads it: ``train_net.py``, ``demo/demo.py`` and each worker ``--num-gpus``
spawns call :func:`register_datasets_from_config` in their set-up.

A datasets file is YAML (JSON is YAML too): each dataset's name, mapped to the arguments of
:func:`~vod_d2.data.datasets.register_video_dataset`::

    my_videos_train:          # CocoVID json
      kind: cocovid
      json_file: annotations/train.json
      image_root: frames
    my_vid_val:               # ImageNet VID layout: Data/VID/val/<video>/<frame>.JPEG + .xml
      kind: imagenet_vid
      root: MyVID
      split: val
      class_names: [cat, dog, fox]
    my_det_train:             # ImageNet DET layout, each image a one-frame video
      kind: imagenet_det
      root: MyVID
      image_set: ImageSets/DET_train.txt
      class_names: [cat, dog, fox]

Relative paths (``root``, ``json_file``, ``image_root``, ``cache_dir``) are relative to the
folder of the datasets file, whatever the working directory; ``image_set`` is relative to
``root``, as in :func:`register_video_dataset`.
"""

import difflib
import inspect
import os
from typing import Dict, List, Tuple

import yaml
from detectron2.data import DatasetCatalog

from .register import register_video_dataset

__all__ = ["register_datasets_file", "register_datasets_from_config"]

_PATH_KEYS = ("root", "json_file", "image_root", "cache_dir")
_ARGUMENTS = tuple(inspect.signature(register_video_dataset).parameters)[1:]
# Datasets this process registered from files: name -> (file, arguments).
_REGISTERED: Dict[str, Tuple[str, dict]] = {}


def register_datasets_from_config(cfg) -> List[str]:
    """
    Register the datasets of the file ``cfg.DATASETS.FILE`` names (nothing if it is empty).

    Returns:
        list[str]: the names the file defines.
    """
    if not cfg.DATASETS.FILE:
        return []
    if not os.path.isfile(cfg.DATASETS.FILE):
        raise FileNotFoundError(f"DATASETS.FILE {cfg.DATASETS.FILE} does not exist")
    return register_datasets_file(cfg.DATASETS.FILE)


def register_datasets_file(path: str) -> List[str]:
    """
    Register every dataset a datasets file defines (see the module docstring). Reading the
    same file again registers nothing new, so that every set-up may call it.

    Returns:
        list[str]: the names the file defines.

    Raises:
        ValueError: naming the file and the dataset, for a malformed file, an unknown key or a
            name already registered with another definition (a built-in name, say).
    """
    with open(path) as f:
        try:
            content = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"Malformed datasets file {path}: {e}") from None
    if not isinstance(content, dict) or not content:
        raise ValueError(
            f"Datasets file {path} must map dataset names to their arguments (kind, root...)"
        )
    base = os.path.dirname(os.path.abspath(path))
    for name, arguments in content.items():
        arguments = _resolved(path, base, name, arguments)
        definition = (os.path.abspath(path), arguments)
        if name in DatasetCatalog.list():
            if _REGISTERED.get(name) == definition:
                continue
            where = f"by {_REGISTERED[name][0]}" if name in _REGISTERED else "built-in or in code"
            raise ValueError(
                f"{path}: dataset {name!r} is already registered ({where}); choose another name"
            )
        try:
            register_video_dataset(name, **arguments)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        _REGISTERED[name] = definition
    return list(content)


def _resolved(path: str, base: str, name, arguments) -> dict:
    """The arguments of one dataset, checked, with relative paths made absolute."""
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise ValueError(
            f"{path}: {name!r} must map a dataset name to its arguments (kind, root...)"
        )
    for key in arguments:
        if key not in _ARGUMENTS:
            close = difflib.get_close_matches(str(key), _ARGUMENTS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"{path}: dataset {name!r} has an unknown key {key!r}; {hint}the keys are "
                f"{', '.join(_ARGUMENTS)}"
            )
    resolved = dict(arguments)
    for key in _PATH_KEYS:
        if isinstance(resolved.get(key), str):
            resolved[key] = os.path.join(base, os.path.expanduser(resolved[key]))
    return resolved
