"""
Built-in synthetic video data: small, deterministic, and in the ILSVRC2015 layout.

Each video (40-120 frames by default, long enough for a 27-frame window and a key-frame
interval of 10) shows 1-3 objects of 5 VID classes moving, bouncing and changing scale over a
textured, panning, low-saturation background. Every class has its own shape, saturated colour
(blue, yellow, red, green, white) and texture, so a tiny detector can learn them. Each video
also contains the failure modes video detectors are built for, as stretches of consecutive
frames rather than isolated bad frames, which is where long windows and key-frame memories
help: motion blur (camera shake along a random direction) and defocus (disk blur), each in one
or two runs of 4-12 frames, and a long partial occlusion (a pole sweeping across the frame
during 40-70% of the video, hiding each object it passes for several frames).

:func:`generate_synthetic_dataset` writes JPEG frames, XML annotations and the
``ImageSets`` lists the real ImageNet VID loader reads, plus ``synthetic.json`` with the
degradations of every frame; DET-style still images go to ``Data/DET``. Trees are written in
a temporary folder renamed into place, so an interrupted run leaves nothing half-written.

Command line (``--help`` lists the options)::

    python -m vod_d2.data.synthetic --output datasets/vod_d2_synthetic [--seed 0 ...]
    python -m vod_d2.data.synthetic --video demo.mp4 [--num-frames 60 --height 240 --width 320]
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .datasets.classes import SYNTHETIC_CLASSES, VID_CLASSES, VID_WNIDS
from .datasets.image_sets import fgfa_train_frames

__all__ = [
    "DEGRADATIONS",
    "SYNTHETIC_CLASSES",
    "SyntheticVideo",
    "render_video",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "write_synthetic_video",
]

logger = logging.getLogger(__name__)

DEGRADATIONS = ("motion_blur", "defocus", "occlusion")
# Part of synthetic.json: bump when the same seed would render different data. A tree of
# another version is generated again by ensure_synthetic_dataset.
GENERATOR_VERSION = 3
# Objects hidden beyond this fraction of their pixels are flagged occluded.
_OCCLUDED_BELOW_VISIBLE = 0.75
# Objects with fewer visible pixels than this are not annotated in the frame.
_MIN_VISIBLE_PIXELS = 12
# Blur and defocus runs: (shortest, longest) run in frames, and about one run of each per this
# many frames of video (at least one).
_RUN_LENGTH = (4, 12)
_FRAMES_PER_RUN = 60
_DEFAULT_OPTIONS = dict(
    num_train_videos=30, num_val_videos=8, num_det_images=60, num_frames=(40, 120), size=(128, 160)
)


@dataclass(frozen=True)
class _Look:
    shape: str
    color: Tuple[int, int, int]
    texture: str
    aspect: float  # width / height


_LOOKS = {
    "airplane": _Look("cross", (40, 90, 235), "gradient", 1.6),
    "bird": _Look("triangle", (245, 215, 30), "dots", 1.1),
    "car": _Look("rounded_rect", (225, 30, 30), "hstripes", 2.0),
    "dog": _Look("ellipse", (40, 190, 60), "checker", 1.4),
    "zebra": _Look("diamond", (250, 250, 250), "vstripes", 1.25),
}


class SyntheticVideo(NamedTuple):
    """
    A rendered video of T frames.

    Attributes:
        frames (list[ndarray]): T (H, W, 3) uint8 RGB images.
        objects (list[list[dict]]): per frame, the annotated objects: ``track_id``,
            ``category`` (index in :data:`SYNTHETIC_CLASSES`), ``box`` (xmin, ymin, xmax, ymax)
            inclusive pixels of the object's whole extent inside the image, ``occluded``.
        degradations (list[list[str]]): per frame, the degradations applied, of
            ``"motion_blur"``, ``"defocus"``, ``"occlusion"`` (the pole hides part of an object).
    """

    frames: List[np.ndarray]
    objects: List[List[dict]]
    degradations: List[List[str]]


def render_video(
    rng: np.random.Generator,
    num_frames: int,
    size: Tuple[int, int],
    degrade: Iterable[str] = DEGRADATIONS,
) -> SyntheticVideo:
    """
    Render one video; the scene depends only on ``rng``'s state.

    Args:
        rng: source of every random choice.
        num_frames: T.
        size: (H, W) of the frames.
        degrade: the degradations to apply, of :data:`DEGRADATIONS`. The scene, noise
            included, does not depend on them: ``()`` renders the same video undegraded.
    """
    degrade = set(degrade)
    if not degrade <= set(DEGRADATIONS):
        raise ValueError(f"unknown degradations {degrade - set(DEGRADATIONS)}")
    height, width = size
    unit = min(height, width) / 128.0  # sizes and speeds are tuned for 128 px frames
    pad = int(12 * unit) + 1
    background = _background(rng, height + 2 * pad, width + 2 * pad)
    pan = _linear_path(rng, num_frames, start=(pad, pad), speed=unit, low=0, high=2 * pad)
    tracks = [
        _sample_track(rng, num_frames, height, width, unit) for _ in range(rng.integers(1, 4))
    ]
    # frame -> blur taps; each run has its own direction and length (or radius).
    blur = {
        t: _line_offsets(max(5, round(rng.uniform(7, 13) * unit)), rng.uniform(0, np.pi))
        for run in _runs(rng, num_frames)
        for t in run
    }
    defocus = {
        t: _disk_offsets(max(1.5, rng.uniform(1.5, 3.0) * unit))
        for run in _runs(rng, num_frames)
        for t in run
    }
    pole = _sample_pole(rng, num_frames, height, width, unit)

    video = SyntheticVideo([], [], [])
    for t in range(num_frames):
        oy, ox = np.round(pan[t]).astype(int)
        image = background[oy : oy + height, ox : ox + width].copy()
        owner = np.full((height, width), -1, np.int16)
        areas = [_draw_object(image, owner, k, track, t) for k, track in enumerate(tracks)]
        degradations = []
        if "occlusion" in degrade and any(_draw_pole(image, owner, pole, t, len(tracks))):
            degradations.append("occlusion")
        if "motion_blur" in degrade and t in blur:
            image = _blur(image, blur[t])
            degradations.append("motion_blur")
        if "defocus" in degrade and t in defocus:
            image = _blur(image, defocus[t])
            degradations.append("defocus")
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        video.frames.append(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        video.degradations.append(degradations)
        video.objects.append(_visible_objects(tracks, owner, areas))
    return video


def generate_synthetic_dataset(
    output_dir: str,
    *,
    seed: int = 0,
    num_train_videos: int = 30,
    num_val_videos: int = 8,
    num_det_images: int = 60,
    num_frames: Tuple[int, int] = (40, 120),
    size: Tuple[int, int] = (128, 160),
) -> str:
    """
    Write a synthetic dataset in the ILSVRC2015 layout at ``output_dir`` (which must not
    exist), through a temporary folder renamed into place.

    Written: ``Data/VID/{train,val}``, ``Annotations/VID/{train,val}``, ``Data/DET/train``,
    ``Annotations/DET/train``, ``ImageSets/VID_train_15frames.txt`` (FGFA's 15 frames per
    snippet, all frames of shorter ones), ``ImageSets/VID_val_videos.txt``,
    ``ImageSets/DET_train_30classes.txt`` and ``synthetic.json`` (options and degradations).

    Args:
        output_dir: the dataset root to create.
        seed: same seed and options, byte-identical files.
        num_train_videos, num_val_videos: number of snippets per split.
        num_det_images: number of DET still images (sharp, one frame each).
        num_frames: (min, max) frames of a video, inclusive.
        size: (H, W) of the images.

    Returns:
        str: ``output_dir``.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir):
        raise FileExistsError(f"{output_dir} exists; generate_synthetic_dataset needs a new folder")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "classes": list(SYNTHETIC_CLASSES),
            "size": list(size),
            "degradations": {},
        }
        lists: Dict[str, List[str]] = {"VID_train_15frames": [], "VID_val_videos": []}
        for split, count, code in (("train", num_train_videos, 0), ("val", num_val_videos, 1)):
            for index in range(count):
                rng = np.random.default_rng([seed, code, index])
                video = render_video(rng, int(rng.integers(num_frames[0], num_frames[1] + 1)), size)
                snippet = _snippet_name(split, index)
                _write_video(tmp, snippet, video)
                manifest["degradations"][f"VID/{snippet}"] = video.degradations
                length = len(video.frames)
                if split == "train":
                    for frame in fgfa_train_frames(length):
                        lists["VID_train_15frames"].append(f"{snippet} 1 {frame} {length}")
                else:
                    for frame in range(length):
                        n = len(lists["VID_val_videos"]) + 1
                        lists["VID_val_videos"].append(f"{snippet} {n} {frame} {length}")
        det = []
        for index in range(num_det_images):
            rng = np.random.default_rng([seed, 2, index])
            still = render_video(rng, 1, size, degrade=())
            path = f"train/SYNTHETIC_DET_train_0000/SYNTHETIC_DET_train_{index:08d}"
            _write_frame(tmp, "DET", path, still.frames[0], still.objects[0], size, track=False)
            det.append(f"{path} {index + 1}")
        lists["DET_train_30classes"] = det
        os.makedirs(os.path.join(tmp, "ImageSets"))
        for name, lines in lists.items():
            with open(os.path.join(tmp, "ImageSets", f"{name}.txt"), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        with open(os.path.join(tmp, "synthetic.json"), "w") as f:
            json.dump(manifest, f)
        os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(f"Wrote the synthetic dataset (seed {seed}) to {output_dir}")
    return output_dir


def ensure_synthetic_dataset(root: str, **options) -> str:
    """
    ``root`` if it holds a synthetic dataset of this :data:`GENERATOR_VERSION`, else generate
    one there (``options`` of :func:`generate_synthetic_dataset`; the defaults give 30 train
    and 8 val videos of 40-120 frames and 60 DET images, 128x160 px). A tree of another
    version is replaced, with a warning. Safe when several processes call it at once.
    """
    version = _generator_version(root)
    if version == GENERATOR_VERSION:
        return root
    options = {**_DEFAULT_OPTIONS, **options}
    if version is None:
        logger.info(f"Generating the synthetic video dataset in {root} (first use)")
        try:
            generate_synthetic_dataset(root, **options)
        except OSError:
            if _generator_version(root) != GENERATOR_VERSION:  # not another process finishing
                raise
        return root
    logger.warning(
        f"{root} holds synthetic data of generator version {version}; generating version "
        f"{GENERATOR_VERSION} in its place"
    )
    new, stale = f"{root}.new-{os.getpid()}", f"{root}.stale-{os.getpid()}"
    generate_synthetic_dataset(new, **options)
    try:
        if _generator_version(root) != GENERATOR_VERSION:  # else another process was faster
            os.rename(root, stale)
            os.rename(new, root)
    except OSError:
        if _generator_version(root) != GENERATOR_VERSION:  # not another process replacing it
            raise
    finally:
        for leftover in (new, stale):
            shutil.rmtree(leftover, ignore_errors=True)
    return root


def _generator_version(root: str):
    """The generator version of the synthetic tree at ``root``; None if there is no ``root``."""
    if not os.path.exists(root):
        return None
    try:
        with open(os.path.join(root, "synthetic.json")) as f:
            return json.load(f).get("generator_version")
    except (OSError, ValueError):
        raise FileNotFoundError(
            f"{root} exists but is not a synthetic dataset (no readable synthetic.json); remove "
            "it to have it generated"
        ) from None


def write_synthetic_video(
    path: str,
    num_frames: int = 60,
    size: Tuple[int, int] = (240, 320),
    seed: int = 0,
    fps: float = 10,
    ground_truth: Optional[str] = None,
) -> str:
    """
    Write a synthetic video file (e.g. ``.mp4``) for demos, with OpenCV, and optionally its
    ground truth.

    Args:
        path: output file; its extension picks the container.
        num_frames: number of frames.
        size: (H, W) of the frames.
        seed: the scene's seed.
        fps: frames per second.
        ground_truth: also write the video's objects to this json, as a list of COCO-style
            dicts ``{"frame_idx", "category_id", "category", "bbox" (XYWH, pixels), "track_id",
            "occluded"}``; ``category_id`` is the index in :data:`SYNTHETIC_CLASSES`, the
            synthetic datasets' class index (what ``demo/demo.py --json`` writes for a model
            trained on them). See :mod:`vod_d2.evaluation.recall`.

    Returns:
        str: ``path``.
    """
    import cv2  # only this function needs OpenCV

    video = render_video(np.random.default_rng([seed, 3, 0]), num_frames, size)
    if ground_truth is not None:
        objects = [
            {
                "frame_idx": t,
                "category_id": obj["category"],
                "category": SYNTHETIC_CLASSES[obj["category"]],
                # The corners as the XML annotations give them (what the models learn).
                "bbox": [
                    *obj["box"][:2],
                    obj["box"][2] - obj["box"][0],
                    obj["box"][3] - obj["box"][1],
                ],
                "track_id": obj["track_id"],
                "occluded": obj["occluded"],
            }
            for t, frame_objects in enumerate(video.objects)
            for obj in frame_objects
        ]
        with open(ground_truth, "w") as f:
            json.dump(objects, f)
    for codec in ("mp4v", "avc1", "MJPG"):
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, size[::-1])
        if writer.isOpened():
            break
    else:
        raise RuntimeError(f"OpenCV cannot write {path} with any of mp4v, avc1, MJPG")
    for frame in video.frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV takes BGR
    writer.release()
    return path


def _background(rng, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 smooth colour field plus blotchy texture."""
    # Low-saturation tones: a grey level per cell, slightly tinted, so objects' colours stand out.
    grey = rng.uniform(60, 170, (4, 5, 1))
    field = _upsample(grey + rng.uniform(-20, 20, (4, 5, 3)), height, width)
    blotches = _upsample(rng.normal(0, 25, (height // 6, width // 6, 3)), height, width)
    return field + blotches


def _upsample(values: np.ndarray, height: int, width: int) -> np.ndarray:
    channels = [
        np.asarray(Image.fromarray(c.astype(np.float32)).resize((width, height), Image.BILINEAR))
        for c in np.moveaxis(values, -1, 0)
    ]
    return np.stack(channels, -1)


def _linear_path(rng, num_frames, start, speed, low, high) -> np.ndarray:
    """(T, 2) positions moving at a constant random velocity, bouncing off [low, high]."""
    position = np.asarray(start, np.float64)
    velocity = rng.uniform(-speed, speed, 2)
    path = np.zeros((num_frames, 2))
    for t in range(num_frames):
        path[t] = position
        position = position + velocity
        out = (position < low) | (position > high)
        velocity[out] *= -1
        position = np.clip(position, low, high)
    return path


@dataclass
class _Track:
    category: int
    centers: np.ndarray  # (T, 2) y, x
    heights: np.ndarray  # (T,)
    aspect: float


def _sample_track(rng, num_frames, height, width, unit) -> _Track:
    category = int(rng.integers(len(SYNTHETIC_CLASSES)))
    aspect = _LOOKS[SYNTHETIC_CLASSES[category]].aspect * rng.uniform(0.9, 1.1)
    # Slow, medium and fast objects, as in FGFA's motion-speed bins.
    speed = unit * rng.choice([0.4, 1.5, 3.5])
    growth = np.exp(rng.uniform(-0.04, 0.04))
    size = rng.uniform(0.22, 0.45) * height
    heights = np.zeros(num_frames)
    for t in range(num_frames):
        heights[t] = size
        size *= growth
        if not 0.16 * height <= size <= 0.5 * height:
            growth = 1 / growth
            size = np.clip(size, 0.16 * height, 0.5 * height)
    half = np.array([heights.max() / 2, heights.max() * aspect / 2])
    low, high = np.minimum(half, [height / 2, width / 2]), np.maximum([height, width] - half, half)
    start = rng.uniform(low, high)
    centers = _linear_path(rng, num_frames, start, speed, low, high)
    return _Track(category, centers, heights, aspect)


def _runs(rng, num_frames: int) -> List[range]:
    """
    About one run of 4-12 consecutive frames per 60 frames (at least one), not overlapping one
    another; shorter videos get shorter runs.
    """
    count = max(1, round(num_frames / _FRAMES_PER_RUN))
    # Each run gets its own slot of the video, so runs never touch.
    slot = num_frames // count
    runs = []
    for k in range(count):
        length = min(int(rng.integers(_RUN_LENGTH[0], _RUN_LENGTH[1] + 1)), max(1, slot - 1))
        start = k * slot + int(rng.integers(0, max(1, slot - length)))
        runs.append(range(start, min(num_frames, start + length)))
    return runs


def _line_offsets(length: int, angle: float) -> List[Tuple[int, int]]:
    steps = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(length, 2))
    return [(int(round(s * np.sin(angle))), int(round(s * np.cos(angle)))) for s in steps]


def _disk_offsets(radius: float) -> List[Tuple[int, int]]:
    r = int(np.ceil(radius))
    return [
        (dy, dx)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if dy * dy + dx * dx <= radius**2
    ]


def _blur(image: np.ndarray, offsets: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Mean of ``image`` shifted by each offset, with edge padding: a blur kernel of taps."""
    height, width = image.shape[:2]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(image)
    for dy, dx in offsets:
        out += padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return out / len(offsets)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels of a shape in object coordinates u, v in [-1, 1] (v grows downwards)."""
    if shape == "cross":
        return ((np.abs(v) <= 0.25) & (np.abs(u) <= 1)) | (
            (np.abs(u + 0.1) <= 0.2) & (np.abs(v) <= 1)
        )
    if shape == "triangle":
        return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    if shape == "rounded_rect":
        return u**4 + v**4 <= 1
    if shape == "ellipse":
        return u**2 + v**2 <= 1
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness factor in (0, 1] of a texture in object coordinates."""
    if texture == "gradient":
        return 1.0 - 0.3 * (v + 1) / 2
    if texture == "dots":
        return np.where(((u * 2.5) % 1 - 0.5) ** 2 + ((v * 2.5) % 1 - 0.5) ** 2 < 0.08, 0.45, 1.0)
    if texture == "hstripes":
        return np.where(np.sin(v * np.pi * 3) > 0.3, 0.5, 1.0)
    if texture == "checker":
        return np.where((np.floor((u + 1) * 2.5) + np.floor((v + 1) * 2.5)) % 2 == 0, 0.6, 1.0)
    if texture == "vstripes":
        return np.where(np.sin(u * np.pi * 5) > 0, 0.1, 1.0)
    raise ValueError(f"unknown texture {texture!r}")


def _draw_object(image, owner, k: int, track: _Track, t: int):
    """Paint object ``k`` at frame ``t``; return (pixel count, (xmin, ymin, xmax, ymax))."""
    look = _LOOKS[SYNTHETIC_CLASSES[track.category]]
    (cy, cx), h = track.centers[t], track.heights[t]
    w = h * track.aspect
    height, width = owner.shape
    y0, y1 = max(0, int(cy - h / 2)), min(height, int(np.ceil(cy + h / 2)) + 1)
    x0, x1 = max(0, int(cx - w / 2)), min(width, int(np.ceil(cx + w / 2)) + 1)
    v = (np.arange(y0, y1)[:, None] + 0.5 - cy) / (h / 2)
    u = (np.arange(x0, x1)[None, :] + 0.5 - cx) / (w / 2)
    u, v = np.broadcast_arrays(u, v)
    mask = _shape_mask(look.shape, u, v)
    if not mask.any():
        return 0, None
    shade = _texture(look.texture, u, v)[..., None] * np.asarray(look.color, np.float32)
    image[y0:y1, x0:x1][mask] = shade[mask]
    owner[y0:y1, x0:x1][mask] = k
    ys, xs = np.nonzero(mask)
    return int(mask.sum()), (x0 + xs.min(), y0 + ys.min(), x0 + xs.max(), y0 + ys.max())


def _sample_pole(rng, num_frames, height, width, unit) -> dict:
    """A textured pole sweeping across the frame during part of the video."""
    vertical = bool(rng.integers(2))
    extent = width if vertical else height
    thickness = rng.uniform(0.12, 0.2) * min(height, width)
    duration = min(num_frames, max(2, int(num_frames * rng.uniform(0.4, 0.7))))
    start = int(rng.integers(0, num_frames - duration + 1))
    ends = (-thickness, extent + thickness) if rng.integers(2) else (extent + thickness, -thickness)
    color = rng.uniform(60, 120, 3)
    return dict(vertical=vertical, thickness=thickness, start=start, duration=duration,
                ends=ends, color=color)  # fmt: skip


def _draw_pole(image, owner, pole: dict, t: int, num_objects: int) -> List[bool]:
    """Paint the pole at frame ``t``; return, per object, whether it hides pixels of it."""
    hidden = [False] * num_objects
    step = t - pole["start"]
    if not 0 <= step < pole["duration"]:
        return hidden
    first, last = pole["ends"]
    center = first + (last - first) * step / max(1, pole["duration"] - 1)
    low, high = center - pole["thickness"] / 2, center + pole["thickness"] / 2
    extent = image.shape[1] if pole["vertical"] else image.shape[0]
    coords = np.arange(extent) + 0.5
    inside = (coords >= low) & (coords < high)
    if not inside.any():
        return hidden
    region = (slice(None), inside) if pole["vertical"] else (inside, slice(None))
    for k in np.unique(owner[region]):
        if k >= 0:
            hidden[k] = True
    # Vertical grain so the pole looks like an object, not a flat band.
    grain = 1.0 - 0.2 * (np.arange(int(inside.sum())) % 3 == 0)
    color = grain[:, None] * pole["color"]
    image[region] = color[None] if pole["vertical"] else color[:, None]
    owner[region] = -2
    return hidden


def _visible_objects(tracks: List[_Track], owner: np.ndarray, areas) -> List[dict]:
    counts = np.bincount(owner.ravel() + 2, minlength=len(tracks) + 2)[2:]
    objects = []
    for k, (track, (area, box)) in enumerate(zip(tracks, areas)):
        if counts[k] < _MIN_VISIBLE_PIXELS:
            continue
        objects.append(
            dict(
                track_id=k,
                category=track.category,
                box=tuple(int(c) for c in box),
                occluded=bool(counts[k] < _OCCLUDED_BELOW_VISIBLE * area),
            )
        )
    return objects


def _snippet_name(split: str, index: int) -> str:
    if split == "train":
        return f"train/SYNTHETIC_VID_train_0000/SYNTHETIC_train_{index:08d}"
    return f"{split}/SYNTHETIC_{split}_{index:08d}"


def _write_video(root: str, snippet: str, video: SyntheticVideo) -> None:
    size = video.frames[0].shape[:2]
    for t, (frame, objects) in enumerate(zip(video.frames, video.objects)):
        _write_frame(root, "VID", f"{snippet}/{t:06d}", frame, objects, size, track=True)


def _write_frame(root, kind, stem, frame, objects, size, track: bool) -> None:
    """One JPEG under Data/<kind> and its XML under Annotations/<kind>, as ILSVRC writes them."""
    image_file = os.path.join(root, "Data", kind, f"{stem}.JPEG")
    xml_file = os.path.join(root, "Annotations", kind, f"{stem}.xml")
    for path in (image_file, xml_file):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(frame).save(image_file, quality=92)
    folder, name = os.path.split(stem)
    parts = [
        f"<annotation>\n\t<folder>{os.path.basename(folder)}</folder>\n"
        f"\t<filename>{name}</filename>\n"
        "\t<source>\n\t\t<database>vod_d2 synthetic</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{size[1]}</width>\n\t\t<height>{size[0]}</height>\n\t</size>\n"
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj["box"]
        wnid = VID_WNIDS[VID_CLASSES.index(SYNTHETIC_CLASSES[obj["category"]])]
        parts.append("\t<object>\n")
        if track:
            parts.append(f"\t\t<trackid>{obj['track_id']}</trackid>\n")
        parts.append(
            f"\t\t<name>{wnid}</name>\n\t\t<bndbox>\n\t\t\t<xmax>{xmax}</xmax>\n"
            f"\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t\t<ymin>{ymin}</ymin>\n"
            "\t\t</bndbox>\n"
        )
        if track:
            parts.append(
                f"\t\t<occluded>{int(obj['occluded'])}</occluded>\n\t\t<generated>0</generated>\n"
            )
        parts.append("\t</object>\n")
    parts.append("</annotation>\n")
    with open(xml_file, "w") as f:
        f.write("".join(parts))


def get_parser() -> argparse.ArgumentParser:
    defaults = _DEFAULT_OPTIONS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="dataset root to create (ILSVRC2015 layout)")
    target.add_argument("--video", help="write one synthetic video file instead (e.g. demo.mp4)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice: same seed, same bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--num-train-videos",
        type=int,
        default=defaults["num_train_videos"],
        help="training snippets, Data/VID/train (default: %(default)s)",
    )
    parser.add_argument(
        "--num-val-videos",
        type=int,
        default=defaults["num_val_videos"],
        help="validation snippets, Data/VID/val (default: %(default)s)",
    )
    parser.add_argument(
        "--num-det-images",
        type=int,
        default=defaults["num_det_images"],
        help="DET-style still images, Data/DET/train (default: %(default)s)",
    )
    parser.add_argument(
        "--min-frames",
        type=int,
        default=defaults["num_frames"][0],
        help="fewest frames of a dataset video (default: %(default)s)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=defaults["num_frames"][1],
        help="most frames of a dataset video (default: %(default)s)",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=60,
        help="frames of the --video file (default: %(default)s)",
    )
    parser.add_argument(
        "--ground-truth",
        help="with --video: also write the video's objects to this json (see "
        "vod_d2.evaluation.recall)",
    )
    parser.add_argument(
        "--height", type=int, help="frame height in pixels (default 128, 240 for --video)"
    )
    parser.add_argument(
        "--width", type=int, help="frame width in pixels (default 160, 320 for --video)"
    )
    return parser


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    defaults = _DEFAULT_OPTIONS
    if args.video:
        size = (args.height or 240, args.width or 320)
        write_synthetic_video(
            args.video, args.num_frames, size, seed=args.seed, ground_truth=args.ground_truth
        )
        print(f"wrote {args.video}" + (f" and {args.ground_truth}" if args.ground_truth else ""))
        return
    generate_synthetic_dataset(
        args.output,
        seed=args.seed,
        num_train_videos=args.num_train_videos,
        num_val_videos=args.num_val_videos,
        num_det_images=args.num_det_images,
        num_frames=(args.min_frames, args.max_frames),
        size=(args.height or defaults["size"][0], args.width or defaults["size"][1]),
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
