"""GHM-C and GHM-R losses, registered in mmdet's ``MODELS`` under mmdet's own names.

Drop-in replacements of mmdet 3.3.0's ``GHMC``/``GHMR`` (same constructor arguments, forward
signatures and numbers), built on one :class:`~mmdet_ghm.density.GradientDensity`. Beyond mmdet:
``label_weight`` is optional, integer labels never become one-hot N x C tensors, soft float targets
work, ``avg_factor`` is accepted by both, ``reduction='sum'`` works, fp16/bf16 predictions are
computed in float32, CUDA tensors run fused Triton kernels, and nothing syncs with the device.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

# mmdet registers its own GHMC/GHMR on import; import it first so that ours, registered with
# force=True below, is the one that stays whatever the user's import order.
import mmdet.models.losses.ghm_loss  # noqa: F401,E402  isort:skip
from mmdet.registry import MODELS

from .density import GradientDensity
from .ops.function import REDUCTIONS, ghmc_loss, ghmr_loss


def _check_reduction(name: str, value) -> None:
    if value not in REDUCTIONS:
        raise ValueError(f'{name} must be one of {REDUCTIONS}, got {value!r}')


def _check_float_tensor(name: str, value, what: str) -> None:
    if not isinstance(value, Tensor) or not torch.is_floating_point(value):
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f'{name} must be a floating-point tensor of {what}, got {got}')


def _check_same_device(pred: Tensor, **others: Optional[Tensor]) -> None:
    for name, value in others.items():
        if value is not None and value.device != pred.device:
            raise ValueError(f'{name} is on {value.device} but pred is on {pred.device}')


def _check_label_weight(label_weight, pred: Tensor, row_shape) -> Optional[Tensor]:
    if label_weight is None:
        return None
    if not isinstance(label_weight, Tensor) or label_weight.is_complex():
        raise ValueError(f'label_weight must be a real tensor or None, got {label_weight!r:.60}')
    if label_weight.shape == pred.shape or (row_shape is not None
                                            and label_weight.shape == row_shape):
        return label_weight
    # mmdet's weight conventions (FocalLoss, CrossEntropyLoss): a trailing 1 broadcasts over the
    # classes (YOLOv3's (B, M, 1) masks); as many elements as pred is pred's layout (FSAF).
    if row_shape is not None and label_weight.shape == (*row_shape, 1):
        return label_weight.reshape(row_shape)
    if label_weight.numel() == pred.numel() and pred.dim() > 0:
        return label_weight.reshape(pred.shape)
    allowed = f'{tuple(pred.shape)}' + ('' if row_shape is None else
                                        f', {tuple(row_shape)} or {(*row_shape, 1)}')
    raise ValueError(f'label_weight must have shape {allowed}, as many elements as pred '
                     f'(or be None), got {tuple(label_weight.shape)}')


def _check_labels(labels: Tensor, num_classes: int, device: torch.device) -> Optional[Tensor]:
    """Raise on CPU for labels outside [0, C]; on CUDA (where checking would sync) return the
    0-dim bool that makes the loss NaN and keeps the state."""
    out_of_range = ((labels < 0) | (labels > num_classes)).any()
    if device.type != 'cpu':
        return out_of_range
    if out_of_range:
        raise ValueError(f'labels must lie in [0, {num_classes}] ({num_classes} = background), '
                         'got values outside')
    return None


def _quality_target(pred: Tensor, target) -> Tuple[Tensor, Optional[Tensor]]:
    """A Quality Focal Loss target ``(labels (N,), scores (N,))`` (GFL, TOOD, RTMDet, LD) as the
    float target it stands for: ``scores`` at each labelled class, 0 elsewhere (and on background
    rows), which is QFL's own BCE target. Scores must be probabilities in [0, 1]."""
    labels, scores = target
    if (pred.dim() != 2 or torch.is_floating_point(labels) or labels.dtype == torch.bool
            or labels.shape != pred.shape[:1] or scores.shape != pred.shape[:1]):
        raise ValueError(
            'a (labels, scores) target needs pred (N, C), integer labels (N,) and scores (N,), '
            f'got pred {tuple(pred.shape)}, labels {labels.dtype} {tuple(labels.shape)}, '
            f'scores {tuple(scores.shape)}')
    _check_float_tensor('scores', scores, 'quality scores')
    _check_same_device(pred, labels=labels, scores=scores)
    num_classes = pred.shape[1]
    poison = _check_labels(labels, num_classes, pred.device)
    not_probability = ((scores < 0) | (scores > 1) | scores.isnan()).any()
    if pred.device.type == 'cpu':
        if not_probability:
            raise ValueError(
                'quality scores must be probabilities in [0, 1] to be BCE targets for GHM-C, got '
                f'values in [{float(scores.min())}, {float(scores.max())}]')
    else:
        poison = not_probability if poison is None else poison | not_probability
    soft_target = torch.zeros(pred.shape, dtype=torch.float32, device=pred.device)
    rows = ((labels >= 0) & (labels < num_classes)).nonzero(as_tuple=True)[0]
    soft_target[rows, labels[rows]] = scores[rows].float()
    return soft_target, poison


class _GHMLoss(nn.Module):
    """What GHM-C and GHM-R share: the density, loss_weight and reduction."""

    def __init__(self, bins: int, momentum: float, last_edge: float, loss_weight: float,
                 reduction: str, bias_correction: bool, sync_across_ranks: bool):
        super().__init__()
        _check_reduction('reduction', reduction)
        self.density = GradientDensity(bins, momentum, last_edge, bias_correction,
                                       sync_across_ranks)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction

    @property
    def bins(self) -> int:
        return self.density.bins

    @property
    def momentum(self) -> float:
        return self.density.momentum

    def _reduction(self, reduction_override) -> str:
        if reduction_override is None:
            return self.reduction
        _check_reduction('reduction_override', reduction_override)
        return reduction_override

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}, reduction={self.reduction!r}'

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # mmdet's GHMC/GHMR keep `edges` and `acc_sum` (the latter only when momentum > 0)
        # on the loss itself: accept those checkpoints.
        for key in ('edges', 'acc_sum'):
            if prefix + key in state_dict:
                state_dict[f'{prefix}density.{key}'] = state_dict.pop(prefix + key)
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
    """

    def __init__(self, bins: int = 10, momentum: float = 0, use_sigmoid: bool = True,
                 loss_weight: float = 1.0, reduction: str = 'mean',
                 bias_correction: bool = False, sync_across_ranks: bool = False):
        if not use_sigmoid:
            raise ValueError(
                f'GHMC needs use_sigmoid=True (it is a sigmoid BCE loss), got {use_sigmoid!r}: '
                "set use_sigmoid=True in the loss_cls config")
        # 1 + 1e-6: a saturated sigmoid (g == 1) still falls in the last bin, as in mmdet.
        super().__init__(bins, momentum, 1.0 + 1e-6, loss_weight, reduction, bias_correction,
                         sync_across_ranks)
        self.use_sigmoid = True

    def forward(self, pred: Tensor, target, label_weight: Optional[Tensor] = None,
                reduction_override: Optional[str] = None, avg_factor=None,
                weight: Optional[Tensor] = None, **kwargs) -> Tensor:
        """GHM-C loss.

        Args:
            pred: (N, C) logits (any floating dtype; computed in float32), or any shape with a
                float ``target`` of the same shape.
            target: integer labels (N,) in [0, C], C meaning background (mmdet's convention),
                float (soft) targets in [0, 1] of pred's shape, or a Quality Focal Loss tuple
                ``(labels (N,), scores (N,))``: the float target ``scores`` at each labelled
                class and 0 elsewhere (scores must lie in [0, 1]).
            label_weight: None (all valid), (N,) per anchor (or (N, 1)), pred's shape, or as
                many elements as pred (mmdet's weight conventions); an element is valid where
                its weight is > 0 (the values are not used otherwise, as in mmdet).
            reduction_override: 'none', 'mean' or 'sum'.
            avg_factor: accepted for mmdet's call sites and ignored: GHM-C normalizes by the
                number of valid elements, as mmdet's GHMC does.
            weight: the name mmdet's other classification losses give ``label_weight`` (GFL and
                YOLOv3 pass ``weight=``); give one of the two.

        Returns:
            float32 loss: 0-dim, or pred's shape for 'none'.
        """
        reduction = self._reduction(reduction_override)
        _check_float_tensor('pred', pred, 'logits')
        if weight is not None:
            if label_weight is not None:
                raise ValueError('give label_weight or weight (its name in mmdet\'s other '
                                 'losses), not both')
            label_weight = weight
        labels = soft_target = None
        poison = None
        if (isinstance(target, tuple) and len(target) == 2
                and all(isinstance(t, Tensor) for t in target)):
            target, poison = _quality_target(pred, target)
        if not isinstance(target, Tensor):
            raise ValueError('target must be a tensor or a (labels, scores) tuple of tensors, '
                             f'got {type(target).__name__}')
        _check_same_device(pred, target=target, label_weight=label_weight)
        if target.dtype == torch.bool or torch.is_floating_point(target):
            if target.shape != pred.shape:
                raise ValueError(f'a float target must have the shape of pred {tuple(pred.shape)}, '
                                 f'got {tuple(target.shape)}')
            soft_target = target
            row_shape = pred.shape[:-1] if pred.dim() > 1 else None
        elif target.is_complex():
            raise ValueError(f'target must be integer labels or float targets, got {target.dtype}')
        else:
            if pred.dim() != 2 or target.shape != pred.shape[:1]:
                raise ValueError(
                    'integer labels need pred of shape (N, C) and labels of shape (N,), got '
                    f'pred {tuple(pred.shape)} and labels {tuple(target.shape)}')
            labels = target
            row_shape = target.shape
            poison = _check_labels(labels, pred.shape[1], pred.device)
        label_weight = _check_label_weight(label_weight, pred, row_shape)
        C = pred.shape[-1] if pred.dim() > 0 else 1
        loss = ghmc_loss(
            pred.reshape(-1, C),
            labels,
            None if soft_target is None else soft_target.reshape(-1, C),
            None if label_weight is None else label_weight.reshape(
                (-1, C) if label_weight.shape == pred.shape else (-1,)),
            self.density, self.loss_weight, reduction, poison=poison)
        return loss.view(pred.shape) if reduction == 'none' else loss


@MODELS.register_module(name='GHMR', force=True)
class GHMR(_GHMLoss):
    """GHM Regression loss: Authentic Smooth L1, reweighted by the gradient density.

    `Gradient Harmonized Single-stage Detector <https://arxiv.org/abs/1811.05181>`_.

    Args:
        mu: the ASL1 parameter, ``sqrt(d^2 + mu^2) - mu``; > 0.
        bins: number of gradient-norm bins over [0, 1].
        momentum: EMA momentum of the density, in [0, 1).
        loss_weight: weight of the loss.
        reduction: 'none', 'mean' (sum / sum of label weights, as mmdet) or 'sum'.
        bias_correction, sync_across_ranks: as for :class:`GHMC`.
    """

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0,
                 loss_weight: float = 1.0, reduction: str = 'mean',
                 bias_correction: bool = False, sync_across_ranks: bool = False):
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu > 0:
            raise ValueError(f'mu must be a float > 0, got {mu!r}')
        super().__init__(bins, momentum, 1e3, loss_weight, reduction, bias_correction,
                         sync_across_ranks)
        self.mu = float(mu)

    def extra_repr(self) -> str:
        return f'mu={self.mu}, ' + super().extra_repr()

    def forward(self, pred: Tensor, target: Tensor, label_weight: Optional[Tensor] = None,
                avg_factor=None, reduction_override: Optional[str] = None) -> Tensor:
        """GHM-R loss.

        Args:
            pred: box regression output, e.g. (N, 4); any floating dtype (computed in float32).
            target: regression targets of pred's shape.
            label_weight: None (all valid) or pred's shape; valid where > 0, and the normalizer
                is the sum of the weights (as mmdet).
            avg_factor: accepted for mmdet's call sites and ignored, as in mmdet's GHMR.
            reduction_override: 'none', 'mean' or 'sum'.
        """
        reduction = self._reduction(reduction_override)
        _check_float_tensor('pred', pred, 'box regressions')
        _check_float_tensor('target', target, 'regression targets')
        if target.shape != pred.shape:
            raise ValueError(f'target must have the shape of pred {tuple(pred.shape)}, '
                             f'got {tuple(target.shape)}')
        _check_same_device(pred, target=target, label_weight=label_weight)
        label_weight = _check_label_weight(label_weight, pred, None)
        return ghmr_loss(pred, target, label_weight, self.density, self.mu, self.loss_weight,
                         reduction)
