"""
Loading ``MODEL.WEIGHTS``: a video method started from a single-frame checkpoint of its head,
and the mistakes a user makes named in one line, before any work.

**The two-stage recipe.** Video methods are fine-tuned from a single-frame detector of their
head, as every paper does and as users with their own data should (temporal models trained from
scratch on small data fail to learn). ``MODEL.WEIGHTS`` may therefore name a single-frame
checkpoint of the same head for any video method: :class:`VideoCheckpointer` loads it as that
method's start, through the STMN weight transfer
(:mod:`vod_d2.modeling.temporal.weight_transfer`) where the model has STMN cells the checkpoint
lacks, by name otherwise (the temporal modules' parameters, absent from the checkpoint, keep
their initialisation, which ``MODEL.VIDEO.IDENTITY_INIT`` makes the single-frame detector's),
and logs one line saying what was loaded and what starts fresh. :func:`new_parameter_names`
tells the optimizer which parameters those are (``SOLVER.NEW_MODULE_LR_FACTOR``).

**Mistakes, in one line:**

* a local file that does not exist, or a URL that cannot be fetched (:func:`resolve_weights`);
* a checkpoint whose class or box predictor was trained for another number of classes than the
  model has (:func:`check_predictor_classes`). For inference and weight transfer it is an error
  naming both class counts and the key to set: detectron2 would skip those layers with a
  warning and predict random classes. For training it is fine-tuning to a new dataset, allowed,
  with one log line naming the layers that start fresh.

train_net.py, the trainer, :class:`~vod_d2.engine.VideoPredictor` (the demo) and
tools/weight_transfer.py load through this module.
"""

import logging
import os
import pickle
import re
import urllib.parse
import urllib.request
import zipfile
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir
from torch import nn

from .data.checks import model_num_classes
from .modeling.temporal.gate import Gate
from .modeling.temporal.weight_transfer import DEFAULT_SOURCE_CONV, transfer_single_frame_weights

__all__ = [
    "CLASS_PREDICTORS",
    "VideoCheckpointer",
    "check_inference_weights",
    "check_predictor_classes",
    "convert_checkpoint",
    "load_model_state",
    "new_parameter_names",
    "predictor_mismatch",
    "resolve_weights",
    "start_state",
]

logger = logging.getLogger(__name__)

# detectron2's model zoo URLs (detectron2.utils.file_io.Detectron2Handler).
_DETECTRON2_PREFIX = "detectron2://"
_DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
# Seconds to wait for a weights server to answer.
_URL_TIMEOUT = 30

Shapes = Iterable[Tuple[str, Sequence[int], Sequence[int]]]
# A state-dict key of an STMN cell, which a single-frame checkpoint converts into.
_STMN_CELL = ".cell.input_conv.weight"

# The layers whose outputs (a parameter's first dimension) grow with the class count K, by the
# end of the module name: whether they tell K (a classifier) or only follow it (class-specific
# boxes), and their outputs that are not per class (a softmax's background).
CLASS_PREDICTORS = {
    "box_predictor.cls_score": ("classes", 1),  # Fast R-CNN: K + 1; R-FCN: (K + 1) k^2 maps
    "box_predictor.cls_offsets.conv": ("classes", 1),  # deformable R-FCN: 2 (K + 1) k^2
    "class_logits": ("classes", 0),  # Sparse R-CNN, each stage: K sigmoid scores
    "head.cls_score": ("classes", 0),  # RetinaNet: A K
    "box_predictor.bbox_pred": ("boxes", 0),  # class-specific: 4 K deltas (R-FCN: 4 K k^2)
}


def _predictor(name: str) -> Optional[Tuple[str, int]]:
    """The :data:`CLASS_PREDICTORS` entry of a parameter or buffer name, or None."""
    module = name.rsplit(".", 1)[0]
    for suffix, entry in CLASS_PREDICTORS.items():
        if module == suffix or module.endswith("." + suffix):
            return entry
    return None


def predictor_mismatch(shapes: Shapes, num_classes: int) -> Tuple[Optional[int], List[str]]:
    """
    The class predictors of a checkpoint that do not fit a model.

    Args:
        shapes: ``(name, checkpoint shape, model shape)`` of tensors both have (detectron2's
            ``incorrect_shapes``, or every shared name).
        num_classes: the model's class count.

    Returns:
        tuple: the checkpoint's class count (None when no differing classifier tells it), and
        the names of the :data:`CLASS_PREDICTORS` tensors whose number of outputs differs.
    """
    checkpoint_classes, names = None, []
    for name, checkpoint_shape, model_shape in shapes:
        entry = _predictor(name)
        if entry is None or checkpoint_shape[:1] == model_shape[:1]:
            continue
        names.append(name)
        kind, background = entry
        per_class, rest = divmod(model_shape[0], num_classes + background)
        if kind == "classes" and checkpoint_classes is None and not rest:
            classes, rest = divmod(checkpoint_shape[0], per_class)
            if not rest and classes > background:
                checkpoint_classes = classes - background
    return checkpoint_classes, names


def check_predictor_classes(cfg, shapes: Shapes, weights: str, *, fine_tune: bool) -> List[str]:
    """
    Refuse (inference, transfer) or log (fine-tuning) class predictors that do not fit.

    Args:
        cfg: the model's config (its class count, :func:`~vod_d2.data.model_num_classes`).
        shapes: see :func:`predictor_mismatch`.
        weights: how to name the checkpoint, e.g. ``"MODEL.WEIGHTS model_final.pth"``.
        fine_tune: whether the model is trained from the checkpoint: its predictors for another
            class count then start fresh.

    Returns:
        list[str]: the names of the tensors that start fresh (empty when all fit).

    Raises:
        ValueError: unless ``fine_tune``, one line naming both class counts and the key to set.
    """
    key, num_classes = model_num_classes(cfg)
    checkpoint_classes, names = predictor_mismatch(shapes, num_classes)
    if not names:
        return []
    # One name per layer, the stages of a cascade (head.stages.0 ... 5) as one.
    layers = ", ".join(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n.rsplit(".", 1)[0]) for n in names))
    if checkpoint_classes is None:
        problem = f"{weights} has class-specific boxes where the model has not, or the reverse"
        fix = "set MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG as it was trained"
    else:
        problem = (
            f"{weights} was trained for {checkpoint_classes} classes but {key} is {num_classes}"
        )
        fix = f"set {key} {checkpoint_classes}"
    if fine_tune:
        logger.warning(f"{problem}: fine-tuning, these layers start fresh: {layers}")
        return names
    raise ValueError(f"{problem}, so its class and box predictors ({layers}) do not fit: {fix}")


def resolve_weights(weights: str, key: str = "MODEL.WEIGHTS") -> str:
    """
    The local path of a weights file, downloaded (and cached) first if it is a URL
    (``https://``, ``detectron2://``...).

    Raises:
        FileNotFoundError: one line: a local file that does not exist, or a URL that cannot be
            fetched (no network), saying how to give the file's local path instead.
    """
    if "://" not in weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{key} {weights} does not exist")
        return weights
    url = weights.replace(_DETECTRON2_PREFIX, _DETECTRON2_URL, 1)
    try:
        if url.startswith(("http://", "https://")) and not os.path.isfile(_cached_copy(url)):
            # Reach the server first: without network, iopath's download prints a progress
            # bar and an error before raising. Only the headers are read here.
            urllib.request.urlopen(url, timeout=_URL_TIMEOUT).close()
        return PathManager.get_local_path(weights)
    except OSError as e:  # urllib's URLError and HTTPError are OSErrors
        raise FileNotFoundError(
            f"{key} {weights} could not be fetched from {url} ({getattr(e, 'reason', e)}): "
            f"download it where there is network and give its local path, "
            f"{key} /path/to/{os.path.basename(url)}"
        ) from None


def _cached_copy(url: str) -> str:
    """Where iopath's HTTPURLHandler keeps its download of ``url`` (its own rule)."""
    folder = os.path.dirname(urllib.parse.urlparse(url).path.lstrip("/"))
    return os.path.join(get_cache_dir(), folder, url.split("/")[-1])


def check_inference_weights(cfg) -> None:
    """
    Check, before any process starts, that ``MODEL.WEIGHTS`` can be used for inference with
    the model of ``cfg``: the file exists or is fetched (:func:`resolve_weights`) and its class
    predictors fit the model's class count (:func:`check_predictor_classes`). The model is
    built on the CPU for its shapes; nothing is loaded into it.

    Raises:
        FileNotFoundError, ValueError: one line, as :func:`resolve_weights` and
            :func:`check_predictor_classes` say.
    """
    path = resolve_weights(cfg.MODEL.WEIGHTS)
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    reader = _SharedShapes(build_model(cpu_cfg))
    try:
        reader.load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is not a checkpoint (loading it raises "
            f"{type(e).__name__}); give the model_final.pth (or model_*.pth) train_net.py wrote"
        ) from None
    check_predictor_classes(
        cfg, reader.shapes, f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}", fine_tune=False
    )


class _SharedShapes(DetectionCheckpointer):
    """
    Reads a checkpoint as detectron2 loads it (any of its formats), keeping the shapes of the
    tensors the model also has, in ``shapes``: ``(name, checkpoint shape, model shape)``.
    Nothing is loaded into the model, and nothing is logged.
    """

    def __init__(self, model):
        super().__init__(model)
        self.shapes: List[Tuple[str, Sequence[int], Sequence[int]]] = []

    def _load_model(self, checkpoint):
        model_state = self.model.state_dict()
        for name, value in checkpoint.pop("model").items():
            name = name[len("module.") :] if name.startswith("module.") else name
            if name in model_state:
                self.shapes.append((name, np.shape(value), tuple(model_state[name].shape)))
        return None  # no incompatible keys to log


def load_model_state(path: str) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of a detectron2 ``.pth`` checkpoint at ``path`` (tensors only)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a detectron2 .pth checkpoint (a 'model' state dict)")
    return state


def start_state(
    model: nn.Module, state: Dict[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """
    The state to load into ``model`` from a checkpoint's ``state``, and what it leaves fresh.

    Args:
        model: the model to start.
        state: the checkpoint's state dict (names as the model's, tensors).

    Returns:
        tuple: the state dict to load; the names of the model's parameters it does not provide
        (they keep their initialisation), sorted; and how it was made: ``"transfer"`` (a
        single-frame checkpoint through the STMN weight transfer) or ``"direct"``.
    """
    target = model.state_dict()
    needs_transfer = any(k.endswith(_STMN_CELL) for k in target) and not any(
        k.endswith(_STMN_CELL) for k in state
    )
    if needs_transfer and any(k.startswith("backbone.") for k in state):
        converted, report = transfer_single_frame_weights(state, target)
        kept = set(report.kept_init)
        fresh = sorted(name for name, _ in model.named_parameters() if name in kept)
        return converted, fresh, "transfer"
    fresh = sorted(name for name, _ in model.named_parameters() if name not in state)
    return state, fresh, "direct"


def new_parameter_names(model: nn.Module, state: Dict[str, torch.Tensor]) -> Set[str]:
    """
    The parameters of ``model`` that start fresh when ``state`` is loaded into it: those the
    checkpoint does not provide, except the ones a module loaded from its own pretrained
    weights (a flow network's ``MODEL.FLOW.WEIGHTS``: its ``loaded_weights`` is set). Empty when
    the checkpoint provides none of the model's parameters by name (ImageNet backbone weights,
    which detectron2 maps by heuristics, or no checkpoint): then nothing is a new module.
    """
    _, fresh, _ = start_state(model, state)
    if len(fresh) == sum(1 for _ in model.parameters()):
        return set()
    pretrained = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if getattr(module, "loaded_weights", "")
        for name, _ in module.named_parameters()
    }
    return set(fresh) - pretrained


def convert_checkpoint(cfg, input_path: str, output_path: str, source_conv=DEFAULT_SOURCE_CONV):
    """
    Write an STMN checkpoint initialised from a single-frame one (the weight transfer, done
    once instead of at every load).

    Args:
        cfg: config of the STMN model (with the vod_d2 keys).
        input_path: the single-frame detector's ``.pth`` checkpoint.
        output_path: where to write ``{"model": state_dict}`` for ``MODEL.WEIGHTS``.
        source_conv: see :func:`transfer_single_frame_weights`.

    Returns:
        TransferReport

    Raises:
        ValueError: one line, when the input's class predictors were trained for another class
            count than the config's (:func:`check_predictor_classes`).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    target = build_model(cfg).state_dict()
    source = load_model_state(input_path)
    shared = [(k, v.shape, target[k].shape) for k, v in source.items() if k in target]
    check_predictor_classes(cfg, shared, f"--input {input_path}", fine_tune=False)
    state, report = transfer_single_frame_weights(source, target, source_conv)
    logger.info(
        f"{input_path} -> {output_path}: {len(report.converted)} converted into STMN cells, "
        f"{len(report.copied)} copied, {len(report.widened)} widened, "
        f"{len(report.kept_init)} left at initialisation"
    )
    logger.info(f"W_z, W_r, W: {report.mapping or 'left at initialisation'}")
    for name in ("converted", "widened", "kept_init"):
        for key in getattr(report, name):
            logger.info(f"  {name}: {key}")
    torch.save({"model": state}, output_path)
    return report


class VideoCheckpointer(DetectionCheckpointer):
    """
    detectron2's ``DetectionCheckpointer`` that

    * starts a video model from a single-frame checkpoint of its head (:func:`start_state`;
      checkpoints of the model itself, to resume or evaluate, load as detectron2 loads them),
      with one log line saying what starts fresh;
    * checks the class predictors of the weights it loads against the model's class count
      (:func:`check_predictor_classes`): an error for inference, one log line naming the layers
      that start fresh for fine-tuning (instead of detectron2's per-tensor "Skip loading
      parameter" warnings for them).
    """

    def __init__(self, model, save_dir: str = "", *, cfg, fine_tune: bool = False, **kwargs):
        """
        Args:
            model, save_dir, kwargs: as for ``DetectionCheckpointer``.
            cfg: the model's config.
            fine_tune: the model is trained from the weights (see :func:`check_predictor_classes`).
        """
        super().__init__(model, save_dir, **kwargs)
        self._cfg = cfg
        self._fine_tune = fine_tune
        self._path = ""
        self._fresh: List[str] = []
        self._started: List[str] = []

    def load(self, path: str, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            state, self._started, how = start_state(self.model, checkpoint["model"])
            checkpoint["model"] = state
            self._log_start(self._started, how)
        incompatible = super()._load_model(checkpoint)
        self._fresh = check_predictor_classes(
            self._cfg,
            incompatible.incorrect_shapes,
            f"MODEL.WEIGHTS {self._path}",
            fine_tune=self._fine_tune,
        )
        return incompatible

    def _log_start(self, fresh: List[str], how: str) -> None:
        """One line: a model started from a checkpoint that lacks some of its parameters."""
        if not fresh:
            return
        total = sum(1 for _ in self.model.parameters())
        modules = sorted({".".join(name.split(".")[:2]) for name in fresh})
        via = " through the STMN weight transfer" if how == "transfer" else ""
        logger.info(
            f"{type(self.model).__name__} starts from {self._path or 'the checkpoint'}{via}: "
            f"{total - len(fresh)} of its {total} parameter tensors loaded, {len(fresh)} start "
            f"at their initialisation ({', '.join(modules)})"
        )

    def _log_incompatible_keys(self, incompatible) -> None:
        # The predictors and the modules that start fresh were named in one line already, and a
        # residual gate's buffers (the scheduled gate's opening) start closed by design.
        fresh = set(self._fresh) | set(self._started) | _gate_buffers(self.model)
        super()._log_incompatible_keys(
            incompatible._replace(
                missing_keys=[k for k in incompatible.missing_keys if k not in fresh],
                incorrect_shapes=[s for s in incompatible.incorrect_shapes if s[0] not in fresh],
            )
        )


def _gate_buffers(model: nn.Module) -> Set[str]:
    """The state_dict names of the buffers of ``model``'s residual gates."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, Gate)
        for name, _ in module.named_buffers(recurse=False)
    }
