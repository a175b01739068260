"""Argument checks and input normalization for GHMC / GHMR, in one place.

Every bad argument raises :class:`GHMArgumentError`, whose message starts with the argument's name
and says what was expected. Good inputs are brought to what the functionals in :mod:`mmdet_ghm.ops`
take, with mmdet 3.3.0's meaning wherever mmdet accepts them (numpy scalars, one-hot integer
targets, label weights that broadcast over pred).
"""
import functools
import math
import numbers
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

REDUCTIONS = ('none', 'mean', 'sum')


class GHMArgumentError(ValueError, AssertionError):
    """A bad argument to GHMC / GHMR. A ValueError, as this package promises, and an AssertionError,
    what mmdet's own loss tests expect of a bad ``reduction_override``."""


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f'a {value.dtype} tensor of shape {tuple(value.shape)}'
    return f'{value!r:.60}'


def check_int(name: str, value, minimum: int) -> int:
    """A Python or numpy integer >= minimum, as a Python int (bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise GHMArgumentError(f'{name} must be an int >= {minimum}, got {_describe(value)}')
    return int(value)


def check_real(name: str, value, expected: str, accept) -> float:
    """A Python or numpy real (bool refused) for which ``accept(value)`` holds, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not accept(float(value)):
        raise GHMArgumentError(f'{name} must be {expected}, got {_describe(value)}')
    return float(value)


def check_bins(bins) -> int:
    return check_int('bins', bins, 1)


def check_momentum(momentum) -> float:
    return check_real('momentum', momentum, 'a float in [0, 1)', lambda m: 0.0 <= m < 1.0)


def check_mu(mu) -> float:
    return check_real('mu', mu, 'a finite float > 0', lambda m: 0.0 < m < math.inf)


def mu_squared(mu: float, dtype: torch.dtype) -> float:
    """mmdet adds the Python double ``mu * mu`` to the tensor: it is rounded to its dtype first."""
    return _rounded_square(float(mu), dtype)


@functools.lru_cache(maxsize=256)
def _rounded_square(mu: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(mu * mu, dtype=dtype))


def compute_dtype(pred: Tensor) -> torch.dtype:
    """The arithmetic's dtype: float64 stays float64 (mmdet's numbers for a model.double()),
    anything else float32."""
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def check_mu_for(mu, pred: Tensor) -> float:
    """``mu`` for pred's compute dtype (float64, else float32): mmdet adds the double ``mu * mu``
    rounded to it, and a square that underflows to 0 (g = 0 / 0 where pred == target) or
    overflows leaves no meaningful loss or gradient."""
    mu = check_mu(mu)
    dtype = compute_dtype(pred)
    square = mu_squared(mu, dtype)
    if not 0.0 < square < math.inf:
        limits = torch.finfo(dtype)
        smallest = limits.smallest_normal * limits.eps  # the smallest subnormal
        raise GHMArgumentError(
            f'mu must be a float whose square {dtype} holds, about '
            f'[{math.sqrt(smallest):.2g}, {math.sqrt(limits.max):.2g}] (for pred of dtype '
            f'{pred.dtype}), got {mu!r}: mu * mu rounds to {square}')
    return mu


def check_loss_weight(loss_weight) -> float:
    return check_real('loss_weight', loss_weight, 'a finite float', math.isfinite)


def check_flag(name: str, value) -> bool:
    """True / False (also numpy's, and the integers 1 / 0 a hand-written config may hold)."""
    if not (isinstance(value, (bool, np.bool_))
            or isinstance(value, numbers.Integral) and value in (0, 1)):
        raise GHMArgumentError(f'{name} must be True or False, got {_describe(value)}')
    return bool(value)


def check_reduction(name: str, value) -> str:
    if not isinstance(value, str) or value not in REDUCTIONS:
        raise GHMArgumentError(f'{name} must be one of {REDUCTIONS}, got {_describe(value)}')
    return value


def _check_tensor(name: str, value, pred: Optional[Tensor] = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise GHMArgumentError(f'{name} must be a tensor, got {type(value).__name__}')
    if value.is_complex():
        raise GHMArgumentError(f'{name} must be a real tensor, got {value.dtype}')
    if pred is not None and value.device != pred.device:
        raise GHMArgumentError(f'{name} must be on pred\'s device {pred.device}, '
                               f'got {value.device}')
    return value


def _check_pred(value, what: str) -> Tensor:
    _check_tensor('pred', value)
    if not torch.is_floating_point(value):
        raise GHMArgumentError(f'pred must be a floating-point tensor of {what}, '
                               f'got {value.dtype}')
    return value


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _rows(shape: torch.Size) -> int:
    return math.prod(shape[:-1]) if len(shape) else 1


def wide_enough_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Labels in a dtype that holds ``num_classes`` (the background label): PyTorch and Triton
    cast a Python int compared with a tensor to the tensor's dtype, so uint8 labels with C >= 256
    would wrap (mmdet's one-hot then drops their classes)."""
    return labels if torch.iinfo(labels.dtype).max >= num_classes else labels.long()


def labelled_rows(labels: Tensor, num_classes: int) -> Tensor:
    """bool (N,): the rows whose label is a class, in [0, C), as mmdet's one-hot reads them
    (labels in a dtype that holds C: :func:`wide_enough_labels`)."""
    return (labels >= 0) & (labels < num_classes)


def scatter_to_classes(labels: Tensor, num_classes: int, value, dtype: torch.dtype) -> Tensor:
    """(N, C) of ``dtype``: ``value`` (a float, or one per row) at each labelled row's class, 0
    elsewhere (labels as for :func:`labelled_rows`). A scatter into an extra background column:
    neither F.one_hot's range check nor an index of the labelled rows (both host syncs on
    CUDA)."""
    index = torch.where(labelled_rows(labels, num_classes), labels, num_classes).long()
    out = torch.zeros(labels.shape[0], num_classes + 1, dtype=dtype, device=labels.device)
    src = value[:, None].to(dtype) if isinstance(value, Tensor) else value
    return out.scatter_(1, index[:, None], src)[:, :num_classes]


def labels_outside(labels: Tensor, num_classes: int) -> Tensor:
    """0-dim bool: a label outside [0, C] (C = background), without a host read."""
    return ((labels < 0) | (labels > num_classes)).any()


def labels_message(num_classes: int, here: bool, quality: bool = False) -> str:
    where = 'got values outside' if here else 'got values outside on another rank'
    scores = ' and quality scores in [0, 1]' if quality else ''
    return (f'target: labels must lie in [0, {num_classes}] ({num_classes} = background){scores}, '
            f'{where}' + ('' if here else ' (sync_across_ranks); the EMA state is left untouched'))


def _raise_now_or_poison(bad: Tensor, now: bool, message: Callable[[], str]) -> Optional[Tensor]:
    """When ``now`` (pred on the CPU), GHMArgumentError(message()) if the 0-dim ``bad`` is set,
    else None; otherwise ``bad`` itself, as poison: the loss becomes NaN and the state is kept,
    without a host read."""
    if not now:
        return bad
    if bad:
        raise GHMArgumentError(message())
    return None


def _quality_target(pred: Tensor, target: tuple, check_now: bool):
    """A Quality Focal Loss target ``(labels (N,), scores (N,))`` (GFL, TOOD, RTMDet, LD) as the
    float target it stands for, QFL's own BCE target: ``scores`` at each labelled class, 0
    elsewhere and on background rows. Returns it with the poison of out-of-range labels or
    scores outside [0, 1] (raised here instead when ``check_now`` on the CPU)."""
    if len(target) != 2:
        raise GHMArgumentError(f'target must be a tensor or a (labels, scores) pair, got a '
                               f'tuple of {len(target)}')
    labels = _check_tensor('target', target[0], pred)
    scores = _check_tensor('target', target[1], pred)
    if (pred.dim() != 2 or torch.is_floating_point(labels) or labels.dtype == torch.bool
            or not torch.is_floating_point(scores)
            or labels.shape != pred.shape[:1] or scores.shape != pred.shape[:1]):
        raise GHMArgumentError(
            'target: a (labels, scores) pair needs pred (N, C), integer labels (N,) and float '
            f'scores (N,), got pred {tuple(pred.shape)}, labels {_describe(labels)}, scores '
            f'{_describe(scores)}')
    num_classes = pred.shape[1]
    labels = wide_enough_labels(labels, num_classes)
    bad_labels = labels_outside(labels, num_classes)
    bad_scores = ~((scores >= 0) & (scores <= 1)).all()  # NaN too
    poison = _raise_now_or_poison(
        bad_labels | bad_scores, check_now and pred.device.type == 'cpu',
        lambda: labels_message(num_classes, here=True) if bad_labels else (
            'target: quality scores must be probabilities in [0, 1] to be BCE targets for '
            f'GHM-C, got values in [{float(scores.min())}, {float(scores.max())}]'))
    return scatter_to_classes(labels, num_classes, scores, torch.float32), poison


class GHMCInputs(NamedTuple):
    pred: Tensor                   # (M, C) logits, any floating dtype
    labels: Optional[Tensor]       # (M,) integer labels in [0, C], or None
    soft_target: Optional[Tensor]  # (M, C) float32 targets, or None
    label_weight: Optional[Tensor]  # (M, C), (M,) per row, or None
    tot: Optional[Tensor]          # 0-dim float32 normalizer where mmdet's differs from the count
    poison: Optional[Tensor]       # 0-dim bool: bad labels / scores found without a host sync
    shape: torch.Size              # pred's shape, for reduction 'none'


def ghmc_inputs(pred, target, label_weight, check_labels_now: bool = True,
                backend_checks_labels: bool = False) -> GHMCInputs:
    """GHM-C's inputs as mmdet reads them: ``target`` with fewer dims than pred is integer labels
    (pred (N, C), labels (N,), C = background); with pred's dims it is a target of pred's shape
    (float, or integer / bool one-hot, taken as float as mmdet does); a ``(labels, scores)`` pair
    is a Quality Focal Loss target (see :func:`_quality_target`). ``label_weight``: None,
    pred's shape, (N,) or (N, 1) per anchor with labels, or one element for every anchor
    (mmdet's normalizer: C); with targets, (N,) per row or any shape that broadcasts to pred's
    (mmdet's normalizer: the valid elements of the weight as given). float64 weights are
    rounded to float32 first, as mmdet's ``label_weight.float()``: a positive weight below
    float32's range is not valid.

    Integer labels outside [0, C] are left to the backend when ``backend_checks_labels`` (the
    Triton kernels reject the call: NaN loss, state kept); else they raise here when
    ``check_labels_now`` and pred is on the CPU, or come back as ``poison`` (a device tensor: no
    host sync, and no rank raising alone while the others wait in the all-reduce of
    ``sync_across_ranks``)."""
    pred = _check_pred(pred, 'logits')
    poison = None
    if isinstance(target, tuple):
        target, poison = _quality_target(pred, target, check_labels_now)
    target = _check_tensor('target', target, pred)
    if label_weight is not None:
        label_weight = _check_tensor('label_weight', label_weight, pred)
        if label_weight.dtype == torch.float64:  # mmdet tests label_weight.float() > 0
            label_weight = label_weight.float()
    shape = pred.shape
    num_classes = shape[-1] if pred.dim() else 1
    rows = _rows(shape)
    labels = soft_target = tot = None
    if target.dim() != pred.dim():
        if torch.is_floating_point(target) or target.dtype == torch.bool:
            raise GHMArgumentError(
                f'target must be integer labels (N,) for pred (N, C) or a target of pred\'s shape '
                f'{tuple(shape)}, got {_describe(target)}')
        if pred.dim() != 2 or target.shape != shape[:1]:
            raise GHMArgumentError(
                f'target: integer labels need pred of shape (N, C) and labels of shape (N,), got '
                f'pred {tuple(shape)} and labels {tuple(target.shape)}')
        labels = wide_enough_labels(target, num_classes)
        if not backend_checks_labels:
            now = check_labels_now and pred.device.type == 'cpu'
            poison = _raise_now_or_poison(labels_outside(labels, num_classes), now,
                                          lambda: labels_message(num_classes, here=True))
        if label_weight is not None and label_weight.shape != shape:
            # mmdet: label_weight.view(-1, 1).expand(label_weight.size(0), C), against (N, C)
            anchors = label_weight.shape[0] if label_weight.dim() else 0
            if label_weight.numel() != anchors or anchors not in (rows, 1):
                raise GHMArgumentError(
                    f'label_weight must have shape {tuple(shape)}, ({rows},) or ({rows}, 1), '
                    f'or one element (or be None), got {tuple(label_weight.shape)}')
            if anchors != rows:  # one weight for every row; mmdet's tot: that row's C elements
                tot = (label_weight.reshape(()) > 0).to(torch.float32) * num_classes
            label_weight = label_weight.reshape(anchors).expand(rows)  # per row
    else:
        if target.shape != shape:
            raise GHMArgumentError(f'target must have the shape of pred {tuple(shape)} (or be '
                                   f'integer labels (N,)), got {tuple(target.shape)}')
        # float32 whatever the dtype, as mmdet's target.float()
        soft_target = target.reshape(rows, num_classes).float()
        if label_weight is not None and label_weight.shape != shape:
            row_shape = shape[:-1]
            if label_weight.shape == row_shape and not _broadcasts_to(label_weight.shape, shape):
                label_weight = label_weight.reshape(rows)  # per row
            elif _broadcasts_to(label_weight.shape, shape):
                tot = (label_weight > 0).sum().to(torch.float32)
                label_weight = label_weight.expand(shape)
            else:
                raise GHMArgumentError(
                    f'label_weight must have pred\'s shape {tuple(shape)}, its rows\' '
                    f'{tuple(row_shape)} or broadcast to it (or be None), '
                    f'got {tuple(label_weight.shape)}')
    if label_weight is not None and label_weight.shape == shape:  # per element, even 1-D pred
        label_weight = label_weight.reshape(rows, num_classes)
    return GHMCInputs(pred.reshape(rows, num_classes), labels, soft_target, label_weight, tot,
                      poison, shape)


class GHMRInputs(NamedTuple):
    pred: Tensor                   # box regressions, any floating dtype
    target: Tensor                 # pred's shape
    label_weight: Optional[Tensor]  # pred's shape (valid where > 0) or None
    tot: Optional[Tensor]           # 0-dim float32 sum of the weight as given, or None


def ghmr_inputs(pred, target, label_weight) -> GHMRInputs:
    """GHM-R's inputs: ``target`` of pred's shape (floating, or integer: promoted to pred's dtype,
    as mmdet's ``pred - target``), ``label_weight`` None, pred's shape or any shape that
    broadcasts to it (expanded to pred's shape; ``tot``, mmdet's normalizer, is the sum of the
    weight as given). Integer pred is taken in the float dtype mmdet's arithmetic promotes it to:
    a floating target's, else torch's default."""
    if isinstance(pred, Tensor) and not (torch.is_floating_point(pred) or pred.is_complex()
                                         or pred.dtype == torch.bool):
        floating_target = isinstance(target, Tensor) and torch.is_floating_point(target)
        pred = pred.to(target.dtype if floating_target else torch.get_default_dtype())
    pred = _check_pred(pred, 'box regressions')
    target = _check_tensor('target', target, pred)
    if target.dtype == torch.bool:
        raise GHMArgumentError(f'target must be a tensor of regression targets (floating or '
                               f'integer), got {target.dtype}')
    if not torch.is_floating_point(target):
        target = target.to(pred.dtype)
    if target.shape != pred.shape:
        raise GHMArgumentError(f'target must have the shape of pred {tuple(pred.shape)}, '
                               f'got {tuple(target.shape)}')
    tot = None
    if label_weight is not None:
        label_weight = _check_tensor('label_weight', label_weight, pred)
        # GHM-R reads the weights' values only through their sum, which mmdet takes over the
        # weight as given (float32), and their sign (which elements are valid), per element
        tot = label_weight.sum(dtype=torch.float32)
        if label_weight.shape != pred.shape:
            if not _broadcasts_to(label_weight.shape, pred.shape):
                raise GHMArgumentError(
                    f'label_weight must have pred\'s shape {tuple(pred.shape)} or broadcast to '
                    f'it (or be None), got {tuple(label_weight.shape)}')
            label_weight = label_weight.expand(pred.shape)
    return GHMRInputs(pred, target, label_weight, tot)


def _check_scalar_tensor(name: str, value, pred: Tensor) -> None:
    if value is not None and (_check_tensor(name, value, pred).numel() != 1):
        raise GHMArgumentError(f'{name} must be None or a one-element tensor, got '
                               f'{_describe(value)}')


def _check_float_target(target, pred: Tensor) -> None:
    if (_check_tensor('target', target, pred).shape != pred.shape
            or not torch.is_floating_point(target)):
        raise GHMArgumentError(f'target must be a float tensor of shape {tuple(pred.shape)}, '
                               f'got {_describe(target)}')


def check_ghmc_call(pred, labels, target, weight, poison, tot, reduction) -> None:
    """The contract of :func:`mmdet_ghm.ops.ghmc_loss` (its arguments as :func:`ghmc_inputs`
    returns them), on shapes and kinds only: no device value is read. GHMArgumentError names
    the first argument that breaks it."""
    if not (isinstance(pred, Tensor) and pred.dim() == 2 and torch.is_floating_point(pred)):
        raise GHMArgumentError(f'pred must be (M, C) floating-point logits, got '
                               f'{_describe(pred)}')
    rows, classes = pred.shape
    if (labels is None) == (target is None):
        raise GHMArgumentError('labels, target: give exactly one, integer labels (M,) or a '
                               'float target (M, C)')
    if labels is not None and (
            _check_tensor('labels', labels, pred).shape != (rows,)
            or torch.is_floating_point(labels) or labels.dtype == torch.bool):
        raise GHMArgumentError(f'labels must be integer labels of shape ({rows},), got '
                               f'{_describe(labels)}')
    if target is not None:
        _check_float_target(target, pred)
    if weight is not None and _check_tensor('weight', weight, pred).shape not in (
            (rows,), (rows, classes)):
        raise GHMArgumentError(f'weight must be None, ({rows},) or {tuple(pred.shape)}, got '
                               f'{_describe(weight)}')
    _check_scalar_tensor('poison', poison, pred)
    _check_scalar_tensor('tot', tot, pred)
    check_reduction('reduction', reduction)


def check_ghmr_call(pred, target, weight, tot, reduction) -> None:
    """The contract of :func:`mmdet_ghm.ops.ghmr_loss`, as :func:`check_ghmc_call`."""
    if not (isinstance(pred, Tensor) and torch.is_floating_point(pred)):
        raise GHMArgumentError(f'pred must be floating-point box regressions, got '
                               f'{_describe(pred)}')
    _check_float_target(target, pred)
    if weight is not None and _check_tensor('weight', weight, pred).shape != pred.shape:
        raise GHMArgumentError(f'weight must be None or of shape {tuple(pred.shape)}, got '
                               f'{_describe(weight)}')
    _check_scalar_tensor('tot', tot, pred)
    check_reduction('reduction', reduction)
