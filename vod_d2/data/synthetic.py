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
during 40-70% of the video, hiding each object it passes for several frames). A
:class:`DegradationProfile` sets how long, strong and frequent they are: ``"default"`` (the
main command's data) or ``"hard"`` (the accuracy benchmark's: longer and more frequent runs,
stronger blur, two wider and slower occluders).

:func:`generate_synthetic_dataset` writes JPEG frames, XML annotations and the
``ImageSets`` lists the real ImageNet VID loader reads, plus ``synthetic.json`` with the
degradations of every frame; DET-style still images go to ``Data/DET``. Trees are written in
a temporary folder renamed into place, so an interrupted run leaves nothing half-written.

The XML annotations carry the conditions the evaluation splits AP by (see
:mod:`vod_d2.evaluation.vid_evaluation`): each frame's ``<conditions>`` (``motion_blur``,
``defocus``, space-separated), and each object's ``<visible>`` fraction of its pixels (of those
inside the image, the share that the poles and the other objects leave visible) and
``<occluded>`` (1 when under half of them are visible).

:func:`write_flow_pairs` writes pairs of frames with their dense ground-truth flow (every
pixel's motion is known: the background pans, every object translates and scales), the data
:mod:`vod_d2.modeling.flow.pretrain` pretrains flow networks on, as the papers start FlowNet-S
from FlyingChairs. :func:`dataset_video_flow` gives the same exact flow between any two frames
of a generated dataset's video (:func:`locate_dataset_frame` finds a frame file's video), which
the diagnostic oracle flow network :class:`vod_d2.modeling.flow.SyntheticOracleFlow` returns.

Command line (``--help`` lists the options)::

    python -m vod_d2.data.synthetic --output datasets/vod_d2_synthetic [--seed 0 ...]
    python -m vod_d2.data.synthetic --video demo.mp4 [--num-frames 60 --height 240 --width 320]
    python -m vod_d2.data.synthetic --flow-pairs pairs/ [--num-pairs 1000]
"""

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .datasets.classes import SYNTHETIC_CLASSES, VID_CLASSES, VID_WNIDS
from .datasets.image_sets import fgfa_train_frames

__all__ = [
    "BENCHMARK_OPTIONS",
    "DEGRADATIONS",
    "FRAME_CONDITIONS",
    "PROFILES",
    "SYNTHETIC_CLASSES",
    "DegradationProfile",
    "SyntheticVideo",
    "render_video",
    "render_flow_pair",
    "generate_synthetic_dataset",
    "locate_dataset_frame",
    "dataset_frame_file",
    "dataset_video_flow",
    "ensure_synthetic_dataset",
    "write_flow_pairs",
    "write_synthetic_video",
]

logger = logging.getLogger(__name__)

DEGRADATIONS = ("motion_blur", "defocus", "occlusion")
# The degradations that are a frame's condition (occlusion is an object's: its visible share).
FRAME_CONDITIONS = ("motion_blur", "defocus")
# Part of synthetic.json: bump when the same seed would render different data. A tree of
# another version is generated again by ensure_synthetic_dataset.
GENERATOR_VERSION = 4
# Objects with less than this fraction of their pixels visible are flagged occluded (the
# evaluation's "occluded" condition).
OCCLUDED_BELOW_VISIBLE = 0.5
# Objects with fewer visible pixels than this are not annotated in the frame.
_MIN_VISIBLE_PIXELS = 12
# Each dataset split's part of its videos' seeds ([seed, code, index]; 2: DET, 3: demo videos,
# 4: flow pairs).
_SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class DegradationProfile:
    """
    How long, strong and frequent a video's degradations are. Lengths in pixels are for 128-px
    frames and scale with the frame size.

    Attributes:
        run_length: (shortest, longest) run of blurred or defocused frames.
        frames_per_run: about one blur run and one defocus run per this many frames (>= 1 each).
        blur_length: (min, max) length of the motion-blur streak.
        defocus_radius: (min, max) radius of the defocus disk.
        occluders: poles sweeping across the frame, each during its own part of the video.
        occluder_thickness: (min, max) thickness of a pole, as a fraction of the frame's side.
        occluder_duration: (min, max) fraction of the video a pole takes to cross the frame.
    """

    run_length: Tuple[int, int] = (4, 12)
    frames_per_run: int = 60
    blur_length: Tuple[float, float] = (7.0, 13.0)
    defocus_radius: Tuple[float, float] = (1.5, 3.0)
    occluders: int = 1
    occluder_thickness: Tuple[float, float] = (0.12, 0.2)
    occluder_duration: Tuple[float, float] = (0.4, 0.7)


PROFILES = {
    "default": DegradationProfile(),
    # The accuracy benchmark's: about 40% of the frames blurred or defocused, in runs long
    # enough to exceed a short window, and two wide, slow poles that hide objects for many
    # frames while the frames around them still see the objects.
    "hard": DegradationProfile(
        run_length=(6, 16),
        frames_per_run=50,
        blur_length=(11.0, 19.0),
        defocus_radius=(2.5, 4.5),
        occluders=2,
        occluder_thickness=(0.2, 0.3),
        occluder_duration=(0.5, 0.8),
    ),
}
_DEFAULT_OPTIONS = dict(
    num_train_videos=30,
    num_val_videos=8,
    num_det_images=60,
    num_frames=(40, 120),
    size=(128, 160),
    profile="default",
)
# The accuracy benchmark's split (builtin ``synthetic_bench_*``): enough validation videos and
# tracks that no one track carries a class, and short validation videos (40-60 frames) so that
# every method can be scored on every frame of all of them within the CPU budget.
BENCHMARK_OPTIONS = dict(
    num_train_videos=120,
    num_val_videos=48,
    num_det_images=120,
    num_frames=(40, 120),
    val_num_frames=(40, 60),
    size=(128, 160),
    profile="hard",
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
            inclusive pixels of the object's whole extent inside the image, ``visible`` (the
            fraction of its pixels inside the image that no pole or other object hides) and
            ``occluded`` (``visible`` below :data:`OCCLUDED_BELOW_VISIBLE`).
        degradations (list[list[str]]): per frame, the degradations applied, of
            ``"motion_blur"``, ``"defocus"``, ``"occlusion"`` (a pole hides part of an object).
    """

    frames: List[np.ndarray]
    objects: List[List[dict]]
    degradations: List[List[str]]


@dataclass
class _Scene:
    """Everything a video's frames and flow are rendered from."""

    size: Tuple[int, int]
    background: np.ndarray  # (H + 2 pad, W + 2 pad, 3) float32
    pan: np.ndarray  # (T, 2) integer (y, x) offsets of the view into the background
    tracks: List["_Track"]
    blur: Dict[int, List[Tuple[int, int]]]  # frame -> blur taps
    defocus: Dict[int, List[Tuple[int, int]]]
    poles: List[dict]


def _sample_scene(rng, num_frames: int, size: Tuple[int, int], profile) -> _Scene:
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
        t: _line_offsets(max(5, round(rng.uniform(*profile.blur_length) * unit)),
                         rng.uniform(0, np.pi))
        for run in _runs(rng, num_frames, profile)
        for t in run
    }  # fmt: skip
    defocus = {
        t: _disk_offsets(max(1.5, rng.uniform(*profile.defocus_radius) * unit))
        for run in _runs(rng, num_frames, profile)
        for t in run
    }
    poles = [
        _sample_pole(rng, num_frames, height, width, profile) for _ in range(profile.occluders)
    ]
    return _Scene(size, background, np.round(pan).astype(int), tracks, blur, defocus, poles)


def _render_frame(scene: _Scene, t: int, degrade) -> Tuple[np.ndarray, np.ndarray, List, List]:
    """
    Frame ``t`` before noise: (H, W, 3) float32 image, (H, W) owner of every pixel (object
    index, -1 the background, :func:`_pole_owner` a pole), the objects' (pixel count, box) and
    the degradations.
    """
    height, width = scene.size
    oy, ox = scene.pan[t]
    image = scene.background[oy : oy + height, ox : ox + width].copy()
    owner = np.full((height, width), -1, np.int16)
    areas = [_draw_object(image, owner, k, track, t) for k, track in enumerate(scene.tracks)]
    degradations = []
    hidden = [
        any(_draw_pole(image, owner, pole, t, len(scene.tracks), _pole_owner(j)))
        for j, pole in enumerate(scene.poles)
    ]
    if "occlusion" in degrade and any(hidden):
        degradations.append("occlusion")
    if "motion_blur" in degrade and t in scene.blur:
        image = _blur(image, scene.blur[t])
        degradations.append("motion_blur")
    if "defocus" in degrade and t in scene.defocus:
        image = _blur(image, scene.defocus[t])
        degradations.append("defocus")
    return image, owner, areas, degradations


def render_video(
    rng: np.random.Generator,
    num_frames: int,
    size: Tuple[int, int],
    degrade: Iterable[str] = DEGRADATIONS,
    profile: Union[str, DegradationProfile] = "default",
) -> SyntheticVideo:
    """
    Render one video; the scene depends only on ``rng``'s state and ``profile``.

    Args:
        rng: source of every random choice.
        num_frames: T.
        size: (H, W) of the frames.
        degrade: the degradations to apply, of :data:`DEGRADATIONS`. The scene, noise
            included, does not depend on them: ``()`` renders the same video undegraded.
            Without ``"occlusion"`` the poles are not drawn.
        profile: a :class:`DegradationProfile` or a name in :data:`PROFILES`.
    """
    degrade = set(degrade)
    if not degrade <= set(DEGRADATIONS):
        raise ValueError(f"unknown degradations {degrade - set(DEGRADATIONS)}")
    scene = _sample_scene(rng, num_frames, size, _profile(profile))
    if "occlusion" not in degrade:
        scene.poles = []
    video = SyntheticVideo([], [], [])
    for t in range(num_frames):
        image, owner, areas, degradations = _render_frame(scene, t, degrade)
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        video.frames.append(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        video.degradations.append(degradations)
        video.objects.append(_visible_objects(scene.tracks, owner, areas))
    return video


def render_flow_pair(
    rng: np.random.Generator, size: Tuple[int, int], max_gap: int = 10, objects: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Two frames of one undegraded synthetic video (poles included, no blur) and the exact
    flow between them, the pretraining data of flow networks (the project's FlyingChairs).

    The frames are ``gap`` frames apart, ``1 <= |gap| <= max_gap`` either way (a non-key frame
    and its key frame are up to 9 frames apart at interval 10).

    Args:
        rng: source of every random choice.
        size: (H, W) of the frames.
        max_gap: largest frame distance.
        objects: draw the objects and poles; False: the panning background alone (the same
            random draws, so the same background and pan as with them).

    Returns:
        tuple: ``cur``, ``ref`` (H, W, 3) uint8 RGB frames and ``flow`` (2, H, W) float32 in
        pixels, x first: pixel p of ``cur`` shows what ``ref`` shows at ``p + flow(p)`` (the
        convention of :func:`vod_d2.modeling.flow.warp.warp`), at pixel centres.
    """
    num_frames = 2 * max_gap + 1
    scene = _sample_scene(rng, num_frames, size, _profile("default"))
    if not objects:
        scene.tracks, scene.poles = [], []
    cur_t = int(rng.integers(num_frames))
    ref_t = int(rng.choice([t for t in range(num_frames) if 0 < abs(t - cur_t) <= max_gap]))
    frames = []
    for t in (cur_t, ref_t):
        image, owner, _, _ = _render_frame(scene, t, ("occlusion",))
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        frames.append(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        if t == cur_t:
            cur_owner = owner
    return frames[0], frames[1], _scene_flow(scene, cur_owner, cur_t, ref_t)


def _scene_flow(scene: _Scene, owner: np.ndarray, cur_t: int, ref_t: int) -> np.ndarray:
    """(2, H, W) flow from frame ``cur_t`` (whose pixel owners are ``owner``) to ``ref_t``."""
    height, width = scene.size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    # The background is a still image seen through a panning view.
    dy, dx = scene.pan[cur_t] - scene.pan[ref_t]
    flow = np.stack([np.full_like(xs, dx), np.full_like(ys, dy)])
    for k, track in enumerate(scene.tracks):
        mask = owner == k
        (cy, cx), (ry, rx) = track.centers[cur_t], track.centers[ref_t]
        scale = track.heights[ref_t] / track.heights[cur_t]
        flow[0][mask] = rx + (xs[mask] - cx) * scale - xs[mask]
        flow[1][mask] = ry + (ys[mask] - cy) * scale - ys[mask]
    for j, pole in enumerate(scene.poles):
        mask = owner == _pole_owner(j)
        shift = _pole_center(pole, ref_t) - _pole_center(pole, cur_t)
        flow[0 if pole["vertical"] else 1][mask] = shift
        flow[1 if pole["vertical"] else 0][mask] = 0.0
    return flow.astype(np.float32)


def _pole_owner(j: int) -> int:
    """The owner code of pole ``j``'s pixels (negative, below the background's -1)."""
    return -2 - j


def _profile(profile: Union[str, DegradationProfile]) -> DegradationProfile:
    if isinstance(profile, DegradationProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown degradation profile {profile!r}; choose one of {list(PROFILES)}")
    return PROFILES[profile]


def generate_synthetic_dataset(
    output_dir: str,
    *,
    seed: int = 0,
    num_train_videos: int = 30,
    num_val_videos: int = 8,
    num_det_images: int = 60,
    num_frames: Tuple[int, int] = (40, 120),
    val_num_frames: Optional[Tuple[int, int]] = None,
    size: Tuple[int, int] = (128, 160),
    profile: str = "default",
) -> str:
    """
    Write a synthetic dataset in the ILSVRC2015 layout at ``output_dir`` (which must not
    exist), through a temporary folder renamed into place.

    Written: ``Data/VID/{train,val}``, ``Annotations/VID/{train,val}``, ``Data/DET/train``,
    ``Annotations/DET/train``, ``ImageSets/VID_train_15frames.txt`` (FGFA's 15 frames per
    snippet, all frames of shorter ones), ``ImageSets/VID_val_videos.txt``,
    ``ImageSets/DET_train_30classes.txt`` and ``synthetic.json`` (options and degradations).
    The DET still images are never degraded.

    Args:
        output_dir: the dataset root to create.
        seed: same seed and options, byte-identical files.
        num_train_videos, num_val_videos: number of snippets per split.
        num_det_images: number of DET still images (sharp, one frame each).
        num_frames: (min, max) frames of a video, inclusive.
        val_num_frames: the same for the validation videos; None: ``num_frames``.
        size: (H, W) of the images.
        profile: the videos' degradations, a name in :data:`PROFILES`.

    Returns:
        str: ``output_dir``.
    """
    _profile(profile)
    output_dir = os.path.abspath(output_dir)
    with _new_folder(output_dir, "generate_synthetic_dataset") as tmp:
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "classes": list(SYNTHETIC_CLASSES),
            "size": list(size),
            "profile": profile,
            "degradations": {},
        }
        lists: Dict[str, List[str]] = {"VID_train_15frames": [], "VID_val_videos": []}
        splits = (
            ("train", num_train_videos, num_frames),
            ("val", num_val_videos, val_num_frames or num_frames),
        )
        for split, count, (shortest, longest) in splits:
            for index in range(count):
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
                length = int(rng.integers(shortest, longest + 1))
                video = render_video(rng, length, size, profile=profile)
                snippet = _snippet_name(split, index)
                _write_video(tmp, snippet, video)
                manifest["degradations"][f"VID/{snippet}"] = video.degradations
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
            path = _det_name(index)
            _write_frame(tmp, "DET", path, still.frames[0], still.objects[0], [], track=False)
            det.append(f"{path} {index + 1}")
        lists["DET_train_30classes"] = det
        os.makedirs(os.path.join(tmp, "ImageSets"))
        for name, lines in lists.items():
            with open(os.path.join(tmp, "ImageSets", f"{name}.txt"), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        with open(os.path.join(tmp, "synthetic.json"), "w") as f:
            json.dump(manifest, f)
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


def write_flow_pairs(
    output_dir: str,
    num_pairs: int,
    size: Tuple[int, int] = (128, 160),
    seed: int = 0,
    max_gap: int = 10,
) -> str:
    """
    Write ``num_pairs`` pairs of :func:`render_flow_pair` in FlyingChairs' layout:
    ``<i:05d>_img1.png`` (the current frame), ``<i:05d>_img2.png`` (the reference frame) and
    ``<i:05d>_flow.flo`` (Middlebury .flo: float32 ``202021.25``, int32 width and height, then
    (u, v) per pixel, row by row), 1-based, in a new folder written atomically. Pair ``i`` of a
    seed is always the same.

    Returns:
        str: ``output_dir``.
    """
    output_dir = os.path.abspath(output_dir)
    with _new_folder(output_dir, "write_flow_pairs") as tmp:
        for i in range(num_pairs):
            cur, ref, flow = render_flow_pair(flow_pair_rng(seed, i), size, max_gap)
            stem = os.path.join(tmp, f"{i + 1:05d}")
            Image.fromarray(cur).save(f"{stem}_img1.png")
            Image.fromarray(ref).save(f"{stem}_img2.png")
            with open(f"{stem}_flow.flo", "wb") as f:
                np.float32(202021.25).tofile(f)
                np.array([size[1], size[0]], np.int32).tofile(f)
                np.ascontiguousarray(flow.transpose(1, 2, 0), np.float32).tofile(f)
    return output_dir


def locate_dataset_frame(file_name: str) -> Tuple[str, str, int]:
    """
    Which video and frame of a generated synthetic dataset a frame file is.

    Args:
        file_name: a frame file of a tree :func:`generate_synthetic_dataset` wrote, as its
            dataset records name it (``<root>/Data/VID/<snippet>/<t:06d>.JPEG``, or
            ``<root>/Data/DET/<image>.JPEG`` for a still image).

    Returns:
        tuple: ``(root, video, t)``: the tree's root, the video as ``synthetic.json`` names it
        (``"VID/val/SYNTHETIC_val_00000003"``; ``"DET/train/..."`` for a still image, a
        one-frame video) and the frame's index in it.

    Raises:
        ValueError: (one line) for a file that is not a frame of such a tree, or of a tree of
            another :data:`GENERATOR_VERSION`.
    """
    path = file_name.replace(os.sep, "/")
    root, found, rest = path.rpartition("/Data/")
    stem, extension = os.path.splitext(rest)
    video, t = None, 0
    if found and extension == ".JPEG" and stem.startswith("VID/"):
        snippet, _, frame = stem[len("VID/") :].rpartition("/")
        split, index = snippet.split("/")[0], snippet[-8:]
        if split in _SPLIT_CODES and index.isdigit() and frame.isdigit():
            if _snippet_name(split, int(index)) == snippet and f"{int(frame):06d}" == frame:
                video, t = f"VID/{snippet}", int(frame)
    elif found and extension == ".JPEG" and stem.startswith("DET/") and stem[-8:].isdigit():
        if _det_name(int(stem[-8:])) == stem[len("DET/") :]:
            video = stem
    if video is None:
        raise ValueError(
            f"{file_name} is not a frame of a synthetic dataset (vod_d2.data.synthetic's "
            "<root>/Data/VID/<snippet>/<frame>.JPEG or <root>/Data/DET/<image>.JPEG)"
        )
    _manifest(root)  # a synthetic tree of this generator's version, or a one-line error
    return root, video, t


def dataset_frame_file(root: str, video: str, t: int) -> str:
    """The file of frame ``t`` of ``video`` (as :func:`locate_dataset_frame` names them)."""
    if video.startswith("DET/"):
        return f"{root}/Data/{video}.JPEG"
    return f"{root}/Data/{video}/{t:06d}.JPEG"


def dataset_video_flow(root: str, video: str, cur_t: int, ref_t: int) -> np.ndarray:
    """
    The exact flow between two frames of a generated dataset's video, as
    :func:`render_flow_pair` gives it for its pairs (the same scene, rendered again from the
    tree's seed).

    Args:
        root, video: as :func:`locate_dataset_frame` returns them.
        cur_t, ref_t: the frames' indices.

    Returns:
        ndarray: (2, H, W) float32 in pixels, x first: pixel p of frame ``cur_t`` shows what
        frame ``ref_t`` shows at ``p + flow(p)`` (:func:`vod_d2.modeling.flow.warp.warp`'s
        convention).

    Raises:
        ValueError: naming the video, for a frame outside it or a scene that cannot be
            rendered again (a tree written by other code).
    """
    manifest = _manifest(root)
    if video.startswith("DET/"):
        length = 1
    else:
        length = len(manifest["degradations"].get(video, ()))
    if not (0 <= cur_t < length and 0 <= ref_t < length):
        raise ValueError(
            f"{root}: video {video} has {length} frames, not frames {cur_t} and {ref_t}"
        )
    if cur_t == ref_t:  # a still image, or a frame with itself
        return np.zeros((2, *manifest["size"]), np.float32)
    scene = _dataset_scene(root, video)
    _, owner, _, _ = _render_frame(scene, cur_t, ("occlusion",))
    return _scene_flow(scene, owner, cur_t, ref_t)


@functools.lru_cache(maxsize=4)
def _manifest(root: str) -> dict:
    """The ``synthetic.json`` of the tree at ``root``, of this :data:`GENERATOR_VERSION`."""
    try:
        with open(os.path.join(root, "synthetic.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        raise ValueError(
            f"{root} is not a synthetic dataset: it has no readable synthetic.json"
        ) from None
    version = manifest.get("generator_version")
    if version != GENERATOR_VERSION:
        raise ValueError(
            f"{root} was written by synthetic generator version {version}; this code renders "
            f"version {GENERATOR_VERSION} (generate the tree again)"
        )
    return manifest


@functools.lru_cache(maxsize=8)
def _dataset_scene(root: str, video: str) -> _Scene:
    """
    The scene of a dataset video, sampled again as :func:`generate_synthetic_dataset` sampled
    it, and checked against the frames' degradations that ``synthetic.json`` records.
    """
    manifest = _manifest(root)
    degradations = manifest["degradations"][video]
    split = video.split("/")[1]
    index = int(video[-8:])
    length = len(degradations)
    # The generator drew the length from its (shortest, longest) range before the scene, and
    # numpy's bounded draw takes the same 64-bit word for any range of several values (and none
    # for a range of one): those two ranges replay it, the degradations tell which was right.
    for bounds in ((0, 2), (length, length + 1)):
        rng = np.random.default_rng([manifest["seed"], _SPLIT_CODES[split], index])
        rng.integers(*bounds)
        scene = _sample_scene(rng, length, tuple(manifest["size"]), _profile(manifest["profile"]))
        if all(
            (t in scene.blur) == ("motion_blur" in seen)
            and (t in scene.defocus) == ("defocus" in seen)
            for t, seen in enumerate(degradations)
        ):
            return scene
    raise ValueError(
        f"{root}: the scene of video {video} cannot be rendered again from synthetic.json (its "
        "degradations differ): the tree was not written by this generator"
    )


@contextlib.contextmanager
def _new_folder(output_dir: str, what: str):
    """
    Yield a temporary folder beside ``output_dir`` (which must not exist) to write into; it is
    renamed to ``output_dir`` when the block ends, and removed if the block raises.
    """
    if os.path.exists(output_dir):
        raise FileExistsError(f"{output_dir} exists; {what} needs a new folder")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        yield tmp
        os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def flow_pair_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of flow pair ``index`` of ``seed`` (apart from every video's)."""
    return np.random.default_rng([seed, 4, index])


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


def _runs(rng, num_frames: int, profile: DegradationProfile) -> List[range]:
    """
    About one run of ``profile.run_length`` consecutive frames per ``profile.frames_per_run``
    frames (at least one), not overlapping one another; shorter videos get shorter runs.
    """
    count = max(1, round(num_frames / profile.frames_per_run))
    # Each run gets its own slot of the video, so runs never touch.
    slot = num_frames // count
    shortest, longest = profile.run_length
    runs = []
    for k in range(count):
        length = min(int(rng.integers(shortest, longest + 1)), max(1, slot - 1))
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


def _sample_pole(rng, num_frames, height, width, profile: DegradationProfile) -> dict:
    """A textured pole sweeping across the frame during part of the video."""
    vertical = bool(rng.integers(2))
    extent = width if vertical else height
    thickness = rng.uniform(*profile.occluder_thickness) * min(height, width)
    duration = min(num_frames, max(2, int(num_frames * rng.uniform(*profile.occluder_duration))))
    start = int(rng.integers(0, num_frames - duration + 1))
    ends = (-thickness, extent + thickness) if rng.integers(2) else (extent + thickness, -thickness)
    color = rng.uniform(60, 120, 3)
    return dict(vertical=vertical, thickness=thickness, start=start, duration=duration,
                ends=ends, color=color)  # fmt: skip


def _pole_center(pole: dict, t: int) -> float:
    """The pole's centre line at frame ``t`` (it moves at constant speed, also off screen)."""
    first, last = pole["ends"]
    return first + (last - first) * (t - pole["start"]) / max(1, pole["duration"] - 1)


def _draw_pole(image, owner, pole: dict, t: int, num_objects: int, code: int) -> List[bool]:
    """
    Paint the pole at frame ``t``, its pixels' owner being ``code``; return, per object,
    whether it hides pixels of it.
    """
    hidden = [False] * num_objects
    if not 0 <= t - pole["start"] < pole["duration"]:
        return hidden
    center = _pole_center(pole, t)
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
    owner[region] = code
    return hidden


def _visible_objects(tracks: List[_Track], owner: np.ndarray, areas) -> List[dict]:
    counts = np.bincount(owner[owner >= 0].ravel(), minlength=len(tracks))
    objects = []
    for k, (track, (area, box)) in enumerate(zip(tracks, areas)):
        if counts[k] < _MIN_VISIBLE_PIXELS:
            continue
        visible = float(counts[k] / area)
        objects.append(
            dict(
                track_id=k,
                category=track.category,
                box=tuple(int(c) for c in box),
                visible=visible,
                occluded=visible < OCCLUDED_BELOW_VISIBLE,
            )
        )
    return objects


def _snippet_name(split: str, index: int) -> str:
    if split == "train":
        return f"train/SYNTHETIC_VID_train_0000/SYNTHETIC_train_{index:08d}"
    return f"{split}/SYNTHETIC_{split}_{index:08d}"


def _det_name(index: int) -> str:
    return f"train/SYNTHETIC_DET_train_0000/SYNTHETIC_DET_train_{index:08d}"


def _write_video(root: str, snippet: str, video: SyntheticVideo) -> None:
    for t, (frame, objects, degradations) in enumerate(
        zip(video.frames, video.objects, video.degradations)
    ):
        _write_frame(root, "VID", f"{snippet}/{t:06d}", frame, objects, degradations, track=True)


def _write_frame(root, kind, stem, frame, objects, degradations, track: bool) -> None:
    """
    One JPEG under Data/<kind> and its XML under Annotations/<kind>, as ILSVRC writes them,
    plus the frame's ``<conditions>`` and each object's ``<visible>`` fraction.
    """
    image_file = os.path.join(root, "Data", kind, f"{stem}.JPEG")
    xml_file = os.path.join(root, "Annotations", kind, f"{stem}.xml")
    for path in (image_file, xml_file):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(frame).save(image_file, quality=92)
    folder, name = os.path.split(stem)
    height, width = frame.shape[:2]
    conditions = " ".join(d for d in degradations if d in FRAME_CONDITIONS)
    parts = [
        f"<annotation>\n\t<folder>{os.path.basename(folder)}</folder>\n"
        f"\t<filename>{name}</filename>\n"
        "\t<source>\n\t\t<database>vod_d2 synthetic</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t</size>\n"
    ]
    if conditions:
        parts.append(f"\t<conditions>{conditions}</conditions>\n")
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
        parts.append(f"\t\t<visible>{obj['visible']:.4f}</visible>\n\t</object>\n")
    parts.append("</annotation>\n")
    with open(xml_file, "w") as f:
        f.write("".join(parts))


def get_parser() -> argparse.ArgumentParser:
    defaults = _DEFAULT_OPTIONS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="dataset root to create (ILSVRC2015 layout)")
    target.add_argument("--video", help="write one synthetic video file instead (e.g. demo.mp4)")
    target.add_argument(
        "--flow-pairs",
        help="write frame pairs with their ground-truth flow to this new folder instead "
        "(FlyingChairs layout; see --num-pairs)",
    )
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
        "--benchmark",
        action="store_true",
        help="with --output: write the accuracy benchmark's split (BENCHMARK_OPTIONS; the "
        "other options are ignored but --seed)",
    )
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=defaults["profile"],
        help="how long, strong and frequent the degradations are (default: %(default)s)",
    )
    parser.add_argument(
        "--num-pairs",
        type=int,
        default=1000,
        help="pairs written by --flow-pairs (default: %(default)s)",
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
    size = (args.height or defaults["size"][0], args.width or defaults["size"][1])
    if args.flow_pairs:
        write_flow_pairs(args.flow_pairs, args.num_pairs, size, seed=args.seed)
        print(f"wrote {args.num_pairs} pairs to {args.flow_pairs}")
        return
    if args.benchmark:
        generate_synthetic_dataset(args.output, seed=args.seed, **BENCHMARK_OPTIONS)
        print(f"wrote {args.output}")
        return
    generate_synthetic_dataset(
        args.output,
        seed=args.seed,
        num_train_videos=args.num_train_videos,
        num_val_videos=args.num_val_videos,
        num_det_images=args.num_det_images,
        num_frames=(args.min_frames, args.max_frames),
        size=size,
        profile=args.profile,
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
