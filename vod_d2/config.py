"""Config keys of vod_d2. ``add_vod_config(cfg)`` adds every key, each with its default."""

from detectron2.config import CfgNode as CN

__all__ = ["add_vod_config", "make_online"]


def add_vod_config(cfg):
    """Add the vod_d2 keys to a detectron2 config in place (call it before ``merge_from_file``)."""
    _add_video_config(cfg)
    _add_key_frame_config(cfg)
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_stsn_config(cfg)
    _add_stmn_config(cfg)
    _add_rfcn_config(cfg)
    _add_lsts_config(cfg)
    _add_flow_config(cfg)
    _add_impression_config(cfg)
    _add_sparse_rcnn_config(cfg)
    _add_datasets_config(cfg)


def make_online(cfg) -> dict:
    """
    Turn a method's config into its causal variant, in place: every frame is detected from it
    and past frames only, as it arrives (a live stream, or a model that must not wait).

    * windows (STSN, STMN, ...): the same number of frames, all in the past:
      ``MODEL.VIDEO.TEST_WINDOW (before, after)`` becomes ``(before + after, 0)`` (STMN's
      backward memory then sees the frame alone, its forward memory the whole window);
    * key-frame methods with central key frames (Impression Network): the first frame of each
      segment is its key frame (``MODEL.KEY_FRAME.POSITION "first"``);
    * whole-video support (SparseVOD): a sample of the past frames (``MODEL.SPARSEVOD.ONLINE``);
    * Seq-NMS, which needs a whole video, is turned off.

    Args:
        cfg: a config with the vod_d2 keys (not frozen).

    Returns:
        dict: ``{key: (old, new)}`` for every key it changed (empty for a method that is
        already online).
    """
    changed = {}

    def set_key(key, value):
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        name = key.split(".")[-1]
        old = tuple(node[name]) if isinstance(node[name], list) else node[name]
        if old != value:
            changed[key] = (old, value)
            node[name] = value

    before, after = cfg.MODEL.VIDEO.TEST_WINDOW
    set_key("MODEL.VIDEO.TEST_WINDOW", (before + after, 0))
    set_key("MODEL.KEY_FRAME.POSITION", "first")
    if cfg.MODEL.META_ARCHITECTURE == "SparseVOD":
        set_key("MODEL.SPARSEVOD.ONLINE", True)
    set_key("TEST.SEQ_NMS.ENABLED", False)
    return changed


def _add_video_config(cfg):
    cfg.MODEL.VIDEO = CN()
    # Name in TEMPORAL_AGGREGATION_REGISTRY; "SingleFrameAggregation" is the single-frame baseline.
    cfg.MODEL.VIDEO.AGGREGATION = "SingleFrameAggregation"
    # Backbone map aggregated over time, in the configs with one map (DC5, R-FCN): the same as
    # IN_FEATURES [IN_FEATURE]. Empty: see IN_FEATURES.
    cfg.MODEL.VIDEO.IN_FEATURE = ""
    # Backbone maps aggregated over time, e.g. an FPN's ["p2", "p3", "p4", "p5", "p6"]: each by
    # its own instance of AGGREGATION, all with the first one's weights, as an FPN's heads share
    # theirs (vod_d2/modeling/temporal/levels.py). The heads read the aggregated maps and the
    # reference frame's other maps. Empty (with IN_FEATURE empty): every map the heads read.
    cfg.MODEL.VIDEO.IN_FEATURES = []
    # Test window (frames before, frames after) the reference; each one's backbone runs once.
    cfg.MODEL.VIDEO.TEST_WINDOW = (0, 0)
    # Frame step between window members at test time (STSN's temporal stride k).
    cfg.MODEL.VIDEO.TEST_STRIDE = 1
    # Key-frame interval l of key-frame methods (KeyFrameRCNN): frames per segment.
    cfg.MODEL.VIDEO.KEY_FRAME_INTERVAL = 10
    # Start every temporal module as the single-frame detector it is fine-tuned from: each
    # aggregation ends in a residual gate to its reference that starts closed
    # (vod_d2.modeling.temporal.gate), the quality nets' last conv (Impression, LSTS) starts at
    # zero (equal weights) and STMN's U_z, U_r, U start at zero. False: the papers' random
    # initialisations, whose first iterations move the detector away from its start.
    cfg.MODEL.VIDEO.IDENTITY_INIT = True
    # The residual gate of IDENTITY_INIT (vod_d2.modeling.temporal.gate): out = reference +
    # g * (module output - reference), g = 0 at the start.
    cfg.MODEL.VIDEO.GATE = CN()
    # "scheduled" (the default, chosen by the benchmark: README, "Two stages"): g rises
    # linearly with the training iteration from 0 to 1 at OPEN_ITERS, after which the output is
    # the paper's module itself; "channel": g one learned scale per channel; "position": g a
    # learned 1x1 conv of the reference and the module output, one value per position.
    cfg.MODEL.VIDEO.GATE.KIND = "scheduled"
    # "scheduled": the iterations over which g opens.
    cfg.MODEL.VIDEO.GATE.OPEN_ITERS = 400


def _add_key_frame_config(cfg):
    """Keys of KeyFrameRCNN (vod_d2/modeling/meta_arch/key_frame_rcnn.py): LSTS, Impression, DFF."""
    cfg.MODEL.KEY_FRAME = CN()
    # Name in KEY_FRAME_REGISTRY: "LSTSKeyFrames" or "ImpressionKeyFrames" (DFF with
    # MODEL.IMPRESSION.MEMORY False).
    cfg.MODEL.KEY_FRAME.MODULE = "ImpressionKeyFrames"
    # Where a segment of MODEL.VIDEO.KEY_FRAME_INTERVAL frames has its key frame: "first"
    # (online: past frames only) or "center" (a frame waits for its segment's centre).
    cfg.MODEL.KEY_FRAME.POSITION = "first"
    # The backbone map that is the heavy feature and that the heads read (R-FCN's reduced res5).
    cfg.MODEL.KEY_FRAME.IN_FEATURE = "res5_reduced"


def _add_solver_config(cfg):
    # Optimizer VideoTrainer builds (vod_d2.engine.optimizer): "SGD" (detectron2's) or "ADAMW"
    # (Sparse R-CNN's schedule). SOLVER.CLIP_GRADIENTS.CLIP_TYPE also takes "full_model": one
    # norm over all gradients (Sparse R-CNN, DETR).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Learning-rate factor of the parameters MODEL.WEIGHTS does not provide: the modules a video
    # method adds to the single-frame detector it is fine-tuned from train at this multiple of
    # the learning rate of the pretrained ones (vod_d2.checkpoint). 1: one rate for all.
    cfg.SOLVER.NEW_MODULE_LR_FACTOR = 1.0


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
    # The "key_frame" rule's old and new key frames: offsets d_0 in [old_min, old_max] and d_1
    # in [new_min, new_max] (Impression §3.2 with l = 10: [-10, -5] and [-5, 5]).
    cfg.INPUT.VIDEO.TRAIN_KEY_RANGES = (-10, -5, -5, 5)
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
    # Dilation of W_z, W_r, W: that of the conv they start from (R-FCN's feature reduction: 6).
    cfg.MODEL.STMN.DILATION = 1
    # BN* maps [0, mean + K * std] of the positive gate inputs linearly onto [0, 1] (Fig. 3).
    cfg.MODEL.STMN.BN_STAR_K = 3.0
    # A forward and a backward memory, concatenated (paper); False: forward (online) only.
    cfg.MODEL.STMN.BIDIRECTIONAL = True
    cfg.MODEL.STMN.MATCHTRANS = CN()
    # Align the memory to each new frame with MatchTrans (§3.3); False: "No-MatchTrans".
    cfg.MODEL.STMN.MATCHTRANS.ENABLED = True
    # MatchTrans compares each location with a (2K+1)^2 window of the previous frame (paper: 2).
    cfg.MODEL.STMN.MATCHTRANS.K = 2
    # "cosine" (the authors' code): cosine affinities, negatives zeroed, divided by their sum, the
    # memory copied where that sum is ~0, no gradient into the features; "sum" (the paper's
    # equation): raw dot products divided by their sum; "softmax": softmax of the dot products.
    cfg.MODEL.STMN.MATCHTRANS.NORMALIZATION = "cosine"
    # A loss on every annotated frame of the training sequence (paper, §3.1); False: on the
    # reference (the middle frame) only.
    cfg.MODEL.STMN.PER_FRAME_LOSS = True
    # Dtype of what the test stream holds until its frames are detected (the backward
    # projections and forward memories): "float32" (exact), or "float16" (each rounded once, the
    # steps in float32; about 0.95 instead of 1.45 GB with the paper's window at 600 x 1000).
    cfg.MODEL.STMN.TEST_CACHE_DTYPE = "float32"
    # The test-time ensemble with the static detector STMN started from (§4), read by the
    # "StaticEnsembleRCNN" meta-architecture (vod_d2.modeling.meta_arch.ensemble).
    cfg.MODEL.STMN.ENSEMBLE = CN()
    # Config file of the static detector (a frame-independent VideoRCNN), e.g.
    # "configs/stmn_R101_RFCN_static.yaml".
    cfg.MODEL.STMN.ENSEMBLE.STATIC_CONFIG = ""
    # Its checkpoint (the static detector's MODEL.WEIGHTS is not read).
    cfg.MODEL.STMN.ENSEMBLE.STATIC_WEIGHTS = ""


def _add_rfcn_config(cfg):
    """R-FCN keys (vod_d2/modeling/roi_heads, backbone/rfcn_resnet.py; Dai et al. 2016, 2017)."""
    cfg.MODEL.RFCN = CN()
    # Width of the feature-reduction 3x3 conv + ReLU after res5 (papers: 1024).
    cfg.MODEL.RFCN.REDUCTION_CHANNELS = 1024
    # Dilation of that conv (the DFF/FGFA code the papers build on: 6).
    cfg.MODEL.RFCN.REDUCTION_DILATION = 6
    # The RPN reads the first half of the heads' map and R-FCN the second (STSN §4.1,
    # Impression §3.3); False feeds all channels to both.
    cfg.MODEL.RFCN.SPLIT_FEATURES = True
    # k: each RoI is divided into k x k bins, each with its own score maps (papers: 7).
    cfg.MODEL.RFCN.GROUP_SIZE = 7
    # Bilinear samples per bin side in position-sensitive RoIAlign; 0: ceil(bin size) (adaptive).
    cfg.MODEL.RFCN.POOLER_SAMPLING_RATIO = 0
    # Deformable position-sensitive RoI pooling (Dai et al. 2017) instead of the plain one.
    cfg.MODEL.RFCN.DEFORMABLE = False
    # gamma: the predicted offsets are fractions of the RoI's size scaled by it (paper: 0.1).
    cfg.MODEL.RFCN.DEFORMABLE_GAMMA = 0.1
    # Make res4's last N bottleneck blocks deformable too (detectron2's DEFORM_ON_PER_STAGE
    # switches whole stages): 3, with res5 deformable, gives the 6 deformable layers of
    # Deformable ConvNets' backbone that STSN uses (§4.1).
    cfg.MODEL.RFCN.DEFORM_RES4_LAST_BLOCKS = 0
    # Online hard example mining: only the hardest sampled RoIs of each image carry the loss.
    cfg.MODEL.RFCN.OHEM = False
    # B, the RoIs kept per image by OHEM (R-FCN, LSTS §4.2: 128).
    cfg.MODEL.RFCN.OHEM_BATCH_SIZE_PER_IMAGE = 128


def _add_lsts_config(cfg):
    """LSTS keys (vod_d2.modeling.temporal.lsts, .backbone.split_resnet; Jiang et al., ECCV 2020).

    "Authors" below is their MXNet code, jiangzhengkai/LSTS.
    """
    cfg.MODEL.LSTS = CN()
    # The light path (non-key frames) is the backbone up to this stage's first LOW_LEVEL_BLOCKS
    # blocks; the authors' "feature before conv4_3" is res4's first 4 blocks (res4a..res4b3).
    cfg.MODEL.LSTS.LOW_LEVEL_STAGE = "res4"
    cfg.MODEL.LSTS.LOW_LEVEL_BLOCKS = 4
    # The light path ends before the last block's ReLU (authors); the rest starts with it.
    cfg.MODEL.LSTS.LOW_LEVEL_PRE_ACTIVATION = True
    # N sampling locations shared by all positions and by SRFU and DFA (authors: 40 Gaussian,
    # 81 for the grid).
    cfg.MODEL.LSTS.NUM_POINTS = 40
    # Location init (Table 4): "gaussian" (zero mean, unit variance) or "grid" (the paper's
    # "uniform": sqrt(N) x sqrt(N) unit-spaced neighbourhood, MatchTrans-like).
    cfg.MODEL.LSTS.INIT = "gaussian"
    # Learn the locations by back-propagation (Eq. 6); False keeps the init (Table 4).
    cfg.MODEL.LSTS.LEARN_LOCATIONS = True
    # Learning rate of the locations = SOLVER.BASE_LR * this (authors: lr_mult 10000 * lr,
    # 2.5 at their lr 2.5e-4), and their weight decay (authors: none).
    cfg.MODEL.LSTS.LOCATIONS_LR_MULT = 2.5
    cfg.MODEL.LSTS.LOCATIONS_WEIGHT_DECAY = 0.0
    # Similarities normalised over the N points by "softmax" (authors) or "sum" (Eq. 3).
    cfg.MODEL.LSTS.NORMALIZATION = "softmax"
    # Width of the 1x1 embeddings f and g (authors: 256).
    cfg.MODEL.LSTS.EMBED_CHANNELS = 256
    # SRFU's key-frame memory update (Table 2): "quality" ((c)-(g)), "fixed" (weights 0.5, (b))
    # or "none" (sparse deep features only, (a)).
    cfg.MODEL.LSTS.MEMORY_UPDATE = "quality"
    # DFA's fusion of the aligned memory with the non-key frame (Table 2): "quality" ((f), (g)),
    # "fixed" (weights 0.5, (d), (e)) or "none" (the aligned memory alone, (a)-(c)).
    cfg.MODEL.LSTS.NON_KEY_AGGREGATION = "quality"
    # DFA lifts the low-level feature with the Transform unit (Table 2 (e), (g)).
    cfg.MODEL.LSTS.TRANSFORM = True
    # Widths of the Transform unit's convs before the last (paper: 256, 512; authors: 256, 256)
    # and the kernels of all its convs (paper: 3, 3, 3; authors: 1, 3, 3). The authors' layout
    # is the default: with it (and QUALITY_LAYOUT "authors") R-101 LSTS has the 64.5 M
    # parameters of Table 1; §4.2's text would add ~9 M.
    cfg.MODEL.LSTS.TRANSFORM_DIMS = (256, 256)
    cfg.MODEL.LSTS.TRANSFORM_KERNEL_SIZES = (1, 3, 3)
    # The aggregation units' quality net: "authors" (1x1x256, 3x3x16, 3x3x1, no activation, the
    # code's quality_network) or "paper" (§4.2's 3x3x256, 1x1x16, 1x1x1 with ReLUs).
    cfg.MODEL.LSTS.QUALITY_LAYOUT = "authors"


def _add_flow_config(cfg):
    """Flow networks of flow-guided methods (vod_d2.modeling.flow; DFF, Impression Network)."""
    cfg.MODEL.FLOW = CN()
    # Name in FLOW_NET_REGISTRY: "FlowNetS" (the papers') or "RAFTSmall" (torchvision's RAFT);
    # or a diagnostic bound (vod_d2.modeling.flow.diagnostic): "ZeroFlow" (no motion: the key
    # feature is copied) or "SyntheticOracleFlow" (the synthetic generator's exact flow, for the
    # built-in synthetic datasets only).
    cfg.MODEL.FLOW.NAME = "FlowNetS"
    # Flow checkpoint loaded when the model is built (MODEL.WEIGHTS, loaded later, overrides it
    # only where it holds flow keys). FlowNetS: a ClementPinard/FlowNetPytorch FlowNetS file, e.g.
    # flownets_EPE1.951.pth.tar; RAFTSmall: the name of a torchvision weights entry,
    # "Raft_Small_Weights.C_T_V1" (FlyingChairs + FlyingThings3D, downloaded by torchvision) or
    # ".C_T_V2", or a file in either format: torchvision's raft_small state dict, or the
    # authors' checkpoint (princeton-vl/RAFT raft-small.pth). Either network: a checkpoint of
    # tools/pretrain_flow.py.
    cfg.MODEL.FLOW.WEIGHTS = ""
    # The flow network sees the frames resized by this factor, and returns the flow at the
    # feature stride 16 whatever it is. 0.5: the papers' (a 300-pixel flow input for 600-pixel
    # frames); small frames (the synthetic 128 px) keep more motion detail at 1.0.
    cfg.MODEL.FLOW.INPUT_SCALE = 0.5
    cfg.MODEL.FLOW.FLOWNET = CN()
    # Divides every FlowNet-S width: 1 is FlowNet-S (and what checkpoints need), e.g. 16 a tiny
    # net for CPU tests.
    cfg.MODEL.FLOW.FLOWNET.WIDTH_DIVISOR = 1
    # Channel order the FlowNet-S weights expect: "RGB" (ClementPinard) or "BGR" (Caffe, DFF).
    cfg.MODEL.FLOW.FLOWNET.FORMAT = "RGB"
    # Mean subtracted from FlowNet-S's input before dividing it by 255, in FORMAT order, [0, 255]
    # units (ClementPinard's FlyingChairs training: 255 * (0.45, 0.432, 0.411)).
    cfg.MODEL.FLOW.FLOWNET.PIXEL_MEAN = (114.75, 110.16, 104.805)
    # FlowNet predicts flow divided by this (its training scale; the 20 behind DFF's 2.5 = 20 / 8).
    cfg.MODEL.FLOW.FLOWNET.DIV_FLOW = 20.0
    cfg.MODEL.FLOW.RAFT = CN()
    # RAFT's recurrent refinement iterations (torchvision's default: 12).
    cfg.MODEL.FLOW.RAFT.NUM_FLOW_UPDATES = 12


def _add_impression_config(cfg):
    """Impression Network keys (vod_d2.modeling.temporal.impression; Hetang et al. 2017)."""
    cfg.MODEL.IMPRESSION = CN()
    # Table 1's switches, (a)-(e): (a) all False but END_TO_END; (b) = DFF: SPARSE_FEATURE only;
    # (c) + MEMORY; (d) + QUALITY_AWARE (the paper's method); (e) = (d) with END_TO_END False.
    # N_feat runs on key frames only and the flow warps their feature to the other frames;
    # False: every frame is a key frame, no flow (Table 1 (a), the per-frame detector).
    cfg.MODEL.IMPRESSION.SPARSE_FEATURE = True
    # Keep the impression feature and fuse it into every key frame's task feature (Eq. 2-4);
    # False: the key feature alone is the task feature (Table 1 (b), Deep Feature Flow).
    cfg.MODEL.IMPRESSION.MEMORY = True
    # Position-wise weights from the quality net N_q (Eq. 2); False: fixed 0.5 (Table 1 (c)).
    cfg.MODEL.IMPRESSION.QUALITY_AWARE = True
    # Train N_feat and the flow net with the task loss; False (Table 1 (e)): both stay fixed at
    # the single-frame detector's and the FlyingChairs FlowNet-S weights, only N_q and the
    # detection sub-network learn.
    cfg.MODEL.IMPRESSION.END_TO_END = True
    # Memory gate g of Eq. 4, f_imp = (1 - g) f_k + g f_task, in [0, 1] (Table 1: 1.0; Fig. 7:
    # larger is better; 0 keeps only the key feature, so the next key frame fuses f_k alone).
    cfg.MODEL.IMPRESSION.GATE = 1.0
    # Widths of N_q's 3x3 and first 1x1 conv (§3.3: 256, 16; a 1-channel 1x1 conv follows).
    cfg.MODEL.IMPRESSION.QUALITY_DIMS = (256, 16)


def _add_sparse_rcnn_config(cfg):
    """
    Sparse R-CNN (Sun et al., CVPR 2021) and SparseVOD (Hashmi et al., BMVC 2022) keys
    (vod_d2.modeling.sparse_rcnn). The proposal width d is MODEL.FPN.OUT_CHANNELS; the head
    also reads MODEL.ROI_HEADS.IN_FEATURES and NUM_CLASSES, and its RoIAlign
    MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION, POOLER_SAMPLING_RATIO and POOLER_TYPE.
    """
    cfg.MODEL.SPARSE_RCNN = CN()
    # Learnable proposal boxes and features (paper: 100).
    cfg.MODEL.SPARSE_RCNN.NUM_PROPOSALS = 100
    # Iterative stages of the dynamic head (paper: 6; SparseVOD's Table 3 varies it).
    cfg.MODEL.SPARSE_RCNN.NUM_STAGES = 6
    # Heads of each stage's self-attention among the proposals.
    cfg.MODEL.SPARSE_RCNN.NUM_HEADS = 8
    # Hidden width of each stage's FFN.
    cfg.MODEL.SPARSE_RCNN.DIM_FEEDFORWARD = 2048
    # Dropout after the self-attention, the instance interaction and in the FFN.
    cfg.MODEL.SPARSE_RCNN.DROPOUT = 0.0
    # Width between the two dynamic 1x1 convs of the instance interaction (paper: 64).
    cfg.MODEL.SPARSE_RCNN.DIM_DYNAMIC = 64
    # Linear-LayerNorm-ReLU layers before the class logits and before the box deltas.
    cfg.MODEL.SPARSE_RCNN.NUM_CLS_LAYERS = 1
    cfg.MODEL.SPARSE_RCNN.NUM_REG_LAYERS = 3
    # Weights of the focal, L1 and GIoU terms, in the matching cost and the loss (2, 5, 2).
    cfg.MODEL.SPARSE_RCNN.CLASS_WEIGHT = 2.0
    cfg.MODEL.SPARSE_RCNN.L1_WEIGHT = 5.0
    cfg.MODEL.SPARSE_RCNN.GIOU_WEIGHT = 2.0
    # Focal loss alpha and gamma, and the initial probability of every class.
    cfg.MODEL.SPARSE_RCNN.FOCAL_ALPHA = 0.25
    cfg.MODEL.SPARSE_RCNN.FOCAL_GAMMA = 2.0
    cfg.MODEL.SPARSE_RCNN.PRIOR_PROB = 0.01
    # The set-prediction loss on every stage (paper) rather than on the last only.
    cfg.MODEL.SPARSE_RCNN.DEEP_SUPERVISION = True

    cfg.MODEL.SPARSEVOD = CN()
    cfg.MODEL.SPARSEVOD.TFE = CN()
    # Temporal RoI Feature Extraction in every stage (Table 2); False: RoIAlign on the target.
    cfg.MODEL.SPARSEVOD.TFE.ENABLED = True
    # How TFE fuses the target's and the supports' RoI features: "MSA" or "AVG" (Table 4).
    cfg.MODEL.SPARSEVOD.TFE.AGGREGATION = "MSA"
    # Attention heads of TFE's "MSA" (channel groups with their own weights).
    cfg.MODEL.SPARSEVOD.TFE.NUM_HEADS = 4
    # Most similar support locations per RoI cell in Temporal RoI Align (at most 32).
    cfg.MODEL.SPARSEVOD.TFE.TOP_K = 2
    cfg.MODEL.SPARSEVOD.SPFA = CN()
    # Semantic Proposal Feature Aggregation in every stage (Table 2); False: none.
    cfg.MODEL.SPARSEVOD.SPFA.ENABLED = True
    # How SPFA aggregates the supports' object features: "MSA" (Eq. 1) or "AVG" (Table 4).
    cfg.MODEL.SPARSEVOD.SPFA.AGGREGATION = "MSA"
    # Attention heads of SPFA's "MSA".
    cfg.MODEL.SPARSEVOD.SPFA.NUM_HEADS = 8
    # Support frames of every test frame, spread uniformly over the whole video (Table 5: 6).
    # Training draws INPUT.VIDEO.TRAIN_NUM_SUPPORT with INPUT.VIDEO.TRAIN_SAMPLING "global".
    cfg.MODEL.SPARSEVOD.TEST_NUM_SUPPORT = 6
    # Seed of the test-time draw (the same frames for a video of a given length).
    cfg.MODEL.SPARSEVOD.TEST_SUPPORT_SEED = 0
    # Read a uniform sample of past frames only, even when the video's length is known (the
    # streaming variant, used anyway when the length is unknown).
    cfg.MODEL.SPARSEVOD.ONLINE = False


def _add_datasets_config(cfg):
    """Datasets declared on the command line (vod_d2.data.datasets.datasets_file)."""
    # A YAML/JSON file mapping dataset names to register_video_dataset arguments; train_net.py
    # and the demo register them in every process before DATASETS.TRAIN/TEST are read.
    cfg.DATASETS.FILE = ""
