import math

import pytest
import torch
from _testing import (
    brief_trainer,
    count_backbone_calls,
    evaluate_on_synthetic,
    random_video,
    trained_losses,
)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vod_d2 import add_vod_config
from vod_d2.engine import run_on_video
from vod_d2.modeling.sparse_rcnn import SparseRCNN, SparseVOD, TemporalDynamicHead

SINGLE = "configs/synthetic/sparse_rcnn.yaml"
VIDEO = "configs/synthetic/sparsevod.yaml"
PAPER = [
    "configs/sparse_rcnn_R50_FPN.yaml",
    "configs/sparse_rcnn_R101_FPN.yaml",
    "configs/sparse_rcnn_X101_FPN.yaml",
    "configs/sparsevod_R50_FPN.yaml",
    "configs/sparsevod_R101_FPN.yaml",
    "configs/sparsevod_X101_FPN.yaml",
]


def _cfg(path, **opts):
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.SPARSE_RCNN.NUM_PROPOSALS = 8
    cfg.MODEL.SPARSE_RCNN.NUM_STAGES = 2
    cfg.INPUT.MIN_SIZE_TEST = 64
    for key, value in opts.items():
        cfg.merge_from_list([key, value])
    return cfg


def _model(path=VIDEO, seed=0, **opts):
    torch.manual_seed(seed)
    return build_model(_cfg(path, **opts)).eval()


def _randomize_spfa(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.head.spfa.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _stream(model, video, length=-1):
    length = len(video) if length == -1 else length
    return list(run_on_video(model, video, length, lambda i: video[i]))


def _same_detections(a, b):
    assert len(a) == len(b)
    for (_, x), (_, y) in zip(a, b):
        x, y = x["instances"], y["instances"]
        torch.testing.assert_close(x.scores, y.scores)
        # Boxes of tens of pixels, float32 batched or not: rounding of ~1e-4 px.
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, rtol=1e-5, atol=1e-3)
        assert torch.equal(x.pred_classes, y.pred_classes)


def test_paper_configs_are_the_papers_models():
    for path in PAPER:
        cfg = get_cfg()
        add_vod_config(cfg)
        cfg.merge_from_file(path)
        sr = cfg.MODEL.SPARSE_RCNN
        assert (sr.NUM_PROPOSALS, sr.NUM_STAGES, cfg.MODEL.FPN.OUT_CHANNELS) == (100, 6, 256)
        assert (sr.CLASS_WEIGHT, sr.L1_WEIGHT, sr.GIOU_WEIGHT) == (2.0, 5.0, 2.0)
        assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.BASE_LR == 2.5e-5
        assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
        with open(path) as f:
            assert f.readline().startswith("# SparseVOD (Hashmi et al., BMVC 2022) Table 1, row")
        if "sparsevod" in path:
            assert cfg.MODEL.META_ARCHITECTURE == "SparseVOD"
            assert cfg.INPUT.VIDEO.TRAIN_SAMPLING == "global"
            assert cfg.INPUT.VIDEO.TRAIN_NUM_SUPPORT == cfg.MODEL.SPARSEVOD.TEST_NUM_SUPPORT == 6


def test_single_frame_streaming_equals_batched_images():
    model = _model(SINGLE)
    assert isinstance(model, SparseRCNN) and model.frame_independent
    video = random_video(4)
    calls = count_backbone_calls(model)
    streamed = _stream(model, video)
    assert calls == [1] * 4
    batched = model(video)
    _same_detections(streamed, [(None, out) for out in batched])
    assert len(batched[0]["instances"]) > 0


def test_support_frames_span_the_whole_video_and_run_once():
    # 30 frames, 6 supports: one in each sixth of the video, the same for every frame; each
    # frame's backbone runs once (the primed supports are not recomputed in the stream) and the
    # supports' single-frame pass (SPFA's support features) once per support frame.
    model = _model(**{"MODEL.SPARSEVOD.TEST_NUM_SUPPORT": 6})
    assert isinstance(model, SparseVOD) and isinstance(model.head, TemporalDynamicHead)
    video = random_video(30, size=(48, 64))
    calls = count_backbone_calls(model)
    passes = []
    support_pass = model.head.support_object_features

    def counting(features, sizes):
        passes.append(len(sizes))
        return support_pass(features, sizes)

    model.head.support_object_features = counting
    read = []
    detect = model.detect

    def recording(target, support, frame, support_frames, images):
        read.append([f.index for f in support_frames])
        return detect(target, support, frame, support_frames, images)

    model.detect = recording
    done = _stream(model, video)
    assert [meta["frame_idx"] for meta, _ in done] == list(range(30))
    assert calls == [1] * 30 and passes == [1] * 6
    supports = read[0]
    assert all(r == supports for r in read)
    assert [i // 5 for i in supports] == list(range(6))
    model.head.support_object_features = support_pass
    model.detect = detect
    model.reset(30)
    assert model.prefetch_indices() == supports  # deterministic per seed and length
    again = _model(
        **{"MODEL.SPARSEVOD.TEST_NUM_SUPPORT": 6, "MODEL.SPARSEVOD.TEST_SUPPORT_SEED": 1}
    )
    again.reset(30)
    assert again.prefetch_indices() != supports


def test_online_variant_reads_past_frames_only():
    for length, opts in ((None, {}), (12, {"MODEL.SPARSEVOD.ONLINE": True})):
        model = _model(**opts)
        read = []
        detect = model.detect

        def recording(target, support, frame, support_frames, images):
            read.append((frame.index, [f.index for f in support_frames]))
            return detect(target, support, frame, support_frames, images)

        model.detect = recording
        video = random_video(12)
        done = list(run_on_video(model, video, length))
        assert len(done) == 12 and read[0] == (0, [])
        for index, support in read[1:]:
            assert support and all(i < index for i in support) and len(support) <= 6


def test_sparsevod_without_tfe_and_spfa_is_its_single_frame_detector():
    single = _model(SINGLE)
    model = _model(**{"MODEL.SPARSEVOD.TFE.ENABLED": False, "MODEL.SPARSEVOD.SPFA.ENABLED": False})
    model.load_state_dict(single.state_dict())
    assert model.support_keys == ()
    video = random_video(8)
    _same_detections(_stream(single, video), _stream(model, video))


def test_sparsevod_with_spfa_starts_as_its_single_frame_detector():
    # SPFA's output layer starts at zero: from single-frame weights, the same detections.
    single = _model(SINGLE)
    model = _model(**{"MODEL.SPARSEVOD.TFE.ENABLED": False})
    missing, unexpected = model.load_state_dict(single.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.spfa.") for k in missing)
    video = random_video(8)
    _same_detections(_stream(single, video), _stream(model, video))
    _randomize_spfa(model)
    with pytest.raises(AssertionError):
        _same_detections(_stream(single, video), _stream(model, video))


def test_streaming_detection_equals_the_head_on_the_frames_it_reads():
    # Frame t's streamed detection is the head run on frame t with the planned support frames
    # stacked, all from fresh backbone passes (the cache changes nothing).
    model = _model()
    _randomize_spfa(model)
    video = random_video(10)
    done = _stream(model, video)
    model.reset(10)
    supports = model.prefetch_indices()
    images = model.preprocess_image([video[i] for i in [3] + supports])
    features = model._features(images)
    target = {k: v[:1] for k, v in features.items()}
    maps = {k: v[1:][None] for k, v in features.items()}
    objects = model.head.support_object_features(
        {k: v[1:] for k, v in features.items()}, images.image_sizes[1:]
    )
    outputs = model.head(target, images.image_sizes[:1], maps, objects[:, None])
    (expected,) = model._instances(outputs, images)
    # The stream's results are post-processed: boxes empty once clipped to the image are gone.
    expected = detector_postprocess(expected, video[3]["height"], video[3]["width"])
    streamed = done[3][1]["instances"]
    top = streamed.scores.argsort(descending=True)[:5]
    torch.testing.assert_close(streamed.scores[top], expected.scores.sort(descending=True)[0][:5])


def _training_batch(num_support, seed=0):
    video = random_video(6, seed=seed)
    batch = []
    for i, frame in enumerate(video[:2]):
        gt = Instances((64, 80))
        gt.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]))
        gt.gt_classes = torch.tensor([1, 4])
        support = [2 + (i + j) % 4 for j in range(num_support)]
        batch.append(
            {
                **frame,
                "instances": gt,
                "support_images": [video[s]["image"] for s in support],
                "support_offsets": [s - i for s in support],
            }
        )
    return batch


def test_training_reaches_every_module():
    model = _model().train()
    _randomize_spfa(model)
    # Half-way through the TFE gate's opening: at iteration 0 the closed gate passes it nothing.
    with EventStorage(start_iter=_cfg(VIDEO).MODEL.VIDEO.GATE.OPEN_ITERS // 2):
        losses = model(_training_batch(num_support=3))
    assert len(losses) == 6 and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    for prefix in ("backbone.", "head.tfe.", "head.spfa.", "head.stages.", "head.proposals."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        assert sum(g.abs().sum() for g in grads) > 0, prefix
    with pytest.raises(ValueError, match="as many support frames each, at least one"):
        model(_training_batch(num_support=0))


@pytest.mark.parametrize("module", ["TFE", "SPFA"])
def test_training_loss_reads_the_support_images(module):
    # Each module alone makes the loss depend on the support frames; with neither, it does not
    # (frozen BatchNorm: batch statistics would mix the support frames in).
    other = "SPFA" if module == "TFE" else "TFE"
    for enabled in (True, False):
        opts = {
            f"MODEL.SPARSEVOD.{module}.ENABLED": enabled,
            f"MODEL.SPARSEVOD.{other}.ENABLED": False,
            "MODEL.RESNETS.NORM": "FrozenBN",
            # TFE's residual gate would start closed, the supports unread until it opens.
            "MODEL.VIDEO.IDENTITY_INIT": False,
        }
        model = _model(**opts).train()
        if enabled and module == "SPFA":
            _randomize_spfa(model)
        totals = []
        for seed in (0, 1):
            batch = _training_batch(num_support=2)
            replacement = random_video(2, seed=10 + seed)
            for x in batch:
                x["support_images"] = [f["image"] for f in replacement]
            with EventStorage():
                totals.append(sum(model(batch).values()).item())
        assert (totals[0] != totals[1]) == enabled, (module, enabled, totals)


@pytest.mark.usefixtures("synthetic_datasets")
@pytest.mark.parametrize("path", [SINGLE, VIDEO])
def test_synthetic_configs_train_then_evaluate_on_cpu(path, tmp_path):
    cfg = _cfg(path)
    trainer = brief_trainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.head.state_dict().items()}
    trainer.train()
    assert len(trained_losses(trainer)) == 2
    after = trainer.model.head.state_dict()
    assert not torch.equal(before["proposals.boxes"], after["proposals.boxes"])
    results = evaluate_on_synthetic(cfg, trainer.model)
    assert set(results) >= {"mAP"}
