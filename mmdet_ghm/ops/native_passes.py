"""CPU backends of GHM-C and GHM-R with their passes in C++ (``ghm_cpu.cpp``), for float32
arithmetic (float32, fp16 and bf16 inputs) and mmdet's edges: every mmdet config on CPU. Other
cases (float64 pred, custom edges, more than 253 bins) and machines without a C++ compiler use
the PyTorch passes of :mod:`.cpu_passes`; both give the same counts, state and gradient.

The library is compiled on first use with the system's C++ compiler (``$CXX``, else ``c++``; a
second or two: it includes no Python or torch headers) into ``$MMDET_GHM_CACHE_DIR`` (default
``~/.cache/mmdet_ghm``), keyed by the source, the compiler and its version, the flags and the
CPU, and loaded with ctypes (which releases the GIL during a call). ``MMDET_GHM_NATIVE=0``
chooses the PyTorch passes.

GHM-C forward: PyTorch's sigmoid (its bits decide the bins), then one C++ pass that bins, counts
and sums the loss per slot; backward: PyTorch's sigmoid into the gradient, then one C++ pass that
bins again and scales it in place. Nothing of the input's size is kept between them beyond the
detached inputs (a contiguous copy where pred is not contiguous; one byte per element for
per-element weights). GHM-R: one C++ pass forms d * d + mu^2, PyTorch's sqrt the root, one C++
pass bins, counts and sums, keeping the root and the slots (N x 4) for the backward's one pass.
Between them, the density's update and the reduced loss are one C++ call too (``ghm_weigh``).
"""
import ctypes
import functools
import hashlib
import math
import os
import os.path as osp
import platform
import shlex
import subprocess
import sys
import tempfile
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..density import plain_float32_on
from .backend import REDUCTION_CODES, Weighing
from .cpu_passes import ClassificationCPU, RegressionCPU, _exact, padded_length

CPU = torch.device('cpu')

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'ghm_cpu.cpp')
# -ffp-contract=off: no FMA may change a rounding (GCC contracts by default where FMA exists).
# -fno-trapping-math, -fno-math-errno: let branches become selects and sqrt a vector
# instruction (vectorized loops); no rounding changes.
# -march=native: compiled where it runs; the key names the CPU (a cache shared over NFS).
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fopenmp',
         '-ffp-contract=off', '-fno-trapping-math', '-fno-math-errno')
_p, _i64, _i32, _f32, _f64 = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float,
                              ctypes.c_double)
SIGNATURES = {
    'ghmc_histogram': [_i64, _i64, _p, _p, _p, _p, _i32, _p, _i64, _i32, _f32, _i32, _p, _p],
    'ghmc_grad': [_i64, _i64, _p, _p, _p, _i32, _i32, _f32, _p, _p, _f32, _i32, _i32],
    'ghmr_square': [_i64, _p, _p, _f32, _i32, _p],
    'ghmr_histogram': [_i64, _p, _p, _p, _p, _f32, _i32, _i32, _p, _p, _p],
    'ghmr_grad': [_i64, _p, _p, _p, _p, _i32, _p, _p, _f32, _i32, _i32, _p],
    'ghm_weigh': [_i32, _p, _p, _i64, _p, _p, _f64, _f64, _p, _p, _i32, _f32, _p, _p, _p, _p],
    'ghm_slot_scale': [_i32, _p, _p, _f32, _p, _p],
}


def cache_dir() -> str:
    default = osp.join(os.environ.get('XDG_CACHE_HOME') or osp.expanduser('~/.cache'),
                       'mmdet_ghm')
    return os.environ.get('MMDET_GHM_CACHE_DIR') or default


def _compiler() -> Tuple[list, str]:
    """The compiler command (``$CXX`` may hold a wrapper or flags) and its version line."""
    command = shlex.split(os.environ.get('CXX') or 'c++')
    proc = subprocess.run([*command, '--version'], capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(f'{" ".join(command)} --version failed')
    return command, proc.stdout.split('\n', 1)[0]


def _compile(command: list, path: str) -> None:
    """Compile SOURCE into ``path`` (atomically: ranks of one job may compile at once)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=osp.dirname(path))
    os.close(fd)
    try:
        proc = subprocess.run([*command, *FLAGS, SOURCE, '-o', tmp], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode:
            raise RuntimeError(f'{" ".join(command)} failed: {proc.stderr.strip()[-500:]}')
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def _cpu_flags() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next((line for line in f if line.startswith(('flags', 'Features'))), '')
    except OSError:
        return platform.processor()


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (with one warning) where they cannot be built."""
    if os.environ.get('MMDET_GHM_NATIVE', '1').lower() in ('0', 'false', 'off', 'no'):
        return None
    try:
        command, version = _compiler()
        with open(SOURCE, 'rb') as f:
            key = hashlib.sha256(f.read() + repr((command, version, FLAGS, sys.platform,
                                                  _cpu_flags())).encode())
        path = osp.join(cache_dir(), f'ghm_cpu-{key.hexdigest()[:16]}.so')
        if not osp.isfile(path):
            _compile(command, path)
        lib = ctypes.CDLL(path)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        warnings.warn(f'mmdet_ghm could not build its C++ CPU kernels ({e}); GHM-C and GHM-R on '
                      'CPU use the PyTorch passes instead (same counts, state and gradient, '
                      'the loss within float32 rounding; 2-4x slower). Set '
                      'CXX to a C++17 compiler with OpenMP, or MMDET_GHM_NATIVE=0 to silence '
                      'this.', RuntimeWarning)
        return None
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


def applies(pred: Tensor, binning) -> bool:
    """Whether the C++ backends serve this call (else :mod:`.cpu_passes`)."""
    return pred.dtype != torch.float64 and binning.unit_edges and library() is not None


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _float32(t: Optional[Tensor]) -> Optional[Tensor]:
    """No copy for float32; fp16 / bf16 logits or targets: a copy for one pass only."""
    return t if t is None or t.dtype == torch.float32 else t.float()


def _float32_factors(slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
                     loss_weight: float, elementwise: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`~.backend.slot_factors` as the C++ passes read them (contiguous float32), a
    reduced loss's in one C++ call instead of four tiny PyTorch ops."""
    slot_weight, go = _float32(slot_weight).contiguous(), _float32(grad_out).contiguous()
    if elementwise:
        return slot_weight, go.view(-1)
    slot_scale = torch.empty_like(slot_weight)
    library().ghm_slot_scale(slot_weight.numel(), slot_weight.data_ptr(), go.data_ptr(),
                             loss_weight, _ptr(divisor), slot_scale.data_ptr())
    return slot_scale, None


class _NativeWeighing:
    """:meth:`~.backend.GHMBackend.weigh` in one C++ call (``ghm_weigh``, the twin of the Triton
    weighing kernel) instead of some 50 tiny PyTorch ops. Under ``sync_across_ranks`` with
    several ranks, with ``bias_correction`` (its float64 ``pow``), and for a state or ``tot``
    that is not a plain float32 CPU tensor (another device or dtype, strided, or wrapped by a
    torch.func transform): the PyTorch ops."""

    def weigh(self, slot_counts: Tensor, slot_loss_sums: Tensor, call) -> Weighing:
        density = call.density
        if (not density.fused_update_on(CPU)
                or not (call.tot is None or plain_float32_on(call.tot, CPU))):
            return super().weigh(slot_counts, slot_loss_sums, call)
        try:
            state = density.acc_sum.data_ptr(), density.num_updates.data_ptr()
        except RuntimeError:  # a state built inside torch.func.grad: functorch's wrappers
            return super().weigh(slot_counts, slot_loss_sums, call)
        slot_weight = torch.empty(slot_counts.numel(), dtype=torch.float32)
        loss, divisor = torch.empty((), dtype=torch.float32), torch.empty((), dtype=torch.float32)
        flags = torch.empty(2, dtype=torch.uint8)  # skipped, a loss sum not finite
        tot = None if call.tot is None else call.tot.reshape(())
        poison = None if call.poison is None else call.poison.reshape(()).to('cpu', torch.uint8)
        reduction = REDUCTION_CODES[call.reduction]
        self.lib.ghm_weigh(
            density.bins, slot_counts.data_ptr(), slot_loss_sums.data_ptr(), self.numel,
            _ptr(tot), _ptr(poison), density.momentum, 1 - density.momentum, *state, reduction,
            call.loss_weight, slot_weight.data_ptr(), loss.data_ptr(), divisor.data_ptr(),
            flags.data_ptr())
        if call.can_raise and flags[1].item():  # the state was left untouched
            raise ValueError(call.non_finite_message(True))
        density.record(slot_counts)  # as update() does: a call that raised is not recorded
        density.mark_state_written()
        skip = flags[0].view(torch.bool)
        if reduction == 0:
            return Weighing(slot_weight, None, None, skip)
        return Weighing(slot_weight, loss, divisor if reduction == 1 else None, skip)


class ClassificationNative(_NativeWeighing, ClassificationCPU):
    """GHM-C on an (M, C) problem, :class:`ClassificationCPU`'s contract; its dense passes in
    C++. Integer labels: the positives are left out of the dense pass and binned apart (M at
    most, PyTorch ops)."""

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], binning):
        super().__init__(pred, labels, target, weight, binning)
        self.lib = library()
        self.last_edge = float(binning.last_edge)
        self.positive_slots: Optional[Tensor] = None

    def _valid_args(self) -> Tuple[Optional[Tensor], int]:
        if self.element_valid is not None:
            return self.element_valid, 0
        return self.row_valid, 1

    def histogram(self) -> Tuple[Tensor, Tensor]:
        num_slots = self.binning.num_slots
        counts = torch.empty(num_slots, dtype=torch.int64)
        sums = torch.empty(num_slots, dtype=torch.float64)
        x, target = _float32(self.x), _float32(self.target)
        s = _exact(torch.sigmoid, x, torch.empty_like(x))
        valid, per_row = self._valid_args()
        skip = self.positives
        self.lib.ghmc_histogram(
            self.numel, self.C, x.data_ptr(), s.data_ptr(), _ptr(target), _ptr(valid),
            per_row, _ptr(skip), 0 if skip is None else skip.numel(), self.binning.bins,
            self.last_edge, torch.get_num_threads(), counts.data_ptr(), sums.data_ptr())
        del s
        if self.positives is not None and self.positives.numel():
            self.positive_slots = self._add_positives(counts, sums)
        self.invalid_not_finite = not math.isfinite(sums[0].item())
        return counts, sums

    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        # reduction='none' needs every element's slot: the PyTorch pass forms them
        ClassificationCPU.histogram(self)
        return super().elementwise_loss(slot_weight, loss_weight)

    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        slot_scale, go = _float32_factors(slot_weight, grad_out, divisor, loss_weight,
                                          elementwise)
        x, target = _float32(self.x), _float32(self.target)
        out = _exact(torch.sigmoid, x, torch.empty_like(x))
        del x
        valid, per_row = self._valid_args()
        self.lib.ghmc_grad(
            self.numel, self.C, out.data_ptr(), _ptr(target), _ptr(valid), per_row,
            self.binning.bins, self.last_edge, slot_scale.data_ptr(), _ptr(go), loss_weight,
            int(self.invalid_not_finite), torch.get_num_threads())
        if self.positives is not None and self.positives.numel():
            positive_grad = self._positive_grad(self.positive_slots, slot_scale, go, loss_weight)
            if self.invalid_not_finite:  # NaN * 0 of an ignored element: 0
                positive_grad.masked_fill_(self.positive_slots == 0, 0.0)
            out[self.positives] = positive_grad
        grad = out if self.pred_dtype == torch.float32 else out.to(self.pred_dtype)
        return grad.view(self.M, self.C)


class RegressionNative(_NativeWeighing, RegressionCPU):
    """GHM-R, :class:`RegressionCPU`'s contract; its passes in C++ around PyTorch's sqrt (whose
    bits decide the bins). Kept between forward and backward: the root (pred's size, N x 4) and
    the uint8 slots."""

    def __init__(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], binning,
                 mu: float):
        super().__init__(pred, target, weight, binning, mu)
        self.lib = library()
        self.root: Optional[Tensor] = None

    def _float32_weight(self) -> Optional[Tensor]:
        """The weights as the C++ pass reads them (valid where > 0): flat float32 with the same
        elements > 0 (a float64 weight below float32's range would round to 0)."""
        if self.weight is None:
            return None
        weight = self.weight > 0 if self.weight.dtype == torch.float64 else self.weight
        return weight.reshape(-1).float().contiguous()

    def histogram(self) -> Tuple[Tensor, Tensor]:
        num_slots = self.binning.num_slots
        counts = torch.empty(num_slots, dtype=torch.int64)
        sums = torch.empty(num_slots, dtype=torch.float64)
        pred, target = _float32(self.pred), _float32(self.target)
        threads = torch.get_num_threads()
        # padded so that PyTorch's sqrt takes every element in its vectorized loop, in one call
        root = torch.empty(padded_length(self.numel, threads), dtype=torch.float32)
        self.lib.ghmr_square(self.numel, pred.data_ptr(), target.data_ptr(), self.mu_sq, threads,
                             root.data_ptr())
        root[self.numel:] = 1.0
        self.root = torch.sqrt(root, out=root)
        self.slots = torch.empty(self.numel, dtype=torch.uint8)
        weight = self._float32_weight()  # a name keeps a converted copy alive over the call
        self.lib.ghmr_histogram(self.numel, pred.data_ptr(), target.data_ptr(), root.data_ptr(),
                                _ptr(weight), self.mu, self.binning.bins, threads,
                                self.slots.data_ptr(), counts.data_ptr(), sums.data_ptr())
        self.invalid_not_finite = not math.isfinite(sums[0].item())
        return counts, sums

    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        slot_scale, go = _float32_factors(slot_weight, grad_out, divisor, loss_weight,
                                          elementwise)
        pred, target = _float32(self.pred), _float32(self.target)
        grad = torch.empty(self.numel, dtype=torch.float32)
        self.lib.ghmr_grad(self.numel, pred.data_ptr(), target.data_ptr(), self.root.data_ptr(),
                           self.slots.data_ptr(), self.binning.num_slots, slot_scale.data_ptr(),
                           _ptr(go), loss_weight, int(self.invalid_not_finite),
                           torch.get_num_threads(), grad.data_ptr())
        return (grad if self.pred_dtype == torch.float32 else grad.to(self.pred_dtype)).view(
            self.shape)
