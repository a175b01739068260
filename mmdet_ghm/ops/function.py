"""The GHM autograd Function and the functional GHM-C / GHM-R entry points.

Data path of one call: the passes object (CPU or Triton) histograms the gradient norms ->
:class:`~mmdet_ghm.density.GradientDensity` turns the counts into a slot weight table (EMA update)
-> the passes object reduces the weighted loss. The Triton backward recomputes the gradient in one
pass, scaled per slot (nothing of N x C size is kept between forward and backward). The CPU GHM-C
passes form the gradient in the loss pass when it is wanted (grad mode on, a summed or averaged
loss) and hand it over if the backward's ``grad_out`` is 1, else recompute it from the kept slots
(one byte per element).
"""
from typing import Optional

import torch
from torch import Tensor

from ..density import GradientDensity
from .cpu_passes import ClassificationCPU, RegressionCPU

# mmdet's weight_reduce_loss divides by (avg_factor + float32 eps) in double precision.
EPS32 = torch.finfo(torch.float32).eps
REDUCTIONS = ('none', 'mean', 'sum')
BACKENDS = (None, 'cpu', 'triton')


def _use_triton(device: torch.device, backend: Optional[str]) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend is None:
        return device.type == 'cuda'
    if backend == 'cpu' and device.type != 'cpu':
        raise ValueError(f"backend='cpu' needs CPU tensors, got {device}")
    return backend == 'triton'


def _grad_scale(grad_out: Tensor, loss_weight: float, divisor: Optional[Tensor]) -> Tensor:
    """autograd's order in mmdet: ((grad_out * loss_weight) / divisor), then * weight."""
    scale = grad_out * loss_weight
    return scale if divisor is None else scale / divisor


class GHMFunction(torch.autograd.Function):
    """Loss of one GHM call; ``passes`` holds the (non-differentiable) targets and weights."""

    @staticmethod
    def forward(ctx, pred: Tensor, passes, density: GradientDensity, tot: Optional[Tensor],
                poison: Optional[Tensor], loss_weight: float, reduction: str,
                for_grad: bool = False) -> Tensor:
        for_grad = for_grad and reduction != 'none'
        counts = passes.histogram(for_grad=for_grad)
        passes.check_finite()
        if tot is None:  # GHM-C: the number of valid elements
            tot = (pred.numel() - counts[0]).to(torch.float32)
        counts, tot, world_size = density.synchronize(counts, tot.to(torch.float32))
        tot = tot.clamp(min=1.0)
        slot_weight = density.update(counts, tot, skip=poison)
        divisor = None
        if reduction == 'none':
            loss = passes.loss(slot_weight, loss_weight, elementwise=True).view(pred.shape)
        else:
            if reduction == 'mean':
                # Synced over ranks, divide by the mean tot (mmdet's reduce_mean(avg_factor)):
                # DDP's average of the gradients is then the gradient of the union's loss.
                divisor = (tot.double() / world_size + EPS32).float()
            grad_scale = None
            if for_grad:  # what backward computes for grad_out == 1
                grad_scale = _grad_scale(torch.ones((), dtype=torch.float32, device=pred.device),
                                         loss_weight, divisor)
            loss = passes.loss(slot_weight, loss_weight, elementwise=False, grad_scale=grad_scale)
            if divisor is not None:
                loss = loss / divisor
            loss = loss * loss_weight
        if poison is not None:
            loss = torch.where(poison, torch.full_like(loss, float('nan')), loss)
        ctx.passes, ctx.slot_weight, ctx.divisor = passes, slot_weight, divisor
        ctx.loss_weight, ctx.elementwise = loss_weight, reduction == 'none'
        ctx.pred_shape = pred.shape
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.elementwise:
            grad = ctx.passes.grad(ctx.slot_weight, grad_out, ctx.loss_weight)
        else:
            grad = ctx.passes.take_grad(grad_out)
            if grad is None:
                scale = _grad_scale(grad_out.float(), ctx.loss_weight, ctx.divisor)
                grad = ctx.passes.grad(scale * ctx.slot_weight, None, ctx.loss_weight)
        return grad.view(ctx.pred_shape), None, None, None, None, None, None, None


def ghmc_loss(pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
              weight: Optional[Tensor], density: GradientDensity, loss_weight: float = 1.0,
              reduction: str = 'mean', poison: Optional[Tensor] = None,
              backend: Optional[str] = None) -> Tensor:
    """GHM-C loss of validated inputs (see :class:`mmdet_ghm.GHMC` for the checks).

    Args:
        pred: (M, C) logits, any floating dtype (computed in float32).
        labels: (M,) integer labels in [0, C] (C = background), or None.
        target: (M, C) float targets in [0, 1] when ``labels`` is None.
        weight: None, (M,) per row or (M, C) per element; valid where > 0.
        density: the gradient density (its EMA state is updated).
        poison: optional 0-dim bool; when True the loss is NaN and the state is left untouched.
        backend: None (Triton on CUDA, PyTorch on CPU), 'cpu' or 'triton'.

    Returns:
        float32 loss: 0-dim, or (M, C) for ``reduction='none'``.
    """
    if _use_triton(pred.device, backend):
        from .triton_passes import ClassificationTriton as passes_cls
    else:
        passes_cls = ClassificationCPU
    passes = passes_cls(pred, labels, target, weight, density)
    for_grad = pred.requires_grad and torch.is_grad_enabled()
    return GHMFunction.apply(pred, passes, density, None, poison, loss_weight, reduction,
                             for_grad)


def ghmr_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor], density: GradientDensity,
              mu: float = 0.02, loss_weight: float = 1.0, reduction: str = 'mean',
              backend: Optional[str] = None) -> Tensor:
    """GHM-R loss (Authentic Smooth L1 ``sqrt(d^2 + mu^2) - mu``) of validated inputs.

    Args:
        pred, target: same shape, any floating dtype (computed in float32).
        weight: None or pred's shape; valid where > 0; tot = sum of weights (mmdet).
    """
    if _use_triton(pred.device, backend):
        from .triton_passes import RegressionTriton as passes_cls
    else:
        passes_cls = RegressionCPU
    passes = passes_cls(pred, target, weight, density, mu)
    if weight is None:
        tot = torch.tensor(float(pred.numel()), device=pred.device)
    else:
        tot = weight.sum(dtype=torch.float32)
    return GHMFunction.apply(pred, passes, density, tot, None, loss_weight, reduction)
