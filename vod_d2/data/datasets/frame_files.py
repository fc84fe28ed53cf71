"""
Check, when a dataset is loaded, that every frame file it may read exists.

A missing frame would otherwise be found by a data-loader worker in the middle of training. The
check lists each frame folder once (a folder's listing is much cheaper than a stat per file on
network file systems) and can be cached: a folder's modification time changes whenever a file
in it is added, removed or renamed, so the cache key is every folder's modification time and
inode plus what the caller requires of them, and an unchanged tree is not listed again.
"""

import hashlib
import logging
import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .cache import load_cached, save_cached

__all__ = ["check_frame_files"]

logger = logging.getLogger(__name__)

# Files named in the error message.
_SHOWN = 3


def check_frame_files(
    folders: Sequence[str],
    names: Callable[[int], Iterable[str]],
    *,
    requirement: str,
    dataset: str,
    cache_path: Optional[str] = None,
) -> None:
    """
    Raise if a required frame file is missing.

    Args:
        folders: the frame folders.
        names: ``names(i)`` are the file names required in ``folders[i]``; called only when
            the folders are listed (not on a cache hit).
        requirement: what ``names`` depends on, as text (part of the cache key).
        dataset: the list or json the frames come from, named in the error.
        cache_path: where to cache a successful check (None: no cache).

    Raises:
        FileNotFoundError: giving the number of missing files and the first few paths.
    """
    key = _key(folders, requirement) if cache_path else None
    if cache_path and load_cached(cache_path, key) is not None:
        return
    missing, count = [], 0
    for i, folder in enumerate(folders):
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            present = set()
        absent = [name for name in names(i) if name not in present]
        count += len(absent)
        missing += [os.path.join(folder, name) for name in absent[: _SHOWN - len(missing)]]
    if count:
        raise FileNotFoundError(
            f"{count} frame file{'s' if count > 1 else ''} of {dataset} "
            f"{'are' if count > 1 else 'is'} missing: {', '.join(missing)}"
            f"{', ...' if count > len(missing) else ''}"
        )
    if cache_path:
        save_cached(cache_path, key, {})


def _key(folders: Sequence[str], requirement: str) -> str:
    stats = np.zeros((len(folders), 2), np.int64)
    for i, folder in enumerate(folders):
        try:
            st = os.stat(folder)
            stats[i] = st.st_mtime_ns, st.st_ino
        except FileNotFoundError:
            stats[i] = -1
    digest = hashlib.sha256(requirement.encode())
    digest.update("\0".join(folders).encode())
    digest.update(stats.tobytes())
    return digest.hexdigest()
