"""CPU backends (:mod:`mmdet_ghm.ops.backend`) for GHM-C and GHM-R, vectorized with PyTorch: the
general CPU path (float64, custom edges, more than 253 bins) and the fallback where the C++ passes
of :mod:`.native_passes` cannot be built; those serve every other CPU call.

GHM-C walks the flattened (M, C) problem in chunks of 2**18 elements: a chunk's few temporaries
stay in cache between ops, each exact op still splits across PyTorch's intra-op threads. The
forward reads the logits once: sigmoid -> slot -> count, and the element's BCE into its slot's loss
sum. The backward reads them once more and writes the gradient once.

Kept between forward and backward: one slot per element (uint8 up to 253 bins, a quarter of the
logits' bytes; int64 beyond).
Recomputing it would mean a second sigmoid and binning in the backward, about as much work again
as the gradient itself; the byte makes the backward one sigmoid, one gather and one multiply.

The ops whose bits decide the bins or the loss (sigmoid, log1p, sqrt) go through PyTorch's
vectorized loop for every element (the sigmoid's scalar tail rounds differently): each call is
cut to a length that PyTorch's intra-op threads split into pieces a multiple of 64 long, and the
few elements left over are computed padded, on one thread. Their bits, hence the bins, the state
and the gradient, then do not depend on the thread count or the memory layout (see
:mod:`mmdet_ghm.binning`). Chunks are combined in order: bitwise reproducible.
"""
import functools
import sys
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..inputs import compute_dtype, labelled_rows, mu_squared
from .backend import GHMBackend, slot_factors

CHUNK = 1 << 18
# at::internal::GRAIN_SIZE: an element-wise op on fewer elements runs on one thread
GRAIN_SIZE = 1 << 15
# The vectorized loop takes 2 vectors a step (2 x 16 float32 lanes with AVX-512, 2 x 8 with
# AVX2); shorter tails are computed by the scalar loop, whose last bit differs: pieces are a
# multiple of 64, a multiple of either step.
VECTOR_STEP = 64


def _aligned_length(n: int, threads: int) -> int:
    """The longest m <= n whose split over PyTorch's intra-op threads gives every thread a
    multiple of VECTOR_STEP elements. ATen (OpenMP and native backends alike) runs an
    element-wise op on min(threads, ceil(m / GRAIN_SIZE)) threads, ceil(m / tasks) elements each
    (one thread when m <= GRAIN_SIZE): with m a multiple of VECTOR_STEP * tasks, every piece is."""
    m = n - n % VECTOR_STEP
    while True:
        tasks = 1 if threads == 1 or m <= GRAIN_SIZE else min(threads, -(-m // GRAIN_SIZE))
        aligned = m - m % (VECTOR_STEP * tasks)
        if aligned == m:
            return m
        m = aligned


def padded_length(n: int, threads: int) -> int:
    """The shortest length m >= n that :func:`_exact` computes in one vectorized call: a buffer
    of m elements takes the exact op in place in one PyTorch call, with no tail."""
    m = -(-n // VECTOR_STEP) * VECTOR_STEP
    while _aligned_length(m, threads) != m:
        m += VECTOR_STEP
    return m


def _exact(fn, x: Tensor, out: Tensor) -> Tensor:
    """``fn(x)`` into ``out`` (flat, contiguous), with the same bits for every element whatever
    the thread count and layout (see the module docstring)."""
    n = x.numel()
    full = _aligned_length(n, torch.get_num_threads())
    if full:
        fn(x[:full], out=out[:full])
    if full < n:  # fewer than VECTOR_STEP * threads elements: padded, one vectorized loop
        pad = -(n - full) % VECTOR_STEP
        out[full:] = fn(F.pad(x[full:], (0, pad)))[:n - full]
    return out


def _softplus_from_sigmoid(x: Tensor, s: Tensor, work: Optional[Tensor] = None,
                           out: Optional[Tensor] = None) -> Tensor:
    """softplus(x) = relu(x) - log(1 - q), q = sigmoid(-|x|) = min(s, 1 - s), from s = sigmoid(x)
    (or sigmoid(-x), the same q): one transcendental instead of softplus's two, 0 at x = -inf
    (BCE's limit; torch's binary_cross_entropy_with_logits gives NaN there). Within about 1e-7
    relative of softplus. ``work`` and ``out``: optional buffers of x's size and dtype."""
    q = torch.neg(s, out=work).add_(1.0)  # 1 - s
    torch.minimum(s, q, out=q)
    q.neg_()
    _exact(torch.log1p, q, q)
    return torch.clamp_min(x, 0.0, out=out).sub_(q)


def _soft_bce(x: Tensor, t: Tensor) -> Tensor:
    """binary_cross_entropy_with_logits with the limits at infinite logits (0 where x = -inf
    and t = 0, or x = +inf and t = 1; torch gives NaN there)."""
    bce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
    if not bool(torch.isfinite(bce).all()):
        limit = (x == -float('inf')) & (t == 0) | (x == float('inf')) & (t == 1)
        bce.masked_fill_(limit, 0.0)
    return bce


# Most elements share a slot (easy negatives), so a plain bincount stalls on incrementing one
# counter again and again; spreading consecutive elements over 4 copies of the histogram (slot +
# 64 * (i % 4)) lets the increments overlap: about 30% less time for the count.
SPREAD_COPIES, SPREAD_STRIDE = 4, 64


@functools.lru_cache(maxsize=64)  # chunk sizes, plus the sizes of the FPN levels
def _spread_offsets(numel: int) -> Tensor:
    return ((torch.arange(numel) % SPREAD_COPIES) * SPREAD_STRIDE).to(torch.uint8)


def _fold(spread_counts: Tensor, num_slots: int) -> Tensor:
    return spread_counts.view(SPREAD_COPIES, SPREAD_STRIDE).sum(0)[:num_slots]


def count_slots(slots: Tensor, num_slots: int, loss: Tensor,
                work: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """int64 ``(num_slots,)`` histogram of flat slots and the float64 sum of the loss in each
    slot. ``work``: optional uint8 and float64 buffers of the slots' size."""
    loss64 = loss.double() if work is None else work[1].copy_(loss)
    if slots.dtype != torch.uint8 or num_slots > SPREAD_STRIDE:
        return (torch.bincount(slots, minlength=num_slots),
                torch.bincount(slots, weights=loss64, minlength=num_slots))
    spread = torch.add(slots, _spread_offsets(slots.numel()),
                       out=None if work is None else work[0])
    size = SPREAD_COPIES * SPREAD_STRIDE
    return (_fold(torch.bincount(spread, minlength=size), num_slots),
            _fold(torch.bincount(spread, weights=loss64, minlength=size), num_slots))


def _slot_pair_table(slot_table: Tensor) -> Optional[Tensor]:
    """Weights of two adjacent slots at once: the uint8 slots viewed as int16 read ``first + 256 *
    second`` (little-endian), and entry ``first + 256 * second`` of this float64-viewed table holds
    the float32 pair ``(table[first], table[second])``. One gather per two elements: index_select's
    cost is per index. None where that view does not hold (slots >= 128 turn the int16 negative;
    big-endian machines; a float64 table)."""
    num_slots = slot_table.numel()
    if num_slots > 128 or sys.byteorder != 'little' or slot_table.dtype != torch.float32:
        return None
    index = torch.arange(256 * num_slots)
    pairs = torch.stack([slot_table[(index % 256).clamp_(max=num_slots - 1)],
                         slot_table[index // 256]], dim=1)
    return pairs.view(torch.float64).view(-1)


def _gather_slots(slot_table: Tensor, pair_table: Optional[Tensor], slots: Tensor) -> Tensor:
    """``slot_table[slots]`` (slots' shape) for contiguous slots."""
    flat = slots.view(-1)
    if (pair_table is None or flat.dtype != torch.uint8 or flat.numel() % 2
            or flat.storage_offset() % 2):
        return slot_table.index_select(0, flat.int()).view(slots.shape)
    pairs = pair_table.index_select(0, flat.view(torch.int16).int())
    return pairs.view(torch.float32).view(slots.shape)


class _Scratch:
    """Chunk-sized buffers reused from chunk to chunk (no allocation, no page faults)."""

    def __init__(self):
        self.buffers = {}

    def get(self, name: str, dtype: torch.dtype, n: int) -> Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < n:
            buffer = self.buffers[name] = torch.empty(max(n, CHUNK), dtype=dtype)
        return buffer[:n]


class ClassificationCPU(GHMBackend):
    """GHM-C on an (M, C) problem: integer ``labels`` (M,) or float ``target`` (M, C);
    ``weight`` None, per row (M,) or per element (M, C), valid where > 0.

    With integer labels the dense chunk passes treat every element as a negative (t = 0, g = s,
    BCE = softplus(x)); the at most M positives are handled apart in one sparse step (parked in
    slot 0 during the dense pass, then binned with g = 1 - s, BCE = softplus(-x)): no one-hot
    target, no per-chunk indexing beyond the positives.
    """

    def __init__(self, pred: Tensor, labels: Optional[Tensor], target: Optional[Tensor],
                 weight: Optional[Tensor], binning):
        self.M, self.C = pred.shape
        self.numel = pred.numel()
        self.dtype = compute_dtype(pred)
        self.pred_dtype = pred.dtype
        self.x = pred.detach().contiguous().view(-1)
        self.target = None if target is None else target.detach().contiguous().view(-1)
        self.binning = binning
        self.row_valid = self.element_valid = None
        if weight is not None:
            valid = (weight.detach() > 0).to(binning.slot_dtype).contiguous()
            if valid.dim() == 1:
                self.row_valid = valid
            else:
                self.element_valid = valid.view(-1)
        self.positives = self.positive_rows = None
        if labels is not None:
            rows = labelled_rows(labels, self.C).nonzero().view(-1)
            self.positive_rows = rows
            self.positives = rows * self.C + labels[rows]  # ascending
        self.slots: Optional[Tensor] = None  # histogram() fills one per element
        # a NaN or inf among the ignored elements (their loss sum, slot 0): their gradient is
        # then masked to 0 instead of NaN * 0
        self.invalid_not_finite = False

    def _chunks(self):
        return [(a, min(a + CHUNK, self.numel)) for a in range(0, self.numel, CHUNK)]

    def backward_reads(self) -> Tuple[Tensor, ...]:
        return () if self.target is None else (self.target,)  # labels: kept as positives

    def _valid(self, a: int, b: int) -> Optional[Tensor]:
        if self.element_valid is not None:
            return self.element_valid[a:b]
        if self.row_valid is not None:
            r0, r1 = a // self.C, (b - 1) // self.C + 1
            rows = self.row_valid[r0:r1, None].expand(r1 - r0, self.C).reshape(-1)
            return rows[a - r0 * self.C:b - r0 * self.C]
        return None

    def _dense(self, a: int, b: int, work: '_Scratch') -> Tuple[Tensor, Tensor]:
        """sigmoid(x) and the per-element BCE of chunk [a, b), every element taken as a negative
        with integer labels; in ``work``'s buffers (valid until the next chunk)."""
        n = b - a
        x = self.x[a:b].to(self.dtype)
        s = _exact(torch.sigmoid, x, work.get('s', self.dtype, n))
        if self.target is None:
            return s, _softplus_from_sigmoid(x, s, work.get('q', self.dtype, n),
                                             work.get('bce', self.dtype, n))
        return s, _soft_bce(x, self.target[a:b].to(self.dtype))

    def _elementwise_bce(self, a: int, b: int) -> Tensor:
        """The BCE of chunk [a, b) in torch's own rounding (what mmdet's 'none' returns)."""
        x = self.x[a:b].to(self.dtype)
        t = torch.zeros_like(x) if self.target is None else self.target[a:b].to(self.dtype)
        return _soft_bce(x, t)

    def _positive_bounds(self):
        """Per chunk, the range of self.positives inside it."""
        edges = torch.tensor([a for a, _ in self._chunks()] + [self.numel])
        return torch.searchsorted(self.positives, edges).tolist()

    def _positive_sigmoid(self) -> Tuple[Tensor, Tensor]:
        """Logits and sigmoid of the positives, in the compute dtype."""
        x = self.x[self.positives].to(self.dtype)
        return x, _exact(torch.sigmoid, x, torch.empty_like(x))

    def _positive_terms(self) -> Tuple[Tensor, Tensor, Tensor]:
        """sigmoid, BCE = softplus(-x) and validity (0/1) of the positives."""
        x, s = self._positive_sigmoid()
        bce = _softplus_from_sigmoid(-x, s)  # q = min(s, 1 - s) is the same for -x
        if self.element_valid is not None:
            valid = self.element_valid[self.positives]
        elif self.row_valid is not None:
            valid = self.row_valid[self.positive_rows]
        else:
            valid = None
        return s, bce, valid

    def histogram(self) -> Tuple[Tensor, Tensor]:
        num_slots = self.binning.num_slots
        self.slots = torch.empty(self.numel, dtype=self.binning.slot_dtype)
        counts = torch.zeros(num_slots, dtype=torch.int64)
        sums = torch.zeros(num_slots, dtype=torch.float64)
        bounds = None if self.positives is None else self._positive_bounds()
        work = _Scratch()
        for i, (a, b) in enumerate(self._chunks()):
            n = b - a
            s, bce = self._dense(a, b, work)
            g = s if self.target is None else s.sub_(self.target[a:b].to(self.dtype)).abs_()
            slots = self.binning.slots(
                g, out=self.slots[a:b], above_one=self.target is not None,
                work=(work.get('h', torch.float64, n), work.get('i', torch.int32, n)))
            valid = self._valid(a, b)
            if valid is not None:
                slots.mul_(valid)
            if bounds is not None and bounds[i + 1] > bounds[i]:
                parked = self.positives[bounds[i]:bounds[i + 1]] - a  # see the class
                slots[parked] = 0
                bce[parked] = 0.0  # slot 0's sum is the invalid elements' alone
            chunk_counts, chunk_sums = count_slots(
                slots, num_slots, bce,
                (work.get('spread', torch.uint8, n), work.get('h', torch.float64, n)))
            counts += chunk_counts
            sums += chunk_sums
        if self.positives is not None and self.positives.numel():
            self.slots[self.positives] = self._add_positives(counts, sums)
            counts[0] -= self.positives.numel()
        self.invalid_not_finite = not bool(torch.isfinite(sums[0]))
        return counts, sums

    def _positive_grad(self, slots: Tensor, slot_scale: Tensor, go: Optional[Tensor],
                       loss_weight: float) -> Tensor:
        """The positives' gradient (s - 1) * factor, in the compute dtype; ``slots``: theirs."""
        _, s = self._positive_sigmoid()
        scale = slot_scale[slots.long()]
        if go is not None:
            scale = (go[self.positives].to(self.dtype) * loss_weight) * scale
        return (s - 1.0) * scale

    def _add_positives(self, counts: Tensor, sums: Tensor) -> Tensor:
        """Bins the positives (g = 1 - s), adds them to ``counts`` and ``sums``; their slots."""
        s, bce, valid = self._positive_terms()
        slots = self.binning.slots(torch.rsub(s, 1.0), above_one=False)  # mmdet's |s - 1|
        if valid is not None:
            slots.mul_(valid)
        positive_counts, positive_sums = count_slots(slots, self.binning.num_slots, bce)
        counts += positive_counts
        sums += positive_sums
        return slots

    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        out = torch.empty(self.numel, dtype=self.dtype)
        slot_weight = slot_weight.to(self.dtype)
        pairs = _slot_pair_table(slot_weight)
        for a, b in self._chunks():
            bce = self._elementwise_bce(a, b)
            torch.mul(bce.mul_(_gather_slots(slot_weight, pairs, self.slots[a:b])), loss_weight,
                      out=out[a:b])
        if self.positives is not None and self.positives.numel():
            x = self.x[self.positives].to(self.dtype)
            bce = _soft_bce(x, torch.ones_like(x))
            w = slot_weight[self.slots[self.positives].long()]
            out[self.positives] = (bce * w) * loss_weight
        if not bool(torch.isfinite(out).all()):  # inf * 0 of an invalid element: 0
            out.masked_fill_(slot_weight[self.slots.long()] == 0, 0.0)
        return out.view(self.M, self.C)

    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        slot_scale, go = slot_factors(slot_weight, grad_out, divisor, loss_weight, elementwise,
                                      self.dtype)
        grad = torch.empty(self.numel, dtype=self.pred_dtype)
        same_dtype = self.pred_dtype == self.dtype
        slot_scale = slot_scale.to(self.dtype)
        pairs = _slot_pair_table(slot_scale)
        go = None if go is None else go.detach().contiguous().view(-1)
        for a, b in self._chunks():
            x = self.x[a:b].to(self.dtype)
            diff = _exact(torch.sigmoid, x, grad[a:b] if same_dtype else torch.empty_like(x))
            if self.target is not None:
                diff.sub_(self.target[a:b].to(self.dtype))
            scale = _gather_slots(slot_scale, pairs, self.slots[a:b])
            if go is not None:
                scale = (go[a:b].to(self.dtype) * loss_weight) * scale
            diff.mul_(scale)
            if not same_dtype:
                grad[a:b] = diff
        if self.positives is not None and self.positives.numel():
            grad[self.positives] = self._positive_grad(self.slots[self.positives], slot_scale,
                                                       go, loss_weight).to(self.pred_dtype)
        if self.invalid_not_finite:  # NaN * 0 of an ignored element: 0
            grad.masked_fill_(self.slots == 0, 0.0)
        return grad.view(self.M, self.C)


class RegressionCPU(GHMBackend):
    """GHM-R (Authentic Smooth L1) on pred/target of any equal shape and strides; ``weight`` None
    or the same shape, valid where > 0. Regression inputs are small (N x 4): whole-tensor ops;
    kept between forward and backward: the slots."""

    def __init__(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], binning,
                 mu: float):
        self.shape, self.pred_dtype = pred.shape, pred.dtype
        self.dtype = compute_dtype(pred)
        self.pred = pred.detach().contiguous().view(-1)
        self.numel = self.pred.numel()
        self.target = target.detach().contiguous().view(-1)
        self.weight = None if weight is None else weight.detach()
        self.binning, self.mu = binning, float(mu)
        self.mu_sq = mu_squared(self.mu, self.dtype)
        self.slots: Optional[Tensor] = None
        self.invalid_not_finite = False

    def backward_reads(self) -> Tuple[Tensor, ...]:
        return (self.target,)  # validity: kept in the slots

    @functools.cached_property
    def valid(self) -> Optional[Tensor]:
        """Flat 0/1 validity (weight > 0) in the slots' dtype, or None."""
        if self.weight is None:
            return None
        return (self.weight > 0).reshape(-1).to(self.binning.slot_dtype)

    def _diff_root(self) -> Tuple[Tensor, Tensor]:
        d = self.pred.to(self.dtype) - self.target.to(self.dtype)
        # the sqrt decides the bins: evaluated like the sigmoid, so that no CPU build's loop
        # split can change its bits
        root = d * d + self.mu_sq
        return d, _exact(torch.sqrt, root, root)

    def histogram(self) -> Tuple[Tensor, Tensor]:
        d, root = self._diff_root()
        # g = |d| / sqrt(d^2 + mu^2) <= 1: inside mmdet's last GHM-R bin (edge 1e3) at worst
        slots = self.binning.slots((d / root).abs_(), above_one=False)
        if self.valid is not None:
            slots.mul_(self.valid)
        self.slots = slots
        counts, sums = count_slots(slots, self.binning.num_slots, root - self.mu)
        self.invalid_not_finite = not bool(torch.isfinite(sums[0]))
        return counts, sums

    def elementwise_loss(self, slot_weight: Tensor, loss_weight: float) -> Tensor:
        _, root = self._diff_root()
        slot_weight = slot_weight.to(self.dtype)
        w = _gather_slots(slot_weight, _slot_pair_table(slot_weight), self.slots)
        out = (root - self.mu) * w * loss_weight
        if not bool(torch.isfinite(out).all()):  # inf * 0 of an invalid element: 0
            out.masked_fill_(w == 0, 0.0)
        return out.view(self.shape)

    def grad(self, slot_weight: Tensor, grad_out: Tensor, divisor: Optional[Tensor],
             loss_weight: float, elementwise: bool) -> Tensor:
        slot_scale, go = slot_factors(slot_weight, grad_out, divisor, loss_weight, elementwise,
                                      self.dtype)
        d, root = self._diff_root()
        slot_scale = slot_scale.to(self.dtype)
        scale = _gather_slots(slot_scale, _slot_pair_table(slot_scale), self.slots)
        if go is not None:
            scale = (go.detach().reshape(-1).to(self.dtype) * loss_weight) * scale
        # autograd's order through sqrt(d * d + mu^2): (scale / (2 r)) * d, twice (from d * d).
        half = (scale / (2 * root)) * d
        grad = (half + half).to(self.pred_dtype)
        if self.invalid_not_finite:  # NaN * 0 of an ignored element: 0
            grad.masked_fill_(self.slots == 0, 0.0)
        return grad.view(self.shape)
