"""The GHM autograd Function and the functional GHM-C / GHM-R entry points.

Data path of one call: a backend (:mod:`mmdet_ghm.ops.backend`; C++ or PyTorch passes on CPU,
Triton on CUDA) reads the inputs
once into slot counts and slot loss sums, then weighs them: the
:class:`~mmdet_ghm.density.GradientDensity` turns the counts into slot weights (EMA update;
all-reduced first under ``sync_across_ranks``) and the loss is the dot product of the loss sums
and the weights. The backward asks the backend for the gradient (one read, one write). Under
``create_graph=True`` the backward is formed from differentiable PyTorch ops instead, so that
double backward works.
"""
from typing import Callable, Optional

import torch
from torch import Tensor

from ..binning import Binning
from ..density import GradientDensity
from ..inputs import (GHMArgumentError, check_ghmc_call, check_ghmr_call, check_mu_for,
                      compute_dtype, mu_squared, scatter_to_classes, wide_enough_labels)
from . import cpu_passes, native_passes
from .backend import slot_factors

BACKENDS = (None, 'cpu', 'triton')
try:  # what Function.apply calls outside torch.func transforms (see _apply)
    from torch._C import _are_functorch_transforms_active as _functorch_active
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:
    _functorch_active = unwrap_dead_wrappers = None
# under torch.compile, Dynamo traces Function.apply itself (it cannot trace the shortcut)
_compiling = getattr(getattr(torch, 'compiler', None), 'is_compiling', lambda: False)


def _use_triton(device: torch.device, backend: Optional[str]) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend is None:
        return device.type == 'cuda'
    if backend == 'cpu' and device.type != 'cpu':
        raise ValueError(f"backend='cpu' needs CPU tensors, got {device}")
    return backend == 'triton'


def backend_checks_labels(pred: Tensor, backend: Optional[str] = None) -> bool:
    """Whether the backend that takes pred checks integer labels' range as it reads them: the
    Triton kernels (a label outside [0, C] rejects the call there, no extra launch, no host
    sync), when they run (pred is not empty)."""
    return _use_triton(pred.device, backend) and pred.numel() > 0


def _backend_chooser(device: torch.device, backend: Optional[str], loss: str):
    """(``choose(pred, binning) -> backend class``, whether it is the Triton one) of ``loss``
    ('Classification' or 'Regression') for pred's device. On CPU the C++ passes where they
    apply (:mod:`.native_passes`), else the PyTorch ones; Triton is imported only when used."""
    if _use_triton(device, backend):
        from . import triton_passes
        triton_class = getattr(triton_passes, loss + 'Triton')

        def choose(pred: Tensor, binning: Binning):
            _check_triton_edges(binning)
            return triton_class
        return choose, True
    cpp, pytorch = getattr(native_passes, loss + 'Native'), getattr(cpu_passes, loss + 'CPU')
    return (lambda pred, binning: cpp if native_passes.applies(pred, binning) else pytorch), False


def _check_triton_edges(binning: Binning) -> None:
    """The Triton kernels bin with mmdet's uniform edges only (see :mod:`.triton_kernels`)."""
    if not binning.uniform_edges:
        raise GHMArgumentError(
            'edges: the Triton path bins with mmdet\'s edges arange(bins + 1) / bins (last edge '
            f'above 1), these were changed to {binning.edges.tolist()}; compute this loss on CPU '
            'tensors (the CPU passes take any edges), or keep mmdet\'s edges')


class _Call:
    """What one call needs besides pred: built by the entry point, completed by the forward.
    ``can_raise``: the PyTorch backend may read the small bad-call flags on the host (a ValueError
    instead of a NaN loss); the Triton backend must not (a host sync on CUDA)."""

    def __init__(self, make_backend: Callable, torch_grad: Callable, density: GradientDensity,
                 loss_weight: float, reduction: str, tot: Optional[Tensor],
                 poison: Optional[Tensor], can_raise: bool, non_finite_message: Callable):
        self.make_backend, self.torch_grad = make_backend, torch_grad
        self.density, self.loss_weight, self.reduction = density, float(loss_weight), reduction
        self.tot, self.poison, self.can_raise = tot, poison, can_raise
        self.non_finite_message = non_finite_message
        self.backend = self.binning = self.slot_weight = self.divisor = self.skip = None


class GHMFunction(torch.autograd.Function):
    """Loss of one GHM call (see the module docstring); ``call`` is a :class:`_Call`.
    ``target``: the float target (GHM-C soft targets, GHM-R box targets; None for integer
    labels), an input so that autograd can give it its gradient as mmdet's losses do; the
    backend reads it through ``call``."""

    @staticmethod
    def forward(pred: Tensor, target: Optional[Tensor], call: _Call) -> Tensor:
        call.density.check_state()
        call.binning = call.density.binning
        call.backend = backend = call.make_backend(pred.detach(), call.binning)
        weighing = backend.weigh(*backend.histogram(), call)
        call.slot_weight, call.divisor, call.skip = (weighing.slot_weight, weighing.divisor,
                                                     weighing.skip)
        if weighing.loss is not None:
            return weighing.loss
        loss = backend.elementwise_loss(weighing.slot_weight, call.loss_weight)
        return torch.where(weighing.skip, torch.full_like(loss, float('nan')), loss)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pred, target, call = inputs
        # autograd then rejects pred, or an input the backward reads again, modified in place
        ctx.save_for_backward(pred, *call.backend.backward_reads())
        ctx.call = call
        ctx.target_dtype = None if target is None else target.dtype

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pred = ctx.saved_tensors[0]
        call = ctx.call
        elementwise = call.reduction == 'none'
        wants_target = ctx.needs_input_grad[1]
        if torch.is_grad_enabled() or wants_target:
            # create_graph=True (autograd can differentiate this gradient) or a target that
            # wants its gradient (rare: mmdet's heads detach their targets): PyTorch ops
            slot_scale, elementwise_grad_out = slot_factors(
                call.slot_weight, grad_out, call.divisor, call.loss_weight, elementwise,
                compute_dtype(pred))
            grad, grad_target = call.torch_grad(pred, call.binning, slot_scale,
                                                elementwise_grad_out, call.loss_weight,
                                                wants_target)
            return grad, grad_target.to(ctx.target_dtype) if wants_target else None, None
        grad = call.backend.grad(call.slot_weight, grad_out, call.divisor, call.loss_weight,
                                 elementwise)
        return grad.reshape(pred.shape), None, None


def _apply(pred: Tensor, target: Optional[Tensor], call: _Call) -> Tensor:
    """``GHMFunction.apply(pred, target, call)``. Function.apply binds its arguments to forward's
    signature on every call (inspect: some 40 Python calls) for torch.func's sake; outside
    torch.func transforms and torch.compile it then does what this does."""
    if _compiling() or _functorch_active is None or _functorch_active():
        return GHMFunction.apply(pred, target, call)
    args = unwrap_dead_wrappers((pred, target, call))
    return super(torch.autograd.Function, GHMFunction).apply(*args)


def _factor(slots: Tensor, slot_scale: Tensor, grad_out: Optional[Tensor],
            loss_weight: float) -> Tensor:
    factor = slot_scale[slots.long()]
    return factor if grad_out is None else (grad_out.to(factor.dtype) * loss_weight) * factor


def _ghmc_torch_grad(labels, target, weight):
    """GHM-C's gradients in differentiable PyTorch ops: (d/d pred in pred's dtype, d/d target in
    the compute dtype when ``with_target``, else None), autograd's through mmdet's BCE
    (-x * factor for the target)."""
    def grad(pred, binning: Binning, slot_scale, grad_out, loss_weight, with_target):
        x = pred.to(compute_dtype(pred))
        if labels is not None:
            t = scatter_to_classes(labels, x.shape[1], 1.0, x.dtype)
        else:
            t = target.to(x.dtype)
        s = torch.sigmoid(x)
        slots = binning.slots((s - t).abs().detach())
        if weight is not None:
            valid = weight > 0
            slots = slots.long() * (valid[:, None] if valid.dim() == 1 else valid)
        factor = _factor(slots, slot_scale.to(x.dtype), grad_out, loss_weight)
        return ((s - t) * factor).to(pred.dtype), -x * factor if with_target else None
    return grad


def _ghmr_torch_grad(target, weight, mu):
    """GHM-R's gradients in differentiable PyTorch ops: (d/d pred in pred's dtype, d/d target in
    the compute dtype when ``with_target``, else None), the target's the negative of
    d/d(pred - target), as autograd's."""
    def grad(pred, binning: Binning, slot_scale, grad_out, loss_weight, with_target):
        dtype = compute_dtype(pred)
        d = pred.to(dtype) - target.to(dtype)
        root = torch.sqrt(d * d + mu_squared(mu, dtype))
        slots = binning.slots((d / root).abs().detach())
        if weight is not None:
            slots = slots.long() * (weight > 0)
        factor = _factor(slots, slot_scale.to(dtype), grad_out, loss_weight)
        half = (factor / (2 * root)) * d
        grad_d = half + half
        return grad_d.to(pred.dtype), -grad_d if with_target else None
    return grad


def ghmc_loss(pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
              weight: Optional[Tensor], density: GradientDensity, loss_weight: float = 1.0,
              reduction: str = 'mean', poison: Optional[Tensor] = None,
              backend: Optional[str] = None, tot: Optional[Tensor] = None,
              return_skip: bool = False):
    """GHM-C loss of inputs as :class:`mmdet_ghm.GHMC` hands them over (after its checks and
    normalization). Shapes and kinds are checked here too (no device value is read); values
    (labels' range, NaN) are the call's.

    Args:
        pred: (M, C) logits (C may be 0), any floating dtype (float64 computed in float64,
            others in float32).
        labels: (M,) integer labels in [0, C] (C = background), any integer dtype, or None.
        target: (M, C) float targets when ``labels`` is None; elements whose g = |sigmoid(x) - t|
            falls outside every bin (t outside [0, 1]) get weight 0 and are not counted (mmdet).
        weight: None, (M,) per row or (M, C) per element; valid where > 0 in its own dtype
            (:class:`mmdet_ghm.GHMC` rounds a float64 weight to float32 first, as mmdet).
        density: the gradient density (its EMA state is updated).
        poison: optional 0-dim bool; when True the loss is NaN and the state is left untouched.
        backend: None (Triton on CUDA, C++ or PyTorch passes on CPU), 'cpu' or 'triton'.
        tot: optional 0-dim float32 normalizer replacing the number of valid elements.
        return_skip: also return the call's 0-dim bool skip flag (see Returns).

    Returns:
        loss in float32 (float64 for float64 pred): 0-dim, or (M, C) for ``reduction='none'``;
        with ``return_skip``, ``(loss, skip)``: whether the call was rejected (NaN loss, state
        kept), the same on every rank under ``sync_across_ranks``, also where this rank's loss
        has no element to be NaN.

    Raises:
        ValueError: an argument of another shape or kind than above (naming it); on the CPU
        backend (every rank alike under ``sync_across_ranks``), the loss of a valid element
        that is not finite (NaN logits, or an infinite logit on the wrong side).
    """
    check_ghmc_call(pred, labels, target, weight, poison, tot, reduction)
    choose_backend, on_device = _backend_chooser(pred.device, backend, 'Classification')
    if labels is not None:  # the backends compare labels with C in the labels' dtype
        labels = wide_enough_labels(labels, pred.shape[-1])

    def message(here: bool) -> str:
        where = 'on this rank' if here else 'on another rank (sync_across_ranks)'
        return (f'pred (logits) or target contain NaN or inf {where}, so the GHM-C loss of a '
                'valid element is not finite; the EMA state is left untouched: check the model '
                'for divergence')

    call = _Call(lambda p, binning: choose_backend(p, binning)(p, labels, target, weight, binning),
                 _ghmc_torch_grad(labels, target, weight), density, loss_weight, reduction, tot,
                 poison, not on_device, message)
    loss = _apply(pred, target, call)
    return (loss, call.skip) if return_skip else loss


def ghmr_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor], density: GradientDensity,
              mu: float = 0.02, loss_weight: float = 1.0, reduction: str = 'mean',
              backend: Optional[str] = None, tot: Optional[Tensor] = None,
              return_skip: bool = False):
    """GHM-R loss (Authentic Smooth L1 ``sqrt(d^2 + mu^2) - mu``) of inputs as
    :class:`mmdet_ghm.GHMR` hands them over; shapes, kinds and ``mu`` are checked here too.

    Args:
        pred, target: same shape and any strides (permuted, channels_last), floating dtypes
            (float64 computed in float64, others in float32).
        weight: None or pred's shape; valid where > 0; tot = sum of weights (mmdet).
        mu: > 0, with a square the compute dtype holds.
        tot: optional 0-dim float32 ``weight.sum(dtype=torch.float32)`` where the caller has it.
        return_skip: also return the call's skip flag, as :func:`ghmc_loss` does.

    Raises:
        ValueError: an argument of another shape or kind than above, or a bad ``mu`` (naming
        it); on the CPU backend, the loss of a valid element that is not finite (NaN or inf in
        pred/target, or a difference whose square overflows the compute dtype).
    """
    check_ghmr_call(pred, target, weight, tot, reduction)
    mu = check_mu_for(mu, pred)
    choose_backend, on_device = _backend_chooser(pred.device, backend, 'Regression')
    # no weight: tot is the element count, which the backend knows (no host-to-device copy)
    if tot is None and weight is not None:
        tot = weight.sum(dtype=torch.float32)

    def message(here: bool) -> str:
        if not here:
            return ('pred or target (box regressions) contain NaN or inf (or overflow) on another '
                    'rank (sync_across_ranks), so the GHM-R loss is not finite; the EMA state is '
                    'left untouched: check the model for divergence')
        valid = torch.ones_like(pred, dtype=torch.bool) if weight is None else weight > 0
        if bool((torch.isfinite(pred) & torch.isfinite(target))[valid].all()):
            big = float((pred.double() - target.double())[valid].abs().max())
            return (f'pred - target reaches {big:.3g} on a valid element: its square overflows '
                    f'{compute_dtype(pred)}, so the ASL1 loss is inf (mmdet returns inf); '
                    'the EMA state is left untouched: check the box targets and the model')
        return ('pred or target (box regressions) contain NaN or inf on a valid element: the '
                'GHM-R loss would not be finite; the EMA state is left untouched: check the '
                'model for divergence')

    call = _Call(lambda p, binning: choose_backend(p, binning)(p, target, weight, binning, mu),
                 _ghmr_torch_grad(target, weight, mu), density, loss_weight, reduction, tot,
                 None, not on_device, message)
    loss = _apply(pred, target, call)
    return (loss, call.skip) if return_skip else loss
