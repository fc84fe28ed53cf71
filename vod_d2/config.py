"""Config keys of vod_d2. ``add_vod_config(cfg)`` adds every key, each with its default."""

from detectron2.config import CfgNode as CN

__all__ = ["add_vod_config"]


def add_vod_config(cfg):
    """Add the vod_d2 keys to a detectron2 config in place (call it before ``merge_from_file``)."""
    _add_video_config(cfg)
    _add_data_config(cfg)
    _add_test_config(cfg)
    _add_stsn_config(cfg)
    _add_stmn_config(cfg)
    _add_datasets_config(cfg)


def _add_video_config(cfg):
    cfg.MODEL.VIDEO = CN()
    # Name in TEMPORAL_AGGREGATION_REGISTRY; "SingleFrameAggregation" is the single-frame baseline.
    cfg.MODEL.VIDEO.AGGREGATION = "SingleFrameAggregation"
    # Backbone map aggregated over time; the heads read it (other maps come from the reference).
    cfg.MODEL.VIDEO.IN_FEATURE = "res5"
    # Test window (frames before, frames after) the reference; each one's backbone runs once.
    cfg.MODEL.VIDEO.TEST_WINDOW = (0, 0)
    # Frame step between window members at test time (STSN's temporal stride k).
    cfg.MODEL.VIDEO.TEST_STRIDE = 1
    # Key-frame interval of key-frame methods, used by the "key_frame" sampling rule too.
    cfg.MODEL.VIDEO.KEY_FRAME_INTERVAL = 10


def _add_data_config(cfg):
    cfg.INPUT.VIDEO = CN()
    # How training support frames are chosen around the reference (vod_d2.data.frame_sampling):
    # "none", "before_after", "uniform_range", "fixed", "global" or "key_frame".
    cfg.INPUT.VIDEO.TRAIN_SAMPLING = "none"
    # Number of support frames per training sample (not used by "fixed" and "key_frame").
    cfg.INPUT.VIDEO.TRAIN_NUM_SUPPORT = 0
    # Largest |offset| of a support frame for "before_after" and "uniform_range".
    cfg.INPUT.VIDEO.TRAIN_RANGE = 9
    # Offsets of the support frames for the "fixed" rule, e.g. (-20, -10, 10, 20).
    cfg.INPUT.VIDEO.TRAIN_OFFSETS = ()
    # Fraction of training samples drawn from one-frame (DET) datasets when both kinds are in
    # DATASETS.TRAIN; a negative value samples in proportion to the datasets' sizes.
    cfg.DATALOADER.DET_RATIO = -1.0


def _add_test_config(cfg):
    cfg.TEST.SEQ_NMS = CN()
    # Apply Seq-NMS (Han et al. 2016) to each test video's detections before evaluation.
    cfg.TEST.SEQ_NMS.ENABLED = False
    # Boxes of adjacent frames are linked when their IoU exceeds this (same class).
    cfg.TEST.SEQ_NMS.LINK_IOU = 0.5
    # Boxes overlapping a selected sequence's box above this IoU are suppressed in its frame.
    cfg.TEST.SEQ_NMS.SUPPRESS_IOU = 0.3
    # How a selected sequence is rescored: "avg" or "max".
    cfg.TEST.SEQ_NMS.RESCORE = "avg"
    # Write the test detections of VID evaluation as a COCO-style json in OUTPUT_DIR.
    cfg.TEST.VID_EVAL = CN()
    cfg.TEST.VID_EVAL.DUMP_DETECTIONS = True
    # Frames on either side that define an object's motion IoU (FGFA's motion-speed bins).
    cfg.TEST.VID_EVAL.MOTION_FRAMES = 10
    # Also compute COCO AP/AP50/AP75 with pycocotools (about an hour on full ImageNet VID val).
    cfg.TEST.VID_EVAL.COCO_METRICS = True


def _add_stsn_config(cfg):
    """STSN keys (vod_d2/modeling/temporal/stsn.py; Bertasius et al. 2018, §4.1)."""
    cfg.MODEL.STSN = CN()
    # Deformable convs of the sampling block, each with its own offset conv (paper: 4).
    cfg.MODEL.STSN.NUM_CONVS = 4
    # Width of the sampling block's intermediate maps g^(1)..g^(3) (paper: 1024).
    cfg.MODEL.STSN.CONV_DIM = 1024
    # Width of the sampled/aggregated map fed to the heads; 0 keeps the backbone's width, which
    # identity-initialises the final sampling conv (paper: 1024 over its 1024-channel features).
    cfg.MODEL.STSN.OUT_CHANNELS = 0
    # Channel groups with their own offsets; the paper shares offsets across channels (§3): 1.
    cfg.MODEL.STSN.DEFORMABLE_GROUPS = 1
    # Widths of the 1x1, 3x3, 1x1 convs of the weight embedding S(.) (paper: 512, 512, 2048).
    cfg.MODEL.STSN.EMBED_DIMS = (512, 512, 2048)
    # (Reference, frame) pairs sampled in one pass; bounds test memory for any K (0: all at once).
    cfg.MODEL.STSN.PAIRS_PER_PASS = 8


def _add_stmn_config(cfg):
    """STMN keys (vod_d2.modeling.temporal.stmn; Xiao & Lee, ECCV 2018)."""
    cfg.MODEL.STMN = CN()
    # Recurrent cell: "STMM" (ReLU + BN* gates, Eq. 1-4) or "ConvGRU" (sigmoid/tanh ablation).
    cfg.MODEL.STMN.CELL = "STMM"
    # Channels of each direction's memory (paper: 512); the heads see twice as many.
    cfg.MODEL.STMN.MEMORY_CHANNELS = 512
    # Kernel of W_z, W_r, W (frame -> memory) and of STMNSingleFrameAggregation's conv.
    cfg.MODEL.STMN.KERNEL_SIZE = 3
    # Kernel of U_z, U_r, U (memory -> memory).
    cfg.MODEL.STMN.MEMORY_KERNEL_SIZE = 3
    # BN* maps [0, mean + K * std] of the positive gate inputs linearly onto [0, 1] (Fig. 3).
    cfg.MODEL.STMN.BN_STAR_K = 3.0
    # A forward and a backward memory, concatenated (paper); False: forward (online) only.
    cfg.MODEL.STMN.BIDIRECTIONAL = True
    cfg.MODEL.STMN.MATCHTRANS = CN()
    # Align the memory to each new frame with MatchTrans (§3.3); False: "No-MatchTrans".
    cfg.MODEL.STMN.MATCHTRANS.ENABLED = True
    # MatchTrans compares each location with a (2K+1)^2 window of the previous frame (paper: 2).
    cfg.MODEL.STMN.MATCHTRANS.K = 2
    # Affinities over the window divided by their "sum" (paper; non-negative features) or "softmax".
    cfg.MODEL.STMN.MATCHTRANS.NORMALIZATION = "sum"


def _add_datasets_config(cfg):
    """Datasets declared on the command line (vod_d2.data.datasets.datasets_file)."""
    # A YAML/JSON file mapping dataset names to register_video_dataset arguments; train_net.py
    # and the demo register them in every process before DATASETS.TRAIN/TEST are read.
    cfg.DATASETS.FILE = ""
