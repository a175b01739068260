"""A candidate GHM-C forward for CUDA, timed by gpu_check.py beside the shipped one.

Shipped (``triton_kernels.ghmc_histogram_kernel``): one read of the inputs forms the slot counts
and the per-slot loss sums, and the loss is their dot product with the slot weights. Each slot
present in a block costs one masked reduction. On an H200 that pass took 1.18 ms of a 1.41 ms
call at 1M x 80; counting alone took 0.45-0.5 ms (docs/gpu.md).

Candidate ("two reads"): the first pass only counts; it also sums the loss of all valid elements
once, for the weighing's non-finite check. After the shipped weighing, a second read forms
``sum(slot_weight[slot] * loss)`` per program (one gather and one reduction a program), and a
one-program kernel sums those partials in a fixed order. That is one more read of the inputs and
one more launch, and no per-slot reductions. Whether it is faster is what the GPU check measures;
the shipped path adopts it only then. The kernels reuse the shipped binning, sigmoid and BCE, so
the counts are the shipped ones bit for bit.
"""
import torch
import triton
import triton.language as tl

from mmdet_ghm.ops import triton_kernels as K
from mmdet_ghm.ops import triton_passes as P


@triton.jit
def ghmc_count_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr,
                      counts_part_ptr, sums_part_ptr, numel, num_programs,
                      C: tl.constexpr, BINS: tl.constexpr, SLOTS_P2: tl.constexpr,
                      LABELS: tl.constexpr, WEIGHT: tl.constexpr, CDT: tl.constexpr,
                      EXACT: tl.constexpr, BLOCK: tl.constexpr, BLOCKS: tl.constexpr):
    """Slot counts of BLOCKS blocks, and the loss of all their valid elements in the row of slot
    BINS + 1 (0 in the other rows): the shipped reduction and weighing read these tables."""
    pid = tl.program_id(0)
    counts = tl.zeros([SLOTS_P2], tl.int32)
    total = tl.zeros([BLOCK], CDT)
    for i in range(BLOCKS):
        base, lane, mask = K._block(pid.to(tl.int64) * BLOCKS + i, numel, BLOCK)
        x, t, s, slot, bad = K._cls_slot(pred_ptr, label_ptr, target_ptr, weight_ptr,
                                         edges_ptr, base, lane, mask, C, BINS, LABELS, WEIGHT,
                                         CDT, EXACT)
        slot, loss = K._counted(slot, K._bce_with_logits(x, t), bad, BINS)
        counts += tl.histogram(slot, SLOTS_P2, mask=mask)
        total += tl.where(slot > 0, loss, 0.0)
    idx = tl.arange(0, SLOTS_P2)
    sums = tl.where(idx == BINS + 1, tl.sum(total, axis=0), 0.0)
    K._store_partials(counts, sums, counts_part_ptr, sums_part_ptr, pid, num_programs, BINS,
                      SLOTS_P2)


@triton.jit
def ghmc_weighted_loss_kernel(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr,
                              slot_weight_ptr, partials_ptr, numel,
                              C: tl.constexpr, BINS: tl.constexpr, LABELS: tl.constexpr,
                              WEIGHT: tl.constexpr, CDT: tl.constexpr, EXACT: tl.constexpr,
                              BLOCK: tl.constexpr, BLOCKS: tl.constexpr):
    """``sum(loss * slot_weight[slot])`` over BLOCKS blocks (mmdet's per-element product)."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], CDT)
    for i in range(BLOCKS):
        base, lane, mask = K._block(pid.to(tl.int64) * BLOCKS + i, numel, BLOCK)
        x, t, s, slot, _ = K._cls_slot(pred_ptr, label_ptr, target_ptr, weight_ptr, edges_ptr,
                                       base, lane, mask, C, BINS, LABELS, WEIGHT, CDT, EXACT)
        w = tl.load(slot_weight_ptr + slot).to(CDT)
        acc += tl.where(slot == 0, 0.0, K._bce_with_logits(x, t) * w)
    tl.store(partials_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def loss_finalize_kernel(partials_ptr, num_programs, divisor_ptr, skip_ptr, loss_ptr,
                         loss_weight: tl.float64, CDT: tl.constexpr, RBLOCK: tl.constexpr):
    """The partials summed in a fixed order (float64), then the shipped weighing's tail:
    ``(sum / divisor) * loss_weight``, NaN when the call is skipped."""
    total = tl.zeros([RBLOCK], tl.float64)
    for start in range(0, num_programs, RBLOCK):
        j = start + tl.arange(0, RBLOCK)
        total += tl.load(partials_ptr + j, mask=j < num_programs, other=0.0).to(tl.float64)
    loss = K._div(tl.sum(total, axis=0).to(CDT), tl.load(divisor_ptr).to(CDT), CDT)
    loss = loss * tl.cast(loss_weight, CDT)
    tl.store(loss_ptr, tl.where(tl.load(skip_ptr) != 0, float('nan'), loss))


# (elements a block, blocks a program, warps) of each candidate pass
COUNT_CONFIGS = ((256, 8, 1), (1024, 2, 4), (2048, 4, 8))
LOSS_CONFIGS = ((2048, 4, 8), (2048, 1, 8))


def count_pass(backend, config=COUNT_CONFIGS[0]):
    """int64 slot counts and the float64 table the weighing reads (loss total in slot bins + 1)
    of a :class:`~mmdet_ghm.ops.triton_passes.ClassificationTriton` backend's inputs."""
    block, blocks, warps = config
    options = dict(P._launch_options(block, warps, P.CLS_FP_FUSION), BLOCKS=blocks,
                   SLOTS_P2=P.next_power_of_2(backend.bins + 2))
    return backend._slot_sums(ghmc_count_kernel, backend._inputs(), (), options, backend.modes)


def weighted_loss(backend, weighing, loss_weight: float, config=LOSS_CONFIGS[0]):
    """The reduced ('mean' or 'sum') loss from the Triton weighing's slot weights, divisor and
    skip (the PyTorch weighing's 'sum' has no divisor tensor)."""
    block, blocks, warps = config
    programs = P.cdiv(backend.numel, block * blocks)
    partials = backend.pred.new_empty(programs, dtype=backend.dtype)
    loss = backend.pred.new_empty((), dtype=backend.dtype)
    with P._device_guard(backend.pred):
        ghmc_weighted_loss_kernel[(programs,)](
            *backend._inputs(), weighing.slot_weight, partials, backend.numel, **backend.modes,
            BLOCKS=blocks, **P._launch_options(block, warps, P.CLS_FP_FUSION))
        loss_finalize_kernel[(1,)](partials, programs, weighing.divisor,
                                   weighing.skip.view(torch.uint8), loss,
                                   float(loss_weight), CDT=backend.cdt, RBLOCK=P.REDUCE_BLOCK,
                                   num_warps=P.REDUCE_WARPS, enable_fp_fusion=False)
    return loss


def two_read_forward(backend, call, count_config=COUNT_CONFIGS[0]):
    """(slot counts, loss) of one reduced GHM-C forward of the candidate design on ``backend``'s
    inputs (``call`` as :meth:`GHMBackend.weigh` takes it; nonempty inputs)."""
    counts, sums = count_pass(backend, count_config)
    weighing = backend.weigh(counts, sums, call)
    return counts, weighted_loss(backend, weighing, call.loss_weight)
