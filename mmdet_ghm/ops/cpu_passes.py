"""The three GHM passes (histogram, loss, grad) on CPU tensors, vectorized with PyTorch.

Same contract as :mod:`mmdet_ghm.ops.triton_passes`. GHM-C walks the (M, C) problem in chunks of
rows small enough for their temporaries to stay in cache. Each chunk holds a multiple of 64 elements,
so PyTorch's vectorized sigmoid gives exactly the bits it gives on the whole tensor (its scalar
tail loop rounds differently) and the bins match mmdet's bit for bit. The histogram pass keeps one
byte per element (the slot); GHM-C's loss pass gathers each element's weight once, for the loss
and, in training, for the gradient formed in the same pass. Results are combined in chunk order:
bitwise reproducible.
"""
import sys
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


def _check_finite(finite: bool, what: str) -> None:
    # CPU only: the callers read small tensors; on CUDA that would be a host sync
    if not finite:
        raise ValueError(f'{what} contain NaN or inf: the GHM loss would not be finite (the EMA '
                         'state is left untouched); check the model for divergence')


def _vectorized(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn on a 1-D gather, padded to a multiple of 64 so every element takes the vectorized
    kernel and gets the bits it got inside its chunk."""
    padded = F.pad(x, (0, -x.numel() % 64))
    return fn(padded)[:x.numel()]


def _softplus_from_sigmoid(x: Tensor, s: Tensor) -> Tensor:
    """softplus(x) = relu(x) - log(1 - q), q = sigmoid(-|x|) = min(s, 1 - s), from s = sigmoid(x):
    one transcendental instead of softplus's two. Within about 1e-7 relative of softplus: q is s
    itself below 0.5 and 1 - s exactly above it (so the rounding of s costs at most 3e-8 against
    a value >= log 2 there)."""
    q = torch.minimum(s, 1.0 - s)
    return torch.relu(x).sub_(q.neg_().log1p_())


def _slot_pair_table(slot_table: Tensor) -> Optional[Tensor]:
    """Weights of two adjacent slots at once: the uint8 slots viewed as int16 read ``first + 256 *
    second`` (little-endian), and entry ``first + 256 * second`` of this float64-viewed table holds
    the float32 pair ``(table[first], table[second])``. One gather per two elements: index_select's
    cost is per index. None where that view does not hold (slots >= 128 turn the int16 negative;
    big-endian machines)."""
    num_slots = slot_table.numel()
    if num_slots > 128 or sys.byteorder != 'little':
        return None
    index = torch.arange(256 * num_slots)
    pairs = torch.stack([slot_table[(index % 256).clamp_(max=num_slots - 1)],
                         slot_table[index // 256]], dim=1)
    return pairs.view(torch.float64).view(-1)


def _gather_slots(slot_table: Tensor, pair_table: Optional[Tensor], slots: Tensor) -> Tensor:
    """``slot_table[slots]`` (float32, slots' shape) for contiguous uint8 slots."""
    flat = slots.view(-1)
    if pair_table is None or flat.numel() % 2 or flat.storage_offset() % 2:
        return slot_table.index_select(0, flat.int()).view(slots.shape)
    pairs = pair_table.index_select(0, flat.view(torch.int16).int())
    return pairs.view(torch.float32).view(slots.shape)


class ClassificationCPU:
    """GHM-C on an (M, C) problem: integer ``labels`` (M,) or float ``target`` (M, C);
    ``weight`` None, per row (M,) or per element (M, C), valid where > 0.

    With integer labels the dense chunk passes treat every element as a negative (t = 0), and
    the at most M positives are corrected afterwards in one sparse step: no one-hot target, no
    per-chunk indexing.

    Two passes over the logits in the forward: the histogram pass (sigmoid, slot, count) and,
    once the density has turned the counts into weights, the loss pass. When the gradient is
    wanted (``histogram(for_grad=True)``) the histogram pass keeps ``sigmoid(x) - t`` and the
    loss pass scales it in place into the gradient for ``grad_out == 1`` (a summed or averaged
    loss that is backpropagated directly, as in training): the backward pass hands it over. Any
    other ``grad_out`` recomputes it from the kept slots (:meth:`grad`), with autograd's order.
    """

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], density):
        # row chunks of contiguous memory (a no-op for the usual, contiguous, inputs)
        self.pred, self.labels, self.target, self.weight = (
            None if t is None else t.detach().contiguous()
            for t in (pred, labels, target, weight))
        self.density = density
        self.slots: Optional[Tensor] = None
        self.diff: Optional[Tensor] = None  # sigmoid(x) - t, then the gradient (for_grad)
        self.fused_grad: Optional[Tensor] = None
        # per chunk (min, max) of the logits and of the targets, for check_finite
        self.pred_extremes: List[Tensor] = []
        self.target_extremes: List[Tensor] = []
        self.positives: Optional[Tensor] = None  # flat indices of the label positions
        self.positive_slots: Optional[Tuple[Tensor, Tensor]] = None  # (before, after) the move
        # 0/1 in the slots' dtype: multiplying the slots sends invalid elements to slot 0
        self.valid = None
        if weight is not None:
            valid = (self.weight > 0).to(density.slot_dtype)
            self.valid = valid[:, None] if valid.dim() == 1 else valid

    def _histogram_chunk(self, r0: int, r1: int) -> Tensor:
        x = self.pred[r0:r1].float()
        if x.numel():
            self.pred_extremes.append(torch.stack(torch.aminmax(x)))
        diff = torch.sigmoid(x, out=None if self.diff is None else self.diff[r0:r1])
        if self.target is None:
            g = diff  # |s - 0|; the positives are corrected afterwards
        else:
            t = self.target[r0:r1].float()
            if t.numel():
                self.target_extremes.append(torch.stack(torch.aminmax(t)))
            g = diff.sub_(t).abs() if self.diff is not None else diff.sub_(t).abs_()
        # NaN/inf inputs give unspecified slots here; check_finite rejects them before use
        slots = self.density.slot_index(g, out=self.slots[r0:r1], finite_unit=True)
        if self.valid is not None:
            slots.mul_(self.valid[r0:r1])
        return self.density.count(slots)

    def histogram(self, for_grad: bool = False) -> Tensor:
        M, C = self.pred.shape
        self.slots = torch.empty((M, C), dtype=self.density.slot_dtype)
        if for_grad:
            self.diff = torch.empty((M, C), dtype=torch.float32)
        counts = torch.zeros(self.density.num_slots, dtype=torch.int64)
        for chunk_counts in _map_chunks(self._histogram_chunk, M, C):
            counts += chunk_counts
        if self.labels is not None:
            counts += self._correct_positives()
        return counts

    def _finite(self) -> bool:
        """Whether the loss is finite: no NaN anywhere; with labels no +inf logit and no -inf at
        a positive (-inf elsewhere is an easy negative, BCE 0); with float targets all logits and
        targets finite."""
        x = torch.stack(self.pred_extremes) if self.pred_extremes else torch.zeros(0, 2)
        if self.target is not None:
            t = torch.stack(self.target_extremes) if self.target_extremes else torch.zeros(0, 2)
            return bool(torch.isfinite(x).all() and torch.isfinite(t).all())
        if torch.isnan(x).any() or (x[:, 1] == float('inf')).any():
            return False
        return self.positives is None or not bool(
            (self.pred.view(-1)[self.positives] == -float('inf')).any())

    def check_finite(self) -> None:
        _check_finite(self._finite(), 'pred (logits) or target')

    def _correct_positives(self) -> Tensor:
        """Move each positive from the slot of g = s to that of g = 1 - s (mmdet's |s - 1|);
        returns the change of the counts."""
        M, C = self.pred.shape
        rows = (self.labels < C).nonzero(as_tuple=True)[0]
        self.positives = rows * C + self.labels[rows]
        flat_slots = self.slots.view(-1)
        old = flat_slots[self.positives]
        g = 1.0 - _vectorized(torch.sigmoid, self.pred.view(-1)[self.positives].float())
        new = self.density.slot_index(g).mul_(old > 0)  # invalid stays invalid
        flat_slots[self.positives] = new
        self.positive_slots = old, new
        return self.density.count(new) - self.density.count(old)

    def _loss_chunk(self, r0: int, r1: int, slot_weight: Tensor, pair_weight: Optional[Tensor],
                    grad_scale: Optional[Tensor]) -> Tensor:
        x = self.pred[r0:r1].float()
        if self.target is None:  # BCE with t = 0; the positives are corrected afterwards
            # sigmoid(x), kept or not: the same bits with or without the gradient
            s = torch.sigmoid(x) if self.diff is None else self.diff[r0:r1]
            bce = _softplus_from_sigmoid(x, s)
        else:
            bce = F.binary_cross_entropy_with_logits(x, self.target[r0:r1].float(),
                                                     reduction='none')
        weight = _gather_slots(slot_weight, pair_weight, self.slots[r0:r1])
        total = bce.mul_(weight).sum().double()
        if grad_scale is not None:
            # autograd's order in mmdet: (sigmoid(x) - t) * (scale * weight)
            self.diff[r0:r1].mul_(weight.mul_(grad_scale))
        return total

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool,
             grad_scale: Optional[Tensor] = None) -> Tensor:
        """Sum over elements of loss * weight (float32 0-dim), or the element-wise loss. With
        ``grad_scale`` (0-dim, the backward's scale for ``grad_out == 1``) and a histogram pass
        made ``for_grad``, the gradient is formed in the same pass."""
        if elementwise:
            return self._elementwise_loss(slot_weight, loss_weight)
        fuse = grad_scale is not None and self.diff is not None
        pair_weight = self._pair_table(slot_weight)
        total = torch.zeros((), dtype=torch.float64)
        for part in _map_chunks(lambda r0, r1: self._loss_chunk(
                r0, r1, slot_weight, pair_weight, grad_scale if fuse else None), *self.pred.shape):
            total += part
        if self.positives is not None:  # their BCE is softplus(x) - x
            x = self.pred.view(-1)[self.positives].float()
            new = self.positive_slots[1].long()
            total -= (slot_weight[new] * x).sum(dtype=torch.float64)
            if fuse:  # s - 1 where the label is
                scale = (grad_scale * slot_weight)[new]
                self.diff.view(-1)[self.positives] = (_vectorized(torch.sigmoid, x) - 1.0) * scale
        if fuse:
            self.fused_grad, self.diff = self.diff, None
        return total.float()

    def _pair_table(self, slot_table: Tensor) -> Optional[Tensor]:
        return _slot_pair_table(slot_table) if self.slots.dtype == torch.uint8 else None

    def take_grad(self, grad_out: Tensor) -> Optional[Tensor]:
        """The gradient formed by :meth:`loss` if ``grad_out`` is 1, else None (then call
        :meth:`grad`); handed over once."""
        grad, self.fused_grad = self.fused_grad, None
        if grad is None or grad_out.device.type != 'cpu' or not bool(grad_out == 1):
            return None
        return grad.to(self.pred.dtype)

    def _elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
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
            w = _gather_slots(slot_weight, pair_weight, self.slots[r0:r1])
            torch.mul(bce * w, loss_weight, out=out[r0:r1])
        pair_weight = self._pair_table(slot_weight)
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
            scale = _gather_slots(slot_scale, pair_scale, self.slots[r0:r1])
            if grad_out is not None:
                scale = (grad_out[r0:r1].float() * loss_weight) * scale
            diff.mul_(scale)
        pair_scale = self._pair_table(slot_scale)
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

    def histogram(self, for_grad: bool = False) -> Tensor:
        """``for_grad`` is unused: the difference and root kept here make the gradient cheap."""
        self.diff = self.pred.float() - self.target.float()
        self.root = torch.sqrt(self.diff * self.diff + self.mu_sq)
        valid = None if self.weight is None else self.weight > 0
        self.slots = self.density.slot_index((self.diff / self.root).abs_(), valid).view(-1)
        asl1 = (self.root - self.mu).view(-1)
        self.loss_sums = torch.bincount(self.slots, weights=asl1.double(),
                                        minlength=self.density.num_slots)
        return self.density.count(self.slots)

    def check_finite(self) -> None:
        _check_finite(bool(torch.isfinite(self.loss_sums).all()),
                      'pred or target (box regressions)')

    def _per_element(self, slot_table: Tensor) -> Tensor:
        return slot_table.index_select(0, self.slots.int()).view(self.diff.shape)

    def loss(self, slot_weight: Tensor, loss_weight: float, elementwise: bool,
             grad_scale: Optional[Tensor] = None) -> Tensor:
        if not elementwise:
            return (self.loss_sums * slot_weight.double()).sum().float()
        return (self.root - self.mu) * self._per_element(slot_weight) * loss_weight

    def take_grad(self, grad_out: Tensor) -> None:
        """Nothing is formed ahead: the backward pass calls :meth:`grad`."""
        return None

    def grad(self, slot_scale: Tensor, grad_out: Optional[Tensor], loss_weight: float) -> Tensor:
        scale = self._per_element(slot_scale)
        if grad_out is not None:
            scale = (grad_out.float() * loss_weight) * scale
        # autograd's order through sqrt(d * d + mu^2): (scale / (2 r)) * d, twice (from d * d).
        half = (scale / (2 * self.root)) * self.diff
        return (half + half).to(self.pred.dtype)
