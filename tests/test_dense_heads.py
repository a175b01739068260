"""GHM-C / GHM-R in each of mmdet 3.3's dense heads: one training step per head on CPU.

Each head is built alone from mmdet's packaged config (its own head, train and test settings), with
GHM-C in place of its sigmoid classification loss (and of its BCE objectness / confidence loss where
it has one) and GHM-R in place of its box loss where it regresses deltas with an L1-type loss. One
call of ``head.loss`` on random FPN features of a 96 x 96 batch of two images with three boxes,
then backward. Checked: every loss finite, the GHM losses saw exactly the valid elements the head's
targets make (counted from the arguments the head passes, by mmdet's weight conventions, against
the slot counts GHM recorded), every element of every level where the loss covers the outputs, and
GHM's loss next to the one it replaces on the same predictions. Heads GHM does not apply to must
be stopped by :func:`mmdet_ghm.engine.check_ghm_heads` (run by ``GHMCheckHook``) with an error
naming the head and the reason.

``python tools/dense_head_matrix.py`` runs this file and renders docs/dense_heads.md from the
results it writes to ``$GHM_DENSE_HEAD_RESULTS``.
"""
import copy
import json
import math
import os
import os.path as osp
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch

import mmdet
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope

MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
GHMC_CFG = dict(type='GHMC', bins=30, momentum=0.75, use_sigmoid=True)
GHMR_CFG = dict(type='GHMR', mu=0.02, bins=10, momentum=0.7)


@dataclass
class Case:
    """One dense head of mmdet 3.3 and what GHM does in it."""
    name: str
    config: str  # under mmdet's packaged configs
    ghmc: Tuple[str, ...] = ('loss_cls',)  # loss attributes that become GHM-C
    ghmr: Tuple[str, ...] = ()  # loss attributes that become GHM-R
    reduction: Optional[str] = None  # None: the replaced loss's own reduction
    error: Optional[str] = None  # check_ghm_heads must raise this (regex)
    build_error: Optional[str] = None  # building the head with GHM must raise this TypeError
    covers: Dict[str, Callable] = field(default_factory=dict)  # attr -> elements of the outputs
    setup: Optional[Callable] = None  # head -> None, before the step
    idle: Tuple[str, ...] = ()  # swapped in, but not called in this phase of training
    config_file: Optional[str] = None  # ready config under configs/
    image_shape: Tuple[int, int] = (96, 96)
    min_featmap: int = 1  # smallest side of a level's feature map (a padded batch's FPN)
    notes: str = ''


def _numel(outs, head, index, fraction=1.0):
    return int(sum(t.numel() for t in outs[index]) * fraction)


CLS_OUTPUTS = {'loss_cls': partial(_numel, index=0)}


def _yolov3_covers(attr):
    def covers(outs, head):
        per_anchor = 5 + head.num_classes
        share = head.num_classes if attr == 'loss_cls' else 1
        return _numel(outs, head, 0, share / per_anchor)
    return covers


def _tood_epoch(phase):
    # TOODHead reads the epoch from the message hub: the ATSS warm-up epochs (focal loss on
    # labels) come before the task-aligned phase (QFL on (labels, alignment metrics))
    def setup(head):
        from mmengine.logging import MessageHub
        epoch = 0 if phase == 'warm-up' else head.initial_epoch
        MessageHub.get_current_instance().update_info('epoch', epoch)
    return setup


CASES = [
    Case('RetinaNet', 'retinanet/retinanet_r50_fpn_1x_coco.py', ghmr=('loss_bbox',),
         config_file='retinanet_r50_fpn_ghm.py',
         notes='the head GHM was designed on: per-anchor labels and label weights per level; '
               'anchor deltas with box weights'),
    Case('FoveaBox', 'foveabox/fovea_r50_fpn_4xb4-1x_coco.py', ghmr=('loss_bbox',),
         notes='labels of every location without weights, all levels in one call; boxes: '
               'normalized log-space offsets of the positives with weights, like deltas'),
    Case('GA-RetinaNet', 'guided_anchoring/ga-retinanet_r50_fpn_1x_coco.py',
         ghmr=('loss_bbox',),
         notes="RetinaNet's calls on the guided anchors; its anchor location (focal) and shape "
               '(bounded IoU) losses stay'),
    Case('ATSS', 'atss/atss_r50_fpn_1x_coco.py', config_file='atss_r50_fpn_ghm.py',
         notes="RetinaNet's classification call; boxes: GIoU on decoded boxes weighted by "
               'centerness (no GHM-R); the centerness BCE sees positives only and stays'),
    Case('FCOS', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
         config_file='fcos_r50-caffe_fpn_gn-head_ghm.py',
         notes='no label weights: every location of every level counts; boxes: IoU loss on '
               'decoded boxes (no GHM-R); centerness stays'),
    Case('NAS-FCOS', 'nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py',
         notes="FCOS's calls"),
    Case('SABL', 'sabl/sabl-retinanet_r50_fpn_1x_coco.py', ghmr=('loss_bbox_reg',),
         notes='RetinaNet-style classification call; GHM-R on the fine offsets inside the '
               'side buckets (smooth L1 with weights on the two nearest buckets); the bucket '
               'classification stays'),
    Case('RepPoints', 'reppoints/reppoints-moment_r50_fpn-gn_head-gn_1x_coco.py',
         notes='RetinaNet-style classification call on the refined points; boxes: smooth L1 on '
               'point-set pseudo boxes, not deltas (no GHM-R)'),
    Case('YOLOF', 'yolof/yolof_r50-c5_8xb8-1x_coco.py',
         notes='one level, labels with label weights; boxes: GIoU (no GHM-R)'),
    Case('VFNet', 'vfnet/vfnet_r50_fpn_1x_coco.py',
         notes='IoU-aware float targets shaped like the scores (the Varifocal targets: IoU at '
               "the gt class of positives, 0 elsewhere) are GHM-C's BCE targets; boxes: GIoU"),
    Case('YOLOX', 'yolox/yolox_s_8xb8-300e_coco.py', ghmc=('loss_cls', 'loss_obj'),
         covers={'loss_obj': partial(_numel, index=2)}, config_file='yolox_s_ghm.py',
         notes="objectness: every location, 0/1 targets, the easy negatives GHM is about; "
               'classification: positives only, IoU-scaled one-hot targets. YOLOX divides both '
               "sums by the number of positives itself, so GHM takes reduction='sum' "
               '(GHM-C weights replace the unit BCE weights); boxes: IoU loss'),
    Case('YOLOX (reduction=mean)', 'yolox/yolox_s_8xb8-300e_coco.py',
         ghmc=('loss_cls', 'loss_obj'), reduction='mean',
         error=r"YOLOXHead divides the summed loss by the number of positives.*reduction='sum'",
         notes="GHM's 'mean' would compound with YOLOX's division by the number of positives"),
    Case('YOLOv3', 'yolo/yolov3_d53_8xb8-320-273e_coco.py', ghmc=('loss_cls', 'loss_conf'),
         covers={'loss_cls': _yolov3_covers('loss_cls'),
                 'loss_conf': _yolov3_covers('loss_conf')},
         notes="passes weight= masks: (B, M, 1) positives for the classes, (B, M) positives and "
               "negatives for the confidence; summed losses (reduction='sum' as in its config); "
               'boxes: BCE on xy and MSE on wh (no GHM-R)'),
    Case('TOOD', 'tood/tood_r50_fpn_1x_coco.py', ghmc=('initial_loss_cls', 'loss_cls'),
         reduction='sum', setup=_tood_epoch('aligned'), idle=('initial_loss_cls',),
         notes='task-aligned phase: the QFL target (labels, alignment metrics in [0, 1]) taken '
               'as the soft BCE target it stands for; TOOD divides the summed loss by the '
               "alignment-metric sum, so GHM takes reduction='sum'; boxes: GIoU"),
    Case('TOOD (warm-up)', 'tood/tood_r50_fpn_1x_coco.py',
         ghmc=('initial_loss_cls', 'loss_cls'), reduction='sum', setup=_tood_epoch('warm-up'),
         idle=('loss_cls',),
         notes='the first initial_epoch epochs: ATSS targets, labels with label weights in '
               'initial_loss_cls (focal loss in mmdet), divided by the number of positives'),
    Case('PAA', 'paa/paa_r50_fpn_1x_coco.py', ghmr=(),
         error=r'PAAHead.*GMM re-assignment',
         notes='scores positive candidates with per-image loss_cls calls for its GMM: each would '
               "update GHM's density"),
    Case('FSAF', 'fsaf/fsaf_r50_fpn_1x_coco.py',
         error=r'FSAFHead.*online feature selection',
         notes="selects each object's level by comparing per-anchor losses (reduction 'none') "
               "across levels; GHM's per-level normalization biases that choice. Its per-class "
               "label weights flattened to N*C are read as mmdet's focal loss reads them"),
    Case('AutoAssign', 'autoassign/autoassign_r50-caffe_fpn_1x_coco.py',
         error=r'AutoAssignHead.*never calls loss_cls',
         notes='never calls loss_cls (positive/negative bag losses replace it)'),
    Case('GFL', 'gfl/gfl_r50_fpn_1x_coco.py', config_file='gfl_r50_fpn_ghm.py',
         notes='QFL target (labels, IoU scores) taken as the soft BCE target it stands for, '
               'label weights passed as weight=; GHM-C normalizes by its valid elements as in '
               'RetinaNet; boxes: GIoU + DFL'),
    Case('RTMDet', 'rtmdet/rtmdet_s_8xb32-300e_coco.py', reduction='sum',
         notes='QFL target (labels, IoU) as in GFL; RTMDet divides the summed loss by the sum of '
               "its assignment metrics, so GHM takes reduction='sum'; boxes: GIoU"),
    Case('SSD', 'ssd/ssd300_coco.py', ghmc=('loss_cls',), build_error='loss_cls',
         notes='no loss modules to replace: softmax cross-entropy with hard negative mining and '
               'smooth L1 are computed inline'),
    Case('FreeAnchor', 'free_anchor/freeanchor_r50_fpn_1x_coco.py',
         error=r'FreeAnchorRetinaHead.*never calls loss_cls',
         notes='never calls loss_cls; calls loss_bbox inside its bag likelihood'),
    Case('CenterNet-update', 'centernet/centernet-update_r50-caffe_fpn_ms-1x_coco.py',
         error=r'CenterNetUpdateHead.*probabilities \(not logits\)',
         notes='Gaussian focal loss on clamped sigmoid probabilities with pos_inds'),
    Case('DDOD', 'ddod/ddod_r50_fpn_1x_coco.py', min_featmap=3,  # its DCN needs 3 x 3 maps
         notes="ATSS-like classification call per level (labels, label weights); boxes: GIoU; "
               'its IoU branch (BCE on positives) stays'),
    Case('LD', 'ld/ld_r18-gflv1-r101_fpn_1x_coco.py',
         notes="GFL's classification call in the student (here with the student's own detached "
               'outputs as the teacher: the call is the same whatever the teacher)'),
]
for _case in CASES:
    if not _case.covers and not _case.error and not _case.build_error \
            and not _case.name.startswith('YOLOX'):
        _case.covers = dict(CLS_OUTPUTS)


def _loss_cfg(kind, original, reduction):
    cfg = dict(GHMC_CFG if kind == 'GHMC' else GHMR_CFG)
    cfg.update(loss_weight=original.get('loss_weight', 1.0),
               reduction=reduction or original.get('reduction', 'mean'))
    return cfg


def _head_cfgs(case):
    """mmdet's head config (with its train/test settings) and the same with GHM swapped in."""
    cfg = Config.fromfile(osp.join(MMDET_CONFIGS, case.config))
    head_cfg = copy.deepcopy(cfg.model.bbox_head)
    head_cfg.update(train_cfg=cfg.model.get('train_cfg'), test_cfg=cfg.model.get('test_cfg'))
    ghm_cfg = copy.deepcopy(head_cfg)
    for kind, attrs in (('GHMC', case.ghmc), ('GHMR', case.ghmr)):
        for attr in attrs:
            ghm_cfg[attr] = _loss_cfg(kind, head_cfg.get(attr, {}), case.reduction)
    return head_cfg, ghm_cfg


def _features(head, batch, image_shape, min_featmap):
    generator = getattr(head, 'prior_generator', None) or head.square_anchor_generator
    in_channels = head.in_channels
    strides = [s[0] if isinstance(s, tuple) else s for s in generator.strides]
    channels = in_channels if isinstance(in_channels, (list, tuple)) else [in_channels] * len(
        strides)
    H, W = image_shape
    return [torch.randn(batch, c, max(math.ceil(H / s), min_featmap),
                        max(math.ceil(W / s), min_featmap)) for c, s in zip(channels, strides)]


def _data_samples(num_classes, image_shape):
    from mmengine.structures import InstanceData

    from mmdet.structures import DetDataSample
    # boxes as fractions of the image: two in the first image, one in the second
    fractions = [[[0.06, 0.09, 0.56, 0.7], [0.47, 0.31, 0.97, 0.94]], [[0.23, 0.22, 0.78, 0.86]]]
    H, W = image_shape
    boxes = [[[x0 * W, y0 * H, x1 * W, y1 * H] for x0, y0, x1, y1 in image]
             for image in fractions]
    labels = [[0, min(3, num_classes - 1)], [min(1, num_classes - 1)]]
    samples = []
    for b, lab in zip(boxes, labels):
        sample = DetDataSample(metainfo=dict(
            img_shape=image_shape, ori_shape=image_shape, pad_shape=image_shape,
            batch_input_shape=image_shape, scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(b), labels=torch.tensor(lab))
        samples.append(sample)
    return samples


def _call_weight(args, kwargs):
    if len(args) > 2:
        return args[2]
    return kwargs.get('label_weight', kwargs.get('weight'))


def _valid_elements(pred, weight):
    """Elements a weighted mmdet loss counts (weight > 0), by mmdet's conventions: a weight of
    pred's size is per element, any other (N,), (N, 1), (B, M, 1) is per row over the last dim."""
    if weight is None:
        return pred.numel()
    valid = int((weight > 0).sum())
    return valid if weight.numel() == pred.numel() else valid * pred.shape[-1]


def _record_calls(calls, attr, module, args, kwargs):
    pred = args[0]
    calls[attr]['elements'] += pred.numel()
    calls[attr]['valid'] += _valid_elements(pred, _call_weight(args, kwargs))
    calls[attr]['calls'] += 1


def _head_loss(case, head, x, samples):
    if case.name == 'LD':
        teacher = tuple([t.detach() for t in level] for level in head(x))
        return head.loss(x, teacher, samples)
    return head.loss(x, samples)


def _total(losses):
    values = {}
    for key, value in losses.items():
        tensors = value if isinstance(value, (list, tuple)) else [value]
        values[key] = sum(tensors)
    return values


@pytest.fixture(scope='module')
def results():
    rows = {}
    yield rows
    path = os.environ.get('GHM_DENSE_HEAD_RESULTS')
    if path:
        with open(path, 'w') as f:
            json.dump({c.name: rows.get(c.name) for c in CASES}, f, indent=1)


def _row(case, head_type, **measured):
    return dict(head=head_type, config=case.config, ghmc=list(case.ghmc), ghmr=list(case.ghmr),
                config_file=case.config_file, notes=case.notes, **measured)


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_dense_head_with_ghm(case, results):
    from mmdet.registry import MODELS

    import mmdet_ghm  # noqa: F401  registers GHMC/GHMR in place of mmdet's
    from mmdet_ghm import GHMC, GHMR
    from mmdet_ghm.engine import check_ghm_heads

    init_default_scope('mmdet')
    head_cfg, ghm_cfg = _head_cfgs(case)
    if case.build_error:
        original = MODELS.build(head_cfg)
        assert not any(isinstance(m, torch.nn.modules.loss._Loss) or 'Loss' in type(m).__name__
                       for m in original.children()), 'the head has loss modules after all'
        with pytest.raises(TypeError, match=case.build_error) as err:
            MODELS.build(ghm_cfg)
        results[case.name] = _row(case, type(original).__name__, status='no loss modules',
                                  error=str(err.value))
        return

    torch.manual_seed(0)
    original = MODELS.build(head_cfg)
    original.init_weights()  # mmdet's init (e.g. the classification bias prior)
    head = MODELS.build(ghm_cfg)
    head.load_state_dict(original.state_dict(), strict=False)
    ghm = {attr: m for attr, m in head.named_children() if isinstance(m, (GHMC, GHMR))}
    assert set(ghm) == set(case.ghmc + case.ghmr)
    head_type = type(head).__name__

    if case.error:
        with pytest.raises(ValueError, match=case.error) as err:
            check_ghm_heads(head)
        assert head_type in str(err.value)
        results[case.name] = _row(case, head_type, status='stopped', error=str(err.value))
        return
    check_ghm_heads(head)  # no false alarm on a head GHM serves

    for module in (original, head):
        module.train()
    hub = MessageHub.get_current_instance()
    hub_before = dict(hub.runtime_info)
    if case.setup:
        case.setup(head)
    try:
        _train_step(case, original, head, ghm, results)
    finally:  # leave the message hub as it was for the tests that follow
        hub.runtime_info.clear()
        hub.runtime_info.update(hub_before)


def _train_step(case, original, head, ghm, results):
    x = _features(head, 2, case.image_shape, case.min_featmap)
    samples = _data_samples(head.num_classes, case.image_shape)
    with torch.no_grad():
        reference = _total(_head_loss(case, original, x, samples))

    calls = {attr: dict(elements=0, valid=0, calls=0) for attr in ghm}
    hooks = [m.register_forward_pre_hook(partial(_record_calls, calls, attr), with_kwargs=True)
             for attr, m in ghm.items()]
    forwards = []  # the head's outputs, as its loss computes them
    hooks.append(head.register_forward_hook(lambda module, args, out: forwards.append(out)))
    for m in ghm.values():
        m.density.start_recording()
    try:
        losses = _total(_head_loss(case, head, x, samples))
    finally:
        for h in hooks:
            h.remove()
    counts = {attr: m.density.stop_recording() for attr, m in ghm.items()}
    outs = forwards[0]
    sum(losses.values()).backward()

    assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0)
               for p in head.parameters()) > 0
    seen = {}
    for attr, module in ghm.items():
        recorded = counts[attr]
        if attr in case.idle:
            assert calls[attr]['calls'] == 0 and not recorded.any()
            continue
        assert calls[attr]['calls'] > 0, f'{attr} was never called'
        # GHM counted exactly the elements the head's targets make valid ...
        assert int(recorded[1:-1].sum()) == calls[attr]['valid'] > 0, (attr, recorded, calls)
        # ... out of all the elements it was given (slot 0: invalid; last: NaN, none here)
        assert int(recorded.sum()) == calls[attr]['elements'] and int(recorded[-1]) == 0
        if attr in case.covers:  # and those are every element of every level of the outputs
            assert calls[attr]['elements'] == case.covers[attr](outs, head), attr
        seen[attr] = dict(calls[attr], reduction=module.reduction)
    loss_keys = sorted(losses)
    results[case.name] = _row(
        case, type(head).__name__, status='works', seen=seen,
        losses={k: round(float(losses[k].detach()), 4) for k in loss_keys},
        reference_losses={k: round(float(reference[k]), 4) for k in loss_keys if k in reference},
        replaced={attr: type(getattr(original, attr)).__name__
                  for attr in ghm if attr not in case.idle})


# The argument forms of the heads above, against their meaning spelled out by hand.

def _qfl_problem(n=50, c=6):
    pred = torch.randn(n, c) * 2
    labels = torch.randint(0, c + 1, (n,))
    scores = torch.rand(n)
    soft = torch.zeros(n, c)
    rows = (labels < c).nonzero(as_tuple=True)[0]
    soft[rows, labels[rows]] = scores[rows]
    return pred, labels, scores, soft


def test_quality_focal_target_is_its_soft_bce_target():
    from mmdet_ghm import GHMC
    pred, labels, scores, soft = _qfl_problem()
    weight = (torch.rand(50) > 0.2).float()
    pa, pb = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    a, b = GHMC(30, 0.75), GHMC(30, 0.75)
    la = a(pa, (labels, scores), weight=weight, avg_factor=7.0)  # GFL's call
    lb = b(pb, soft, weight)
    la.backward(), lb.backward()
    assert torch.equal(la, lb) and torch.equal(pa.grad, pb.grad)
    assert torch.equal(a.density.acc_sum, b.density.acc_sum)


def test_quality_scores_must_be_probabilities():
    from mmdet_ghm import GHMC
    pred, labels, scores, _ = _qfl_problem()
    loss = GHMC(30, 0.75)
    with pytest.raises(ValueError, match=r'quality scores must be probabilities in \[0, 1\]'):
        loss(pred, (labels, scores * 3))
    with pytest.raises(ValueError, match='integer labels'):
        loss(pred, (labels.float(), scores))
    with pytest.raises(ValueError, match='labels must lie'):
        loss(pred, (labels + 7, scores))
    assert not loss.density.acc_sum.any()


def test_weight_keyword_and_mmdet_weight_shapes():
    from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC  # mmdet's own class
    from mmdet_ghm import GHMC
    pred, target = torch.randn(2, 30, 5), (torch.rand(2, 30, 5) > 0.8).float()
    rows = (torch.rand(2, 30, 1) > 0.5).float()  # YOLOv3's (B, M, 1) masks, passed as weight=
    ours = GHMC(10)(pred, target, weight=rows)
    assert torch.equal(ours, GHMC(10)(pred, target, rows))
    # mmdet broadcasts the mask over the classes and normalizes by the mask's own count
    torch.testing.assert_close(ours, MMDetGHMC(bins=10)(pred, target, rows), rtol=1e-6, atol=0)
    flat = (torch.rand(30 * 5) > 0.3).float()  # FSAF's per-class weights flattened to N*C
    with pytest.raises(ValueError, match='^label_weight'):
        GHMC(10)(pred[0], torch.randint(0, 6, (30,)), flat)
    # both: mmdet's GHMC takes label_weight and drops weight (**kwargs); a warning says so
    with pytest.warns(UserWarning, match='weight is ignored'):
        both = GHMC(10)(pred, target, rows, weight=torch.ones_like(rows))
    assert torch.equal(both, ours)


# Box-loss attributes of mmdet's dense heads that GHM-R does not serve (decoded or pseudo boxes,
# quality or distribution losses, a loss the head never calls): GHMCheckHook must stop GHM-R
# there. GHM-R serves the cases' own ``ghmr`` attributes (test_dense_head_with_ghm).
GHMR_REFUSED = {
    'GA-RetinaNet': ('loss_shape',), 'ATSS': ('loss_bbox',), 'FCOS': ('loss_bbox',),
    'NAS-FCOS': ('loss_bbox',), 'SABL': ('loss_bbox_cls',),
    'RepPoints': ('loss_bbox', 'loss_bbox_init', 'loss_bbox_refine'), 'YOLOF': ('loss_bbox',),
    'VFNet': ('loss_bbox', 'loss_bbox_refine'), 'YOLOX': ('loss_bbox',),
    'YOLOv3': ('loss_xy', 'loss_wh'), 'TOOD': ('loss_bbox',), 'PAA': ('loss_bbox',),
    'FSAF': ('loss_bbox',), 'AutoAssign': ('loss_bbox',), 'GFL': ('loss_bbox', 'loss_dfl'),
    'RTMDet': ('loss_bbox',), 'FreeAnchor': ('loss_bbox',), 'CenterNet-update': ('loss_bbox',),
    'DDOD': ('loss_bbox', 'loss_iou'), 'LD': ('loss_bbox', 'loss_dfl', 'loss_ld'),
}


def test_every_box_loss_of_the_cases_is_served_or_refused():
    """A new case (or a head's new loss) must say what GHM-R does with each of its losses."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    for case in CASES:
        if case.build_error:
            continue
        head = MODELS.build(_head_cfgs(case)[0])
        losses = {n for n, _ in head.named_children() if n.startswith('loss')}
        box_losses = losses - set(case.ghmc) - {'loss_cls', 'loss_obj', 'loss_conf',
                                                'loss_centerness', 'loss_loc', 'loss_l1'}
        refused = GHMR_REFUSED.get(case.name.split(' (')[0], ())  # 'TOOD (warm-up)': TOOD
        assert box_losses == set(case.ghmr) | set(refused), case.name


@pytest.mark.parametrize('name', sorted(GHMR_REFUSED))
def test_ghmr_where_it_does_not_apply_is_stopped(name):
    from mmdet.registry import MODELS
    from mmdet_ghm.engine import check_ghm_heads
    init_default_scope('mmdet')
    case = next(c for c in CASES if c.name == name)
    head_cfg = _head_cfgs(case)[0]
    for attr in GHMR_REFUSED[name]:
        cfg = copy.deepcopy(head_cfg)
        cfg[attr] = _loss_cfg('GHMR', head_cfg.get(attr, {}), None)
        model = torch.nn.Module()
        model.bbox_head = MODELS.build(cfg)
        with pytest.raises(ValueError, match=rf'bbox_head\.{attr} is GHMR, but GHM-R does not '
                                             rf'apply to {type(model.bbox_head).__name__}'):
            check_ghm_heads(model)


@pytest.mark.parametrize('name, attr', [('YOLOv3', 'loss_xy'), ('DDOD', 'loss_iou'),
                                        ('SABL', 'loss_bbox_cls')])
def test_ghmc_in_a_sigmoid_bce_that_ghmr_does_not_serve_is_accepted(name, attr):
    """These losses are sigmoid BCEs (CrossEntropyLoss(use_sigmoid=True)): GHM-C's kind."""
    from mmdet.registry import MODELS
    from mmdet_ghm.engine import check_ghm_heads
    init_default_scope('mmdet')
    cfg = _head_cfgs(next(c for c in CASES if c.name == name))[0]
    cfg[attr] = _loss_cfg('GHMC', cfg.get(attr, {}), None)
    model = torch.nn.Module()
    model.bbox_head = MODELS.build(cfg)
    check_ghm_heads(model)


def _roi_box_head(config, loss_cls=None, loss_bbox=None):
    """A detector-shaped module holding the first RoI box head of an mmdet config."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    head_cfg = Config.fromfile(osp.join(MMDET_CONFIGS, config)).model.roi_head.bbox_head
    head_cfg = copy.deepcopy(head_cfg[0] if isinstance(head_cfg, list) else head_cfg)
    for attr, loss in (('loss_cls', loss_cls), ('loss_bbox', loss_bbox)):
        if loss is not None:
            head_cfg[attr] = dict(loss, loss_weight=1.0)
    model = torch.nn.Module()
    model.roi_head = torch.nn.Module()
    model.roi_head.bbox_head = MODELS.build(head_cfg)
    return model


def test_ghmc_in_a_softmax_roi_box_head_is_stopped():
    """RoI box heads classify with num_classes + 1 softmax outputs whatever use_sigmoid says;
    Sparse R-CNN's DIIHead builds num_classes sigmoid outputs with use_sigmoid=True."""
    from mmdet_ghm.engine import check_ghm_heads
    model = _roi_box_head('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', loss_cls=GHMC_CFG)
    with pytest.raises(ValueError, match=r'roi_head\.bbox_head \(Shared2FCBBoxHead\) uses '
                                         r'GHMC, but its classifier has num_classes \+ 1 = 81'):
        check_ghm_heads(model)
    sparse = 'sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py'
    check_ghm_heads(_roi_box_head(sparse, loss_cls=GHMC_CFG))
    with pytest.raises(ValueError, match=r'GHM-R does not apply to DIIHead: .*decoded boxes'):
        check_ghm_heads(_roi_box_head(sparse, loss_bbox=GHMR_CFG))


def test_ghmr_on_decoded_boxes_is_stopped():
    """reg_decoded_bbox=True hands loss_bbox decoded boxes, in any head."""
    from mmdet.registry import MODELS
    from mmdet_ghm.engine import check_ghm_heads
    init_default_scope('mmdet')
    cfg = _head_cfgs(CASES[0])[1]  # RetinaNet with GHM-R: served
    model = torch.nn.Module()
    model.bbox_head = MODELS.build(cfg)
    check_ghm_heads(model)
    model.bbox_head = MODELS.build(dict(cfg, reg_decoded_bbox=True))
    with pytest.raises(ValueError, match=r'GHM-R does not apply to RetinaHead: .*'
                                         r'\(reg_decoded_bbox=True\)'):
        check_ghm_heads(model)
