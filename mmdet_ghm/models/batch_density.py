"""Dense heads whose GHM losses see the whole batch at once: the paper's density semantics.

mmdet's ``AnchorHead`` (RetinaNet) and ``ATSSHead`` call ``loss_cls``/``loss_bbox`` once per FPN
level, so a GHM loss bins each level on its own (its ``tot``, its non-empty bins) and updates the
EMA once per level. The paper describes one gradient density over all examples of the batch. The
heads here run mmdet's own ``loss_by_feat`` unchanged (anchors, target assignment, reshapes) with
the GHM loss modules replaced by recorders, then call each GHM loss once on the concatenation of
the arguments of its per-level calls. Switched on by the head's type, one config line::

    model = dict(bbox_head=dict(type='BatchDensityRetinaHead'))   # or 'BatchDensityATSSHead'

Losses that are not GHM (focal loss, smooth L1, GIoU, centerness) keep their per-level calls.
"""
import torch
from mmdet.models.dense_heads import AnchorHead, ATSSHead, RetinaHead
from mmdet.registry import MODELS
from torch import Tensor, nn

from ..losses import GHMC, GHMR


class _RecordedLoss(nn.Module):
    """Stands in for a GHM loss during the head's per-level calls: keeps each call's arguments and
    returns a placeholder, which the head must hand back untouched in its loss dict."""

    def __init__(self):
        super().__init__()
        self.calls, self.placeholders = [], []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        placeholder = args[0].new_zeros(())
        self.placeholders.append(placeholder)
        return placeholder


def _same(a, b) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape \
            and bool(torch.equal(a, b))
    return a == b


def _merge(values, what: str):
    """Tensors with a batch dimension are concatenated; anything else must be the same in every
    call (``avg_factor``, ``reduction_override``; GHM does not use ``avg_factor``)."""
    first = values[0]
    if isinstance(first, Tensor) and first.dim() > 0:
        return torch.cat(values, dim=0)
    if all(_same(v, first) for v in values[1:]):
        return first
    raise ValueError(f'batch-wide density: {what} differs between the per-level calls '
                     f'({values!r}); only tensors with one row per element can be concatenated')


def merge_calls(calls):
    """One ``(args, kwargs)`` for the concatenation of the per-level calls' inputs."""
    args0, kwargs0 = calls[0]
    for args, kwargs in calls[1:]:
        if len(args) != len(args0) or set(kwargs) != set(kwargs0):
            raise ValueError('batch-wide density: the per-level loss calls pass different '
                             'arguments; they cannot be merged into one call')
    args = tuple(_merge([c[0][i] for c in calls], f'argument {i}') for i in range(len(args0)))
    kwargs = {k: _merge([c[1][k] for c in calls], f'`{k}`') for k in kwargs0}
    return args, kwargs


class BatchDensityMixin:
    """Put before an mmdet dense head that calls its losses per FPN level: every GHM loss named
    in :attr:`batched_losses` is called once per ``loss_by_feat`` on all levels' elements, so its
    histogram, ``tot`` and EMA update are those of the whole batch. Its entry in the loss dict is
    then that one loss (a tensor) instead of one per level; the sum is what the optimizer sees.

    A head may only batch a loss whose per-level values it returns as the loss call gave them
    (checked on every call): a head that rescales them per level after the call cannot.
    """

    #: the loss attributes (and loss-dict keys) that are merged when they are GHM losses
    batched_losses = ('loss_cls', 'loss_bbox')
    #: loss attribute -> why a GHM loss there cannot be merged (a config error)
    unbatchable_losses = {}

    def _check_batchable(self):
        for name, why in self.unbatchable_losses.items():
            if isinstance(getattr(self, name, None), (GHMC, GHMR)):
                raise ValueError(
                    f'{type(self).__name__} cannot compute `{name}` over the whole batch '
                    f'({why}); batch-wide density applies to '
                    f'{", ".join(self.batched_losses)}. Use another `{name}` or the per-level '
                    'head.')

    def loss_by_feat(self, *args, **kwargs) -> dict:
        names = [n for n in self.batched_losses
                 if isinstance(getattr(self, n, None), (GHMC, GHMR))]
        if not names:
            return super().loss_by_feat(*args, **kwargs)
        ghm = {n: getattr(self, n) for n in names}
        recorders = {n: _RecordedLoss() for n in names}
        try:
            for n in names:
                setattr(self, n, recorders[n])
            losses = super().loss_by_feat(*args, **kwargs)
        finally:
            for n in names:
                setattr(self, n, ghm[n])
        for n in names:
            recorder = recorders[n]
            returned = losses.get(n)
            returned = list(returned) if isinstance(returned, (list, tuple)) else [returned]
            if len(returned) != len(recorder.placeholders) or any(
                    r is not p for r, p in zip(returned, recorder.placeholders)):
                raise ValueError(
                    f'{type(self).__name__}: the head changed the per-level values of `{n}` '
                    'after the loss call, so it cannot be computed over the whole batch')
            if recorder.calls:
                call_args, call_kwargs = merge_calls(recorder.calls)
                losses[n] = ghm[n](*call_args, **call_kwargs)
        return losses


@MODELS.register_module()
class BatchDensityAnchorHead(BatchDensityMixin, AnchorHead):
    """mmdet's ``AnchorHead`` with batch-wide GHM density (see :class:`BatchDensityMixin`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_batchable()


@MODELS.register_module()
class BatchDensityRetinaHead(BatchDensityMixin, RetinaHead):
    """mmdet's ``RetinaHead`` with batch-wide GHM density (see :class:`BatchDensityMixin`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_batchable()


@MODELS.register_module()
class BatchDensityATSSHead(BatchDensityMixin, ATSSHead):
    """mmdet's ``ATSSHead`` with batch-wide GHM-C density (see :class:`BatchDensityMixin`).

    ATSS divides each level's ``loss_bbox`` by the batch's centerness sum after the loss call, so
    only ``loss_cls`` can be merged; a GHM ``loss_bbox`` is refused."""

    batched_losses = ('loss_cls',)
    unbatchable_losses = {
        'loss_bbox': "ATSSHead divides each level's loss_bbox by the batch's centerness sum "
                     'after the loss call',
        'loss_centerness': 'only loss_cls is merged and tested for ATSS'}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_batchable()
