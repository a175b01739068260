"""Fused Triton kernels for GHM-C and GHM-R (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

Three passes per loss, each one read of the inputs and no N x C temporary:

1. histogram: gradient norm -> slot -> per-program ``tl.histogram`` -> one vector integer
   ``atomic_add`` into the ``(bins + 2,)`` slot counts (integer atomics: order-independent).
2. loss: per-element loss times its slot weight; per-program partial sums (summed afterwards in a
   fixed order, so the loss is bitwise reproducible) or the element-wise loss.
3. grad (backward): ``dloss/dpred`` times the slot's gradient scale, written once in pred's dtype.

The slot layout is :mod:`mmdet_ghm.density`'s. Edges are read from the density's float32 buffer, so
the kernels bin exactly like the PyTorch path and mmdet (``edges[i] <= g < edges[i+1]``).
Offsets are int64: inputs past 2**31 elements index correctly.
"""
import triton
import triton.language as tl

# Weight modes of GHM-C: no label weight, one per row (broadcast over classes), one per element.
WEIGHT_NONE, WEIGHT_ROW, WEIGHT_ELEMENT = 0, 1, 2


@triton.jit
def _slot_of(g, edges_ptr, BINS: tl.constexpr):
    """Slot of gradient norm g: 1 + bin, BINS + 1 when g is outside every bin or NaN."""
    finite = g == g
    b = tl.floor(tl.where(finite, g, 0.0) * BINS)
    b = tl.minimum(tl.maximum(b, 0.0), BINS - 1.0).to(tl.int32)
    # floor(g * BINS) can be off by one from the float32 edges right at a boundary: fix it.
    lo = tl.load(edges_ptr + b)
    hi = tl.load(edges_ptr + b + 1)
    b = tl.where(g < lo, b - 1, tl.where(g >= hi, b + 1, b))
    return tl.where(finite, b + 1, BINS + 1)


@triton.jit
def _count_slots(slot, mask, counts_ptr, BINS: tl.constexpr, SLOTS_P2: tl.constexpr):
    hist = tl.histogram(slot, SLOTS_P2, mask=mask)
    idx = tl.arange(0, SLOTS_P2)
    tl.atomic_add(counts_ptr + idx, hist.to(tl.int64), mask=idx < BINS + 2)


@triton.jit
def _cls_element(pred_ptr, label_ptr, target_ptr, weight_ptr, offs, mask, C,
                 LABELS: tl.constexpr, WEIGHT: tl.constexpr):
    """Logit, binary target and validity of flat elements ``offs`` of an (M, C) problem."""
    x = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    row = offs // C
    if LABELS:
        label = tl.load(label_ptr + row, mask=mask, other=-1)
        t = ((offs - row * C) == label).to(tl.float32)
    else:
        t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if WEIGHT == 1:
        valid = mask & (tl.load(weight_ptr + row, mask=mask, other=0) > 0)
    elif WEIGHT == 2:
        valid = mask & (tl.load(weight_ptr + offs, mask=mask, other=0) > 0)
    else:
        valid = mask
    return x, t, valid


@triton.jit
def _cls_slot(x, t, valid, edges_ptr, BINS: tl.constexpr):
    s = tl.sigmoid(x)
    slot = tl.where(valid, _slot_of(tl.abs(s - t), edges_ptr, BINS), 0)
    return s, slot


@triton.jit
def ghmc_histogram_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, counts_ptr,
                          numel, C, BINS: tl.constexpr, SLOTS_P2: tl.constexpr,
                          LABELS: tl.constexpr, WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x, t, valid = _cls_element(pred_ptr, label_ptr, target_ptr, weight_ptr, offs, mask, C,
                               LABELS, WEIGHT)
    _, slot = _cls_slot(x, t, valid, edges_ptr, BINS)
    _count_slots(slot, mask, counts_ptr, BINS, SLOTS_P2)


@triton.jit
def ghmc_loss_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, slot_weight_ptr,
                     out_ptr, loss_weight, numel, C, BINS: tl.constexpr, LABELS: tl.constexpr,
                     WEIGHT: tl.constexpr, ELEMENTWISE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x, t, valid = _cls_element(pred_ptr, label_ptr, target_ptr, weight_ptr, offs, mask, C,
                               LABELS, WEIGHT)
    _, slot = _cls_slot(x, t, valid, edges_ptr, BINS)
    w = tl.load(slot_weight_ptr + slot)
    # binary_cross_entropy_with_logits, in PyTorch's stable form
    m = tl.maximum(-x, 0.0)
    bce = (1.0 - t) * x + m + tl.log(tl.exp(-m) + tl.exp(-x - m))
    weighted = bce * w
    if ELEMENTWISE:
        tl.store(out_ptr + offs, weighted * loss_weight, mask=mask)
    else:
        tl.store(out_ptr + pid, tl.sum(tl.where(mask, weighted, 0.0), axis=0))


@triton.jit
def ghmc_grad_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr, slot_scale_ptr,
                     grad_out_ptr, grad_ptr, loss_weight, numel, C, BINS: tl.constexpr,
                     LABELS: tl.constexpr, WEIGHT: tl.constexpr, ELEMENTWISE: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x, t, valid = _cls_element(pred_ptr, label_ptr, target_ptr, weight_ptr, offs, mask, C,
                               LABELS, WEIGHT)
    s, slot = _cls_slot(x, t, valid, edges_ptr, BINS)
    scale = tl.load(slot_scale_ptr + slot)
    if ELEMENTWISE:
        # autograd's order for `bce * w * loss_weight`: (grad_out * loss_weight) * w
        go = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        scale = (go * loss_weight) * scale
    tl.store(grad_ptr + offs, ((s - t) * scale).to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reg_element(pred_ptr, target_ptr, weight_ptr, offs, mask, mu_sq,
                 HAS_WEIGHT: tl.constexpr):
    """Difference, sqrt(d^2 + mu^2) and validity; sqrt_rn/div_rn round like PyTorch."""
    d = (tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
         - tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    r = tl.sqrt_rn(d * d + mu_sq)
    if HAS_WEIGHT:
        valid = mask & (tl.load(weight_ptr + offs, mask=mask, other=0) > 0)
    else:
        valid = mask
    return d, r, valid


@triton.jit
def _reg_slot(d, r, valid, edges_ptr, BINS: tl.constexpr):
    return tl.where(valid, _slot_of(tl.abs(tl.math.div_rn(d, r)), edges_ptr, BINS), 0)


@triton.jit
def ghmr_histogram_kernel(pred_ptr, target_ptr, weight_ptr, edges_ptr, counts_ptr, mu_sq, numel,
                          BINS: tl.constexpr, SLOTS_P2: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                          BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    d, r, valid = _reg_element(pred_ptr, target_ptr, weight_ptr, offs, mask, mu_sq, HAS_WEIGHT)
    slot = _reg_slot(d, r, valid, edges_ptr, BINS)
    _count_slots(slot, mask, counts_ptr, BINS, SLOTS_P2)


@triton.jit
def ghmr_loss_kernel(pred_ptr, target_ptr, weight_ptr, edges_ptr, slot_weight_ptr, out_ptr,
                     mu, mu_sq, loss_weight, numel, BINS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     ELEMENTWISE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    d, r, valid = _reg_element(pred_ptr, target_ptr, weight_ptr, offs, mask, mu_sq, HAS_WEIGHT)
    slot = _reg_slot(d, r, valid, edges_ptr, BINS)
    weighted = (r - mu) * tl.load(slot_weight_ptr + slot)
    if ELEMENTWISE:
        tl.store(out_ptr + offs, weighted * loss_weight, mask=mask)
    else:
        tl.store(out_ptr + pid, tl.sum(tl.where(mask, weighted, 0.0), axis=0))


@triton.jit
def ghmr_grad_kernel(pred_ptr, target_ptr, weight_ptr, edges_ptr, slot_scale_ptr, grad_out_ptr,
                     grad_ptr, mu_sq, loss_weight, numel, BINS: tl.constexpr,
                     HAS_WEIGHT: tl.constexpr, ELEMENTWISE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    d, r, valid = _reg_element(pred_ptr, target_ptr, weight_ptr, offs, mask, mu_sq, HAS_WEIGHT)
    slot = _reg_slot(d, r, valid, edges_ptr, BINS)
    scale = tl.load(slot_scale_ptr + slot)
    if ELEMENTWISE:
        go = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        scale = (go * loss_weight) * scale
    # autograd's order through sqrt(d * d + mu^2): (scale / (2 r)) * d, twice (d * d).
    half = tl.math.div_rn(scale, 2.0 * r) * d
    tl.store(grad_ptr + offs, (half + half).to(grad_ptr.dtype.element_ty), mask=mask)
