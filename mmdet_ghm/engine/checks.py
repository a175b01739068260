"""Checks that turn silent GHM misconfigurations into errors that say what to change.

* GHMC without ``use_sigmoid=True`` in the loss config: mmdet's heads read ``use_sigmoid`` from the
  loss config dict (``loss_cls.get('use_sigmoid', False)``), not from the built loss, so the head
  builds ``num_classes + 1`` softmax channels while GHM-C (a sigmoid loss whose own default is
  ``use_sigmoid=True``) trains them as independent sigmoids: it trains, then predicts nonsense.
* ``num_classes`` of a head that disagrees with the dataset's classes: mmdet trains on it and
  reports per-class metrics for the wrong classes (or an index error, much later).
* GHMC in a two-stage RoI box head whose classifier has ``num_classes + 1`` softmax outputs
  whatever ``use_sigmoid`` says: the same nonsense.
* A GHM loss in a head whose calls it cannot serve (:data:`GHM_DOES_NOT_APPLY`: the head
  never calls that loss, passes probabilities instead of logits, or calls the loss for another
  purpose too; :data:`GHMR_DOES_NOT_APPLY`: a box loss on decoded or pseudo boxes, or not a box
  regression), or with ``reduction='mean'`` where the head divides the loss by a count of its
  own afterwards (:data:`HEAD_NORMALIZES`): it would train silently on something else than GHM.

:class:`GHMCheckHook` runs the checks once the runner has built the model and the dataloaders of
the run, before the first iteration. :func:`check_detector` does the same without a runner.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop

from mmdet.registry import HOOKS, MODELS


def _ghmc_classes():
    from mmdet.models.losses import GHMC as MmdetGHMC
    return tuple({MODELS.get('GHMC'), MmdetGHMC} - {None})


def _ghm_classes():
    from mmdet.models.losses import GHMR as MmdetGHMR
    return _ghmc_classes() + tuple({MODELS.get('GHMR'), MmdetGHMR} - {None})


_DECODED_BOXES = ('it computes this loss on decoded boxes (an IoU-type loss, weighted per box), '
                  'and GHM-R is Authentic Smooth L1 on encoded box deltas (mu and bins are set '
                  'for those)')

# Why GHM-R cannot serve a head's loss attribute, by head class name (subclasses included). It
# serves the delta regressions of RetinaNet, FoveaBox, GA-RetinaNet and SABL
# (docs/dense_heads.md); these are the other box losses of mmdet's dense heads. Any head's
# loss_bbox with reg_decoded_bbox=True is refused too (decoded boxes).
GHMR_DOES_NOT_APPLY = {
    **{(head, 'loss_bbox'): _DECODED_BOXES
       for head in ('ATSSHead', 'FCOSHead', 'YOLOFHead', 'GFLHead', 'DDODHead',
                    'CenterNetUpdateHead', 'FSAFHead', 'YOLOXHead')},
    ('VFNetHead', 'loss_bbox_refine'): _DECODED_BOXES,
    ('RepPointsHead', 'loss_bbox_init'):
        'it computes it on pseudo boxes of its point sets, not on encoded box deltas',
    ('RepPointsHead', 'loss_bbox_refine'):
        'it computes it on pseudo boxes of its point sets, not on encoded box deltas',
    ('YOLOV3Head', 'loss_xy'):
        'it is a BCE of the centre offsets in their grid cells, called with weight= per box',
    ('YOLOV3Head', 'loss_wh'):
        'it is an MSE of the log sizes, called with weight= per box',
    ('GFLHead', 'loss_dfl'):
        'it is the Distribution Focal Loss over the discretized box sides, not a regression of '
        'box deltas',
    ('LDHead', 'loss_ld'): 'it is the localization distillation loss between box distributions',
    ('DDODHead', 'loss_iou'): 'it is a BCE of the predicted IoU, not a box regression',
    ('SABLRetinaHead', 'loss_bbox_cls'):
        'it classifies the side buckets (a cross entropy), not a regression',
    ('GuidedAnchorHead', 'loss_shape'):
        'it is a bounded-IoU loss of the anchor shapes, not a regression of box deltas',
}

# Why a GHM loss (GHM-C or GHM-R) cannot serve a head's loss attribute, as above.
GHM_DOES_NOT_APPLY = {
    ('RepPointsHead', 'loss_bbox'):
        'it never calls loss_bbox (its box losses are loss_bbox_init and loss_bbox_refine), so '
        'a GHM loss there would be silently unused',
    ('FreeAnchorRetinaHead', 'loss_cls'):
        'it never calls loss_cls: its positive/negative bag likelihoods on sigmoid scores '
        'replace the classification loss, so a GHM-C there would be silently unused',
    ('FreeAnchorRetinaHead', 'loss_bbox'):
        "it calls loss_bbox with reduction_override='none' inside its positive-bag "
        'likelihood exp(-loss), not as a regression loss to minimize',
    ('AutoAssignHead', 'loss_cls'):
        'it never calls loss_cls: its positive/negative bag losses on sigmoid scores weighted '
        'by centerness priors replace the classification loss, so a GHM-C there would be '
        'silently unused',
    ('CenterNetUpdateHead', 'loss_cls'):
        'it passes clamped sigmoid probabilities (not logits), Gaussian heat-map targets and '
        'pos_inds/pos_labels of a Gaussian focal loss; GHM-C is a BCE on logits',
    ('PAAHead', 'loss_cls'):
        "besides the loss, it calls loss_cls with reduction_override='none' per image on its "
        'positive candidates to score them for the GMM re-assignment: every such call would '
        "update GHM's gradient density with a handful of positives",
    ('FSAFHead', 'loss_cls'):
        "it picks each object's FPN level by comparing its per-anchor losses across levels "
        "(online feature selection), and GHM's weights are normalized per call, that is per "
        "level, by the level's element count: the comparison would favour the coarse levels",
    ('PAAHead', 'loss_bbox'):
        "besides the loss, it calls loss_bbox with reduction_override='none' per image to "
        "score positive candidates for the GMM re-assignment, which would update GHM's density",
}

# Heads that divide what a loss returns by a count of their own, and the reduction GHM must then
# use: GHM's own normalization (reduction='mean': by the number of valid elements, or the weight
# sum for GHM-R) would compound with the head's, so the loss would shrink with the number of
# positives of each batch. Summed (or element-wise), GHM's weights take the place of the loss's
# own per-element weights under the head's normalization.
HEAD_NORMALIZES = {
    ('YOLOXHead', 'loss_cls'): ('sum', 'divides the summed loss by the number of positives'),
    ('YOLOXHead', 'loss_obj'): ('sum', 'divides the summed loss by the number of positives'),
    ('TOODHead', 'loss_cls'):
        ('sum', 'calls it with avg_factor=1.0 and divides by the sum of its alignment metrics'),
    ('TOODHead', 'initial_loss_cls'):
        ('sum', 'calls it with avg_factor=1.0 and divides by the number of positives'),
    ('RTMDetHead', 'loss_cls'):
        ('sum', 'calls it with avg_factor=1.0 and divides by the sum of its assignment metrics'),
}


def _lookup(table, head, attr):
    for cls in type(head).__mro__:
        reason = table.get((cls.__name__, attr))
        if reason is not None:
            return cls.__name__, reason
    return None, None


def _ghm_losses(head):
    ghm = _ghm_classes()
    for attr, module in head.named_children():
        if isinstance(module, ghm):
            yield attr, module


def _heads(model):
    """(config path, module) of every dense head: the modules that own a ``loss_cls``."""
    if is_model_wrapper(model):
        model = model.module
    for name, module in model.named_modules():
        if hasattr(module, 'loss_cls') and hasattr(module, 'num_classes'):
            yield 'model.' + (name or 'bbox_head'), module


def check_ghm_heads(model):
    """Raise ``ValueError`` for a head that uses GHM-C but was built for softmax classification,
    uses a GHM loss where it does not apply, or with a reduction that compounds with the head's
    own normalization."""
    ghmc = _ghmc_classes()
    for path, head in _heads(model):
        for attr, loss in _ghm_losses(head):
            name = type(head).__name__
            is_ghmc = isinstance(loss, ghmc)
            owner, reason = _lookup(GHM_DOES_NOT_APPLY, head, attr)
            if reason is None and not is_ghmc:
                owner, reason = _lookup(GHMR_DOES_NOT_APPLY, head, attr)
                if reason is None and attr == 'loss_bbox' and getattr(head, 'reg_decoded_bbox',
                                                                      False):
                    owner, reason = name, _DECODED_BOXES + ' (reg_decoded_bbox=True)'
            if reason is not None:
                kind = 'GHM-C' if is_ghmc else 'GHM-R'
                raise ValueError(
                    f'{path}.{attr} is {type(loss).__name__}, but {kind} does not apply to '
                    f'{name}' + ('' if owner == name else f' (a {owner})') + f': {reason}. '
                    f'Keep mmdet\'s own {attr} for this head.')
            owner, rule = _lookup(HEAD_NORMALIZES, head, attr)
            if rule is not None and loss.reduction != rule[0]:
                raise ValueError(
                    f'{path}.{attr} is {type(loss).__name__} with reduction='
                    f'{loss.reduction!r}, but {name} {rule[1]}: GHM\'s own normalization would '
                    f'compound with it and shrink the loss with the number of positives. Set '
                    f"reduction='{rule[0]}' in {path}.{attr} (GHM's weights then replace the "
                    f'loss\'s per-element weights under the head\'s normalization).')
        if not isinstance(head.loss_cls, ghmc):
            continue
        if not getattr(head, 'use_sigmoid_cls', True):  # mmdet's heads take any truthy value
            raise ValueError(
                f'{path} ({type(head).__name__}) uses GHMC, but its loss_cls config does not say '
                f'use_sigmoid=True, so the head was built for softmax classification with '
                f'{getattr(head, "cls_out_channels", "num_classes + 1")} output channels '
                f'(mmdet heads read use_sigmoid from the loss config dict, GHMC is sigmoid-only). '
                f'Add use_sigmoid=True to {path}.loss_cls, e.g. '
                f"loss_cls=dict(type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, "
                f'loss_weight=1.0).')
        outputs = getattr(getattr(head, 'fc_cls', None), 'out_features', None)
        if outputs == head.num_classes + 1:
            raise ValueError(
                f'{path} ({type(head).__name__}) uses GHMC, but its classifier has num_classes + '
                f'1 = {outputs} outputs (background included) and its predictions take their '
                "softmax: mmdet's RoI box heads ignore use_sigmoid (Sparse R-CNN's DIIHead "
                'excepted), and GHM-C trains independent sigmoids. Keep a softmax loss '
                f"(CrossEntropyLoss) for {path}.loss_cls.")


def check_num_classes(model, classes, dataset_name='dataset'):
    """Raise ``ValueError`` when a head's ``num_classes`` differs from the dataset's classes."""
    if classes is None:
        return
    if isinstance(classes, str):
        raise ValueError(f'{dataset_name} metainfo classes must be a tuple of names, got the '
                         f'string {classes!r}; write classes=({classes!r},) for one class.')
    for path, head in _heads(model):
        if path.endswith('.rpn_head') or '.rpn_head.' in path:  # class-agnostic by design
            continue
        if head.num_classes != len(classes):
            raise ValueError(
                f'{path}.num_classes is {head.num_classes} but {dataset_name} has {len(classes)} '
                f'classes {tuple(classes)}. Set {path}.num_classes={len(classes)} in the config '
                f'(or give the dataset metainfo=dict(classes=(...)) with {head.num_classes} '
                f'names).')


def check_detector(model, classes=None, dataset_name='dataset'):
    """Both checks, for a built detector and (optionally) its dataset's class names."""
    check_ghm_heads(model)
    check_num_classes(model, classes, dataset_name)


@HOOKS.register_module()
class GHMCheckHook(Hook):
    """Fail fast, before the first iteration, on a GHM-C head built for softmax, on a GHM loss
    in a head where it does not apply or with a reduction the head compounds, and on
    ``num_classes`` that disagree with the dataset (see the module docstring).

    Add it to a config with ``custom_hooks = [dict(type='GHMCheckHook')]`` (every config of this
    package does). It checks the dataloaders the run has built: train (and val) in
    ``runner.train()``, val in ``runner.val()``, test in ``runner.test()``.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner):
        check_ghm_heads(runner.model)
        for kind in ('train', 'val', 'test'):
            loop = getattr(runner, f'_{kind}_loop', None)
            if not isinstance(loop, BaseLoop):
                continue  # not built for this run: building it here would load its dataset
            dataset = loop.dataloader.dataset
            classes = getattr(dataset, 'metainfo', {}).get('classes')
            check_num_classes(runner.model, classes,
                              f'the {kind} dataset ({type(dataset).__name__})')
