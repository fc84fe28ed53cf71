"""
Check, when a dataset is loaded, that every frame file it may read exists and is not corrupt.

A missing or corrupt frame would otherwise be found by a data-loader worker in the middle of
training, or never (a frame that is never drawn). The check lists each frame folder once (a
folder's listing is much cheaper than a stat per file on network file systems), then reads a
few bytes of each file, without decoding it (:func:`frame_problem`): a JPEG's start marker,
its segment headers up to the frame header, and its end marker; a PNG's signature, header and
end chunk. That finds truncated files and files that are not images for about the cost of
opening them, a few threads reading folders in parallel. A successful check can be cached: a
folder's modification time changes whenever a file in it is added, removed or renamed, so the
cache key is every folder's modification time and inode plus what the caller requires of them,
and an unchanged tree is not read again. (A file rewritten in place keeps its folder's time:
the mapper then names it when it cannot be read, :class:`~vod_d2.data.mapper.FrameReadError`.)
"""

import hashlib
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .cache import load_cached, save_cached

__all__ = ["check_frame_files", "frame_problem"]

logger = logging.getLogger(__name__)

# Files named in the error message.
_SHOWN = 3
# Part of the cache key: entries of an older check (existence only) are not trusted.
_CHECK_VERSION = "exists+markers-1"
# Threads reading frame folders: the work is waiting for the disk, not the CPU.
_THREADS = 8

_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_JPEG_FRAME_HEADERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC
# Other formats PIL reads, by their first bytes: checked to start like one, no further.
_OTHER_SIGNATURES = (b"BM", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"RIFF")
# Bytes read at the end of a file, where its end marker is (some writers pad after it).
_TAIL = 1024


def check_frame_files(
    folders: Sequence[str],
    names: Callable[[int], Iterable[str]],
    *,
    requirement: str,
    dataset: str,
    cache_path: Optional[str] = None,
) -> None:
    """
    Raise if a required frame file is missing or corrupt (:func:`frame_problem`).

    Args:
        folders: the frame folders.
        names: ``names(i)`` are the file names required in ``folders[i]``; called only when
            the folders are listed (not on a cache hit).
        requirement: what ``names`` depends on, as text (part of the cache key).
        dataset: the list or json the frames come from, named in the error.
        cache_path: where to cache a successful check (None: no cache).

    Raises:
        FileNotFoundError: giving the number of missing files and the first few paths.
        ValueError: giving the number of corrupt files and the first few, with their problems.
    """
    key = _key(folders, requirement) if cache_path else None
    if cache_path and load_cached(cache_path, key) is not None:
        return
    missing, corrupt = [], []
    missing_count = corrupt_count = 0
    with ThreadPoolExecutor(_THREADS) as pool:
        for absent, bad in pool.map(_check_folder, folders, map(names, range(len(folders)))):
            missing_count += len(absent)
            corrupt_count += len(bad)
            missing += absent[: _SHOWN - len(missing)]
            corrupt += bad[: _SHOWN - len(corrupt)]
    if missing_count:
        raise FileNotFoundError(
            f"{_files(missing_count)} of {dataset} {'are' if missing_count > 1 else 'is'} "
            f"missing: {', '.join(missing)}{', ...' if missing_count > len(missing) else ''}"
        )
    if corrupt_count:
        shown = ", ".join(f"{path} ({problem})" for path, problem in corrupt)
        raise ValueError(
            f"{_files(corrupt_count)} of {dataset} cannot be read as images: {shown}"
            f"{', ...' if corrupt_count > len(corrupt) else ''}"
        )
    if cache_path:
        save_cached(cache_path, key, {})


def frame_problem(path: str) -> Optional[str]:
    """
    What is wrong with an image file, from a few of its bytes (no decoding), or None.

    JPEG: the start marker, the segment headers up to the frame header (each within the file),
    a frame header of non-zero size, and the end marker ``FF D9`` in the last bytes. PNG: the
    signature, an ``IHDR`` header of non-zero size, and the ``IEND`` chunk in the last bytes.
    The format is told by the first bytes, not the extension (some ILSVRC ``.JPEG`` files are
    PNGs); BMP, GIF, TIFF and WebP files are only checked to start as such.

    Args:
        path: an existing file.

    Returns:
        str or None: the problem, as the end of a sentence naming the file.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(64)
        if head.startswith(_JPEG_START):
            problem = _jpeg_header_problem(f, size)
            end = _JPEG_END
        elif head.startswith(_PNG_SIGNATURE):
            problem = _png_header_problem(head)
            end = _PNG_END
        elif head.startswith(_OTHER_SIGNATURES):
            return None
        elif not head:
            return "an empty file"
        else:
            return f"not an image: it starts with {head[:4].hex(' ')}, not a JPEG or PNG signature"
        if problem is not None:
            return problem
        f.seek(max(size - _TAIL, 0))
        if end not in f.read():
            kind = "JPEG end marker FF D9" if end == _JPEG_END else "PNG IEND chunk"
            return f"truncated: no {kind} in its last {min(size, _TAIL)} bytes"
    return None


def _jpeg_header_problem(f: BinaryIO, size: int) -> Optional[str]:
    """Walk the segments after the start marker to the frame header (SOF) and check it."""
    position = 2
    while True:
        f.seek(position)
        marker = f.read(2)
        if len(marker) < 2:
            return "truncated in its header"
        if marker[0] != 0xFF:
            return f"corrupt header: no segment marker at byte {position}"
        if marker[1] == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker[1] == 0xDA:  # start of scan: the image data begins before any frame header
            return "corrupt header: no frame header (SOF) before the image data"
        length = f.read(2)
        if len(length) < 2 or position + 2 + struct.unpack(">H", length)[0] > size:
            return "truncated in its header"
        if marker[1] in _JPEG_FRAME_HEADERS:
            header = f.read(5)
            if len(header) < 5:
                return "truncated in its header"
            _, height, width = struct.unpack(">BHH", header)
            return None if height and width else f"corrupt header: size {width}x{height}"
        position += 2 + struct.unpack(">H", length)[0]


def _png_header_problem(head: bytes) -> Optional[str]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        return "truncated or corrupt header: no IHDR chunk"
    width, height = struct.unpack(">II", head[16:24])
    return None if width and height else f"corrupt header: size {width}x{height}"


def _check_folder(folder: str, names: Iterable[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The missing files among ``names`` in ``folder``, and the present ones' problems."""
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        present = set()
    missing, corrupt = [], []
    for name in names:
        path = os.path.join(folder, name)
        if name not in present:
            missing.append(path)
            continue
        problem = frame_problem(path)
        if problem is not None:
            corrupt.append((path, problem))
    return missing, corrupt


def _files(count: int) -> str:
    return f"{count} frame file{'s' if count > 1 else ''}"


def _key(folders: Sequence[str], requirement: str) -> str:
    stats = np.zeros((len(folders), 2), np.int64)
    for i, folder in enumerate(folders):
        try:
            st = os.stat(folder)
            stats[i] = st.st_mtime_ns, st.st_ino
        except FileNotFoundError:
            stats[i] = -1
    digest = hashlib.sha256(f"{_CHECK_VERSION}\0{requirement}".encode())
    digest.update("\0".join(folders).encode())
    digest.update(stats.tobytes())
    return digest.hexdigest()
