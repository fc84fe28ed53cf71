"""
On-disk cache of parsed annotations, keyed on the annotation files themselves.

A cache entry is one ``.npz`` of numpy columns plus the key it was computed for. The key
hashes the path, size, modification time and inode of every annotation file (plus whatever
else the parse depends on), so editing, replacing, adding or removing a file changes it and
the next load parses again. Entries are written to a temporary file and renamed, so a crash
never leaves a truncated entry; an unreadable entry is parsed again.
"""

import hashlib
import logging
import os
import tempfile
import zipfile
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "cache_file",
    "default_cache_dir",
    "fingerprint_files",
    "load_cached",
    "save_cached",
]

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """``$VOD_D2_CACHE_DIR`` if set, else ``~/.cache/vod_d2``."""
    return os.environ.get("VOD_D2_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "vod_d2"
    )


def cache_file(cache_dir: str, identity: Iterable[str], what: str = "annotations") -> str:
    """
    Path of the cache entry of a dataset definition (loader, root, list file, classes...).

    One definition has one entry per ``what`` (``"annotations"``, ``"frames"``): a changed
    annotation tree overwrites it instead of accumulating stale entries.
    """
    digest = hashlib.sha1("\0".join(identity).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"{what}-{digest}.npz")


def fingerprint_files(paths: Sequence[str], salt: str) -> str:
    """
    Hash of ``salt`` and the path, size, modification time and inode of every file.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    stats = np.empty((len(paths), 3), np.int64)
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"Annotation file {path} does not exist") from None
        stats[i] = st.st_size, st.st_mtime_ns, st.st_ino
    digest = hashlib.sha256(salt.encode())
    digest.update("\0".join(paths).encode())
    digest.update(stats.tobytes())
    return digest.hexdigest()


def load_cached(path: str, key: str) -> Optional[Dict[str, np.ndarray]]:
    """The columns stored at ``path`` if they were computed for ``key``, else None."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return {name: data[name] for name in data.files if name != "key"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        # An unreadable entry (truncated by a full disk, written by another version) is a miss.
        logger.warning(f"Ignoring unreadable annotation cache {path}: {e}")
        return None


def save_cached(path: str, key: str, columns: Dict[str, np.ndarray]) -> None:
    """
    Store ``columns`` for ``key`` at ``path`` atomically. A cache that cannot be written
    (read-only or full disk) is logged and skipped: it only costs time.
    """
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    except OSError as e:
        logger.warning(f"Cannot write the annotation cache in {directory}: {e}")
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), **columns)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        logger.warning(f"Cannot write the annotation cache {path}: {e}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
