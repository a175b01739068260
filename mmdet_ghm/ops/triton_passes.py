"""Launchers of the Triton kernels: same contract as :mod:`mmdet_ghm.ops.cpu_passes`.

They pick block sizes, map the optional inputs to the kernels' constexpr modes and allocate the
outputs; no host sync anywhere (counts and weights stay on the device).
"""
from typing import Optional

import torch
import triton
from torch import Tensor

from . import triton_kernels as K

BLOCK = 1024
NUM_WARPS = 4


def _grid(numel: int):
    return (max(1, triton.cdiv(numel, BLOCK)),)


def _slots_p2(bins: int) -> int:
    return triton.next_power_of_2(bins + 2)


def _loss_output(pred: Tensor, elementwise: bool):
    """Grid and output of a loss kernel: the element-wise loss, or one partial sum a program."""
    grid = _grid(pred.numel())
    shape = pred.shape if elementwise else grid
    return grid, torch.empty(shape, dtype=torch.float32, device=pred.device)


def _finish_loss(out: Tensor, elementwise: bool) -> Tensor:
    # per-program partials summed in a fixed order: bitwise reproducible
    return out if elementwise else out.sum(dtype=torch.float64).float()


class ClassificationTriton:
    """GHM-C passes; inputs as for ``ClassificationCPU``, made contiguous."""

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], density):
        self.pred, self.labels, self.target, self.weight = (
            None if t is None else t.detach().contiguous()
            for t in (pred, labels, target, weight))
        self.edges = density.edges.contiguous()
        self.bins = density.bins
        self.numel, self.C = self.pred.numel(), self.pred.shape[-1]
        if weight is None:
            self.weight_mode = K.WEIGHT_NONE
        else:
            self.weight_mode = K.WEIGHT_ROW if weight.dim() == 1 else K.WEIGHT_ELEMENT

    def _inputs(self):
        # unused pointers get pred: the kernels never read them in that mode
        return (self.pred,
                self.pred if self.labels is None else self.labels,
                self.pred if self.target is None else self.target,
                self.pred if self.weight is None else self.weight)

    def _modes(self):
        return dict(BINS=self.bins, LABELS=self.labels is not None, WEIGHT=self.weight_mode,
                    BLOCK=BLOCK, num_warps=NUM_WARPS)

    def check_finite(self) -> None:
        """No check on the device (it would sync): NaN gradient norms are left out of the
        counts, so a NaN loss never poisons the EMA state."""

    def histogram(self, for_grad: bool = False) -> Tensor:
        """``for_grad`` is for the CPU passes; here the backward kernel forms the gradient."""
        counts = torch.zeros(self.bins + 2, dtype=torch.int64, device=self.pred.device)
        K.ghmc_histogram_kernel[_grid(self.numel)](
            *self._inputs(), self.edges, counts, self.numel, self.C,
            SLOTS_P2=_slots_p2(self.bins), **self._modes())
        return counts

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool,
             grad_scale: Optional[Tensor] = None) -> Tensor:
        grid, out = _loss_output(self.pred, elementwise)
        K.ghmc_loss_kernel[grid](
            *self._inputs(), self.edges, slot_weight, out, float(loss_weight), self.numel, self.C,
            ELEMENTWISE=elementwise, **self._modes())
        return _finish_loss(out, elementwise)

    def take_grad(self, grad_out: Tensor) -> None:
        """Nothing is formed ahead: the backward pass calls :meth:`grad`."""
        return None

    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor], loss_weight: float) -> Tensor:
        grad = torch.empty_like(self.pred)
        go = self.pred if grad_out is None else grad_out.contiguous()
        K.ghmc_grad_kernel[_grid(self.numel)](
            *self._inputs(), self.edges, slot_scale, go, grad, float(loss_weight), self.numel,
            self.C, ELEMENTWISE=grad_out is not None, **self._modes())
        return grad


class RegressionTriton:
    """GHM-R passes; inputs as for ``RegressionCPU``, made contiguous."""

    def __init__(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], density,
                 mu: float):
        self.pred, self.target, self.weight = (
            None if t is None else t.detach().contiguous() for t in (pred, target, weight))
        self.edges = density.edges.contiguous()
        self.bins = density.bins
        self.numel = self.pred.numel()
        self.mu = float(mu)
        self.mu_sq = float(torch.tensor(mu * mu, dtype=torch.float32))

    def _inputs(self):
        return self.pred, self.target, self.pred if self.weight is None else self.weight

    def _modes(self):
        return dict(BINS=self.bins, HAS_WEIGHT=self.weight is not None, BLOCK=BLOCK,
                    num_warps=NUM_WARPS)

    check_finite = ClassificationTriton.check_finite
    take_grad = ClassificationTriton.take_grad

    def histogram(self, for_grad: bool = False) -> Tensor:
        counts = torch.zeros(self.bins + 2, dtype=torch.int64, device=self.pred.device)
        K.ghmr_histogram_kernel[_grid(self.numel)](
            *self._inputs(), self.edges, counts, self.mu_sq, self.numel,
            SLOTS_P2=_slots_p2(self.bins), **self._modes())
        return counts

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool,
             grad_scale: Optional[Tensor] = None) -> Tensor:
        grid, out = _loss_output(self.pred, elementwise)
        K.ghmr_loss_kernel[grid](
            *self._inputs(), self.edges, slot_weight, out, self.mu, self.mu_sq, float(loss_weight),
            self.numel, ELEMENTWISE=elementwise, **self._modes())
        return _finish_loss(out, elementwise)

    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor], loss_weight: float) -> Tensor:
        grad = torch.empty_like(self.pred)
        go = self.pred if grad_out is None else grad_out.contiguous()
        K.ghmr_grad_kernel[_grid(self.numel)](
            *self._inputs(), self.edges, slot_scale, go, grad, self.mu_sq, float(loss_weight),
            self.numel, ELEMENTWISE=grad_out is not None, **self._modes())
        return grad
