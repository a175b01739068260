"""The three GHM passes (histogram, loss, grad) on CPU tensors, vectorized with PyTorch.

Same contract as :mod:`mmdet_ghm.ops.triton_passes`. GHM-C walks the (M, C) problem in chunks of
rows small enough for their temporaries to stay in cache. Each chunk holds a multiple of 64 elements,
so PyTorch's vectorized sigmoid gives exactly the bits it gives on the whole tensor (its scalar
tail loop rounds differently) and the bins match mmdet's bit for bit. The histogram pass keeps one
byte per element (the slot) and per-slot sums of the loss, so the loss needs no second pass and
the backward pass one gather. Results are combined in chunk order: bitwise reproducible.
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# About 1 MiB of float32 a chunk: the chunk's few temporaries stay in cache between ops, each op
# still splits across PyTorch's intra-op threads, and the per-chunk dispatch cost is amortized.
CHUNK_ELEMENTS = 1 << 18


def _map_chunks(fn: Callable[[int, int], object], rows: int, cols: int) -> List[object]:
    """fn(r0, r1) over row chunks of about CHUNK_ELEMENTS elements, a multiple of 64, in order."""
    step = max(64, (CHUNK_ELEMENTS // max(cols, 1)) // 64 * 64)
    return [fn(r, min(r + step, rows)) for r in range(0, rows, step)]


def _check_finite(loss_sums: Tensor, what: str) -> None:
    # CPU only: the check reads a (bins + 2,) tensor; on CUDA it would be a host sync
    if not torch.isfinite(loss_sums).all():
        raise ValueError(f'{what} contain NaN or inf: the GHM loss would not be finite (the EMA '
                         'state is left untouched); check the model for divergence')


def _vectorized(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn on a 1-D gather, padded to a multiple of 64 so every element takes the vectorized
    kernel and gets the bits it got inside its chunk."""
    padded = F.pad(x, (0, -x.numel() % 64))
    return fn(padded)[:x.numel()]


class ClassificationCPU:
    """GHM-C on an (M, C) problem: integer ``labels`` (M,) or float ``target`` (M, C);
    ``weight`` None, per row (M,) or per element (M, C), valid where > 0.

    With integer labels the dense chunk passes treat every element as a negative (t = 0), and
    the at most M positives are corrected afterwards in one sparse step: no one-hot target, no
    per-chunk indexing.
    """

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], density):
        # row chunks of contiguous memory (a no-op for the usual, contiguous, inputs)
        self.pred, self.labels, self.target, self.weight = (
            None if t is None else t.detach().contiguous()
            for t in (pred, labels, target, weight))
        self.density = density
        self.slots: Optional[Tensor] = None
        self.loss_sums: Optional[Tensor] = None
        self.positives: Optional[Tensor] = None  # flat indices of the label positions
        # 0/1 in the slots' dtype: multiplying the slots sends invalid elements to slot 0
        self.valid = None
        if weight is not None:
            valid = (self.weight > 0).to(density.slot_dtype)
            self.valid = valid[:, None] if valid.dim() == 1 else valid

    def _histogram_chunk(self, r0: int, r1: int) -> Tuple[Tensor, Tensor]:
        x = self.pred[r0:r1].float()
        if self.target is None:
            g = torch.sigmoid(x)  # |s - 0|; the positives are corrected afterwards
            bce = F.softplus(x)
        else:
            t = self.target[r0:r1].float()
            g = (torch.sigmoid(x) - t).abs_()
            bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
        slots = self.density.slot_index(g, out=self.slots[r0:r1])
        if self.valid is not None:
            slots.mul_(self.valid[r0:r1])
        flat = slots.view(-1)
        return (self.density.count(flat),
                torch.bincount(flat, weights=bce.view(-1), minlength=self.density.num_slots))

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
        if self.labels is not None:
            counts += self._correct_positives()
        return counts

    def check_finite(self) -> None:
        _check_finite(self.loss_sums, 'pred (logits) or target')

    def _correct_positives(self) -> Tensor:
        """Move each positive from the slot of g = s to that of g = 1 - s (mmdet's |s - 1|) and its
        loss from softplus(x) to softplus(x) - x; returns the change of the counts."""
        M, C = self.pred.shape
        rows = (self.labels < C).nonzero(as_tuple=True)[0]
        self.positives = rows * C + self.labels[rows]
        flat_slots = self.slots.view(-1)
        old = flat_slots[self.positives]
        x = self.pred.view(-1)[self.positives].float()
        g = 1.0 - _vectorized(torch.sigmoid, x)
        new = self.density.slot_index(g).mul_(old > 0)  # invalid stays invalid
        flat_slots[self.positives] = new
        num_slots = self.density.num_slots
        softplus = _vectorized(F.softplus, x)
        self.loss_sums -= torch.bincount(old, weights=softplus.double(), minlength=num_slots)
        self.loss_sums += torch.bincount(new, weights=(softplus - x).double(),
                                         minlength=num_slots)
        return self.density.count(new) - self.density.count(old)

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool) -> Tensor:
        """Sum over elements of loss * weight (float32 0-dim), or the element-wise loss."""
        if not elementwise:
            return (self.loss_sums * slot_weight.double()).sum().float()
        out = torch.empty(self.pred.shape, dtype=torch.float32)

        def chunk(r0, r1):
            x = self.pred[r0:r1].float()
            if self.target is None:
                t = torch.zeros_like(x)
                rows = (self.labels[r0:r1] < x.shape[1]).nonzero(as_tuple=True)[0]
                t[rows, self.labels[r0:r1][rows]] = 1.0
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
        grad = torch.empty(self.pred.shape, dtype=torch.float32)

        def chunk(r0, r1):
            diff = torch.sigmoid(self.pred[r0:r1].float(), out=grad[r0:r1])
            if self.target is not None:
                diff.sub_(self.target[r0:r1].float())
            scale = slot_scale.index_select(0, self.slots[r0:r1].view(-1).int())
            scale = scale.view(diff.shape)
            if grad_out is not None:
                scale = (grad_out[r0:r1].float() * loss_weight) * scale
            diff.mul_(scale)
        _map_chunks(chunk, *self.pred.shape)
        if self.positives is not None:  # s - 1 where the label is
            x = self.pred.view(-1)[self.positives].float()
            scale = slot_scale[self.slots.view(-1)[self.positives].long()]
            if grad_out is not None:
                scale = (grad_out.reshape(-1)[self.positives].float() * loss_weight) * scale
            grad.view(-1)[self.positives] = (_vectorized(torch.sigmoid, x) - 1.0) * scale
        return grad.to(self.pred.dtype)


class RegressionCPU:
    """GHM-R (Authentic Smooth L1) on pred/target of any equal shape; ``weight`` None or the same
    shape, valid where > 0. Regression inputs are small (N x 4): whole-tensor ops, and the
    difference and root are kept from the histogram pass for the other two."""

    def __init__(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], density,
                 mu: float):
        self.pred, self.target = pred.detach(), target.detach()
        self.weight = None if weight is None else weight.detach()
        self.density, self.mu = density, mu
        # mmdet adds the Python double mu * mu to float32 tensors: it is rounded to float32 first.
        self.mu_sq = float(torch.tensor(mu * mu, dtype=torch.float32))

    def histogram(self) -> Tensor:
        self.diff = self.pred.float() - self.target.float()
        self.root = torch.sqrt(self.diff * self.diff + self.mu_sq)
        valid = None if self.weight is None else self.weight > 0
        self.slots = self.density.slot_index((self.diff / self.root).abs_(), valid).view(-1)
        asl1 = (self.root - self.mu).view(-1)
        self.loss_sums = torch.bincount(self.slots, weights=asl1.double(),
                                        minlength=self.density.num_slots)
        return self.density.count(self.slots)

    def check_finite(self) -> None:
        _check_finite(self.loss_sums, 'pred or target (box regressions)')

    def _per_element(self, slot_table: Tensor) -> Tensor:
        return slot_table.index_select(0, self.slots.int()).view(self.diff.shape)

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool) -> Tensor:
        if not elementwise:
            return (self.loss_sums * slot_weight.double()).sum().float()
        return (self.root - self.mu) * self._per_element(slot_weight) * loss_weight

    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor], loss_weight: float) -> Tensor:
        scale = self._per_element(slot_scale)
        if grad_out is not None:
            scale = (grad_out.float() * loss_weight) * scale
        # autograd's order through sqrt(d * d + mu^2): (scale / (2 r)) * d, twice (from d * d).
        half = (scale / (2 * self.root)) * self.diff
        return (half + half).to(self.pred.dtype)
