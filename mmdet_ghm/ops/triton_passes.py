"""The Triton backend (:class:`~mmdet_ghm.ops.backend.GHMBackend`) of GHM-C and GHM-R.

Launchers only: they choose block sizes and constexpr modes, allocate the outputs and launch the
kernels of :mod:`.triton_kernels` on pred's device. Nothing here reads a device value on the host:
a call never syncs. Per call: three launches in the forward (histogram pass, fixed-order reduction
of its per-program partials, the weighing), one more for ``reduction='none'``, one in the
backward.
"""
import contextlib
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..inputs import compute_dtype
from . import triton_kernels as K
from .backend import REDUCTION_CODES, GHMBackend, Weighing

# Block sizes for an H100/H200-class GPU. Gradient and element-wise passes: from ptxas's
# register counts for sm_90 (8 elements a thread: 64 registers in float32, so 4 programs of 8
# warps fit on one SM), GHM-C 2048 elements and 8 warps a program (1024 in float64), GHM-R 1024
# and 4 (its inputs are small, N x 4). Histogram passes: one warp a program, blocks of 256
# elements, so that the per-slot sums are warp shuffles without block barriers (the fastest of
# the variants timed on an H200, docs/gpu.md); HIST_BLOCKS blocks a program keep the partial
# tables small. The reduction sums one row of the partial tables a program.
CLS_BLOCK, CLS_BLOCK_F64, CLS_WARPS = 2048, 1024, 8
REG_BLOCK, REG_WARPS = 1024, 4
HIST_BLOCK, HIST_BLOCKS, HIST_WARPS = 256, 8, 1
REDUCE_BLOCK, REDUCE_WARPS = 4096, 8
WEIGH_WARPS = 1
# FMA contraction as nvcc compiles PyTorch's CUDA sigmoid (on); GHM-R off (see triton_kernels)
CLS_FP_FUSION = True
REG_FP_FUSION = False


# triton.cdiv / next_power_of_2 are constexpr functions: a few microseconds a host call
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (no libdevice there)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _device_guard(t: Tensor):
    """Launch on t's device, not the current one."""
    return torch.cuda.device(t.device) if t.device.type == 'cuda' else contextlib.nullcontext()


def _loadable(t: Optional[Tensor]) -> Optional[Tensor]:
    """Contiguous, with bool viewed as uint8 (the kernels compare with 0 or convert)."""
    if t is None:
        return None
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _compute_dtypes(pred: Tensor):
    """(torch dtype, triton dtype) of the arithmetic (:func:`~mmdet_ghm.inputs.compute_dtype`)."""
    dtype = compute_dtype(pred)
    return dtype, K.tl.float64 if dtype == torch.float64 else K.tl.float32


def _launch_options(block: int, warps: int, fp_fusion: bool) -> dict:
    return dict(BLOCK=block, num_warps=warps, enable_fp_fusion=fp_fusion,
                enable_reflect_ftz=False)  # PyTorch's CUDA code is built without ftz


def _histogram_options(bins: int, fp_fusion: bool) -> dict:
    return dict(_launch_options(HIST_BLOCK, HIST_WARPS, fp_fusion), BLOCKS=HIST_BLOCKS,
                SLOTS_P2=next_power_of_2(bins + 2))


class _TritonBackend(GHMBackend):
    """What both Triton backends share: the histogram's partial tables and their reduction, the
    weighing in one kernel, the backward's arguments. Subclasses set ``pred``, ``dtype``,
    ``cdt``, ``numel`` and ``bins``."""

    def _slot_sums(self, kernel, inputs: tuple, scalars: tuple, options: dict,
                   modes: dict) -> Tuple[Tensor, Tensor]:
        """Run a histogram kernel and reduce its partial tables: int64 counts, float64 sums."""
        device, slots = self.pred.device, self.bins + 2
        if self.numel == 0:
            return (torch.zeros(slots, dtype=torch.int64, device=device),
                    torch.zeros(slots, dtype=torch.float64, device=device))
        counts = torch.empty(slots, dtype=torch.int64, device=device)
        sums = torch.empty(slots, dtype=torch.float64, device=device)
        programs = cdiv(self.numel, options['BLOCK'] * options['BLOCKS'])
        counts_part = torch.empty((slots, programs), dtype=torch.int32, device=device)
        sums_part = torch.empty((slots, programs), dtype=self.dtype, device=device)
        with _device_guard(self.pred):
            kernel[(programs,)](*inputs, counts_part, sums_part, *scalars, self.numel, programs,
                                **modes, **options)
            K.slot_partials_reduce_kernel[(slots,)](counts_part, sums_part, counts, sums,
                                                    programs, RBLOCK=REDUCE_BLOCK,
                                                    num_warps=REDUCE_WARPS,
                                                    enable_fp_fusion=False)
        return counts, sums

    def weigh(self, slot_counts: Tensor, slot_loss_sums: Tensor, call) -> Weighing:
        """One launch of :func:`~.triton_kernels.ghm_weigh_kernel`. Under ``sync_across_ranks``
        with several ranks (an all-reduce between counting and weighing) or with
        ``bias_correction``, or a state the kernel cannot write through a pointer (float64,
        strided): the PyTorch ops of :meth:`GHMBackend.weigh`; they also handle (and reject, as
        PyTorch does) a density whose state is on another device than pred."""
        density = call.density
        if not density.fused_update_on(slot_counts.device):
            return super().weigh(slot_counts, slot_loss_sums, call)
        density.record(slot_counts)
        device, slots = slot_counts.device, slot_counts.numel()
        slot_weight = torch.empty(slots, dtype=torch.float32, device=device)
        loss = torch.empty((), dtype=self.dtype, device=device)
        divisor = torch.empty((), dtype=self.dtype, device=device)
        skip = torch.empty((), dtype=torch.uint8, device=device)
        tot = slot_counts if call.tot is None else call.tot.float().reshape(()).to(device)
        poison = (slot_counts if call.poison is None
                  else _loadable(call.poison.reshape(()).to(device)))
        reduction = REDUCTION_CODES[call.reduction]
        with _device_guard(self.pred):
            K.ghm_weigh_kernel[(1,)](
                slot_counts, slot_loss_sums, density.acc_sum, density.num_updates, tot, poison,
                slot_weight, loss, divisor, skip, self.numel, density.momentum,
                1 - density.momentum, float(call.loss_weight), BINS=self.bins,
                SLOTS_P2=next_power_of_2(slots), TOT_FROM_COUNTS=call.tot is None,
                HAS_POISON=call.poison is not None, EMA=density.momentum > 0,
                REDUCTION=reduction, CDT=self.cdt, num_warps=WEIGH_WARPS,
                enable_fp_fusion=False)
        density.mark_state_written()
        skip = skip.view(torch.bool)
        if reduction == 0:
            return Weighing(slot_weight, None, None, skip)
        return Weighing(slot_weight, loss, divisor, skip)

    def _grad_args(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
                   elementwise: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """(slot weights, grad_out, divisor) as the grad kernels read them."""
        go = grad_out.detach().to(self.pred.device).contiguous()
        if elementwise:
            divisor = go  # not read
        elif divisor is None:  # 'sum' from the PyTorch weighing: x / 1 is x
            divisor = torch.ones((), dtype=self.dtype, device=self.pred.device)
        return slot_weight.contiguous(), go, divisor


class ClassificationTriton(_TritonBackend):
    """GHM-C on an (M, C) problem (see :mod:`mmdet_ghm.ops.backend` for the arguments)."""

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], binning):
        self.pred = pred.detach().contiguous()
        self.labels, self.target, self.weight = map(_loadable, (labels, target, weight))
        self.edges = binning.edges.to(device=self.pred.device, dtype=torch.float32).contiguous()
        self.bins = binning.bins
        self.numel = self.pred.numel()
        self.dtype, self.cdt = _compute_dtypes(self.pred)
        if weight is None:
            weight_mode = K.WEIGHT_NONE
        else:
            weight_mode = K.WEIGHT_ROW if weight.dim() == 1 else K.WEIGHT_ELEMENT
        needs_row = labels is not None or weight_mode == K.WEIGHT_ROW
        # C is a constexpr (a cheap division); 1 where no row index is needed: fewer variants
        self.modes = dict(C=self.pred.shape[-1] if needs_row else 1, BINS=self.bins,
                          LABELS=labels is not None, WEIGHT=weight_mode, CDT=self.cdt,
                          EXACT=not interpreting())
        block = CLS_BLOCK_F64 if self.dtype == torch.float64 else CLS_BLOCK
        self.options = _launch_options(block, CLS_WARPS, CLS_FP_FUSION)

    def _inputs(self):
        # pointers a mode does not read get pred's
        return (self.pred,
                self.pred if self.labels is None else self.labels,
                self.pred if self.target is None else self.target,
                self.pred if self.weight is None else self.weight,
                self.edges)

    def backward_reads(self) -> Tuple[Tensor, ...]:
        return tuple(t for t in (self.labels, self.target, self.weight)
                     if t is not None)  # kept: nothing

    def _launch(self, kernel, *args, **constexprs):
        grid = (cdiv(self.numel, self.options['BLOCK']),)
        kernel[grid](*self._inputs(), *args, self.numel, **self.modes, **constexprs,
                     **self.options)

    def histogram(self) -> Tuple[Tensor, Tensor]:
        return self._slot_sums(K.ghmc_histogram_kernel, self._inputs(), (),
                               _histogram_options(self.bins, CLS_FP_FUSION), self.modes)

    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        out = torch.empty(self.pred.shape, dtype=self.dtype, device=self.pred.device)
        if self.numel:
            with _device_guard(self.pred):
                self._launch(K.ghmc_elementwise_loss_kernel, slot_weight.contiguous(), out,
                             float(loss_weight))
        return out

    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        grad = torch.empty_like(self.pred)
        if self.numel:
            with _device_guard(self.pred):
                self._launch(K.ghmc_grad_kernel, *self._grad_args(
                    slot_weight, grad_out, divisor, elementwise), grad, float(loss_weight),
                    ELEMENTWISE=elementwise)
        return grad


class RegressionTriton(_TritonBackend):
    """GHM-R (Authentic Smooth L1) on pred/target of any equal shape and strides."""

    def __init__(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], binning,
                 mu: float):
        self.pred = pred.detach().contiguous()
        self.target, self.weight = _loadable(target), _loadable(weight)
        self.edges = binning.edges.to(device=self.pred.device, dtype=torch.float32).contiguous()
        self.bins = binning.bins
        self.numel = self.pred.numel()
        self.dtype, self.cdt = _compute_dtypes(self.pred)
        # Python doubles: the kernels round them to the compute dtype, as PyTorch rounds a
        # Python scalar to the tensor's dtype (mmdet adds the double mu * mu)
        self.mu, self.mu_sq = float(mu), float(mu) * float(mu)
        self.modes = dict(BINS=self.bins, HAS_WEIGHT=weight is not None, CDT=self.cdt)

    def _inputs(self):
        return (self.pred, self.target, self.pred if self.weight is None else self.weight,
                self.edges)

    def backward_reads(self) -> Tuple[Tensor, ...]:
        return tuple(t for t in (self.target, self.weight) if t is not None)  # kept: nothing

    def _launch(self, kernel, *args, **constexprs):
        grid = (cdiv(self.numel, REG_BLOCK),)
        kernel[grid](*self._inputs(), *args, self.numel, **self.modes, **constexprs,
                     **_launch_options(REG_BLOCK, REG_WARPS, REG_FP_FUSION))

    def histogram(self) -> Tuple[Tensor, Tensor]:
        return self._slot_sums(K.ghmr_histogram_kernel, self._inputs(), (self.mu, self.mu_sq),
                               _histogram_options(self.bins, REG_FP_FUSION), self.modes)

    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        out = torch.empty(self.pred.shape, dtype=self.dtype, device=self.pred.device)
        if self.numel:
            with _device_guard(self.pred):
                self._launch(K.ghmr_elementwise_loss_kernel, slot_weight.contiguous(), out,
                             self.mu, self.mu_sq, float(loss_weight))
        return out

    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        grad = torch.empty_like(self.pred)
        if self.numel:
            with _device_guard(self.pred):
                self._launch(K.ghmr_grad_kernel, *self._grad_args(
                    slot_weight, grad_out, divisor, elementwise), grad, self.mu_sq,
                    float(loss_weight), ELEMENTWISE=elementwise)
        return grad
