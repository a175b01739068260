"""The three GHM passes (histogram, loss, grad) on CPU tensors, vectorized with PyTorch.

Same contract as :mod:`mmdet_ghm.ops.triton_passes`. GHM-C walks the (M, C) problem in chunks of
rows small enough for their temporaries to stay in cache and for every op to run inline (below
PyTorch's parallel grain size); ``torch.get_num_threads()`` worker threads take the chunks, so the
whole pass is parallel without the per-op fork/join. Each chunk holds a multiple of 64 elements,
so PyTorch's vectorized sigmoid gives exactly the bits it gives on the whole tensor (its scalar
tail loop rounds differently) and the bins match mmdet's bit for bit. The histogram pass keeps one
byte per element (the slot) and per-slot sums of the loss, so the loss needs no second pass and
the backward pass one gather. Results are combined in chunk order: bitwise reproducible.
"""
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Below at::internal::GRAIN_SIZE (32768), so an op on a chunk never forks into the intra-op pool.
CHUNK_ELEMENTS = 1 << 15

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _map_chunks(fn: Callable[[int, int], object], rows: int, cols: int) -> List[object]:
    """fn(r0, r1) over row chunks, in parallel on torch.get_num_threads() threads; ordered."""
    step = max(64, (CHUNK_ELEMENTS // max(cols, 1)) // 64 * 64)
    chunks = [(r, min(r + step, rows)) for r in range(0, rows, step)]
    workers = min(torch.get_num_threads(), len(chunks))
    if workers <= 1:
        return [fn(*c) for c in chunks]
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix='mmdet_ghm')
    per_worker = [chunks[i::workers] for i in range(workers)]
    futures = [_pool.submit(lambda cs: [fn(*c) for c in cs], cs) for cs in per_worker]
    parts = [f.result() for f in futures]
    return [parts[i % workers][i // workers] for i in range(len(chunks))]


class ClassificationCPU:
    """GHM-C on an (M, C) problem: integer ``labels`` (M,) or float ``target`` (M, C);
    ``weight`` None, per row (M,) or per element (M, C), valid where > 0."""

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], density):
        # row chunks of contiguous memory (a no-op for the usual, contiguous, inputs)
        self.pred = pred.contiguous()
        self.labels, self.target, self.weight = (
            None if t is None else t.contiguous() for t in (labels, target, weight))
        self.density = density
        self.slots: Optional[Tensor] = None
        self.loss_sums: Optional[Tensor] = None

    def _positives(self, r0: int, r1: int) -> Optional[Tuple[Tensor, Tensor]]:
        if self.labels is None:
            return None
        lab = self.labels[r0:r1]
        rows = (lab < self.pred.shape[1]).nonzero(as_tuple=True)[0]
        return rows, lab[rows]

    def _sigmoid_minus_target(self, r0: int, r1: int, x: Tensor) -> Tensor:
        """sigmoid(x) - t of a chunk, as mmdet rounds it."""
        s = torch.sigmoid(x)
        if self.target is not None:
            return s.sub_(self.target[r0:r1].float())
        positives = self._positives(r0, r1)
        s[positives] -= 1.0
        return s

    def _valid(self, r0: int, r1: int) -> Optional[Tensor]:
        if self.weight is None:
            return None
        w = self.weight[r0:r1] > 0
        return w[:, None] if w.dim() == 1 else w

    def _histogram_chunk(self, r0: int, r1: int) -> Tuple[Tensor, Tensor]:
        x = self.pred[r0:r1].float()
        if self.target is None:
            g = torch.sigmoid(x)  # |s - 0|; positives get |s - 1| = 1 - s
            bce = F.softplus(x)
            positives = self._positives(r0, r1)
            g[positives] = 1.0 - g[positives]
            bce[positives] -= x[positives]
        else:
            t = self.target[r0:r1].float()
            g = (torch.sigmoid(x) - t).abs_()
            bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
        slots = self.density.slot_index(g, self._valid(r0, r1))
        self.slots[r0:r1] = slots
        flat = slots.view(-1)
        num_slots = self.density.num_slots
        return (torch.bincount(flat, minlength=num_slots),
                torch.bincount(flat, weights=bce.view(-1), minlength=num_slots).double())

    def histogram(self) -> Tensor:
        M, C = self.pred.shape
        self.slots = torch.empty((M, C), dtype=self.density.slot_dtype)
        parts = _map_chunks(self._histogram_chunk, M, C)
        num_slots = self.density.num_slots
        counts = torch.zeros(num_slots, dtype=torch.int64)
        self.loss_sums = torch.zeros(num_slots, dtype=torch.float64)
        for chunk_counts, chunk_sums in parts:
            counts += chunk_counts
            self.loss_sums += chunk_sums
        return counts

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool) -> Tensor:
        """Sum over elements of loss * weight (float32 0-dim), or the element-wise loss."""
        if not elementwise:
            return (self.loss_sums * slot_weight.double()).sum().float()
        out = torch.empty(self.pred.shape, dtype=torch.float32)

        def chunk(r0, r1):
            x = self.pred[r0:r1].float()
            if self.target is None:
                t = torch.zeros_like(x)
                t[self._positives(r0, r1)] = 1.0
            else:
                t = self.target[r0:r1].float()
            bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
            w = slot_weight[self.slots[r0:r1].long()]
            torch.mul(bce * w, loss_weight, out=out[r0:r1])
        _map_chunks(chunk, *self.pred.shape)
        return out

    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor], loss_weight: float) -> Tensor:
        """(sigmoid(x) - t) * scale[slot]; with ``grad_out`` (element-wise loss) the scale is
        (grad_out * loss_weight) * weight[slot], autograd's order in mmdet."""
        grad = torch.empty_like(self.pred)

        def chunk(r0, r1):
            diff = self._sigmoid_minus_target(r0, r1, self.pred[r0:r1].float())
            scale = slot_scale.index_select(0, self.slots[r0:r1].view(-1).int())
            scale = scale.view(diff.shape)
            if grad_out is not None:
                scale = (grad_out[r0:r1].float() * loss_weight) * scale
            grad[r0:r1] = diff.mul_(scale)
        _map_chunks(chunk, *self.pred.shape)
        return grad


class RegressionCPU:
    """GHM-R (Authentic Smooth L1) on pred/target of any equal shape; ``weight`` None or the same
    shape, valid where > 0. Regression inputs are small (N x 4): whole-tensor ops."""

    def __init__(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], density,
                 mu: float):
        self.pred, self.target, self.weight, self.density = pred, target, weight, density
        self.mu = mu
        # mmdet adds the Python double mu * mu to float32 tensors: it is rounded to float32 first.
        self.mu_sq = float(torch.tensor(mu * mu, dtype=torch.float32))
        self.slots: Optional[Tensor] = None

    def _diff(self) -> Tuple[Tensor, Tensor]:
        d = self.pred.float() - self.target.float()
        return d, torch.sqrt(d * d + self.mu_sq)

    def histogram(self) -> Tensor:
        d, r = self._diff()
        valid = None if self.weight is None else self.weight > 0
        self.slots = self.density.slot_index((d / r).abs_(), valid).long()
        return self.density.count(self.slots)

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool) -> Tensor:
        _, r = self._diff()
        weighted = (r - self.mu) * slot_weight[self.slots]
        if elementwise:
            return weighted * loss_weight
        return weighted.sum(dtype=torch.float64).float()

    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor], loss_weight: float) -> Tensor:
        d, r = self._diff()
        scale = slot_scale[self.slots]
        if grad_out is not None:
            scale = (grad_out.float() * loss_weight) * scale
        # autograd's order through sqrt(d * d + mu^2): (scale / (2 r)) * d, twice (from d * d).
        half = (scale / (2 * r)) * d
        return (half + half).to(self.pred.dtype)
