"""Checks that turn silent GHM misconfigurations into errors that say what to change.

* GHMC without ``use_sigmoid=True`` in the loss config: mmdet's heads read ``use_sigmoid`` from the
  loss config dict (``loss_cls.get('use_sigmoid', False)``), not from the built loss, so the head
  builds ``num_classes + 1`` softmax channels while GHM-C (a sigmoid loss whose own default is
  ``use_sigmoid=True``) trains them as independent sigmoids: it trains, then predicts nonsense.
* ``num_classes`` of a head that disagrees with the dataset's classes: mmdet trains on it and
  reports per-class metrics for the wrong classes (or an index error, much later).

:class:`GHMCheckHook` runs both checks once the runner has built the model and the dataloaders of
the run, before the first iteration. :func:`check_detector` does the same without a runner.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop

from mmdet.registry import HOOKS, MODELS


def _ghmc_classes():
    from mmdet.models.losses import GHMC as MmdetGHMC
    return tuple({MODELS.get('GHMC'), MmdetGHMC} - {None})


def _heads(model):
    """(config path, module) of every dense head: the modules that own a ``loss_cls``."""
    if is_model_wrapper(model):
        model = model.module
    for name, module in model.named_modules():
        if hasattr(module, 'loss_cls') and hasattr(module, 'num_classes'):
            yield 'model.' + (name or 'bbox_head'), module


def check_ghm_heads(model):
    """Raise ``ValueError`` for a head that uses GHM-C but was built for softmax classification."""
    ghmc = _ghmc_classes()
    for path, head in _heads(model):
        if not isinstance(head.loss_cls, ghmc):
            continue
        if getattr(head, 'use_sigmoid_cls', True) is not True:
            raise ValueError(
                f'{path} ({type(head).__name__}) uses GHMC, but its loss_cls config does not say '
                f'use_sigmoid=True, so the head was built for softmax classification with '
                f'{getattr(head, "cls_out_channels", "num_classes + 1")} output channels '
                f'(mmdet heads read use_sigmoid from the loss config dict, GHMC is sigmoid-only). '
                f'Add use_sigmoid=True to {path}.loss_cls, e.g. '
                f"loss_cls=dict(type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, "
                f'loss_weight=1.0).')


def check_num_classes(model, classes, dataset_name='dataset'):
    """Raise ``ValueError`` when a head's ``num_classes`` differs from the dataset's classes."""
    if classes is None:
        return
    if isinstance(classes, str):
        raise ValueError(f'{dataset_name} metainfo classes must be a tuple of names, got the '
                         f'string {classes!r}; write classes=({classes!r},) for one class.')
    for path, head in _heads(model):
        if path.endswith('rpn_head'):  # class-agnostic by design
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
    """Fail fast, before the first iteration, on a GHM-C head built for softmax and on
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
