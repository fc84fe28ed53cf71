"""VideoTrainer: detectron2's DefaultTrainer with video loaders, evaluator and inference loop."""

import contextlib
import functools
import logging
from collections import OrderedDict

import detectron2.engine.defaults as d2_defaults
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, print_csv_format
from detectron2.utils import comm

from ..checkpoint import VideoCheckpointer
from ..data import FrameReadError, build_video_test_loader, build_video_train_loader, check_datasets
from ..evaluation import VIDEvaluator
from ..postprocessing import seq_nms_instances, seq_nms_kwargs_from_config
from .inference import inference_on_videos
from .optimizer import build_optimizer

__all__ = ["VideoTrainer", "build_video_postprocess"]

logger = logging.getLogger(__name__)


def build_video_postprocess(cfg):
    """
    The per-video post-processing the config asks for at test time (Seq-NMS when
    ``cfg.TEST.SEQ_NMS.ENABLED``), as a callable on a video's ``(frame, output)`` list, or None.
    """
    if not cfg.TEST.SEQ_NMS.ENABLED:
        return None
    kwargs = seq_nms_kwargs_from_config(cfg)

    def apply(done):
        rescored = seq_nms_instances([output["instances"] for _, output in done], **kwargs)
        return [(frame, {**output, "instances": r}) for (frame, output), r in zip(done, rescored)]

    return apply


def create_ddp_model(model, **kwargs):
    """
    detectron2's ``create_ddp_model`` for models on any device: it passes
    ``device_ids=[local rank]``, which DistributedDataParallel refuses for a model on the CPU
    (multi-process CPU training with gloo); a CPU model gets ``device_ids=None`` instead.
    """
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _create_ddp_model(model, **kwargs)


_create_ddp_model = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _fine_tuning_checkpointer(cfg):
    """DefaultTrainer.__init__ builds its checkpointer with the module-level
    DetectionCheckpointer of detectron2.engine.defaults; this gives it a VideoCheckpointer that
    fine-tunes: a video model starts from a single-frame checkpoint of its head, and weights for
    another class count load with one line naming the fresh layers."""
    original = d2_defaults.DetectionCheckpointer
    d2_defaults.DetectionCheckpointer = functools.partial(
        VideoCheckpointer, cfg=cfg, fine_tune=True
    )
    try:
        yield
    finally:
        d2_defaults.DetectionCheckpointer = original


class _NoFrameReadTraceback(logging.Filter):
    """
    Drops detectron2's "Exception during training" record of an unreadable frame: its traceback
    says nothing that :class:`FrameReadError`'s one line (which names the file) does not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], FrameReadError))


@contextlib.contextmanager
def _cpu_aware_ddp():
    """DefaultTrainer.__init__ wraps the model with the module-level create_ddp_model of
    detectron2.engine.defaults; this is the one place to give it :func:`create_ddp_model`."""
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _create_ddp_model


class ModuleRecordsWriter(HookBase):
    """
    Puts what the model's modules report of themselves into the event storage every ``period``
    iterations, so that metrics.json holds their curves beside the losses: every module with a
    ``training_records()`` method returning ``{record: value}`` gets ``<record>/<module name>``
    (the residual gates' opening, ``gate/...``; LSTS's sampling locations, ``locations_rms/...``).
    """

    def __init__(self, model, period: int = 20):
        """
        Args:
            model: the trained model (a DDP wrapper is unwrapped).
            period: iterations between two records (detectron2's writers' default: 20).
        """
        self._model = getattr(model, "module", model)
        self._period = period

    def after_step(self):
        iteration = self.trainer.iter + 1
        if iteration % self._period and iteration != self.trainer.max_iter:
            return
        records = {
            f"{record}/{name}": value
            for name, module in self._model.named_modules()
            if callable(getattr(module, "training_records", None))
            for record, value in module.training_records().items()
        }
        if records:
            self.trainer.storage.put_scalars(**records, smoothing_hint=False)


class VideoTrainer(DefaultTrainer):
    """
    Trains and evaluates vod_d2 models with detectron2's loop, hooks, checkpointer and AMP;
    only the data loaders, the evaluator and the test loop (which walks videos in order and
    resets the model's state at each new video) are specific to video, and multi-process
    training also works for models on the CPU (gloo).
    """

    def __init__(self, cfg):
        # The checks train_net.py runs, for Python users too: a wrong dataset name or class
        # count fails here, in one line, not after training.
        check_datasets(cfg)
        with _cpu_aware_ddp(), _fine_tuning_checkpointer(cfg):
            super().__init__(cfg)

    def train(self):
        """
        detectron2's training loop; a frame that cannot be read stops it with
        :class:`FrameReadError`, without detectron2's traceback in the log.
        """
        train_loop_logger = logging.getLogger(TrainerBase.__module__)
        no_traceback = _NoFrameReadTraceback()
        train_loop_logger.addFilter(no_traceback)
        try:
            return super().train()
        finally:
            train_loop_logger.removeFilter(no_traceback)

    def build_hooks(self):
        """detectron2's hooks, with :class:`ModuleRecordsWriter` before its periodic writer."""
        hooks = super().build_hooks()
        writer = next(
            (i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.PeriodicWriter)), len(hooks)
        )
        hooks.insert(writer, ModuleRecordsWriter(self.model))
        return hooks

    @classmethod
    def build_optimizer(cls, cfg, model):
        """:func:`vod_d2.engine.optimizer.build_optimizer` (SGD or AdamW, model overrides)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_video_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_video_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return VIDEvaluator.from_config(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        Evaluate ``model`` on every dataset of ``cfg.DATASETS.TEST`` with
        :func:`inference_on_videos`.

        Args:
            cfg: the config.
            model: a video model (or a DDP wrapper of one) holding the weights to evaluate.
            evaluators (list[DatasetEvaluator] or None): one per test dataset; built by
                :meth:`build_evaluator` when None.

        Returns:
            OrderedDict: dataset name -> the evaluator's results.
        """
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets"
            )
        postprocess = build_video_postprocess(cfg)
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = (
                evaluators[idx]
                if evaluators is not None
                else cls.build_evaluator(cfg, dataset_name)
            )
            if isinstance(evaluator, (list, tuple)):
                evaluator = DatasetEvaluators(evaluator)
            results[dataset_name] = inference_on_videos(model, data_loader, evaluator, postprocess)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name} in csv format:")
                print_csv_format(results[dataset_name])
        return results
