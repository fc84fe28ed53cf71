"""
Export a vod_d2 detector as a streaming step: ``torch.export`` of its
:class:`~.step.StreamingStep`, an AOTInductor package of it, ONNX where the graph's ops have an
ONNX form, and ``export.json`` describing the step.

The frame's height and width are dynamic where the model allows it (``torch.export``'s
``Dim.AUTO``; a step that cannot be traced with a symbolic size, such as the key-frame steps,
whose ``torch.cond`` gives its outputs sizes of their own, is exported for the traced size only,
which ``export.json`` records). The state's sizes follow the frame's: each dimension that does
is ``ceil(H' / stride)`` of the padded frame height H' (or width), the stride found by probing
the model at several sizes and recorded, so that a runner makes the state of any frame size.
"""

import json
import logging
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.export import Dim

from .build import build_streaming_step, check_exportable
from .runtime import EXPORT_FILE
from .step import OUTPUTS, StreamingStep
from .tracing import traceable

__all__ = [
    "PACKAGE_FILE",
    "RUNNER_FILE",
    "ONNX_FILE",
    "ExportedPrograms",
    "trace_step",
    "default_frame_size",
    "graph_ops",
    "export_model",
]

logger = logging.getLogger(__name__)

PACKAGE_FILE = "step.pt2"
RUNNER_FILE = "run.py"
ONNX_FILE = "step.onnx"
# Frame sizes added to the traced one to find how the state's sizes follow the frame's.
_PROBES = (32, 47, 100)
_STRIDES = (1, 2, 4, 8, 16, 32, 64, 128)


class ExportedPrograms:
    """A step traced by :func:`trace_step`: its ``torch.export`` program and what it takes."""

    def __init__(self, step, fixed_size, size, state_rules):
        self.step = step
        #: (H, W) when the program takes that frame size only, else None.
        self.fixed_size = fixed_size
        #: The frame size traced.
        self.size = size
        #: Per state tensor, how its sizes follow the frame's (:func:`state_rules`).
        self.state_rules = state_rules


def default_frame_size(cfg) -> Tuple[int, int]:
    """The test input size of a 4:3 frame (``INPUT.MIN_SIZE_TEST``, ``MAX_SIZE_TEST``)."""
    from .runtime import resized_shape

    return resized_shape(480, 640, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


def _divisibility(step: StreamingStep) -> int:
    return step.preprocess(torch.zeros((3, 1, 1), dtype=torch.uint8)).shape[-1]


def state_rules(step: StreamingStep, height: int, width: int) -> Optional[List[List[Dict]]]:
    """
    How each state tensor's sizes follow the frame's: per tensor, ``{"dim": i, "of": "H" or
    "W", "stride": s}`` for each dimension i that is ``ceil(H' / s)`` of the padded frame height
    H' (width W'), checked at the traced size and at larger ones.

    Returns:
        list, or None when a dimension follows the frame size by no such rule.
    """
    divisibility = max(_divisibility(step), 1)

    def padded(size):
        return -(-size // divisibility) * divisibility

    base = [s.shape for s in step.state(height, width)]
    taller = {g: [s.shape for s in step.state(height + g, width)] for g in _PROBES}
    wider = {g: [s.shape for s in step.state(height, width + g)] for g in _PROBES}
    rules = []
    for i, shape in enumerate(base):
        tensor_rules = []
        for dim, value in enumerate(shape):
            for of, size, probes in (("H", height, taller), ("W", width, wider)):
                sizes = [(size, value)] + [(size + g, probes[g][i][dim]) for g in _PROBES]
                if all(v == value for _, v in sizes):
                    continue
                fits = [s for s in _STRIDES if all(-(-padded(z) // s) == v for z, v in sizes)]
                if not fits:
                    return None
                tensor_rules.append({"dim": dim, "of": of, "stride": fits[0]})
        rules.append(tensor_rules)
    return rules


def _is_symbolic(program, name: str) -> bool:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            return any(isinstance(d, torch.SymInt) for d in node.meta["val"].shape)
    return False


def trace_step(
    step: StreamingStep, size: Tuple[int, int], dynamic: bool = True
) -> ExportedPrograms:
    """
    ``torch.export`` the step on (H, W) = ``size`` frames.

    Args:
        step: the step, in eval mode.
        size: the frame size traced.
        dynamic: let the frame size vary where the model allows it; where the trace fails with
            a symbolic size, the step is traced again for ``size`` only (logged, and recorded as
            the programs' ``fixed_size``).
    """
    if dynamic and not step.symbolic_size:
        logger.info("%s is exported for %dx%d frames only", type(step).__name__, *size)
    elif dynamic:
        try:
            return _trace(step, size, True)
        except Exception as e:  # torch.export's many errors on what a symbolic size needs
            logger.warning(
                "%s: no trace with a symbolic frame size (%s: %s); tracing for %dx%d frames only",
                type(step).__name__,
                type(e).__name__,
                str(e).strip().splitlines()[0][:200],
                *size,
            )
    return _trace(step, size, False)


def _trace(
    step: StreamingStep, size: Tuple[int, int], dynamic: bool, portable: bool = False
) -> ExportedPrograms:
    height, width = size
    inputs = step.example_inputs(height, width)
    rules = state_rules(step, height, width) if dynamic else None
    dynamic = dynamic and rules is not None
    image_dims = {1: Dim.AUTO, 2: Dim.AUTO} if dynamic else None
    extra = [None] * len(step.extra_inputs)
    state = [
        {r["dim"]: Dim.AUTO for r in tensor_rules} if dynamic and tensor_rules else None
        for tensor_rules in (rules or [[] for _ in inputs[1 + len(extra) :]])
    ]
    rest = (*extra, *state)
    # The state and extra inputs are the step's *args: one entry, present when not empty.
    shapes = (image_dims, rest) if rest else (image_dims,)
    with torch.no_grad(), traceable(portable):
        program = torch.export.export(step, inputs, dynamic_shapes=shapes, strict=False)
    fixed = None if dynamic and _is_symbolic(program, "image") else (height, width)
    return ExportedPrograms(program, fixed, (height, width), None if fixed else rules)


def graph_ops(program) -> List[str]:
    """Every op a program calls (``namespace::name``), nested graphs (torch.cond's) included."""
    ops = set()
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                ops.add(node.target.name().split(".")[0])
    return sorted(ops)


def _describe_inputs(step: StreamingStep, programs: ExportedPrograms) -> List[Dict]:
    height, width = programs.size
    shape = [3, height, width] if programs.fixed_size else [3, "H", "W"]
    inputs = [
        {
            "name": "image",
            "shape": shape,
            "dtype": "uint8",
            "doc": "the frame resized for the test (INPUT.MIN_SIZE_TEST), INPUT.FORMAT channels",
        }
    ]
    for name in step.extra_inputs:
        inputs.append(
            {
                "name": name,
                "shape": [],
                "dtype": "int64",
                "doc": "the support slot the frame's payload replaces after its detection, -1: "
                "none (reservoir sampling: support_sampling)",
            }
        )
    return inputs


def _describe_outputs(step: StreamingStep) -> List[Dict]:
    d = step.num_detections
    shapes = {"boxes": [d, 4], "scores": [d], "classes": [d], "count": []}
    dtypes = {"boxes": "float32", "scores": "float32", "classes": "int64", "count": "int64"}
    notes = {
        "boxes": "(x0, y0, x1, y1) in the image's pixels, the count first by decreasing score, "
        "then zeros",
        "scores": "decreasing over the count first, then 0",
        "classes": "class index, -1 after the count",
        "count": "the number of detections",
    }
    return [
        {"name": name, "shape": shapes[name], "dtype": dtypes[name], "doc": notes[name]}
        for name in OUTPUTS
    ]


def _class_names(cfg) -> Optional[List[str]]:
    from detectron2.data import MetadataCatalog

    if not cfg.DATASETS.TEST:
        return None
    names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None)
    return list(names) if names else None


def export_model(
    cfg,
    output_dir: str,
    *,
    model=None,
    frame_size: Optional[Sequence[int]] = None,
    aoti: bool = True,
    onnx: str = "auto",
    dynamic: bool = True,
) -> Dict:
    """
    Export ``cfg``'s method as a streaming step into ``output_dir``.

    The config is checked first (:func:`~.build.check_exportable`), then turned into its causal
    variant (:func:`vod_d2.make_online`, recorded), the model built with ``MODEL.WEIGHTS``
    (unless given), its step traced, compiled and described.

    Args:
        cfg: the method's config (not modified).
        output_dir: the folder to write (created).
        model: the model to export instead of building ``cfg``'s (its causal config).
        frame_size: (H, W) to trace at (default: :func:`default_frame_size`).
        aoti: compile the AOTInductor package (``step.pt2``).
        onnx: "auto" (where the graph's ops have an ONNX form), "on" (fail otherwise), "off".
        dynamic: let the frame size vary where the model allows it.

    Returns:
        dict: what ``export.json`` holds.
    """
    from .. import make_online

    check_exportable(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    changes = make_online(cfg)
    if model is None:
        from detectron2.modeling import build_model

        from ..checkpoint import VideoCheckpointer, resolve_weights

        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            VideoCheckpointer(model, cfg=cfg).load(resolve_weights(cfg.MODEL.WEIGHTS))
    model.eval()
    step = build_streaming_step(model).eval()
    size = tuple(frame_size) if frame_size else default_frame_size(cfg)
    os.makedirs(output_dir, exist_ok=True)

    start = time.perf_counter()
    programs = trace_step(step, size, dynamic)
    trace_seconds = time.perf_counter() - start
    ops = graph_ops(programs.step)
    state = [spec.describe() for spec in step.state(*size)]
    for spec, rules in zip(state, programs.state_rules or [[] for _ in state]):
        spec["follows_frame"] = rules
    description = {
        "format": 1,
        "method": {
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
            "step": type(step).__name__,
            "causal_variant": {k: [_jsonable(a), _jsonable(b)] for k, (a, b) in changes.items()},
            "weights": cfg.MODEL.WEIGHTS,
        },
        "frame": {
            "min_size": cfg.INPUT.MIN_SIZE_TEST,
            "max_size": cfg.INPUT.MAX_SIZE_TEST,
            "format": cfg.INPUT.FORMAT,
            "traced_size": list(size),
            "fixed_size": list(programs.fixed_size) if programs.fixed_size else None,
            "size_divisibility": _divisibility(step),
        },
        "inputs": _describe_inputs(step, programs),
        "state": state,
        "outputs": _describe_outputs(step),
        "num_detections": step.num_detections,
        "device": str(step.device),
        "classes": _class_names(cfg),
        "uses_op_library": any(op.startswith("vod_d2::") for op in ops),
        "uses_torchvision_ops": any(op.startswith("torchvision::") for op in ops),
        "ops": [op for op in ops if not op.startswith("aten::")],
        "files": {"runner": RUNNER_FILE},
        "timings": {"trace_s": round(trace_seconds, 1)},
    }
    if getattr(step, "extra_inputs", ()):
        description["support_sampling"] = {
            "kind": "reservoir",
            "num": step.num_support,
            "seed": step.support_seed,
        }
    if aoti:
        start = time.perf_counter()
        torch._inductor.aoti_compile_and_package(
            programs.step, package_path=os.path.join(output_dir, PACKAGE_FILE)
        )
        description["files"]["package"] = PACKAGE_FILE
        description["timings"]["aoti_compile_s"] = round(time.perf_counter() - start, 1)
    if onnx != "off":
        description["onnx"] = _export_onnx(step, programs, output_dir, onnx == "on")
        if description["onnx"]["exported"]:
            description["files"]["onnx"] = ONNX_FILE
            description["timings"]["onnx_s"] = description["onnx"].pop("seconds")
    shutil.copyfile(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime.py"),
        os.path.join(output_dir, RUNNER_FILE),
    )
    with open(os.path.join(output_dir, EXPORT_FILE), "w") as f:
        json.dump(description, f, indent=2)
    return description


def _export_onnx(step, programs: ExportedPrograms, output_dir: str, required: bool) -> Dict:
    """
    The step as an ONNX model, traced again as a portable graph at the same frame size
    (dynamic or not as the package), run by onnxruntime against the package's program on
    random frames (:func:`_check_onnx`; a difference is logged and recorded).

    Returns:
        dict: ``{"exported": True, "check": ..., "seconds": ...}``, or ``{"exported": False,
        "why": one line}``; with ``required``, a failure raises ``ValueError`` instead.
    """
    from .onnx import export_onnx, onnx_blockers

    start = time.perf_counter()
    try:
        portable = _trace(step, programs.size, programs.fixed_size is None, portable=True)
        blockers = onnx_blockers(graph_ops(portable.step))
        if blockers:
            raise _NoOnnx(blockers[0])
        export_onnx(portable.step, os.path.join(output_dir, ONNX_FILE))
        check = _check_onnx(step, programs, output_dir)
    except Exception as e:  # the exporters' and onnxruntime's many errors: reported in one line
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, _NoOnnx):
            why = f"{type(e).__name__}: {why[:200]}{_model_frame(e)}"
        if required:
            raise ValueError(f"no ONNX export: {why}") from e
        logger.warning("no ONNX export: %s", why)
        return {"exported": False, "why": why}
    if not check["same"]:
        logger.warning(
            "the ONNX model's detections differ from the package's on random frames: %s", check
        )
    return {"exported": True, "check": check, "seconds": round(time.perf_counter() - start, 1)}


def _model_frame(error: BaseException) -> str:
    """`` (at file:line in function)`` of the innermost frame of vod_d2's models or layers in an
    error's traceback (or its causes'), to name what a failed trace stopped at."""
    import traceback

    found = ""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for frame in traceback.extract_tb(error.__traceback__):
            path = frame.filename.replace(os.sep, "/")
            if "/vod_d2/" in path and "/vod_d2/export/" not in path:
                where = path[path.rindex("/vod_d2/") + 1 :]
                found = f" (at {where}:{frame.lineno} in {frame.name})"
        error = error.__cause__ or error.__context__
    return found


class _NoOnnx(Exception):
    """An op of the step has no ONNX form (the message names it)."""


def _check_onnx(step, programs: ExportedPrograms, output_dir: str, frames: int = 4) -> Dict:
    """
    Stream random frames of the traced size through the ONNX model (onnxruntime) and through
    the exported program the package is compiled from: their largest differences, and whether
    they give the same detections within 1e-3 px and 1e-4.
    """
    import numpy as np
    import onnxruntime

    height, width = programs.size
    session = onnxruntime.InferenceSession(
        os.path.join(output_dir, ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    program = programs.step.module()
    generator = torch.Generator().manual_seed(0)
    inputs = list(step.example_inputs(height, width))
    onnx_state = package_state = inputs[1 + len(step.extra_inputs) :]
    extra = inputs[1 : 1 + len(step.extra_inputs)]
    boxes_diff = scores_diff = 0.0
    same = True
    for t in range(frames):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        if extra:  # SparseVOD's support slot: the first frames fill the sample
            extra = [torch.tensor(t if t < step.num_support else -1)]
        with torch.no_grad():
            expected = program(image, *extra, *package_state)
        feeds = {n: x.cpu().numpy() for n, x in zip(names, (image, *extra, *onnx_state))}
        got = [torch.from_numpy(np.asarray(o)) for o in session.run(None, feeds)]
        package_state, onnx_state = list(expected[4:]), got[4:]
        n = int(expected[3])
        if int(got[3]) != n:
            same = False
            continue
        # Equal scores may come in either order: compare each frame's sorted values.
        boxes_diff = max(boxes_diff, _sorted_diff(expected[0][:n], got[0][:n]))
        scores_diff = max(scores_diff, _sorted_diff(expected[1][:n], got[1][:n]))
    same = same and boxes_diff <= 1e-3 and scores_diff <= 1e-4
    return {
        "frames": frames,
        "max_box_diff": boxes_diff,
        "max_score_diff": scores_diff,
        "same": same,
    }


def _sorted_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.flatten().sort().values - b.flatten().sort().values).abs().max())


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
