"""
Accuracy of the video methods on the synthetic benchmark split, paired against their baselines.

The protocol (README, "Measured"), on ``synthetic_bench_*`` (48 validation videos of 40-60
frames, 120 training videos, the "hard" degradation profile):

1. **Warm starts.** Each head's single-frame detector (``HEADS``) is trained once, seed 0, on
   the VID + DET training split, with the config's learning rate divided by 10 at 75% of
   ``iters``, and evaluated every ``iters / 8`` iterations (its curve is printed). Cached.
2. **Flow pretraining.** DFF and Impression start their FlowNet-S from pretraining on
   synthetic frame pairs (:mod:`vod_d2.modeling.flow.pretrain`, the papers' FlyingChairs
   start). Cached.
3. **Fine-tuning.** Every method, its baselines included, starts from its head's warm start
   (``MODEL.WEIGHTS``: a single-frame checkpoint, loaded by :class:`VideoCheckpointer`, the
   temporal modules starting as the identity) and trains ``--iters`` iterations on the VID
   training videos, for each seed: the pretrained weights at the warm start's final learning
   rate, the new modules at ``NEW_MODULE_LR_FACTOR`` times it, gradients clipped over the whole
   model. The same schedule for every method and its baseline; seed ``--curve-seed``'s runs are
   also evaluated every ``iters / 3`` iterations (the fine-tuning curves).
4. **Evaluation.** VID mAP on the validation videos, overall, per motion bin and per condition
   (clean, motion blur, defocus, occluded, any degradation), and per method the mean paired
   difference to each of its baselines (same seed) with a 95% video-level bootstrap interval
   (:func:`vod_d2.evaluation.paired_bootstrap`). A difference whose interval contains 0 is no
   difference.

**Residual gates.** ``--gates channel scheduled position paper`` runs every gated method once
per alternative of ``MODEL.VIDEO.GATE`` (``paper``: without a gate, ``MODEL.VIDEO.IDENTITY_INIT
False``), as ``method/gate``, each paired with its baselines (a gated baseline in the same
alternative); the tables give each gate's opening at the end and along the curve seed's
evaluations (``--curve-points``). Offline methods are also evaluated causally (their online
column) unless ``--no-online``.

**Flow networks.** ``--flows flownet raft raft_synthetic zero oracle`` runs DFF and Impression
once per flow network: FlowNet-S pretrained on synthetic pairs (``--flow-iters``, the default),
RAFT-small from ``--raft-weights`` (FlyingChairs + FlyingThings3D), the same fine-tuned on
synthetic pairs (``--raft-iters``), and two diagnostic bounds: zero flow (no motion
compensation) and the synthetic generator's exact flow (``oracle``, synthetic data only).

``--iteration0`` also evaluates every run at fine-tuning iteration 0 (the warm start loaded
into it); ``--second-warm-start HEAD`` trains that head's warm start again with seed 1 and
reports how far the two are apart (the baseline's own spread).

**Your own videos.** ``--datasets-file F --train NAME... --test NAME`` runs the same protocol on
datasets declared in a datasets file (``DATASETS.FILE``, as ``train_net.py`` takes it): the
warm starts train on every ``--train`` dataset, the fine-tuning on the first (the videos; DET
stills join the warm start only), and ``--opts KEY VALUE ...`` adds the config options the data
needs (``MODEL.ROI_HEADS.NUM_CLASSES``, input sizes) to every run. Every table prints the GT
subsets the test set has: without blur or occlusion tags, those columns are left out (one line
says which). Without these options, the benchmark split.

Each run is ``train_net.py`` in its own process (``--jobs`` at a time, ``--threads`` torch
threads each). Finished runs are kept under ``--output``, named after a hash of everything
they depend on (config chain, options, warm start, the datasets: their names, the datasets
file, their records, the synthetic generator's version); a rerun reuses them. A change
of code is not seen: delete ``--output`` after one.

    python benchmarks/accuracy.py                                   # every default method
    python benchmarks/accuracy.py --methods rfcn stsn_rfcn ssn_rfcn --seeds 0 1 2
    python benchmarks/accuracy.py --methods rfcn stmn_rfcn --datasets-file my_datasets.yaml \
        --train my_vid_train my_det_train --test my_vid_val --opts MODEL.ROI_HEADS.NUM_CLASSES 30
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "synthetic")
# The benchmark split: video training set first (the fine-tuning's), then the DET stills.
TRAIN = ("synthetic_bench_vid_train", "synthetic_bench_det_train")
TEST = "synthetic_bench_vid_val"
SUBSETS = ("all", "clean", "motion_blur", "defocus", "occluded", "degraded")
# What the trainer records of the modules (metrics.json keys "<record>/<module>") and the curves
# show: the residual gates' opening and LSTS's sampling locations' spread.
RECORDS = ("gate/", "locations_rms/")
MOTION = ("slow", "medium", "fast")


@dataclass(frozen=True)
class Head:
    """A single-frame detector every method of the head starts from."""

    config: str
    iters: int  # warm-start length (curves in the README: gains < 0.5 mAP when continued)
    clip: float  # full-model gradient clipping norm of fine-tuning


@dataclass(frozen=True)
class Method:
    """A synthetic config and how it is measured."""

    head: str
    baselines: Tuple[str, ...] = ()  # compared with, seed by seed; the first is the single frame
    flow: bool = False  # starts its flow network from the synthetic flow pretraining
    default: bool = True  # in the default set
    gated: bool = False  # has a residual gate (MODEL.VIDEO.GATE): --gates makes its variants


@dataclass(frozen=True)
class Data:
    """The datasets every run trains and tests on, and the config options they need."""

    file: str  # DATASETS.FILE: "" for the built-in datasets only, else an absolute path
    train: Tuple[str, ...]  # the warm starts' datasets; the fine-tuning's is the first
    test: str
    opts: Tuple[str, ...]  # KEY VALUE ... added to every run

    def run_opts(self, train: Sequence[str]) -> List[str]:
        """Config options of a run that trains on ``train`` and tests on the test set."""
        return [
            "DATASETS.FILE", self.file, "DATASETS.TRAIN", str(tuple(train)),
            "DATASETS.TEST", f"('{self.test}',)", *self.opts,
        ]  # fmt: skip

    def key(self) -> str:
        """
        What every run's results depend on in the data: the names, the options, the datasets
        file's text, each dataset's records (annotations and frame files, as loaded) and the
        synthetic generator's version.
        """
        from detectron2.data import DatasetCatalog

        from vod_d2.data import synthetic

        h = hashlib.sha1(repr((self.train, self.test, self.opts)).encode())
        h.update(f"generator {synthetic.GENERATOR_VERSION}".encode())
        if self.file:
            with open(self.file, "rb") as f:
                h.update(f.read())
        for name in dict.fromkeys((*self.train, self.test)):
            records = json.dumps(DatasetCatalog.get(name), sort_keys=True, default=str)
            h.update(records.encode())
        return h.hexdigest()[:10]


HEADS = {
    "faster_rcnn": Head("single_frame", 8000, 10.0),
    "rfcn": Head("rfcn", 8000, 10.0),
    # Sparse R-CNN's set prediction learns slower (and its config clips at norm 1).
    "sparse_rcnn": Head("sparse_rcnn", 12000, 1.0),
    # The model zoo's R50-FPN Faster R-CNN at the synthetic widths.
    "fpn": Head("single_frame_fpn", 8000, 10.0),
}

METHODS = {
    "single_frame": Method("faster_rcnn"),
    "stmn": Method("faster_rcnn", ("single_frame",), gated=True),
    # SSN has no gate: its sampling block starts as the identity by construction, so every gate
    # alternative (and IDENTITY_INIT) would run the same model again.
    "ssn": Method("faster_rcnn", ("single_frame",), default=False),
    "stsn": Method("faster_rcnn", ("single_frame", "ssn"), default=False, gated=True),
    "rfcn": Method("rfcn"),
    "ssn_rfcn": Method("rfcn", ("rfcn",)),
    "stsn_rfcn": Method("rfcn", ("rfcn", "ssn_rfcn"), gated=True),
    "stmn_rfcn": Method("rfcn", ("rfcn",), gated=True),
    "dff": Method("rfcn", ("rfcn",), flow=True),
    "impression": Method("rfcn", ("rfcn", "dff"), flow=True, gated=True),
    "lsts": Method("rfcn", ("rfcn", "dff"), gated=True),
    "sparse_rcnn": Method("sparse_rcnn"),
    "sparsevod": Method("sparse_rcnn", ("sparse_rcnn",), gated=True),
    "single_frame_fpn": Method("fpn", default=False),
    "stsn_fpn": Method("fpn", ("single_frame_fpn",), default=False, gated=True),
}
# --gates: the residual gate's alternatives (vod_d2.modeling.temporal.gate); "paper" is the
# papers' own start, without a gate.
GATE_VARIANTS = {
    "channel": ["MODEL.VIDEO.GATE.KIND", "channel"],
    "scheduled": ["MODEL.VIDEO.GATE.KIND", "scheduled"],
    "position": ["MODEL.VIDEO.GATE.KIND", "position"],
    "paper": ["MODEL.VIDEO.IDENTITY_INIT", False],
}


@dataclass(frozen=True)
class FlowVariant:
    """A flow network of the flow-guided methods (--flows)."""

    opts: Tuple = ()  # config options
    raft: bool = False  # starts from --raft-weights (RAFT-small, FlyingChairs + FlyingThings3D)
    # tools/pretrain_flow.py's options of its synthetic (pre)training, None for none
    pretrain: Optional[Tuple[str, ...]] = None
    iters: str = "flow_iters"  # the argument giving that training's steps


_RAFT = ("MODEL.FLOW.NAME", "RAFTSmall")
# The diagnostic bounds (zero, oracle) and the flow networks of DFF and Impression; "flownet" is
# what a flow method runs without --flows.
FLOW_VARIANTS = {
    "flownet": FlowVariant(pretrain=()),
    "raft": FlowVariant(_RAFT, raft=True),
    "raft_synthetic": FlowVariant(
        _RAFT,
        raft=True,
        pretrain=("--lr", "1e-4", "--background-first", "0", "--clip-grad", "1"),
        iters="raft_iters",
    ),
    "zero": FlowVariant(("MODEL.FLOW.NAME", "ZeroFlow")),
    "oracle": FlowVariant(("MODEL.FLOW.NAME", "SyntheticOracleFlow")),
}


def _variants(name: str, gates: Sequence[str], flows: Sequence[str]) -> List[str]:
    """
    The runs of method ``name``: ``name`` followed by ``/gate`` for each of ``gates`` if it is
    gated and by ``/flow`` for each of ``flows`` if it is flow-guided (every combination).
    """
    variants = [name]
    for tags, applies in ((gates, METHODS[name].gated), (flows, METHODS[name].flow)):
        if tags and applies:
            variants = [f"{v}/{tag}" for v in variants for tag in tags]
    return variants


def _method(variant: str) -> str:
    """The method (config) name of a run ``name[/gate][/flow]``."""
    return variant.split("/")[0]


def _flow_tag(variant: str) -> Optional[str]:
    """The flow network of a run of a flow-guided method ("flownet" unless it names one)."""
    if not METHODS[_method(variant)].flow:
        return None
    return next((t for t in variant.split("/")[1:] if t in FLOW_VARIANTS), "flownet")


def _variant_opts(variant: str) -> List:
    """
    The config options of a run's gate and flow variants. A gated method without a gate tag
    runs its config's own gate, named all the same: the runs' cache keys hold the options, so a
    changed default gate is a new run, and ``name`` and ``name/<its default>`` share one.
    """
    tags = variant.split("/")[1:]
    if METHODS[_method(variant)].gated and not any(t in GATE_VARIANTS for t in tags):
        tags.insert(0, _config_gate(_method(variant)))
    opts = []
    for tag in tags:
        opts += list(GATE_VARIANTS[tag]) if tag in GATE_VARIANTS else list(FLOW_VARIANTS[tag].opts)
    return opts


def _config_gate(name: str) -> str:
    """The :data:`GATE_VARIANTS` entry that config ``name`` runs without options."""
    video = _cfg(name).MODEL.VIDEO
    return video.GATE.KIND if video.IDENTITY_INIT else "paper"


def _config(name: str) -> str:
    return os.path.join(CONFIGS, f"{name}.yaml")


def _digest(name: str, data_key: str, extra: Sequence[str]) -> str:
    """A short hash of the config ``name``, its ``_BASE_`` chain, the data and ``extra``."""
    h = hashlib.sha1("\0".join([data_key, *map(str, extra)]).encode())
    path = _config(name)
    while path:
        with open(path, "rb") as f:
            text = f.read()
        h.update(text)
        base = re.search(rb'^_BASE_:\s*"?([^"\s]+)"?', text, re.MULTILINE)
        path = os.path.join(os.path.dirname(path), base.group(1).decode()) if base else None
    return h.hexdigest()[:10]


def _cfg(name: str):
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(_config(name))
    return cfg


def _train(config: str, output: str, opts: List, threads: int, log: str, eval_only=False) -> Dict:
    """Run train_net.py (once: cached); return its evaluation history (metrics.json)."""
    done = os.path.join(output, "history.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    command += ["--eval-only"] if eval_only else []
    command += ["OUTPUT_DIR", output, *map(str, opts)]
    os.makedirs(output, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log}")
    history = _history(os.path.join(output, "metrics.json"), log, eval_only)
    with open(done, "w") as f:
        json.dump(history, f)
    return history


def _history(path: str, log: str, eval_only: bool) -> Dict:
    """
    The runs' evaluations (``"evals"``: iteration -> bbox metrics, the last being the final
    one), training losses (``"loss"``: iteration -> total loss) and the modules' records
    (``"records"``: iteration -> {"gate/<module>": opening, "locations_rms/<module>": ...},
    :class:`vod_d2.engine.trainer.ModuleRecordsWriter`), from detectron2's metrics.json; an
    ``--eval-only`` run has no metrics.json, its results are in its log.
    """
    evals, loss, records = {}, {}, {}
    if eval_only:
        evals["0"] = _logged_results(log)
        return {"evals": evals, "loss": loss, "records": records}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            iteration = str(entry["iteration"] + 1)
            values = {k.split("/bbox/")[1]: v for k, v in entry.items() if "/bbox/" in k}
            if values:
                evals[iteration] = values
            if "total_loss" in entry:
                loss[iteration] = entry["total_loss"]
            recorded = {k: v for k, v in entry.items() if k.startswith(RECORDS)}
            if recorded:
                records[iteration] = recorded
    if not evals:
        raise RuntimeError(f"{path} holds no evaluation")
    return {"evals": evals, "loss": loss, "records": records}


def _records(history: Dict, record: str, iteration: Optional[str] = None) -> Dict[str, float]:
    """The modules' ``record`` (e.g. "gate") at ``iteration`` (default: the last recorded), by
    module name; empty for a run without it."""
    records = history.get("records")
    if not records or (iteration is not None and iteration not in records):
        return {}
    entry = records[iteration if iteration is not None else max(records, key=int)]
    prefix = f"{record}/"
    return {k[len(prefix) :]: v for k, v in entry.items() if k.startswith(prefix)}


def _logged_results(log: str) -> Dict:
    """The ``copypaste`` csv of detectron2's print_csv_format in a log."""
    with open(log) as f:
        lines = [line.split("copypaste: ", 1)[1].strip() for line in f if "copypaste: " in line]
    names, values = lines[-2].split(","), lines[-1].split(",")
    return {k: float(v) for k, v in zip(names, values)}


def _final(history: Dict) -> Dict:
    return history["evals"][max(history["evals"], key=int)]


def _schedule_lr(cfg) -> float:
    """The learning rate at the end of a warm start (one step, SOLVER.GAMMA)."""
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA


def _online_opts(name: str) -> List:
    """The config changes of ``name``'s causal variant (``vod_d2.make_online``), as opts."""
    from vod_d2 import make_online

    return [x for key, (_, new) in make_online(_cfg(name)).items() for x in (key, new)]


def _warm_start(head: str, seed: int, args) -> Tuple[str, Dict]:
    """Train (once) the single-frame detector of ``head``; return its checkpoint and history."""
    spec = HEADS[head]
    iters = args.warm_iters or spec.iters
    key = _digest(spec.config, args.data_key, ["warm", iters, seed])
    output = os.path.join(args.output, "warm_start", f"{spec.config}-{iters}-s{seed}-{key}")
    opts = args.data.run_opts(args.data.train) + [
        "SOLVER.MAX_ITER", iters, "SOLVER.STEPS", f"({int(iters * 0.75)},)",
        "TEST.EVAL_PERIOD", iters // 8, "SEED", seed,
    ]  # fmt: skip
    log = os.path.join(args.output, "logs", f"warm-{spec.config}-s{seed}.log")
    history = _train(_config(spec.config), output, opts, args.threads, log)
    return os.path.join(output, "model_final.pth"), history


def _flow_weights(name: str, tag: str, args) -> str:
    """
    MODEL.FLOW.WEIGHTS of method ``name`` with the flow network ``tag`` (:data:`FLOW_VARIANTS`):
    its synthetic (pre)training's checkpoint (run once: cached), the RAFT-small weights, or
    "" for a network without weights.
    """
    variant = FLOW_VARIANTS[tag]
    opts = list(variant.opts) + (["MODEL.FLOW.WEIGHTS", args.raft_weights] if variant.raft else [])
    if variant.pretrain is None:
        return args.raft_weights if variant.raft else ""
    if tag == "flownet" and args.flownet_weights:
        return args.flownet_weights
    cfg = _cfg(name)
    cfg.merge_from_list(opts)
    flow, iters = cfg.MODEL.FLOW, getattr(args, variant.iters)
    key = hashlib.sha1(
        f"{flow}{cfg.INPUT.FORMAT}{cfg.INPUT.MIN_SIZE_TEST}{iters}{variant.pretrain}".encode()
    ).hexdigest()[:10]
    path = os.path.join(args.output, "flow", f"{flow.NAME}-{tag}-{iters}-{key}.pth")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        command = [
            sys.executable, os.path.join(ROOT, "tools", "pretrain_flow.py"),
            "--config-file", _config(name), "--iters", str(iters), "--output", path,
            "--eval-period", str(max(1, iters // 10)), *variant.pretrain, *map(str, opts),
        ]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        log = os.path.join(args.output, "logs", f"flow-{name}-{tag}.log")
        with open(log, "w") as f:
            if subprocess.call(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT):
                raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return path


def _fine_tune_opts(args, variant: str, seed: int, warm: str) -> List:
    """Every run's fine-tuning (module docstring, step 3)."""
    head = HEADS[METHODS[_method(variant)].head]
    lr = _schedule_lr(_cfg(head.config))
    opts = args.data.run_opts(args.data.train[:1]) + [
        "MODEL.WEIGHTS", warm, "SOLVER.MAX_ITER", args.iters, "SOLVER.STEPS", "()",
        "SOLVER.BASE_LR", lr, "SOLVER.WARMUP_ITERS", min(50, args.iters // 10),
        "SOLVER.NEW_MODULE_LR_FACTOR", args.new_module_lr_factor,
        "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", head.clip, "SEED", seed,
        "TEST.EVAL_PERIOD", args.iters // args.curve_points if seed == args.curve_seed else 0,
    ]  # fmt: skip
    return opts + _variant_opts(variant)


def _detections(run: str, test: str, image_index: Dict[int, int]):
    """The dumped detections of a run on the dataset ``test`` as a FrameDetections."""
    from vod_d2.evaluation import FrameDetections

    path = os.path.join(run, "inference", test, f"{test}_detections.json")
    with open(path) as f:
        rows = json.load(f)
    boxes = np.array([r["bbox"] for r in rows], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
    return FrameDetections(
        frame=[image_index[r["image_id"]] for r in rows],
        boxes=boxes,
        scores=[r["score"] for r in rows],
        classes=[r["category_id"] for r in rows],
    )


class _Evaluation:
    """The validation set's ground truth and the runs' dumped detections, loaded once."""

    def __init__(self, test: str, outputs: Dict, seeds: Sequence[int]):
        from detectron2.data import DatasetCatalog, MetadataCatalog

        from vod_d2.evaluation import ground_truth_from_records

        self.test = test
        self.num_classes = len(MetadataCatalog.get(test).thing_classes)
        self.records = DatasetCatalog.get(test)
        self.gt, _ = ground_truth_from_records(self.records, self.num_classes, test)
        self.index = {int(i): f for f, i in enumerate(self.gt.image_ids)}
        self.outputs, self.seeds = outputs, seeds
        self._runs = {}

    def subsets(self) -> Tuple[List[str], Dict[str, int]]:
        """
        The subsets of :data:`SUBSETS` and :data:`MOTION` the test set has ground truth in, in
        that order, and each subset's number of GT boxes (0 for those it has none in).
        """
        from vod_d2.evaluation import FrameDetections
        from vod_d2.evaluation.vid_evaluation import match_detections

        none = FrameDetections(frame=[], boxes=[], scores=[], classes=[])
        found = match_detections(self.gt, none, self.num_classes).subsets()
        counts = {k: int(found[k][2].sum()) if k in found else 0 for k in SUBSETS + MOTION}
        return [k for k, n in counts.items() if n], counts

    def runs(self, name: str):
        """Each seed's detections of method ``name``."""
        if name not in self._runs:
            self._runs[name] = [
                _detections(self.outputs[name, s], self.test, self.index) for s in self.seeds
            ]
        return self._runs[name]

    def pair(self, name: str, base: str, samples: int) -> Dict:
        """paired_bootstrap of ``name`` against ``base`` on every subset, as dicts."""
        from vod_d2.evaluation import paired_bootstrap

        diff = paired_bootstrap(
            self.gt, self.runs(name), self.runs(base), self.num_classes, samples=samples
        )
        return {k: vars(v) for k, v in diff.items()}

    def differences(self, variants, samples: int) -> Dict:
        """Per run and each of its baselines that ran (:func:`_baselines`): :meth:`pair`."""
        return {
            f"{name} vs {base}": self.pair(name, base, samples)
            for name in variants
            for base in _baselines(name, variants)
        }

    def key_frame_maps(self, name: str, compared: Sequence[str]) -> Dict[str, Tuple[float, float]]:
        """
        The mAP of ``name`` and of each ``compared`` method on ``name``'s key frames and on its
        other frames (means over seeds): what propagation from a key frame costs.
        """
        from vod_d2.evaluation.vid_evaluation import match_detections, mean_over_classes
        from vod_d2.modeling.frames import key_frame_index

        cfg = _cfg(_method(name))
        interval, position = cfg.MODEL.VIDEO.KEY_FRAME_INTERVAL, cfg.MODEL.KEY_FRAME.POSITION
        key = np.array(
            [
                r["frame_idx"]
                == key_frame_index(r["frame_idx"], r["video_length"], interval, position)
                for r in self.records
            ]
        )
        weights = np.stack([key, ~key]).astype(np.float64)
        out = {}
        for method in [name, *compared]:
            maps = []
            for detections in self.runs(method):
                matching = match_detections(self.gt, detections, self.num_classes)
                tp, fp, in_box = matching.subsets()["all"]
                maps.append(mean_over_classes(matching.class_aps(tp, fp, in_box, weights)[0]))
            out[method] = tuple(100.0 * np.mean(maps, axis=0))
        return out


def _baselines(variant: str, variants: Sequence[str]) -> List[str]:
    """The runs ``variant`` is paired with: its method's baselines that ran, each with the
    variant's gate where it is gated and its flow network where it is flow-guided (Impression
    with a scheduled gate and RAFT against DFF with RAFT; STSN with any gate against the one
    SSN, which has none)."""
    tags = variant.split("/")[1:]
    out = []
    for base in METHODS[_method(variant)].baselines:
        spec = METHODS[base]
        for tag in tags:
            if (tag in GATE_VARIANTS and spec.gated) or (tag in FLOW_VARIANTS and spec.flow):
                base = f"{base}/{tag}"
        if base in variants:
            out.append(base)
    return out


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _metric_table(methods, seeds, finals, subsets: Sequence[str]) -> str:
    """Each method's mAP per seed, and the means over seeds on ``subsets`` (but "all")."""
    columns = [k for k in subsets if k != "all"]
    rows = [["method", *[f"s{s}" for s in seeds], *columns, "AP50", "AP75", "AP"]]
    for name in methods:
        maps = [finals[name, s] for s in seeds]
        mean = {k: np.mean([m[k] for m in maps]) for k in maps[0]}
        row = [name, *[f"{m['mAP']:.1f}" for m in maps]]
        row += [f"{mean[f'mAP_{k}']:.1f}" for k in columns]
        row += [f"{mean.get(k, np.nan):.1f}" for k in ("AP50", "AP75", "AP")]
        rows.append(row)
    return _table(rows)


def _difference_table(differences: Dict, subsets: Sequence[str]) -> str:
    """Each pair's paired difference and interval on the ``subsets`` of SUBSETS."""
    columns = [k for k in SUBSETS if k in subsets]
    rows = [["pair", *columns]]
    for pair, by_subset in differences.items():
        cells = []
        for k in columns:
            d = by_subset[k]
            cells.append(f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]")
        rows.append([pair, *cells])
    return _table(rows)


def _present(metrics: Dict, absent: Sequence[str]) -> Dict:
    """``metrics`` without the entries of the ``absent`` subsets (``mAP_k``, ``num_gt_k``)."""
    dropped = {f"{prefix}_{k}" for k in absent for prefix in ("mAP", "num_gt")}
    return {k: v for k, v in metrics.items() if k not in dropped}


def _curve(history: Dict, key: str = "mAP") -> str:
    """``iteration: mAP`` at each evaluation, with the gates' mean opening and the sampling
    locations' spread where recorded."""
    evals = sorted(history["evals"].items(), key=lambda item: int(item[0]))
    cells = []
    for it, metrics in evals:
        cell = f"{it}: {metrics[key]:.1f}"
        for record in RECORDS:
            values = _records(history, record[:-1], it)
            if values:
                cell += f" [{record[:-1]} {np.mean(list(values.values())):.2f}]"
        cells.append(cell)
    return ", ".join(cells)


def _warm_spread(warm, head: str, subsets: Sequence[str]) -> str:
    """The seed-1 warm start of ``head`` minus the seed-0 one, on the ``subsets`` of SUBSETS."""
    a, b = (_final(warm[head, s][1]) for s in (0, 1))
    keys = {k: "mAP" if k == "all" else f"mAP_{k}" for k in SUBSETS if k in subsets}
    return ", ".join(f"{k} {b[key] - a[key]:+.1f}" for k, key in keys.items())


def _check_data(data: Data, methods: Sequence[str]) -> None:
    """
    Before any run: every config of ``methods`` and of their heads takes ``data``'s options,
    and the datasets are registered, have the model's class count and load.

    Raises:
        ValueError, FileNotFoundError: train_net.py's one-line errors, naming the config.
    """
    from vod_d2.data import check_dataset_contents, check_datasets
    from vod_d2.engine import load_config

    configs = dict.fromkeys([HEADS[METHODS[m].head].config for m in methods] + list(methods))
    for name in configs:
        try:
            cfg = load_config(_config(name), data.run_opts(data.train), register_datasets=True)
            check_datasets(cfg)
        except ValueError as e:
            raise ValueError(f"{name}.yaml with the data's options: {e}") from None
    check_dataset_contents(cfg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    default = [m for m, spec in METHODS.items() if spec.default]
    parser.add_argument("--methods", nargs="+", default=default, choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=1200, help="fine-tuning iterations")
    parser.add_argument("--warm-iters", type=int, help="warm-start iterations of every head")
    parser.add_argument(
        "--flow-iters", type=int, default=3000, help="FlowNet-S's synthetic pretraining steps"
    )
    parser.add_argument(
        "--flows",
        nargs="+",
        default=[],
        choices=list(FLOW_VARIANTS),
        help="run every flow-guided method with each of these flow networks (name/flow); "
        "zero and oracle are diagnostic bounds. Default: flownet",
    )
    parser.add_argument(
        "--raft-weights",
        default=os.path.join(
            ROOT, "..", "shared", "weights", "raft_small_torchvision_chairs_things.pth"
        ),
        help="RAFT-small weights (FlyingChairs + FlyingThings3D) of the raft flows",
    )
    parser.add_argument(
        "--raft-iters", type=int, default=500, help="raft_synthetic's fine-tuning steps"
    )
    parser.add_argument(
        "--flownet-weights",
        help="the flownet flow's weights, a tools/pretrain_flow.py checkpoint (instead of the "
        "--flow-iters pretraining)",
    )
    parser.add_argument("--new-module-lr-factor", type=float, default=10.0)
    parser.add_argument("--curve-seed", type=int, default=0, help="seed whose runs log curves")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap samples")
    parser.add_argument(
        "--iteration0", action="store_true", help="evaluate every run at iteration 0"
    )
    parser.add_argument(
        "--gates",
        nargs="+",
        default=[],
        choices=list(GATE_VARIANTS),
        help="run every gated method with each of these residual gates (name/gate); 'paper': "
        "without one (MODEL.VIDEO.IDENTITY_INIT False). Default: each config's own",
    )
    parser.add_argument(
        "--curve-points", type=int, default=3, help="evaluations of the curve seed's runs"
    )
    parser.add_argument(
        "--no-online", action="store_true", help="skip the offline methods' causal variants"
    )
    parser.add_argument(
        "--second-warm-start",
        nargs="+",
        default=[],
        choices=list(HEADS),
        help="heads whose warm start is trained again with seed 1, to compare the two",
    )
    parser.add_argument(
        "--datasets-file", default="", help="a datasets file declaring --train and --test"
    )
    parser.add_argument(
        "--train",
        nargs="+",
        default=list(TRAIN),
        help="warm-start datasets, the videos first (the fine-tuning's)",
    )
    parser.add_argument("--test", default=TEST, help="the evaluation dataset")
    parser.add_argument(
        "--opts", nargs="+", default=[], help="config options KEY VALUE ... of every run"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "accuracy"))
    parser.add_argument("--json", help="also write every result to this file")
    args = parser.parse_args()
    if len(args.seeds) < 3:
        parser.error("paired differences need at least 3 seeds")
    methods = list(dict.fromkeys(args.methods))
    for name in methods:
        if not os.path.isfile(_config(name)):
            parser.error(f"no config {_config(name)}")
    variants = [v for m in methods for v in _variants(m, args.gates, args.flows)]
    if any(FLOW_VARIANTS[t].raft for t in args.flows) and not os.path.isfile(args.raft_weights):
        parser.error(f"--raft-weights {args.raft_weights} does not exist")
    if args.flownet_weights and not os.path.isfile(args.flownet_weights):
        parser.error(f"--flownet-weights {args.flownet_weights} does not exist")
    datasets_file = os.path.abspath(args.datasets_file) if args.datasets_file else ""
    args.data = Data(datasets_file, tuple(args.train), args.test, tuple(args.opts))
    try:
        _check_data(args.data, methods)
    except (ValueError, FileNotFoundError, KeyError) as e:
        parser.error(str(e).strip("\"'"))
    args.data_key = args.data.key()
    start = time.perf_counter()
    os.makedirs(os.path.join(args.output, "logs"), exist_ok=True)
    pool = ThreadPoolExecutor(args.jobs)
    heads = sorted({METHODS[m].head for m in methods})
    warm_jobs = [(h, 0) for h in heads] + [(h, 1) for h in args.second_warm_start]
    warm = dict(zip(warm_jobs, pool.map(lambda job: _warm_start(*job, args), warm_jobs)))
    flow_jobs = dict.fromkeys((_method(v), _flow_tag(v)) for v in variants if _flow_tag(v))
    flows = {job: _flow_weights(*job, args) for job in flow_jobs}

    def flow_opts(variant: str) -> List:
        """MODEL.FLOW.WEIGHTS of a run, if its flow network has weights."""
        tag = _flow_tag(variant)
        weights = flows[_method(variant), tag] if tag else ""
        return ["MODEL.FLOW.WEIGHTS", weights] if weights else []

    def file_name(variant: str) -> str:
        return variant.replace("/", "-")

    def fine_tune(job):
        variant, seed = job
        name = _method(variant)
        checkpoint = warm[METHODS[name].head, 0][0]
        opts = _fine_tune_opts(args, variant, seed, checkpoint) + flow_opts(variant)
        digest = _digest(name, args.data_key, opts)
        output = os.path.join(args.output, "runs", f"{name}-{digest}", f"seed{seed}")
        log = os.path.join(args.output, "logs", f"{file_name(variant)}-seed{seed}.log")
        return job, (output, _train(_config(name), output, opts, args.threads, log))

    jobs = [(v, s) for v in variants for s in args.seeds]
    runs = dict(pool.map(fine_tune, jobs))
    finals = {job: _final(history) for job, (_, history) in runs.items()}
    outputs = {job: output for job, (output, _) in runs.items()}

    def evaluate_online(job):
        """An offline method's fine-tuned weights, run causally (make_online)."""
        variant, seed = job
        name, run = _method(variant), outputs[variant, seed]
        opts = args.data.run_opts(args.data.train) + _variant_opts(variant)
        opts += ["MODEL.WEIGHTS", os.path.join(run, "model_final.pth")]
        opts += _online_opts(name) + flow_opts(variant)
        log = os.path.join(args.output, "logs", f"online-{file_name(variant)}-seed{seed}.log")
        _train(_config(name), os.path.join(run, "online"), opts, args.threads, log, True)
        return (f"{variant} online", seed), os.path.join(run, "online")

    offline = [v for v in variants if not args.no_online and _online_opts(_method(v))]
    outputs.update(pool.map(evaluate_online, [(v, s) for v in offline for s in args.seeds]))
    evaluation = _Evaluation(args.data.test, outputs, args.seeds)
    subsets, gt_counts = evaluation.subsets()
    differences = evaluation.differences(variants, args.samples)
    for variant in offline:
        online = f"{variant} online"
        differences[f"{online} vs {variant}"] = evaluation.pair(online, variant, args.samples)
        for base in _baselines(variant, variants)[:1]:
            differences[f"{online} vs {base}"] = evaluation.pair(online, base, args.samples)
    key_frames = {
        v: evaluation.key_frame_maps(v, _baselines(v, variants))
        for v in variants
        if _cfg(_method(v)).MODEL.META_ARCHITECTURE == "KeyFrameRCNN"
    }

    iteration0 = {}
    if args.iteration0:

        def evaluate_start(variant):
            name = _method(variant)
            checkpoint = warm[METHODS[name].head, 0][0]
            opts = args.data.run_opts(args.data.train) + ["MODEL.WEIGHTS", checkpoint]
            opts += _variant_opts(variant)
            opts += flow_opts(variant)
            digest = _digest(name, args.data_key, opts)
            output = os.path.join(args.output, "iteration0", f"{name}-{digest}")
            log = os.path.join(args.output, "logs", f"iteration0-{file_name(variant)}.log")
            return variant, _final(_train(_config(name), output, opts, args.threads, log, True))

        iteration0 = dict(pool.map(evaluate_start, variants))

    print(f"\nWarm starts (VID mAP on {args.data.test} during training):")
    for (head, seed), (_, history) in warm.items():
        print(f"  {HEADS[head].config} seed {seed}: {_curve(history)}")
    for head in args.second_warm_start:
        print(f"  {head}: warm start seed 1 - seed 0: {_warm_spread(warm, head, subsets)}")
    print(
        f"\nFine-tuning: {args.iters} iterations from the warm starts (VID mAP of each seed; "
        "per condition and motion bin, the means over seeds):\n"
    )
    absent = [k for k in SUBSETS + MOTION if k not in subsets]
    if absent:
        print(f"Left out, no ground truth in {args.data.test}: {', '.join(absent)}\n")
    print(_metric_table(variants, args.seeds, finals, subsets))
    print("\nPaired differences (mean over seeds, 95% video-level bootstrap interval):\n")
    print(_difference_table(differences, subsets))
    if key_frames:
        print(
            "\nKey-frame methods: mAP on their key frames / on their other frames (mean of seeds):"
        )
        for name, maps in key_frames.items():
            cells = ", ".join(f"{m} {key:.1f} / {other:.1f}" for m, (key, other) in maps.items())
            print(f"  {name}'s frames: {cells}")
    gates = {v: [_records(runs[v, s][1], "gate") for s in args.seeds] for v in variants}
    print("\nResidual gates' opening at the end (0: closed, 1: the paper's module; seeds):")
    for name, per_seed in gates.items():
        for gate in per_seed[0]:
            values = " ".join(f"{g[gate]:.2f}" for g in per_seed)
            print(f"  {name} {gate}: {values}")
    print(f"\nFine-tuning curves (seed {args.curve_seed}, mAP [records] by iteration):")
    for name in variants:
        print(f"  {name}: {_curve(runs[name, args.curve_seed][1])}")
    if iteration0:
        print("\nIteration 0 (the warm start loaded into each run), mAP:")
        for name in variants:
            print(f"  {name}: {iteration0[name]['mAP']:.1f}")
    wall = time.perf_counter() - start
    print(f"\nwall time {wall:.0f} s ({args.jobs} jobs x {args.threads} threads)")
    if args.json:
        result = {
            "subsets": {k: gt_counts[k] for k in subsets},
            "runs": {f"{m}/seed{s}": _present(finals[m, s], absent) for m, s in finals},
            "curves": {f"{m}/seed{s}": h for (m, s), (_, h) in runs.items()},
            "warm_starts": {f"{h}/seed{s}": hist for (h, s), (_, hist) in warm.items()},
            "differences": {
                pair: {k: d for k, d in by_subset.items() if k not in absent}
                for pair, by_subset in differences.items()
            },
            "key_frames": key_frames,
            "gates": gates,
            "iteration0": iteration0,
            "wall_seconds": wall,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
