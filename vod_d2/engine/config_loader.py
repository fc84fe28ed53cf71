"""
A vod_d2 config from a file and ``KEY VALUE`` overrides, as train_net.py, the demo and the tools
build it, with a user's mistakes reported in one line instead of yacs' tracebacks: a config
file that does not exist, a key that does not exist (with the closest existing keys, as the
datasets file suggests dataset names), an override without a value.
"""

import difflib
import os
import re
from typing import List, Sequence

from detectron2.config import CfgNode, get_cfg

from ..config import add_vod_config
from ..data import register_datasets_from_config

__all__ = ["load_config"]

# yacs' message for an unknown key of a merged file.
_UNKNOWN_FILE_KEY = re.compile(r"Non-existent config key: (\S+)")


def load_config(
    config_file: str, opts: Sequence[str] = (), *, register_datasets: bool = False
) -> CfgNode:
    """
    detectron2's defaults, the vod_d2 keys, ``config_file`` and ``opts`` (not frozen).

    Args:
        config_file: a config yaml.
        opts: ``KEY VALUE`` pairs overriding it, e.g. ``["MODEL.WEIGHTS", "model.pth"]``.
        register_datasets: also register the datasets of ``DATASETS.FILE``, as train_net.py
            does, for a script that reads ``DATASETS.TRAIN/TEST`` in this process.

    Raises:
        FileNotFoundError: the file does not exist (with the closest names in its folder).
        ValueError: one line naming a key that does not exist in the file or ``opts`` (with
            the closest keys), or an odd number of ``opts``; yacs' own one-line errors (a value
            of the wrong type) pass through; the datasets file's own one-line errors.
    """
    cfg = get_cfg()
    add_vod_config(cfg)
    if not os.path.isfile(config_file):
        folder = os.path.dirname(config_file) or "."
        names = os.listdir(folder) if os.path.isdir(folder) else []
        close = [os.path.join(os.path.dirname(config_file), n) for n in _close(config_file, names)]
        raise FileNotFoundError(f"Config file {config_file!r} does not exist{_hint(close)}")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        unknown = _UNKNOWN_FILE_KEY.search(str(e.args[0]) if e.args else "")
        if unknown is None:
            raise
        key = unknown.group(1)
        raise ValueError(
            f"{config_file}: {key} is not a config key{_hint(_close(key, _keys(cfg)))}"
        ) from None
    _check_opts(cfg, opts)
    cfg.merge_from_list(list(opts))
    if register_datasets:
        register_datasets_from_config(cfg)
    return cfg


def _check_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ValueError(
            f"config options come in KEY VALUE pairs, but {opts[-1]!r} has no value "
            f"({len(opts)} options given)"
        )
    for key in opts[0::2]:
        if cfg.key_is_deprecated(key) or cfg.key_is_renamed(key):
            continue  # yacs says what became of it
        node = cfg
        for part in key.split("."):
            if isinstance(node, CfgNode) and part not in node and not node.is_new_allowed():
                raise ValueError(f"{key} is not a config key{_hint(_close(key, _keys(cfg)))}")
            if not isinstance(node, CfgNode) or part not in node:
                break
            node = node[part]


def _keys(node: CfgNode, prefix: str = "") -> List[str]:
    """Every full key of ``node`` (``MODEL.ROI_HEADS.NUM_CLASSES``...)."""
    keys = []
    for name, value in node.items():
        full = prefix + name
        keys += _keys(value, full + ".") if isinstance(value, CfgNode) else [full]
    return keys


def _close(name: str, candidates: Sequence[str]) -> List[str]:
    """The closest candidates, ignoring case (``model.weights`` finds ``MODEL.WEIGHTS``)."""
    by_upper = {c.upper(): c for c in candidates}
    return [by_upper[c] for c in difflib.get_close_matches(name.upper(), list(by_upper), n=3)]


def _hint(close: Sequence[str]) -> str:
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
