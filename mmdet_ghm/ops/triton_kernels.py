"""Triton kernels of GHM-C and GHM-R (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

Two passes over the inputs per loss, like a fused focal loss, and nothing of the input's size kept
between them:

1. histogram (forward): each program reads a few blocks of the inputs once, bins every element
   and writes its slot counts (``tl.histogram``) and its per-slot sums of the unweighted loss into
   one column of two small ``(bins + 2, programs)`` tables. :func:`slot_partials_reduce_kernel` then
   sums each row in a fixed order (float64 for the loss): counts and loss sums are bitwise
   reproducible, no atomics at all. :func:`ghm_weigh_kernel` turns them into the EMA state, the
   slot weights and the reduced loss ``dot(loss sums, slot weights)`` in one program.
2. grad (backward): one read and one write, ``dloss/dx * factor[slot]``.

``reduction='none'`` adds :func:`ghmc_elementwise_loss_kernel` or
:func:`ghmr_elementwise_loss_kernel` (the per-element output needs the weights, known only after
the histogram).

Binning (one rule, :func:`_slot_of`): mmdet's ``edges[i] <= g < edges[i + 1]`` on the density's
float32 edges. ``floor(g * bins)`` is within one bin of it (the product rounds monotonically and
each edge is the float nearest ``i / bins``); comparing g with the two edges around that estimate
corrects it. Two loads from a table of ``bins + 1`` floats (L1-resident) instead of the float64
half-ulp formula of :mod:`mmdet_ghm.binning`, whose float64 arithmetic is slow on most GPUs.

Exact on a GPU (``EXACT=True``, the launchers' choice on CUDA): GHM-C's g needs PyTorch's CUDA
sigmoid bit for bit, ``1 / (1 + expf(-x))`` with the CUDA math library's ``expf``
(``libdevice.exp``, the code nvcc inlines) and an IEEE division (``div_rn``); ``tl.sigmoid``
would use ``ex2.approx`` and ``div.full``. nvcc compiles PyTorch with FMA contraction on, which
fuses expf's last scaling with the ``1 +`` into one FMA; the GHM-C kernels are launched with
fusion on for the same code (see ``CLS_FP_FUSION`` in :mod:`.triton_passes`). GHM-R's g and loss
are IEEE ops in PyTorch's separate kernels (``d * d`` rounded before ``+ mu^2``): its kernels are
launched with ``enable_fp_fusion=False``, so that no ``a * b + c`` becomes one FMA. The
interpreter has no libdevice (``EXACT=False``): its ``exp`` is numpy's.

Offsets: a program's base offset is int64 (inputs past 2**31 elements), everything inside a block
int32; GHM-C's row index (labels, per-row weights) divides by the constexpr class count ``C``
(a multiply and a shift, no 64-bit division per element).
"""
import triton
import triton.language as tl

try:  # the CUDA math library (libdevice); absent from the interpreter
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - every triton >= 3.0 has it
    libdevice = None

# Weight modes of GHM-C: no label weight, one per row (broadcast over classes), one per element.
WEIGHT_NONE, WEIGHT_ROW, WEIGHT_ELEMENT = 0, 1, 2


@triton.jit
def _sigmoid(x, EXACT: tl.constexpr, F64: tl.constexpr):
    """PyTorch's CUDA sigmoid: ``1 / (1 + exp(-x))``, IEEE division."""
    if EXACT:
        e = libdevice.exp(-x)
    else:
        e = tl.exp(-x)
    if F64:
        return 1.0 / (1.0 + e)  # float64 division is IEEE (div.rn.f64)
    else:
        return tl.math.div_rn(1.0, 1.0 + e)


@triton.jit
def sigmoid_kernel(x_ptr, s_ptr, numel, EXACT: tl.constexpr, BLOCK: tl.constexpr):
    """float32 sigmoid of the kernels, element-wise (benchmarks/gpu_check.py compares it with
    torch.sigmoid bit for bit)."""
    base, lane, mask = _block(tl.program_id(0), numel, BLOCK)
    x = tl.load(x_ptr + base + lane, mask=mask, other=0.0)
    tl.store(s_ptr + base + lane, _sigmoid(x, EXACT, False), mask=mask)


@triton.jit
def _slot_of(g, edges_ptr, BINS: tl.constexpr):
    """Slot of gradient norm g >= 0: 1 + bin, BINS + 1 when g is NaN or >= the last edge."""
    not_nan = g == g
    b = tl.floor(tl.where(not_nan, g, 0.0) * BINS)
    b = tl.minimum(tl.maximum(b, 0.0), BINS - 1.0).to(tl.int32)
    # the estimate is off by one at most, right at a boundary: compare with the float32 edges
    # (promoted to g's dtype, as mmdet's comparison does)
    lo = tl.load(edges_ptr + b).to(g.dtype)
    hi = tl.load(edges_ptr + b + 1).to(g.dtype)
    b = tl.where(g < lo, b - 1, tl.where(g >= hi, b + 1, b))
    return tl.where(not_nan, b + 1, BINS + 1)


@triton.jit
def _log1p(e):
    """log(1 + e) for 0 <= e <= 1, accurate for tiny e (Goldberg's trick; no libdevice needed)."""
    u = 1.0 + e
    tiny = u == 1.0
    return tl.where(tiny, e, tl.log(u) * (e / tl.where(tiny, 1.0, u - 1.0)))


@triton.jit
def _bce_with_logits(x, t):
    """PyTorch's BCE-with-logits, ``(1 - t) * x - log_sigmoid(x)`` (its rounding, e.g. for easy
    negatives), with its limits at infinite logits instead of ``inf - inf``: 0 on the right side
    (x = -inf with t = 0, x = +inf with t = 1), inf on the wrong side."""
    log_sigmoid = tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))
    finite = (1.0 - t) * x - log_sigmoid
    at_pos_inf = tl.where(t == 1.0, 0.0, (1.0 - t) * x)
    at_neg_inf = tl.where(t == 0.0, 0.0, -t * x)
    return tl.where(x == float('inf'), at_pos_inf,
                    tl.where(x == -float('inf'), at_neg_inf, finite))


@triton.jit
def _block(pid, numel, BLOCK: tl.constexpr):
    """int64 base offset of a program's block, its int32 lane index and in-range mask."""
    base = pid.to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    rem = tl.minimum(numel - base, BLOCK).to(tl.int32)
    return base, lane, lane < rem


@triton.jit
def _positive(w):
    """``w > 0`` on w's value: a half-precision weight is widened first (the interpreter would
    compare a bfloat16's bits); on a GPU the widening is exact and free."""
    if w.dtype == tl.bfloat16 or w.dtype == tl.float16:
        w = w.to(tl.float32)
    return w > 0


@triton.jit
def _cls_inputs(pred_ptr, label_ptr, target_ptr, weight_ptr, base, lane, mask,
                C: tl.constexpr, LABELS: tl.constexpr, WEIGHT: tl.constexpr,
                CDT: tl.constexpr):
    """Logit, target, validity and bad label (outside [0, C]: the call is rejected) of the
    elements ``base + lane`` of an (M, C) problem."""
    x = tl.load(pred_ptr + base + lane, mask=mask, other=0.0).to(CDT)
    # row = (base + lane) // C without a 64-bit division: one scalar division per program
    row0 = base // C
    local = (base - row0 * C).to(tl.int32) + lane
    row_in_block = local // C
    row = row0 + row_in_block
    if LABELS:
        label = tl.load(label_ptr + row, mask=mask, other=0)
        bad = mask & ((label < 0) | (label > C))
        t = ((local - row_in_block * C) == label).to(CDT)
    else:
        bad = tl.zeros_like(mask)
        t = tl.load(target_ptr + base + lane, mask=mask, other=0).to(CDT)
    if WEIGHT == 1:  # WEIGHT_ROW
        valid = mask & _positive(tl.load(weight_ptr + row, mask=mask, other=0))
    elif WEIGHT == 2:  # WEIGHT_ELEMENT
        valid = mask & _positive(tl.load(weight_ptr + base + lane, mask=mask, other=0))
    else:
        valid = mask
    return x, t, valid, bad


@triton.jit
def _cls_slot(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, base, lane, mask,
              C: tl.constexpr, BINS: tl.constexpr, LABELS: tl.constexpr, WEIGHT: tl.constexpr,
              CDT: tl.constexpr, EXACT: tl.constexpr):
    """Logit, target, sigmoid, slot (0 where invalid) and bad label of the elements
    ``base + lane``."""
    x, t, valid, bad = _cls_inputs(pred_ptr, label_ptr, target_ptr, weight_ptr, base, lane, mask,
                                   C, LABELS, WEIGHT, CDT)
    s = _sigmoid(x, EXACT, CDT == tl.float64)
    return x, t, s, tl.where(valid, _slot_of(tl.abs(s - t), edges_ptr, BINS), 0), bad


@triton.jit
def _counted(slot, loss, bad, BINS: tl.constexpr):
    """Slot and loss as the forward counts them: an element with a bad label, valid or not, in
    slot BINS + 1 with a NaN loss, which rejects the call in the weighing (no host sync). The
    other passes take it as background, as mmdet's one-hot does (the call's loss is NaN)."""
    return tl.where(bad, BINS + 1, slot), tl.where(bad, float('nan'), loss)


@triton.jit
def _add_slot_sums(counts, sums, slot, loss, mask, BINS: tl.constexpr, SLOTS_P2: tl.constexpr):
    """Add one block's slot counts (every slot) and loss sums (slots 1 .. BINS + 1; slot 0, the
    invalid elements, is never summed) to a program's ``(SLOTS_P2,)`` accumulators."""
    hist = tl.histogram(slot, SLOTS_P2, mask=mask)
    idx = tl.arange(0, SLOTS_P2)
    # one masked sum per slot present in this block (most blocks hold a few slots): bit k of
    # `present` says slot k is; slots >= 63 are always summed
    bit = tl.full([SLOTS_P2], 1, tl.int64) << tl.minimum(idx, 62).to(tl.int64)
    present = tl.sum(tl.where((hist > 0) & (idx < 63), bit, 0), axis=0)
    for k in range(1, BINS + 2):
        if (k >= 63) | (((present >> tl.minimum(k, 62)) & 1) != 0):
            sums += tl.where(idx == k, tl.sum(tl.where(slot == k, loss, 0.0), axis=0), 0.0)
    return counts + hist, sums


@triton.jit
def _store_partials(counts, sums, counts_part_ptr, sums_part_ptr, pid, num_programs,
                    BINS: tl.constexpr, SLOTS_P2: tl.constexpr):
    """This program's column of the partial tables (row 0 of the loss sums is never read)."""
    idx = tl.arange(0, SLOTS_P2)
    column = idx.to(tl.int64) * num_programs + pid
    tl.store(counts_part_ptr + column, counts, mask=idx < BINS + 2)
    tl.store(sums_part_ptr + column, sums, mask=(idx > 0) & (idx < BINS + 2))


@triton.jit
def slot_partials_reduce_kernel(counts_part_ptr, sums_part_ptr, counts_ptr, sums_ptr,
                                num_programs, RBLOCK: tl.constexpr):
    """Row k of the partial tables summed in a fixed order: int64 count, float64 loss sum of
    slot k (0 for slot 0)."""
    k = tl.program_id(0)
    row = k.to(tl.int64) * num_programs
    summed = tl.where(k > 0, num_programs, 0)  # row 0 of the loss sums is never written
    count = tl.zeros([RBLOCK], tl.int64)
    total = tl.zeros([RBLOCK], tl.float64)
    for start in range(0, num_programs, RBLOCK):
        j = start + tl.arange(0, RBLOCK)
        count += tl.load(counts_part_ptr + row + j, mask=j < num_programs, other=0).to(tl.int64)
        total += tl.load(sums_part_ptr + row + j, mask=j < summed, other=0.0).to(tl.float64)
    tl.store(counts_ptr + k, tl.sum(count, axis=0))
    tl.store(sums_ptr + k, tl.sum(total, axis=0))


@triton.jit
def ghmc_histogram_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr,
                          counts_part_ptr, sums_part_ptr, numel, num_programs,
                          C: tl.constexpr, BINS: tl.constexpr, SLOTS_P2: tl.constexpr,
                          LABELS: tl.constexpr, WEIGHT: tl.constexpr, CDT: tl.constexpr,
                          EXACT: tl.constexpr, BLOCK: tl.constexpr, BLOCKS: tl.constexpr):
    """Counts and loss sums of BLOCKS consecutive blocks of BLOCK elements (one column)."""
    pid = tl.program_id(0)
    counts = tl.zeros([SLOTS_P2], tl.int32)
    sums = tl.zeros([SLOTS_P2], CDT)
    for i in range(BLOCKS):
        base, lane, mask = _block(pid.to(tl.int64) * BLOCKS + i, numel, BLOCK)
        x, t, s, slot, bad = _cls_slot(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr,
                                       base, lane, mask, C, BINS, LABELS, WEIGHT, CDT, EXACT)
        slot, loss = _counted(slot, _bce_with_logits(x, t), bad, BINS)
        counts, sums = _add_slot_sums(counts, sums, slot, loss, mask, BINS, SLOTS_P2)
    _store_partials(counts, sums, counts_part_ptr, sums_part_ptr, pid, num_programs, BINS,
                    SLOTS_P2)


@triton.jit
def ghmc_elementwise_loss_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr,
                                 slot_weight_ptr, out_ptr, loss_weight: tl.float64, numel,
                                 C: tl.constexpr, BINS: tl.constexpr, LABELS: tl.constexpr,
                                 WEIGHT: tl.constexpr, CDT: tl.constexpr, EXACT: tl.constexpr,
                                 BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base, lane, mask = _block(pid, numel, BLOCK)
    x, t, s, slot, _ = _cls_slot(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, base,
                                 lane, mask, C, BINS, LABELS, WEIGHT, CDT, EXACT)
    w = tl.load(slot_weight_ptr + slot).to(CDT)
    # mmdet's order: (loss * weight) * loss_weight; invalid elements exactly 0
    loss = (_bce_with_logits(x, t) * w) * tl.cast(loss_weight, CDT)
    tl.store(out_ptr + base + lane, tl.where(slot == 0, 0.0, loss), mask=mask)


@triton.jit
def _div(a, b, CDT: tl.constexpr):
    """a / b with IEEE rounding, as PyTorch's CUDA division (Triton's float32 ``/`` is not)."""
    if CDT == tl.float64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _grad_factor(slot, slot_weight_ptr, grad_out_ptr, divisor_ptr, loss_weight, base, lane,
                 mask, CDT: tl.constexpr, ELEMENTWISE: tl.constexpr):
    """Each element's factor in the backward, in autograd's order in mmdet: a reduced loss
    (0-dim grad_out) ``((grad_out * loss_weight) / divisor) * weight[slot]`` (divisor 1 for
    'sum'), ``reduction='none'`` ``(grad_out * loss_weight) * weight[slot]`` element-wise."""
    weight = tl.load(slot_weight_ptr + slot).to(CDT)
    if ELEMENTWISE:
        go = tl.load(grad_out_ptr + base + lane, mask=mask, other=0.0).to(CDT)
        return (go * tl.cast(loss_weight, CDT)) * weight
    else:
        scale = _div(tl.load(grad_out_ptr).to(CDT) * tl.cast(loss_weight, CDT),
                     tl.load(divisor_ptr).to(CDT), CDT)
        return scale * weight


@triton.jit
def ghmc_grad_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, slot_weight_ptr,
                     grad_out_ptr, divisor_ptr, grad_ptr, loss_weight: tl.float64, numel,
                     C: tl.constexpr, BINS: tl.constexpr, LABELS: tl.constexpr,
                     WEIGHT: tl.constexpr, CDT: tl.constexpr, EXACT: tl.constexpr,
                     ELEMENTWISE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base, lane, mask = _block(pid, numel, BLOCK)
    x, t, s, slot, _ = _cls_slot(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, base,
                                 lane, mask, C, BINS, LABELS, WEIGHT, CDT, EXACT)
    factor = _grad_factor(slot, slot_weight_ptr, grad_out_ptr, divisor_ptr, loss_weight, base,
                          lane, mask, CDT, ELEMENTWISE)
    grad = tl.where(slot == 0, 0.0, (s - t) * factor)
    tl.store(grad_ptr + base + lane, grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reg_inputs(pred_ptr, target_ptr, weight_ptr, base, lane, mask, mu_sq,
                HAS_WEIGHT: tl.constexpr, CDT: tl.constexpr):
    """Difference d, root r = sqrt(d * d + mu^2) and validity. Launched without FP fusion:
    d * d is rounded before the addition, as PyTorch's separate kernels do."""
    d = (tl.load(pred_ptr + base + lane, mask=mask, other=0.0).to(CDT)
         - tl.load(target_ptr + base + lane, mask=mask, other=0.0).to(CDT))
    r2 = d * d + mu_sq
    if CDT == tl.float64:
        r = tl.sqrt(r2)  # float64 sqrt is IEEE (sqrt.rn.f64)
    else:
        r = tl.sqrt_rn(r2)
    if HAS_WEIGHT:
        valid = mask & _positive(tl.load(weight_ptr + base + lane, mask=mask, other=0))
    else:
        valid = mask
    return d, r, valid


@triton.jit
def _reg_slot(d, r, valid, edges_ptr, BINS: tl.constexpr, CDT: tl.constexpr):
    if CDT == tl.float64:
        g = tl.abs(d / r)
    else:
        g = tl.abs(tl.math.div_rn(d, r))
    return tl.where(valid, _slot_of(g, edges_ptr, BINS), 0)


@triton.jit
def ghmr_histogram_kernel(pred_ptr, target_ptr, weight_ptr, edges_ptr, counts_part_ptr,
                          sums_part_ptr, mu: tl.float64, mu_sq: tl.float64, numel, num_programs,
                          BINS: tl.constexpr, SLOTS_P2: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                          CDT: tl.constexpr, BLOCK: tl.constexpr, BLOCKS: tl.constexpr):
    pid = tl.program_id(0)
    counts = tl.zeros([SLOTS_P2], tl.int32)
    sums = tl.zeros([SLOTS_P2], CDT)
    for i in range(BLOCKS):
        base, lane, mask = _block(pid.to(tl.int64) * BLOCKS + i, numel, BLOCK)
        d, r, valid = _reg_inputs(pred_ptr, target_ptr, weight_ptr, base, lane, mask,
                                  tl.cast(mu_sq, CDT), HAS_WEIGHT, CDT)
        slot = _reg_slot(d, r, valid, edges_ptr, BINS, CDT)
        counts, sums = _add_slot_sums(counts, sums, slot, r - tl.cast(mu, CDT), mask, BINS,
                                      SLOTS_P2)
    _store_partials(counts, sums, counts_part_ptr, sums_part_ptr, pid, num_programs, BINS,
                    SLOTS_P2)


@triton.jit
def ghmr_elementwise_loss_kernel(pred_ptr, target_ptr, weight_ptr, edges_ptr, slot_weight_ptr,
                                 out_ptr, mu: tl.float64, mu_sq: tl.float64,
                                 loss_weight: tl.float64, numel, BINS: tl.constexpr,
                                 HAS_WEIGHT: tl.constexpr, CDT: tl.constexpr,
                                 BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base, lane, mask = _block(pid, numel, BLOCK)
    d, r, valid = _reg_inputs(pred_ptr, target_ptr, weight_ptr, base, lane, mask,
                              tl.cast(mu_sq, CDT), HAS_WEIGHT, CDT)
    slot = _reg_slot(d, r, valid, edges_ptr, BINS, CDT)
    w = tl.load(slot_weight_ptr + slot).to(CDT)
    loss = ((r - tl.cast(mu, CDT)) * w) * tl.cast(loss_weight, CDT)
    tl.store(out_ptr + base + lane, tl.where(slot == 0, 0.0, loss), mask=mask)


@triton.jit
def ghmr_grad_kernel(pred_ptr, target_ptr, weight_ptr, edges_ptr, slot_weight_ptr,
                     grad_out_ptr, divisor_ptr, grad_ptr, mu_sq: tl.float64,
                     loss_weight: tl.float64, numel,
                     BINS: tl.constexpr, HAS_WEIGHT: tl.constexpr, CDT: tl.constexpr,
                     ELEMENTWISE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base, lane, mask = _block(pid, numel, BLOCK)
    d, r, valid = _reg_inputs(pred_ptr, target_ptr, weight_ptr, base, lane, mask,
                              tl.cast(mu_sq, CDT), HAS_WEIGHT, CDT)
    slot = _reg_slot(d, r, valid, edges_ptr, BINS, CDT)
    factor = _grad_factor(slot, slot_weight_ptr, grad_out_ptr, divisor_ptr, loss_weight, base,
                          lane, mask, CDT, ELEMENTWISE)
    # autograd's order through sqrt(d * d + mu^2): (factor / (2 r)) * d, twice (from d * d)
    if CDT == tl.float64:
        half = (factor / (2.0 * r)) * d
    else:
        half = tl.math.div_rn(factor, 2.0 * r) * d
    grad = tl.where(slot == 0, 0.0, half + half)
    tl.store(grad_ptr + base + lane, grad.to(grad_ptr.dtype.element_ty), mask=mask)


# float32 machine epsilon: mmdet divides a mean loss by (avg_factor + eps)
EPS32 = tl.constexpr(1.1920928955078125e-07)


@triton.jit
def ghm_weigh_kernel(counts_ptr, sums_ptr, acc_ptr, updates_ptr, tot_ptr, poison_ptr,
                     slot_weight_ptr, loss_ptr, divisor_ptr, skip_ptr, numel,
                     momentum: tl.float64, keep: tl.float64, loss_weight: tl.float64,
                     BINS: tl.constexpr, SLOTS_P2: tl.constexpr, TOT_FROM_COUNTS: tl.constexpr,
                     HAS_POISON: tl.constexpr, EMA: tl.constexpr, REDUCTION: tl.constexpr,
                     CDT: tl.constexpr):
    """Everything between the histogram and the backward in one program (one launch instead of
    some 50 small ops), with :meth:`GradientDensity.update`'s rounding: the EMA state updated in
    place, the slot weights, the skip flag (non-finite loss sums of a valid element, a
    tot NaN or +inf, or poison), and for a reduced loss (REDUCTION 1 'mean', 2 'sum') the loss and
    the divisor the backward divides by. ``keep`` is the Python double ``1 - momentum``."""
    idx = tl.arange(0, SLOTS_P2)
    in_bins = (idx >= 1) & (idx <= BINS)
    counts = tl.load(counts_ptr + idx, mask=in_bins, other=0)
    sums = tl.load(sums_ptr + idx, mask=(idx >= 1) & (idx <= BINS + 1), other=0.0)
    finite = (sums == sums) & (tl.abs(sums) != float('inf'))
    skip = tl.max(tl.where(finite, 0, 1), axis=0) > 0
    if HAS_POISON:
        skip = skip | (tl.load(poison_ptr) != 0)
    if TOT_FROM_COUNTS:  # the valid elements (GHM-C; GHM-R without weights: all of them)
        tot = (numel - tl.load(counts_ptr)).to(tl.float32)
    else:
        tot = tl.load(tot_ptr).to(tl.float32)
    # GHM-R weights summing to NaN or +inf (mmdet's max(sum, 1) makes -inf 1)
    skip = skip | (tot != tot) | (tot == float('inf'))
    tot = tl.where(tot != tot, tot, tl.maximum(tot, 1.0))  # clamp(min=1) keeps NaN
    nonempty = counts > 0
    num_nonempty = tl.maximum(tl.sum(nonempty.to(tl.int32), axis=0), 1).to(tl.float32)
    if EMA:
        acc = tl.load(acc_ptr + idx - 1, mask=in_bins, other=0.0)
        updates = tl.load(updates_ptr + idx - 1, mask=in_bins, other=0.0)
        ema = acc * tl.cast(momentum, tl.float32) + (keep * counts.to(tl.float64)).to(tl.float32)
        updated = nonempty & (skip == 0)
        acc = tl.where(updated, ema, acc)
        tl.store(acc_ptr + idx - 1, acc, mask=in_bins)
        tl.store(updates_ptr + idx - 1, updates + updated.to(tl.float32), mask=in_bins)
        weight = tl.math.div_rn(1.0, acc) * tot  # torch: reciprocal(acc) * tot
    else:
        weight = (tot.to(tl.float64) / counts.to(tl.float64)).to(tl.float32)
    weight = tl.math.div_rn(tl.where(nonempty, weight, 0.0), num_nonempty)
    tl.store(slot_weight_ptr + idx, weight, mask=idx < BINS + 2)
    tl.store(skip_ptr, skip.to(tl.int8))
    if REDUCTION != 0:
        loss = tl.sum(tl.where(in_bins, sums * weight.to(tl.float64), 0.0), axis=0).to(CDT)
        if REDUCTION == 1:
            divisor = (tot.to(tl.float64) + EPS32).to(CDT)
            loss = _div(loss, divisor, CDT)
        else:
            divisor = tl.full([], 1.0, CDT)
        loss = loss * tl.cast(loss_weight, CDT)
        tl.store(loss_ptr, tl.where(skip, float('nan'), loss))
        tl.store(divisor_ptr, divisor)
