#!/usr/bin/env python
"""
Run a vod_d2 detector exported by ``tools/export_model.py``, without vod_d2's modelling code.

An export folder holds the step as an AOTInductor package (``step.pt2``), possibly as ONNX
(``step.onnx``), and ``export.json``: the step's inputs, state and outputs (names, shapes,
dtypes, start values, how the state's sizes follow the frame's), the frame preprocessing and
the support sampling. This file (copied there as ``run.py``) is all a deployment needs besides
PyTorch (or onnxruntime), NumPy, Pillow and, where the step calls them, vod_d2's compiled ops
(``vod_d2/_C*.so``, loaded as a library, without importing vod_d2) and torchvision's::

    python DIR/run.py --video-input in.mp4 --json detections.json
    python DIR/run.py --video-input in.mp4 --backend onnx

In Python, :class:`ExportedStream` takes BGR frames (OpenCV's) one at a time and gives each
frame's detections at once; :class:`ExportedStep` is the bare step with its inputs checked.
"""

import argparse
import glob
import importlib.util
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "EXPORT_FILE",
    "ExportedStep",
    "ExportedStream",
    "InputError",
    "ReservoirSlots",
    "load_op_library",
    "postprocess",
    "resized_shape",
]

#: The description of an export folder.
EXPORT_FILE = "export.json"

_DTYPES = {"uint8": torch.uint8, "int64": torch.int64, "float32": torch.float32}


class InputError(ValueError):
    """A frame or state tensor that does not fit the exported step (a one-line message)."""


def load_op_library(path: Optional[str] = None) -> Optional[str]:
    """
    Load vod_d2's compiled ops (``torch.ops.vod_d2.*``) as a library, without importing vod_d2
    (whose package would import its modelling code).

    Args:
        path: the library (``vod_d2/_C*.so``); default: the one beside the installed vod_d2.

    Returns:
        str or None: the library loaded, None where none is found (a step without vod_d2 ops
        runs without it).
    """
    if path is None:
        spec = importlib.util.find_spec("vod_d2")
        folders = list(spec.submodule_search_locations or []) if spec else []
        found = [f for folder in folders for f in sorted(glob.glob(os.path.join(folder, "_C*")))]
        if not found:
            return None
        path = found[0]
    torch.ops.load_library(path)
    return path


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` output size for a (height, width) frame."""
    size = min_size * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    count: torch.Tensor,
    input_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    A step's padded detections as detectron2's ``detector_postprocess`` gives them: the
    ``count`` first, scaled from the step's input size to the frame's, clipped to it, boxes of
    no area dropped.

    Returns:
        (boxes (n, 4) float32 (x0, y0, x1, y1), scores (n,) float32, classes (n,) int64).
    """
    n = int(count)
    boxes = boxes[:n].detach().float().clone()
    scale_y = output_size[0] / input_size[0]
    scale_x = output_size[1] / input_size[1]
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    height, width = output_size
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return (
        boxes[keep].cpu().numpy(),
        scores[:n][keep].detach().cpu().numpy(),
        classes[:n][keep].detach().cpu().numpy(),
    )


class ReservoirSlots:
    """
    The support sample of SparseVOD's online variant (vod_d2's ``GlobalSupport`` without a
    video length): up to ``num`` past frames by reservoir sampling, the same draws as eager
    inference. :meth:`next_slot` says where each frame's payload goes (-1: nowhere).
    """

    def __init__(self, num: int, seed: int):
        self.num = num
        self.seed = seed
        self.reset()

    def reset(self):
        self.rng = np.random.default_rng([self.seed, 1])
        self.filled = 0
        self.index = 0

    def next_slot(self) -> int:
        """The slot of the frame arriving (frames in order from 0), or -1."""
        index, self.index = self.index, self.index + 1
        if self.filled < self.num:
            self.filled += 1
            return self.filled - 1
        slot = int(self.rng.integers(0, index + 1))
        return slot if slot < self.num else -1


class ExportedStep:
    """
    The exported step of an export folder, as a function of tensors, its inputs checked
    against ``export.json``: ``step(image, *extra, *state) -> [boxes, scores, classes, count,
    *new_state]``.
    """

    def __init__(self, directory: str, backend: str = "aoti", op_library: Optional[str] = None):
        """
        Args:
            directory: the export folder.
            backend: "aoti" (the AOTInductor package) or "onnx" (onnxruntime).
            op_library: vod_d2's compiled ops, if not the installed vod_d2's.
        """
        with open(os.path.join(directory, EXPORT_FILE)) as f:
            self.description = json.load(f)
        self.directory = directory
        self.backend = backend
        self.inputs: List[Dict] = self.description["inputs"]
        self.state_specs: List[Dict] = self.description["state"]
        files = self.description["files"]
        # The package runs on the device it was compiled for (MODEL.DEVICE), ONNX on the CPU.
        device = self.description.get("device", "cpu") if backend == "aoti" else "cpu"
        self.device = torch.device(device)
        if backend == "aoti":
            if self.description.get("uses_op_library"):
                if load_op_library(op_library) is None:
                    raise RuntimeError(
                        "the step calls vod_d2's compiled ops: install vod_d2 (its _C library) "
                        "or give the library's path"
                    )
            if self.description.get("uses_torchvision_ops"):
                import torchvision  # noqa: F401  (registers torchvision's ops)
            if "package" not in files:
                raise InputError(f"{directory} has no AOTInductor package (exported without it)")
            self._step = torch._inductor.aoti_load_package(
                os.path.join(directory, files["package"])
            )
        elif backend == "onnx":
            if "onnx" not in files:
                raise InputError(f"{directory} has no ONNX export ({EXPORT_FILE} lists none)")
            import onnxruntime

            self._session = onnxruntime.InferenceSession(
                os.path.join(directory, files["onnx"]), providers=["CPUExecutionProvider"]
            )
            self._step = self._onnx
        else:
            raise ValueError(f"backend must be 'aoti' or 'onnx', got {backend!r}")

    def _onnx(self, *tensors: torch.Tensor) -> List[torch.Tensor]:
        names = [i.name for i in self._session.get_inputs()]
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
        return [torch.from_numpy(np.asarray(o)) for o in self._session.run(None, feeds)]

    @property
    def frame_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) the step was exported for when it takes no other size, else None."""
        size = self.description["frame"]["fixed_size"]
        return tuple(size) if size else None

    def expected_shapes(self, height: int, width: int) -> Dict[str, Tuple[int, ...]]:
        """The shape of every input after the image, by name, for (H, W) frames."""
        divisibility = max(self.description["frame"]["size_divisibility"], 1)
        shapes = {spec["name"]: tuple(spec["shape"]) for spec in self.inputs[1:]}
        for spec in self.state_specs:
            shape = list(spec["shape"])
            for rule in spec["follows_frame"]:
                size = height if rule["of"] == "H" else width
                padded = -(-size // divisibility) * divisibility
                shape[rule["dim"]] = -(-padded // rule["stride"])
            shapes[spec["name"]] = tuple(shape)
        return shapes

    def initial_state(self, height: int, width: int) -> List[torch.Tensor]:
        """The state at the start of a video of (H, W) frames: every tensor at its fill."""
        shapes = self.expected_shapes(height, width)
        return [
            torch.full(shapes[s["name"]], s["fill"], dtype=_DTYPES[s["dtype"]], device=self.device)
            for s in self.state_specs
        ]

    def reset(self, image: torch.Tensor) -> List[torch.Tensor]:
        """The state at the start of a video whose frames are of ``image``'s size."""
        self._check_image(image)
        return self.initial_state(*image.shape[1:])

    def _check_image(self, image: torch.Tensor):
        spec = self.inputs[0]
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputError(f"image: expected a (3, H, W) {spec['dtype']} tensor, got {shape}")
        if image.dtype != _DTYPES[spec["dtype"]]:
            raise InputError(f"image: expected dtype {spec['dtype']}, got {image.dtype}")
        fixed = self.frame_size
        if fixed and tuple(image.shape[1:]) != fixed:
            raise InputError(
                f"image: expected shape (3, {fixed[0]}, {fixed[1]}) (the step was exported for "
                f"that frame size only), got {tuple(image.shape)}"
            )

    def check(self, image: torch.Tensor, inputs: Sequence[torch.Tensor]):
        """
        Raise :class:`InputError` (one line naming the tensor and its expected shape) unless
        ``image`` and ``inputs`` (extra inputs, then state) fit the step.
        """
        self._check_image(image)
        specs = self.inputs[1:] + self.state_specs
        if len(inputs) != len(specs):
            names = ", ".join(s["name"] for s in specs)
            raise InputError(
                f"the step takes {len(specs)} tensors after the image ({names}), got {len(inputs)}"
            )
        expected = self.expected_shapes(*image.shape[1:])
        for spec, tensor in zip(specs, inputs):
            name = spec["name"]
            shape = expected[name]
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = (
                    tuple(tensor.shape)
                    if isinstance(tensor, torch.Tensor)
                    else type(tensor).__name__
                )
                raise InputError(
                    f"{name}: expected shape {shape} for {tuple(image.shape[1:])} frames, got {got}"
                )
            if tensor.dtype != _DTYPES[spec["dtype"]]:
                raise InputError(f"{name}: expected dtype {spec['dtype']}, got {tensor.dtype}")

    def __call__(self, image: torch.Tensor, *inputs: torch.Tensor) -> List[torch.Tensor]:
        self.check(image, inputs)
        tensors = [t.to(self.device) for t in (image, *inputs)]
        return list(self._step(*tensors))


class ExportedStream:
    """
    A video through an exported step, frame by frame: BGR frames in (OpenCV's), each frame's
    detections out at once, in the frame's pixels (as ``VideoPredictor.put`` gives them).
    """

    def __init__(self, directory: str, backend: str = "aoti", op_library: Optional[str] = None):
        self.step = ExportedStep(directory, backend, op_library)
        frame = self.step.description["frame"]
        self.min_size, self.max_size = frame["min_size"], frame["max_size"]
        self.input_format = frame["format"]
        sampling = self.step.description.get("support_sampling")
        self.slots = ReservoirSlots(sampling["num"], sampling["seed"]) if sampling else None
        self.reset()

    def reset(self):
        """Start a new video."""
        self.state: Optional[List[torch.Tensor]] = None
        self.frame_shape: Optional[Tuple[int, int]] = None
        if self.slots is not None:
            self.slots.reset()

    def image(self, frame: np.ndarray) -> torch.Tensor:
        """A (H, W, 3) uint8 BGR frame as the step's (3, h, w) input: the test resize
        (detectron2's ``ResizeShortestEdge`` with PIL's bilinear filter) in the model's channel
        order."""
        from PIL import Image

        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(
                f"frame: expected a (H, W, 3) uint8 BGR array, got {frame.dtype} {frame.shape}"
            )
        if self.input_format == "RGB":
            frame = frame[:, :, ::-1]
        height, width = frame.shape[:2]
        new_h, new_w = resized_shape(height, width, self.min_size, self.max_size)
        resized = np.asarray(
            Image.fromarray(np.ascontiguousarray(frame)).resize((new_w, new_h), Image.BILINEAR)
        )
        return torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))

    def put(self, frame: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Args:
            frame (ndarray): the video's next frame, (H, W, 3) uint8 BGR.

        Returns:
            (boxes (n, 4), scores (n,), classes (n,)): its detections, in the frame's pixels.
        """
        height, width = frame.shape[:2]
        if self.frame_shape is None:
            self.frame_shape = (height, width)
        elif (height, width) != self.frame_shape:
            raise InputError(
                f"frame: {height}x{width}, but the video's first frame is "
                f"{self.frame_shape[0]}x{self.frame_shape[1]}"
            )
        image = self.image(frame)
        if self.state is None:
            self.state = self.step.reset(image)
        extra = []
        if self.slots is not None:
            extra = [torch.tensor(self.slots.next_slot(), dtype=torch.int64)]
        boxes, scores, classes, count, *self.state = self.step(image, *extra, *self.state)
        return postprocess(boxes, scores, classes, count, tuple(image.shape[1:]), (height, width))


def _read_frames(path: str):
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise SystemExit(f"run.py: error: cannot open video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Stream a video through an exported vod_d2 step")
    parser.add_argument(
        "--export-dir",
        default=os.path.dirname(os.path.abspath(__file__)),
        help="the export folder (default: this file's)",
    )
    parser.add_argument("--video-input", required=True, help="a video file")
    parser.add_argument("--json", help="write the detections here (one record per detection)")
    parser.add_argument("--backend", default="aoti", choices=("aoti", "onnx"))
    parser.add_argument("--confidence-threshold", type=float, default=0.0)
    args = parser.parse_args(argv)
    stream = ExportedStream(args.export_dir, args.backend)
    records, count = [], 0
    try:
        for index, frame in enumerate(_read_frames(args.video_input)):
            boxes, scores, classes = stream.put(frame)
            count += 1
            for box, score, cls in zip(boxes, scores, classes):
                if score >= args.confidence_threshold:
                    x0, y0, x1, y1 = (float(v) for v in box)
                    records.append(
                        {
                            "frame_idx": index,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score),
                            "category": int(cls),
                        }
                    )
    except InputError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 1
    print(f"{count} frames, {len(records)} detections")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
