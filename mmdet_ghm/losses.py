"""GHM-C and GHM-R losses, registered in mmdet's ``MODELS`` under mmdet's own names.

Drop-in replacements of mmdet 3.3.0's ``GHMC``/``GHMR`` (same constructor arguments, forward
signatures, numbers, attribute names and checkpoint keys), built on one
:class:`~mmdet_ghm.density.GradientDensity`. Beyond mmdet: ``label_weight`` is optional, integer
labels never become one-hot N x C tensors, soft float targets work, ``avg_factor`` is accepted by
both, ``reduction='sum'`` works, float64 inputs are computed in float64 and every other dtype in
float32, CUDA tensors run fused Triton kernels, and nothing syncs with the device.
"""
import math
import warnings
from typing import Optional

from torch import Tensor, nn

# mmdet registers its own GHMC/GHMR on import; import it first so that ours, registered with
# force=True below, is the one that stays whatever the user's import order.
import mmdet.models.losses.ghm_loss  # noqa: F401,E402  isort:skip
from mmdet.registry import MODELS

from .density import GradientDensity
from .inputs import (GHMArgumentError, check_bins, check_flag, check_loss_weight, check_momentum,
                     check_mu, check_reduction, ghmc_inputs, ghmr_inputs,
                     labels_message)
from .ops.function import backend_checks_labels, ghmc_loss, ghmr_loss

__all__ = ['GHMC', 'GHMR', 'GHMArgumentError']

DENSITY = 'density.'


def _flatten_density_keys(module, state_dict, prefix, local_metadata) -> None:
    """Write the density's state under the loss itself (``<loss>.edges``, ``<loss>.acc_sum``,
    ``<loss>.num_updates``): mmdet's GHMC/GHMR read ``edges`` and ``acc_sum`` there, so a
    checkpoint moved to plain mmdet keeps the EMA state."""
    for key in [k for k in state_dict if k.startswith(prefix + DENSITY)]:
        state_dict[prefix + key[len(prefix + DENSITY):]] = state_dict.pop(key)


def _density_buffer(name: str) -> property:
    """The density's buffer ``name`` as an attribute of the loss; assigning a tensor makes it
    the new buffer, as on mmdet's classes (and as torch.func.functional_call does)."""
    return property(lambda self: getattr(self.density, name),
                    lambda self, value: setattr(self.density, name, value))


class _GHMLoss(nn.Module):
    """What GHM-C and GHM-R share: the density, loss_weight, reduction and the state's keys.

    ``edges``, ``acc_sum`` (mmdet's names) and ``num_updates`` are the density's live buffers,
    under the checkpoint keys ``<loss>.edges``, ``<loss>.acc_sum`` and ``<loss>.num_updates``
    whatever the momentum: every key of the loss's state_dict is an attribute of the loss.
    """

    def __init__(self, bins, momentum, last_edge: float, loss_weight, reduction,
                 bias_correction, sync_across_ranks):
        super().__init__()
        self.density = GradientDensity(
            check_bins(bins), check_momentum(momentum), last_edge,
            check_flag('bias_correction', bias_correction),
            check_flag('sync_across_ranks', sync_across_ranks))
        self.loss_weight = loss_weight  # checked by the property
        self.reduction = check_reduction('reduction', reduction)
        self.register_state_dict_post_hook(_flatten_density_keys)

    @property
    def bins(self) -> int:
        return self.density.bins

    @bins.setter
    def bins(self, value) -> None:
        raise GHMArgumentError(f'bins is fixed when the loss is built (its edges and state have '
                               f'{self.bins} bins), got an assignment of {value!r}: build a new '
                               'loss with bins=...')

    @property
    def loss_weight(self) -> float:
        return self._loss_weight

    @loss_weight.setter
    def loss_weight(self, value) -> None:
        self._loss_weight = check_loss_weight(value)

    def __setstate__(self, state) -> None:
        if 'loss_weight' in state:  # a pickle that holds loss_weight as a plain attribute
            state['_loss_weight'] = state.pop('loss_weight')
        super().__setstate__(state)

    @property
    def momentum(self) -> float:
        return self.density.momentum

    @momentum.setter
    def momentum(self, value) -> None:
        self.density.momentum = check_momentum(value)

    edges = _density_buffer('edges')
    acc_sum = _density_buffer('acc_sum')
    num_updates = _density_buffer('num_updates')

    def _reduction(self, reduction_override) -> str:
        if reduction_override is None:
            return check_reduction('reduction', self.reduction)
        return check_reduction('reduction_override', reduction_override)

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}, reduction={self.reduction!r}'

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Flat keys (ours, and mmdet's: no num_updates, no acc_sum when momentum == 0) go to the
        # density; the nested layout <loss>.density.* loads as it is.
        density = self.density
        for name in density._buffers:
            if name not in density._non_persistent_buffers_set and prefix + name in state_dict:
                state_dict[prefix + DENSITY + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@MODELS.register_module(name='GHMC', force=True)
class GHMC(_GHMLoss):
    """GHM Classification loss: sigmoid BCE, reweighted by the gradient density.

    `Gradient Harmonized Single-stage Detector <https://arxiv.org/abs/1811.05181>`_.

    Args:
        bins: number of gradient-norm bins over [0, 1].
        momentum: EMA momentum of the density, in [0, 1).
        use_sigmoid: must be True (GHM-C is defined on sigmoid BCE); mmdet's heads read it from
            the config to size their outputs.
        loss_weight: weight of the loss.
        reduction: 'none', 'mean' (sum / number of valid elements, as mmdet) or 'sum'.
        bias_correction: Adam-style correction of the EMA's start (off: mmdet's numbers).
        sync_across_ranks: use the density of all ranks' batches (off: each rank its own, as
            mmdet); see :class:`~mmdet_ghm.density.GradientDensity`.

    Every bad argument raises :class:`~mmdet_ghm.inputs.GHMArgumentError` (a ValueError).
    """

    def __init__(self, bins: int = 10, momentum: float = 0, use_sigmoid: bool = True,
                 loss_weight: float = 1.0, reduction: str = 'mean',
                 bias_correction: bool = False, sync_across_ranks: bool = False):
        if not check_flag('use_sigmoid', use_sigmoid):
            raise GHMArgumentError(
                f'use_sigmoid must be True (GHM-C is a sigmoid BCE loss), got {use_sigmoid!r}: '
                'set use_sigmoid=True in the loss_cls config')
        # 1 + 1e-6: a saturated sigmoid (g == 1) still falls in the last bin, as in mmdet.
        super().__init__(bins, momentum, 1.0 + 1e-6, loss_weight, reduction, bias_correction,
                         sync_across_ranks)
        self.use_sigmoid = True

    def forward(self, pred: Tensor, target, label_weight: Optional[Tensor] = None,
                reduction_override: Optional[str] = None, avg_factor=None,
                weight: Optional[Tensor] = None, **kwargs) -> Tensor:
        """GHM-C loss.

        Args:
            pred: (N, C) logits (any floating dtype; float64 computed in float64, others in
                float32), or any shape with a target of the same shape.
            target: integer labels (N,) in [0, C], C meaning background (mmdet's convention), or
                targets of pred's shape: float (soft) targets in [0, 1], or integer / bool
                one-hot targets (taken as float, as mmdet does), or a Quality Focal Loss pair
                ``(labels (N,), scores (N,))`` (GFL, TOOD, RTMDet): ``scores`` in [0, 1] at each
                labelled class, 0 elsewhere.
            label_weight: None (all valid), pred's shape, or per anchor: (N,) or (N, 1) with
                labels (or one element for all, mmdet's normalizer: C), (N,) rows or any shape
                broadcasting to pred's with targets (mmdet's normalizer). An element is valid
                where its weight, as float32, is > 0 (the values are not used otherwise, as in
                mmdet).
            reduction_override: 'none', 'mean' or 'sum'.
            avg_factor: accepted for mmdet's call sites and ignored: GHM-C normalizes by the
                number of valid elements, as mmdet's GHMC does.
            weight: the name mmdet's other classification losses give ``label_weight`` (GFL,
                YOLOv3 and VFNet pass ``weight=``); used when ``label_weight`` is None, else
                ignored with a warning (mmdet's GHMC ignores it).
            kwargs: ignored, as mmdet's GHMC does; without ``label_weight`` (which mmdet's
                GHMC requires) they raise: a misspelt ``label_weight`` must not make every
                element valid.

        Returns:
            loss in float32 (float64 for float64 pred): 0-dim, or pred's shape for 'none'.
        """
        reduction = self._reduction(reduction_override)
        if kwargs and label_weight is None and weight is None:
            raise GHMArgumentError(
                f'label_weight: GHMC got none, and unknown keyword arguments {sorted(kwargs)} '
                '(a misspelt label_weight?); give label_weight, or drop the unknown arguments to '
                'take every element as valid')
        if weight is not None:
            if label_weight is None:
                label_weight = weight
            elif weight is not label_weight:  # mmdet's GHMC takes label_weight and drops weight
                warnings.warn('GHMC got both label_weight and weight: weight is ignored, as in '
                              "mmdet's GHMC", stacklevel=2)
        # Synced on the CPU, bad labels on one rank travel in the all-reduce as poison, and then
        # every rank raises (one rank raising alone would leave the others in the collective).
        deferred = isinstance(pred, Tensor) and pred.device.type == 'cpu' \
            and self.density.synchronizes()
        x = ghmc_inputs(pred, target, label_weight, check_labels_now=not deferred,
                        backend_checks_labels=isinstance(pred, Tensor)
                        and backend_checks_labels(pred))
        loss, skipped = ghmc_loss(x.pred, x.labels, x.soft_target, x.label_weight, self.density,
                                  self.loss_weight, reduction, poison=x.poison, tot=x.tot,
                                  return_skip=True)
        # on the CPU a skipped call only comes from poison (non-finite inputs raise in the call)
        if deferred and x.poison is not None and bool(skipped):
            raise GHMArgumentError(labels_message(x.pred.shape[1], here=bool(x.poison),
                                                  quality=isinstance(target, tuple)))
        return loss.view(x.shape) if reduction == 'none' else loss


@MODELS.register_module(name='GHMR', force=True)
class GHMR(_GHMLoss):
    """GHM Regression loss: Authentic Smooth L1, reweighted by the gradient density.

    `Gradient Harmonized Single-stage Detector <https://arxiv.org/abs/1811.05181>`_.

    Args:
        mu: the ASL1 parameter, ``sqrt(d^2 + mu^2) - mu``; finite, > 0.
        bins: number of gradient-norm bins over [0, 1].
        momentum: EMA momentum of the density, in [0, 1).
        loss_weight: weight of the loss.
        reduction: 'none', 'mean' (sum / sum of label weights, as mmdet) or 'sum'.
        bias_correction, sync_across_ranks: as for :class:`GHMC`.
    """

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0,
                 loss_weight: float = 1.0, reduction: str = 'mean',
                 bias_correction: bool = False, sync_across_ranks: bool = False):
        mu = check_mu(mu)
        super().__init__(bins, momentum, 1e3, loss_weight, reduction, bias_correction,
                         sync_across_ranks)
        self.mu = mu

    def extra_repr(self) -> str:
        return f'mu={self.mu}, ' + super().extra_repr()

    def forward(self, pred: Tensor, target: Tensor, label_weight: Optional[Tensor] = None,
                avg_factor=None, reduction_override: Optional[str] = None) -> Tensor:
        """GHM-R loss.

        Args:
            pred: box regression output, e.g. (N, 4); any floating dtype (float64 computed in
                float64, others in float32).
            target: regression targets of pred's shape.
            label_weight: None (all valid), pred's shape or a shape broadcasting to it; valid
                where > 0, and the normalizer is the sum of the weights as given (as mmdet).
            avg_factor: accepted for mmdet's call sites and ignored, as in mmdet's GHMR.
            reduction_override: 'none', 'mean' or 'sum'.
        """
        reduction = self._reduction(reduction_override)
        x = ghmr_inputs(pred, target, label_weight)
        # weights summing to NaN or +inf make mmdet's loss NaN: on the CPU a ValueError;
        # synced, after the all-reduce that every rank joins (each skips the call)
        on_cpu, synced = x.pred.device.type == 'cpu', self.density.synchronizes()
        tot = x.tot
        bad_here = on_cpu and tot is not None and _nan_or_plus_inf(tot.item())
        if bad_here and not synced:
            raise GHMArgumentError(_weight_sum_message(here=True))
        loss, skipped = ghmr_loss(x.pred, x.target, x.label_weight, self.density, self.mu,
                                  self.loss_weight, reduction, tot=tot, return_skip=True)
        if on_cpu and synced and bool(skipped):  # a weight sum, here: NaN inputs raise in the call
            raise GHMArgumentError(_weight_sum_message(here=bad_here))
        return loss


def _nan_or_plus_inf(weight_sum: float) -> bool:
    """A sum of GHM-R weights that makes mmdet's loss NaN (its ``max(sum, 1)`` turns -inf to 1)."""
    return math.isnan(weight_sum) or weight_sum == math.inf


def _weight_sum_message(here: bool) -> str:
    where = '' if here else ' on another rank (sync_across_ranks)'
    return (f'label_weight must not sum to NaN or +inf{where}: GHM-R normalizes by the sum of the '
            "weights (as mmdet), which makes the loss NaN; the EMA state is left untouched")
