"""``add_galw_config(cfg)``: every key this project reads, with its default.

One function per concept below, so each part of the project owns its keys.
"""
from detectron2.config import CfgNode as CN

from galw_core import add_galw_core_config


def add_galw_config(cfg):
    """Add the GALW-PS keys to a detectron2 config (idempotent)."""
    if "GALW" in cfg.MODEL:
        return cfg
    add_galw_core_config(cfg)
    _add_data_config(cfg)
    _add_evaluation_config(cfg)
    _add_person_search_config(cfg)
    _add_nae_config(cfg)
    _add_alignps_config(cfg)
    _add_attribute_config(cfg)
    return cfg


#: detectron2's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST defaults (detectron2/config/defaults.py), the values
#: of a config that never set them.
_D2_TEST_SIZE = (800, 1333)
_PS_TEST_KEYS = ("INPUT.PS.TEST_SHORT_SIDE", "INPUT.PS.TEST_LONG_SIDE")
_D2_TEST_KEYS = ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST")


def sync_test_size(cfg, opts=()):
    """Set INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST to the person-search test size INPUT.PS.TEST_SHORT_SIDE /
    TEST_LONG_SIDE (PersonSearch models; others are left as they are); returns ``cfg``.

    The evaluation's mapper, tools/search.py and the export resize by INPUT.PS; detectron2's
    ``DefaultPredictor`` and tools/deploy/export_model.py resize by ``ResizeShortestEdge([MIN_SIZE_TEST] * 2,
    MAX_SIZE_TEST)`` (detectron2/engine/defaults.py), the same keep-ratio fit. Kept equal, a predictor built
    from a run's config.yaml sees images at the evaluated size. detectron2's defaults (800, 1333) are
    replaced, as are values that ``opts`` (KEY VALUE ...) leave while changing INPUT.PS's (a saved
    config.yaml evaluated at another size); other values that differ raise ValueError.
    """
    if cfg.MODEL.META_ARCHITECTURE != "PersonSearch":
        return cfg
    ps = (int(cfg.INPUT.PS.TEST_SHORT_SIDE), int(cfg.INPUT.PS.TEST_LONG_SIDE))
    now = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    named = set(list(opts)[::2])
    follows = now == _D2_TEST_SIZE or (named & set(_PS_TEST_KEYS) and not named & set(_D2_TEST_KEYS))
    if now != ps and not follows:
        raise ValueError(
            f"INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST are {now[0]}/{now[1]}, but the person-search test size "
            f"INPUT.PS.TEST_SHORT_SIDE/TEST_LONG_SIDE is {ps[0]}/{ps[1]}: the evaluation and the search resize by "
            "INPUT.PS, detectron2's DefaultPredictor by INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST, which follow it. Set the "
            "test size with INPUT.PS.TEST_SHORT_SIDE/TEST_LONG_SIDE and leave INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST unset"
        )
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = ps
    if was_frozen:
        cfg.freeze()
    return cfg


def _add_data_config(cfg):
    """Person-search data: the mapper's multi-scale training resize, flip and test resize.

    Dataset roots come from $DETECTRON2_DATASETS (detectron2's convention), not from the config.
    """
    cfg.INPUT.PS = CN()
    # Multi-scale training resize: "value" (the references, mmdet multiscale_mode 'value'): one
    # (long, short) bound pair of TRAIN_SCALES drawn uniformly per image; "range": the long-side bound
    # drawn uniformly from TRAIN_LONG_SIDE_RANGE and, independently, the short-side bound from
    # TRAIN_SHORT_SIDE_RANGE (smaller images on average). Either way the image is scaled, keeping its
    # ratio, to fit both bounds.
    cfg.INPUT.PS.TRAIN_SCALE_MODE = "value"
    cfg.INPUT.PS.TRAIN_SCALES = ((667, 400), (1000, 600), (1333, 800), (1500, 900), (1666, 1000), (2000, 1200))
    cfg.INPUT.PS.TRAIN_LONG_SIDE_RANGE = (667, 2000)
    cfg.INPUT.PS.TRAIN_SHORT_SIDE_RANGE = (400, 1200)
    # Probability of a horizontal flip during training (boxes, pids and attributes follow).
    cfg.INPUT.PS.HFLIP_PROB = 0.5
    # Test resize: the largest keep-ratio size with long side <= this ... (config loading copies
    # both into INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST for DefaultPredictor: sync_test_size)
    cfg.INPUT.PS.TEST_LONG_SIDE = 1500
    # ... and short side <= this (1500x900 as in the paper).
    cfg.INPUT.PS.TEST_SHORT_SIDE = 900


def _add_evaluation_config(cfg):
    """TEST.PERSON_SEARCH: the evaluation protocol options (standard by default)."""
    cfg.TEST.PERSON_SEARCH = CN()
    # Gallery detections used for search need score >= this (AlignPS-style code: 0.2 CUHK, 0.15 PRW).
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.5
    # Detections scored for detection AP / recall.
    cfg.TEST.PERSON_SEARCH.DETECTION_SCORE_THRESH = 0.01
    # IoU for a detection to match a GT box (mutual argmax) in detection metrics.
    cfg.TEST.PERSON_SEARCH.DETECTION_IOU_THRESH = 0.5
    # Query feature: "gt_box" (embedding of the query box) or "best_iou_detection" (AlignPS, PSTR).
    cfg.TEST.PERSON_SEARCH.QUERY_FEATURE = "gt_box"
    # Embedding searched with when MODEL.PERSON_SEARCH.DETECTOR and EMBEDDER differ (ROI-AlignPS*):
    # "embedder" (the EMBEDDER's embedding of the detector's boxes: NAE's), "detector" (the
    # detector's own: AlignPS's) or "concat" (both, each unit-norm, concatenated / sqrt(2)). The
    # ROI-AlignPS reference scores all three; docs/fidelity.md says why "embedder" is the default.
    cfg.TEST.PERSON_SEARCH.EMBEDDING = "embedder"
    # CUHK-SYSU gallery size reported as "search" (one of 50, 100, 500, 1000, 2000, 4000).
    cfg.TEST.PERSON_SEARCH.CUHK_GALLERY_SIZE = 100
    # Further CUHK-SYSU protocols, each reported as "search_<name>".
    cfg.TEST.PERSON_SEARCH.CUHK_PROTOCOLS = [
        "TestG50", "TestG100", "TestG500", "TestG1000", "TestG2000", "TestG4000",
        "Occlusion", "Resolution", "WholeGallery",
    ]
    # PRW: also report the multi-view (cross-camera) setting as "search_MultiView".
    cfg.TEST.PERSON_SEARCH.PRW_MULTI_VIEW = True
    # Queries per full similarity product, when one is computed (memory ~ batch x gallery detections x 4 bytes).
    cfg.TEST.PERSON_SEARCH.QUERY_BATCH_SIZE = 256
    # Probability threshold for attribute accuracy (mA).
    cfg.TEST.PERSON_SEARCH.ATTRIBUTE_THRESH = 0.5
    # Also report the default protocol re-scored with SeqNet/COAT's context bipartite graph
    # matching as "search_CBGM" (the standard protocol has no re-scoring).
    cfg.TEST.PERSON_SEARCH.CBGM = False
    # CBGM k1: the gallery images of the query's k1 most similar detections are re-scored;
    # 0 = SeqNet's value (10 CUHK-SYSU, 30 PRW).
    cfg.TEST.PERSON_SEARCH.CBGM_TOP_DETECTIONS = 0
    # CBGM k2: the query person plus the k2 - 1 highest-scoring other people of the query image;
    # 0 = SeqNet's value (3 CUHK-SYSU, 4 PRW).
    cfg.TEST.PERSON_SEARCH.CBGM_CONTEXT = 0
    # Also report the default protocol searched over the GT gallery boxes embedded by the model
    # as "search_GTOracle" (the re-id upper bound SeqNet and PS-ARM report).
    cfg.TEST.PERSON_SEARCH.GT_BOX_ORACLE = False
    # PRW: also report the same-camera setting (gallery = the query camera's other frames) as
    # "search_SameCamera".
    cfg.TEST.PERSON_SEARCH.PRW_SAME_CAMERA = False


def _add_person_search_config(cfg):
    """MODEL.PERSON_SEARCH: the meta-architecture (branches, which detects, which embeds)."""
    cfg.MODEL.PERSON_SEARCH = CN()
    # Branches built on the shared backbone, by PS_BRANCH_REGISTRY name (each owns its res5).
    cfg.MODEL.PERSON_SEARCH.BRANCHES = ["NAEBranch"]
    # Branch whose detect() gives the boxes and scores at inference.
    cfg.MODEL.PERSON_SEARCH.DETECTOR = "NAEBranch"
    # Branch whose embed() gives the re-id embeddings of those boxes and of query boxes.
    cfg.MODEL.PERSON_SEARCH.EMBEDDER = "NAEBranch"
    # Padded batch size divisible by this (32 as the reference's Pad(size_divisor=32)).
    cfg.MODEL.PERSON_SEARCH.SIZE_DIVISIBILITY = 32
    # ImageNet ResNet checkpoint loaded into the trunk and every branch's res5 at build time
    # (detectron2, Caffe2-Detectron or torchvision naming; see docs/models.md); "" = random init.
    cfg.MODEL.PERSON_SEARCH.PRETRAINED = ""


def _add_nae_config(cfg):
    """The NAE branch (RPN, res5 ROI head, norm-aware embedding) and OIM.

    The NAE branch also reads detectron2's own MODEL.RPN.*, MODEL.ANCHOR_GENERATOR.*,
    MODEL.ROI_HEADS.* (IN_FEATURES, sampling, test thresholds) and MODEL.ROI_BOX_HEAD.*
    (POOLER_RESOLUTION, POOLER_SAMPLING_RATIO, POOLER_TYPE, BBOX_REG_WEIGHTS).
    """
    cfg.MODEL.NAE = CN()
    # Dimension of the norm-aware embedding (half projected from pooled res4, half from res5).
    cfg.MODEL.NAE.EMBEDDING_DIM = 256
    # Weight of the ROI box L1 loss (10 in the ROI-AlignPS reference).
    cfg.MODEL.NAE.BOX_REG_LOSS_WEIGHT = 10.0
    # Std of the normal init of the box regressor's Linear AND BatchNorm1d weights (biases 0), so that
    # the deltas start near 0: 0.01 as NAE4PS, 0.001 as ROI-AlignPS (Base-ROI-AlignPS.yaml).
    cfg.MODEL.NAE.BOX_PREDICTOR_INIT_STD = 0.01
    # When the NAE branch gives the detections: gallery embeddings times their detection score
    # (NAE4PS / SeqNet "CWS"); query embeddings and embed() of other boxes stay unit-norm.
    cfg.MODEL.NAE.SCORE_WEIGHTED_EMBEDDINGS = True
    # Convolution in the ROI res5: "auto" (unfold + matmul for kernels > 1x1 on CPU maps of <= 16
    # pixels, where oneDNN's backward is slow; F.conv2d elsewhere), "native" or "unfold"; the same
    # function either way (galw/modeling/small_map_conv.py).
    cfg.MODEL.NAE.RES5_CONV_IMPL = "auto"
    cfg.MODEL.OIM = CN()
    # Labeled identities in the lookup table; 0 = the train dataset metadata's num_pids.
    cfg.MODEL.OIM.NUM_LABELED = 0
    # Length of the circular queue of unlabeled features (5000 CUHK-SYSU, 500 PRW).
    cfg.MODEL.OIM.QUEUE_SIZE = 5000
    # Lookup-table update v <- m v + (1 - m) x, then renormalised.
    cfg.MODEL.OIM.MOMENTUM = 0.5
    # Scale of the cosine similarities before the softmax.
    cfg.MODEL.OIM.TEMPERATURE = 30.0


def _add_alignps_config(cfg):
    """The anchor-free AlignPS branch (AFA FPN, FCOS head, dense re-id)."""
    cfg.MODEL.ALIGNPS = CN()
    # Shared-backbone outputs the branch reads, finer first; the second feeds the branch's own res5.
    cfg.MODEL.ALIGNPS.IN_FEATURES = ["res3", "res4"]
    # Channels of the AFA maps, which are also the dense re-id embedding dimension.
    cfg.MODEL.ALIGNPS.FPN_CHANNELS = 256
    # Deformable-conv kernel: "auto" (pure-PyTorch grid_sample one on CPU, torchvision's on CUDA),
    # "torchvision" or "grid_sample"; same function either way (galw/modeling/deform_conv.py).
    cfg.MODEL.ALIGNPS.DEFORM_CONV_IMPL = "auto"
    # Conv layers in each of the head's classification and box towers.
    cfg.MODEL.ALIGNPS.NUM_CONVS = 4
    # Normalisation in the head towers (detectron2 get_norm name; "" for none).
    cfg.MODEL.ALIGNPS.HEAD_NORM = "GN"
    # The last conv of each tower (classification, box) is a modulated deformable conv (DCNv2) with
    # zero-initialised offsets, as the reference's dcn_on_last_conv=True; False = a plain conv.
    cfg.MODEL.ALIGNPS.DCN_ON_LAST_CONV = True
    # Init of the offset convs of the AFA neck's deformable convs: "xavier" (uniform; the reference
    # neck's init_weights re-initialises them with every Conv2d) or "zero" (start as plain convs).
    cfg.MODEL.ALIGNPS.DEFORM_OFFSET_INIT = "xavier"
    # One [lo, hi] max-regression-distance range per output level P3, P4, P5 (1 to 3 levels).
    # AlignPS gives every size to P3 ("scale alignment"); FCOS style: [[-1, 64], [64, 128], [128, 1e8]].
    cfg.MODEL.ALIGNPS.SIZE_RANGES = [[-1.0, 1e8]]
    # Training-only levels coarser than the last SIZE_RANGES level, whose every location is a negative of
    # the focal loss (no box, centerness or re-id loss, never in inference): the reference trains
    # P4..P7 so (4; its neck builds them in training only, fpn_dcn_lconv3_dcn.py:201-228). At most 5
    # levels in all with SIZE_RANGES. 0 = train the real levels only.
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = 0
    # Center sampling: positives lie within radius * stride of the box centre.
    cfg.MODEL.ALIGNPS.CENTER_SAMPLING_RADIUS = 1.5
    # Initial foreground probability of the classification logits.
    cfg.MODEL.ALIGNPS.PRIOR_PROB = 0.01
    # Sigmoid focal loss parameters (t6).
    cfg.MODEL.ALIGNPS.FOCAL_ALPHA = 0.25
    cfg.MODEL.ALIGNPS.FOCAL_GAMMA = 2.0
    # The branch's own OIM memory (t9); the number of identities is MODEL.OIM.NUM_LABELED.
    cfg.MODEL.ALIGNPS.OIM_QUEUE_SIZE = 5000
    cfg.MODEL.ALIGNPS.OIM_MOMENTUM = 0.5
    # Scale of the cosine similarities (10 in the reference, for the table and the queue).
    cfg.MODEL.ALIGNPS.OIM_TEMPERATURE = 10.0
    # Focal OIM -(1 - p)^gamma log p as the reference (FCOSReidHeadFocalSubTriQueue3); 0 = plain OIM.
    cfg.MODEL.ALIGNPS.OIM_FOCAL_GAMMA = 2.0
    # Renormalise updated lookup-table rows (plain OIM) or keep the running average (the reference).
    cfg.MODEL.ALIGNPS.OIM_RENORMALIZE = False
    # Channels of an unlabeled feature the queue keeps (the rest stay 0): the reference's queue stores the
    # first 64 (unlabeled_matching_layer.py:32, used by its AlignPS and ROI-AlignPS heads); 0 = all.
    cfg.MODEL.ALIGNPS.OIM_QUEUE_CHANNELS = 64
    # Scale of the queue similarities; 0 = OIM_TEMPERATURE (the PRW AlignPS reference: table 15, queue 10).
    cfg.MODEL.ALIGNPS.OIM_QUEUE_TEMPERATURE = 0.0
    # Divisor of the summed OIM loss: "labeled" (labeled positive locations, as ROI-AlignPS) or "all"
    # (every positive location, labeled or not, as the AlignPS-alone references' reduction='none').
    cfg.MODEL.ALIGNPS.OIM_NORMALIZER = "labeled"
    # Batch-hard triplet margin (t10) and whether the OIM table rows of the batch's identities join the batch.
    cfg.MODEL.ALIGNPS.TRIPLET_MARGIN = 0.3
    cfg.MODEL.ALIGNPS.TRIPLET_WITH_LUT = True
    # Inference: candidates with sigmoid(cls) above this; final score = sigmoid(cls) * sigmoid(centerness).
    cfg.MODEL.ALIGNPS.SCORE_THRESH_TEST = 0.05
    # Candidates kept per image before NMS (by final score).
    cfg.MODEL.ALIGNPS.PRE_NMS_TOPK_TEST = 1000
    cfg.MODEL.ALIGNPS.NMS_THRESH_TEST = 0.5
    cfg.MODEL.ALIGNPS.DETECTIONS_PER_IMAGE = 100
    # How embed() reads a given box from the dense map: "center" (location at the box centre on the
    # level owning its size) or "roi_average" (RoIAlign average over the box on P3).
    cfg.MODEL.ALIGNPS.EMBED_POOLING = "center"


def _add_attribute_config(cfg):
    """The attribute branch (ALM)."""
    cfg.MODEL.ATTRIBUTE = CN()
    # Number of binary attributes; 0 = len(attribute_names) of DATASETS.TRAIN[0]'s metadata.
    cfg.MODEL.ATTRIBUTE.NUM_ATTRIBUTES = 0
    # Shared backbone levels whose box crops form the attribute pyramid (any order; sorted by stride).
    # Tang et al. use 3 levels; the R-50 paper configs take the 3 shared stages res2..res4 (the paper's
    # shared conv2..conv4), the R-18 synthetic ones 2 (CPU time).
    cfg.MODEL.ATTRIBUTE.IN_FEATURES = ["res3", "res4"]
    # Side of the ROIAlign crop taken from every level (32 in the paper).
    cfg.MODEL.ATTRIBUTE.POOLER_RESOLUTION = 32
    # Channels of each level's 1x1 lateral conv; level i of L then has CONV_DIM * (L - i) channels.
    cfg.MODEL.ATTRIBUTE.CONV_DIM = 256
    # Channel reduction of the squeeze-and-excitation gate in every ALM (16 in Tang et al.).
    cfg.MODEL.ATTRIBUTE.SE_REDUCTION = 16
    # Spatial pooling of the ALMs, before the spatial transform and over the attended region:
    # "avg" (Tang et al.'s code: avg_pool2d / AvgPool2d) or "max".
    cfg.MODEL.ATTRIBUTE.POOLING = "avg"
    # grid_sample padding of the attended region outside the crop: "border" (Tang et al.) or "zeros".
    cfg.MODEL.ATTRIBUTE.PADDING_MODE = "border"
    # ReLU after the 1x1 laterals (Tang et al.'s laterals are linear: False).
    cfg.MODEL.ATTRIBUTE.LATERAL_RELU = False
