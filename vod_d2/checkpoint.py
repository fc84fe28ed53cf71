"""
Loading ``MODEL.WEIGHTS`` with the mistakes a user makes named in one line, before any work:

* a local file that does not exist, or a URL that cannot be fetched (:func:`resolve_weights`);
* a checkpoint whose class or box predictor was trained for another number of classes than the
  model has (:func:`check_predictor_classes`). For inference and weight transfer it is an error
  naming both class counts and the key to set: detectron2 would skip those layers with a
  warning and predict random classes. For training it is fine-tuning to a new dataset, allowed,
  with one log line naming the layers that start fresh.

:class:`VideoCheckpointer` is detectron2's checkpointer with that check; train_net.py, the
trainer, :class:`~vod_d2.engine.VideoPredictor` (the demo) and tools/weight_transfer.py load
through it.
"""

import logging
import os
import pickle
import re
import urllib.parse
import urllib.request
import zipfile
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir

from .data.checks import model_num_classes

__all__ = [
    "CLASS_PREDICTORS",
    "VideoCheckpointer",
    "check_inference_weights",
    "check_predictor_classes",
    "predictor_mismatch",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

# detectron2's model zoo URLs (detectron2.utils.file_io.Detectron2Handler).
_DETECTRON2_PREFIX = "detectron2://"
_DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
# Seconds to wait for a weights server to answer.
_URL_TIMEOUT = 30

Shapes = Iterable[Tuple[str, Sequence[int], Sequence[int]]]

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


class VideoCheckpointer(DetectionCheckpointer):
    """
    detectron2's ``DetectionCheckpointer`` that checks the class predictors of the weights it
    loads against the model's class count (:func:`check_predictor_classes`): an error for
    inference, one log line naming the layers that start fresh for fine-tuning (instead of
    detectron2's per-tensor "Skip loading parameter" warnings for them).
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

    def load(self, path: str, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        self._fresh = check_predictor_classes(
            self._cfg,
            incompatible.incorrect_shapes,
            f"MODEL.WEIGHTS {self._path}",
            fine_tune=self._fine_tune,
        )
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        # The predictors that start fresh were named in one line already.
        fresh = set(self._fresh)
        super()._log_incompatible_keys(
            incompatible._replace(
                missing_keys=[k for k in incompatible.missing_keys if k not in fresh],
                incorrect_shapes=[s for s in incompatible.incorrect_shapes if s[0] not in fresh],
            )
        )
