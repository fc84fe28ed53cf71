"""
Fixed weights and inputs for the "same detections as before the streaming-core redesign" test.

Weights come from each parameter's *name* (not from the order modules are built in), so a
refactor that keeps parameter names and shapes reproduces them exactly. ``golden_detections.pt``
holds the detections of commit ecdcea7 (the last one before the redesign) on these weights and
the video of :func:`golden_video`, made in a tree of ecdcea7: its model of
``configs/synthetic/{name}.yaml`` at :func:`golden_cfg`'s sizes, filled by ``fill_by_name``,
called on the whole video (as models ran then). Regenerate it only if a change is meant to alter
detections.
"""

from _testing import fill_by_name, random_video, synthetic_cfg
from detectron2.modeling import build_model

GOLDEN_CONFIGS = ("single_frame", "ssn", "stsn", "stmn")


def golden_cfg(name):
    """The synthetic config ``name`` at test size (64 px frames, 20 proposals, all scores)."""
    cfg = synthetic_cfg(
        name, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 20}
    )
    cfg.MODEL.STMN.MEMORY_CHANNELS = 64  # the synthetic STMN config's width at ecdcea7
    # As the configs were at ecdcea7: no residual gates, STSN's and STMN's test windows then,
    # MatchTrans's paper window.
    cfg.MODEL.VIDEO.IDENTITY_INIT = False
    cfg.MODEL.VIDEO.TEST_WINDOW = {"stsn": (4, 4), "stmn": (3, 3)}.get(name, (0, 0))
    cfg.MODEL.VIDEO.TEST_STRIDE = 2 if name == "stmn" else 1
    cfg.MODEL.STMN.MATCHTRANS.K = 2
    return cfg


def golden_model(name):
    return fill_by_name(build_model(golden_cfg(name)).eval())


def golden_video():
    return random_video(14, seed=11, output_scale=2)


def detections(outputs):
    """Per frame: (boxes (N, 4), scores (N,), classes (N,)) of a model's outputs."""
    return [
        (o["instances"].pred_boxes.tensor, o["instances"].scores, o["instances"].pred_classes)
        for o in outputs
    ]
