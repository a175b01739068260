"""The Triton kernels (run by the interpreter on CPU tensors) against mmdet 3.3's own GHMC/GHMR on
the same inputs: loss, gradient, EMA state and slot counts, with inputs ON the bin edges.

The edge inputs are exact by construction (the interpreter's exp is numpy's, PyTorch's CPU
sigmoid is Sleef's: they may differ in the last bit, so g is made independent of exp):
GHM-C with logits -100 (sigmoid exactly 0, g = t) and +100 (sigmoid exactly 1, g = 1 - t) and
soft targets on, one ulp below and one ulp above every edge; GHM-R with g = |d| / sqrt(d^2 +
mu^2), IEEE ops only, scanned over the float32 d around every edge. The bin counts are those for
which ``floor(g * bins)`` disagrees with mmdet's float32 edges (found by computation below), so
these tests fail if the kernels' edge correction is removed.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

from mmdet_ghm import GradientDensity
from mmdet_ghm.binning import search_slots
from mmdet_ghm.ops import ghmc_loss, ghmr_loss
from mmdet_ghm.ops.triton_passes import ClassificationTriton, RegressionTriton

pytestmark = pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1',
                                reason='needs TRITON_INTERPRET=1 (tests/conftest.py sets it)')

# Bin counts where floor(g * bins) puts an edge value, or the float just below an edge, in
# another bin than mmdet's test on the float32 edges (see test_edge_bins_need_the_correction).
EDGE_BINS = [11, 29, 41, 61]
CLS_LAST_EDGE, REG_LAST_EDGE = 1.0 + 1e-6, 1e3
TOL = dict(rtol=2e-5, atol=1e-6)
F64_TOL = dict(rtol=5e-7, atol=1e-12)


def floor_disagreements(bins: int):
    """(edges e_k with floor(e_k * bins) != k, floats just below an edge with floor != k - 1),
    interior edges only, in float32 arithmetic as the kernels compute."""
    k = torch.arange(1, bins, dtype=torch.float32)
    edges = k / bins
    below = torch.nextafter(edges, torch.tensor(-1.0))
    return (int((torch.floor(edges * bins) != k).sum()),
            int((torch.floor(below * bins) != k - 1).sum()))


def test_edge_bins_need_the_correction():
    found = {bins: floor_disagreements(bins) for bins in range(1, 257)}
    assert sum(1 for at, below in found.values() if at or below) > 100
    assert all(sum(found[bins]) for bins in EDGE_BINS)
    assert any(found[bins][0] for bins in EDGE_BINS)  # an edge value itself
    assert any(found[bins][1] for bins in EDGE_BINS)  # the float just below an edge


def _mmdet_edges(bins, last_edge):
    edges = torch.arange(bins + 1).float() / bins
    edges[-1] = last_edge
    return edges


def _around(values):
    """Each value, the float below and the float above it (float32)."""
    return torch.cat([values, torch.nextafter(values, torch.tensor(-2.0)),
                      torch.nextafter(values, torch.tensor(2.0))])


def _cls_edge_inputs(bins):
    """Logits (-100: g = t; +100: g = 1 - t) and soft targets on and around every edge, plus
    targets outside [0, 1] (g outside every bin, or in a bin through |0 - t|)."""
    t = torch.cat([_around(_mmdet_edges(bins, CLS_LAST_EDGE)),
                   torch.tensor([0.0, 1.0, 1.5, -0.25, 2.0])])
    target = torch.stack([t, t, 1.0 - t], dim=1)
    pred = torch.tensor([-100.0, 100.0, 100.0]).expand_as(target).contiguous()
    weight = torch.ones_like(target)
    weight[::7, 0] = 0  # some ignored elements
    return pred, target, weight


def _reg_edge_diffs(bins, mu, scan=12, dtype=torch.float32):
    """d around every interior edge of g(d) = |d| / sqrt(d^2 + mu^2): the float nearest the exact
    crossing and `scan` floats on each side, both signs. Kept: the d whose root PyTorch's CPU
    sqrt rounds correctly (the kernels' sqrt is IEEE, as CUDA's; PyTorch's float32 CPU sqrt is
    off by an ulp for some inputs, which would move mmdet's own bin)."""
    e = (torch.arange(1, bins, dtype=torch.float64) / bins)
    d0 = (mu * e / torch.sqrt(1 - e * e)).to(dtype)
    itype = torch.int32 if dtype == torch.float32 else torch.int64
    steps = torch.arange(-scan, scan + 1, dtype=itype)
    d = (d0.view(itype)[:, None] + steps).view(dtype).reshape(-1)
    d = torch.cat([d, -d, torch.tensor([0.0, 1e3, -1e3], dtype=dtype)])
    root_sq = d * d + float(torch.tensor(mu * mu, dtype=dtype))
    if dtype == torch.float32:
        d = d[torch.sqrt(root_sq) == torch.sqrt(root_sq.double()).float()]
    return d


def _run(fn, pred, grad_out=None):
    p = pred.clone().requires_grad_()
    loss = fn(p)
    if grad_out is None:
        grad_out = torch.ones(()) if loss.dim() == 0 else torch.linspace(
            0.5, 1.5, loss.numel()).view(loss.shape)
    loss.backward(grad_out)
    return loss.detach(), p.grad


def _mmdet_cls(mm, target, weight, reduction):
    if reduction == 'sum':  # mmdet's 'sum' raises (avg_factor): the sum of its 'none'
        return lambda p: mm(p, target, weight, reduction_override='none').sum()
    return lambda p: mm(p, target, weight, reduction_override=reduction)


def _assert_same(ours, theirs, tol=TOL):
    (loss, grad), (ref_loss, ref_grad) = ours, theirs
    assert loss.dtype == ref_loss.dtype and grad.dtype == ref_grad.dtype
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(grad, ref_grad, **tol)


@pytest.mark.parametrize('bins', EDGE_BINS)
def test_ghmc_slot_counts_on_bin_edges_equal_mmdets_rule(bins):
    pred, target, weight = _cls_edge_inputs(bins)
    density = GradientDensity(bins, 0.0, CLS_LAST_EDGE)
    counts, sums = ClassificationTriton(pred, None, target, weight, density.binning).histogram()
    g = (torch.sigmoid(pred) - target).abs()  # mmdet's g
    slots = search_slots(g, _mmdet_edges(bins, CLS_LAST_EDGE)) * (weight > 0)
    assert torch.equal(counts, torch.bincount(slots.view(-1), minlength=bins + 2))
    bce = F.binary_cross_entropy_with_logits(pred, target, reduction='none').double()
    ref = torch.zeros(bins + 2, dtype=torch.float64).index_add_(0, slots.view(-1), bce.view(-1))
    torch.testing.assert_close(sums[1:], ref[1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('bins', EDGE_BINS)
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_ghmc_on_bin_edges_matches_mmdet(bins, reduction):
    pred, target, weight = _cls_edge_inputs(bins)
    density = GradientDensity(bins, 0.75, CLS_LAST_EDGE)
    mm = MMDetGHMC(bins=bins, momentum=0.75, loss_weight=0.5)
    for call in range(3):  # the EMA over several calls; rows reordered each time
        order = torch.randperm(pred.shape[0])
        p, t, w = pred[order], target[order], weight[order]
        ours = _run(lambda x: ghmc_loss(x, None, t, w, density, 0.5, reduction,
                                        backend='triton'), p)
        theirs = _run(_mmdet_cls(mm, t, w, reduction), p)
        _assert_same(ours, theirs)
        assert torch.equal(density.acc_sum, mm.acc_sum), f'call {call}'


@pytest.mark.parametrize('bins', EDGE_BINS + [10])
def test_ghmr_on_bin_edges_matches_mmdet(bins):
    mu = 0.02
    d = _reg_edge_diffs(bins, mu)
    pred = d.view(-1, 2) if d.numel() % 2 == 0 else d.view(-1, 1)
    target = torch.zeros_like(pred)
    weight = (torch.arange(pred.numel()) % 5 != 0).float().view(pred.shape) * 2
    density = GradientDensity(bins, 0.7, REG_LAST_EDGE)
    counts, _ = RegressionTriton(pred, target, weight, density.binning, mu).histogram()
    diff = pred - target
    g = (diff / torch.sqrt(mu * mu + diff * diff)).abs()
    slots = search_slots(g, _mmdet_edges(bins, REG_LAST_EDGE)) * (weight > 0)
    assert torch.equal(counts, torch.bincount(slots.view(-1), minlength=bins + 2))
    mm = MMDetGHMR(mu=mu, bins=bins, momentum=0.7, loss_weight=10.0)
    for reduction in ('mean', 'none', 'mean'):
        ours = _run(lambda x: ghmr_loss(x, target, weight, density, mu, 10.0, reduction,
                                        backend='triton'), pred)
        theirs = _run(lambda x: mm(x, target, weight, reduction_override=reduction), pred)
        _assert_same(ours, theirs)
        assert torch.equal(density.acc_sum, mm.acc_sum)


def _cls_random(n, c, seed):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, generator=gen) * 4
    pred[:, :1] = 30.0  # saturated: g == 1 for the negatives
    labels = torch.randint(0, c + 1, (n,), generator=gen)
    row_weight = (torch.rand(n, generator=gen) > 0.3).float()
    return pred, labels, row_weight


@pytest.mark.parametrize('bins', [1, 7, 30, 64])
@pytest.mark.parametrize('shape', [(1, 1), (37, 13), (0, 4)])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_ghmc_integer_labels_match_mmdet(bins, shape, reduction):
    density = GradientDensity(bins, 0.75, CLS_LAST_EDGE)
    mm = MMDetGHMC(bins=bins, momentum=0.75, loss_weight=0.5)
    for call in range(2):
        pred, labels, row_weight = _cls_random(*shape, seed=call)
        ours = _run(lambda x: ghmc_loss(x, labels, None, row_weight, density, 0.5, reduction,
                                        backend='triton'), pred)
        theirs = _run(_mmdet_cls(mm, labels, row_weight, reduction), pred)
        _assert_same(ours, theirs)
        assert torch.equal(density.acc_sum, mm.acc_sum)


def test_ghmc_without_weight_and_with_element_weights_match_mmdet():
    pred, labels, _ = _cls_random(61, 7, seed=3)
    onehot = F.one_hot(labels, 8)[:, :7].float()
    for weight in (None, torch.rand(61, 7) - 0.2):
        density = GradientDensity(30, 0.75, CLS_LAST_EDGE)
        mm = MMDetGHMC(bins=30, momentum=0.75)
        ref_weight = torch.ones(61, 7) if weight is None else weight
        ours = _run(lambda x: ghmc_loss(x, None, onehot, weight, density, backend='triton'), pred)
        theirs = _run(lambda x: mm(x, onehot, ref_weight), pred)
        _assert_same(ours, theirs)
        assert torch.equal(density.acc_sum, mm.acc_sum)


def test_ghmc_infinite_logits_on_the_right_side_give_finite_loss_and_mmdets_state():
    """x = -inf at a negative and +inf at a positive: BCE 0 and gradient 0 (torch's BCE, hence
    mmdet's loss, is NaN there); the bins (0) and so the EMA state are mmdet's."""
    pred, labels, row_weight = _cls_random(40, 5, seed=4)
    onehot = F.one_hot(labels, 6)[:, :5].bool()
    pred = torch.where(onehot, pred, torch.full_like(pred, -float('inf')))
    pred[::3] = torch.where(onehot[::3], float('inf'), -float('inf'))
    density = GradientDensity(10, 0.75, CLS_LAST_EDGE)
    mm = MMDetGHMC(bins=10, momentum=0.75)
    for reduction in ('mean', 'none'):
        loss, grad = _run(lambda x: ghmc_loss(x, labels, None, row_weight, density,
                                              reduction=reduction, backend='triton'), pred)
        mm(pred, labels, row_weight)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert torch.equal(grad[pred.isinf()], torch.zeros_like(grad[pred.isinf()]))
        assert torch.equal(density.acc_sum, mm.acc_sum)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_pred_is_computed_in_float32(dtype):
    pred, labels, row_weight = _cls_random(33, 7, seed=5)
    pred = pred.to(dtype)
    density = GradientDensity(30, 0.75, CLS_LAST_EDGE)
    mm = MMDetGHMC(bins=30, momentum=0.75)
    loss, grad = _run(lambda x: ghmc_loss(x, labels, None, row_weight, density,
                                          backend='triton'), pred)
    ref_loss, ref_grad = _run(lambda x: mm(x.float(), labels, row_weight), pred)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-2, atol=1e-5)
    assert torch.equal(density.acc_sum, mm.acc_sum)


def test_float64_pred_is_computed_in_float64_like_mmdet():
    # loss_weight and mu exact in float32: the interpreter rounds Python float arguments to it.
    # The slot weights are float32 (mmdet divides them by n in float64): 2 float32 ulps.
    pred, labels, row_weight = _cls_random(45, 6, seed=6)
    pred = pred.double()
    density = GradientDensity(29, 0.75, CLS_LAST_EDGE)
    mm = MMDetGHMC(bins=29, momentum=0.75, loss_weight=0.5)
    for reduction in ('mean', 'none'):
        ours = _run(lambda x: ghmc_loss(x, labels, None, row_weight, density, 0.5, reduction,
                                        backend='triton'), pred)
        theirs = _run(_mmdet_cls(mm, labels, row_weight, reduction), pred)
        _assert_same(ours, theirs, F64_TOL)
        assert torch.equal(density.acc_sum, mm.acc_sum)
    d = _reg_edge_diffs(11, 0.03125, dtype=torch.float64).view(-1, 1)
    target, weight = torch.zeros_like(d), torch.ones_like(d)
    density = GradientDensity(11, 0.7, REG_LAST_EDGE)
    mm = MMDetGHMR(mu=0.03125, bins=11, momentum=0.7, loss_weight=0.5)
    ours = _run(lambda x: ghmr_loss(x, target, weight, density, 0.03125, 0.5,
                                    backend='triton'), d)
    theirs = _run(lambda x: mm(x, target, weight), d)
    _assert_same(ours, theirs, F64_TOL)
    assert torch.equal(density.acc_sum, mm.acc_sum)


def test_ghmr_permuted_pred_and_no_weight_match_mmdet():
    gen = torch.Generator().manual_seed(7)
    pred = (torch.randn(4, 50, generator=gen) * 0.05).t()  # non-contiguous
    target = torch.randn(50, 4, generator=gen) * 0.05
    density = GradientDensity(10, 0.7, REG_LAST_EDGE)
    mm = MMDetGHMR(bins=10, momentum=0.7)
    ours = _run(lambda x: ghmr_loss(x, target, None, density, backend='triton'), pred)
    theirs = _run(lambda x: mm(x, target, torch.ones_like(target)), pred)
    _assert_same(ours, theirs)
    assert torch.equal(density.acc_sum, mm.acc_sum)


def test_histogram_and_gradient_are_bitwise_reproducible():
    pred, labels, row_weight = _cls_random(300, 11, seed=8)
    binning = GradientDensity(30, 0.75).binning
    runs = []
    for _ in range(2):
        backend = ClassificationTriton(pred, labels, None, row_weight, binning)
        counts, sums = backend.histogram()
        runs.append((counts, sums, backend.grad(torch.linspace(0, 1, 32), torch.tensor(0.5),
                                                  torch.tensor(3.0), 1.0, False)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_non_finite_valid_element_poisons_the_call_ignored_one_does_not():
    """A NaN logit (or +inf at a negative) of a valid element: NaN loss, EMA state untouched
    (no host sync to raise, as the CPU path does). An ignored element never matters: the same
    loss, gradient and state as mmdet's on the input with that element replaced."""
    pred, labels, row_weight = _cls_random(40, 5, seed=9)
    row_weight[3] = 0
    density = GradientDensity(10, 0.75, CLS_LAST_EDGE)
    mm = MMDetGHMC(bins=10, momentum=0.75)
    _run(lambda x: ghmc_loss(x, labels, None, row_weight, density, backend='triton'), pred)
    mm(pred, labels, row_weight)
    state = density.acc_sum.clone()
    for bad in (float('nan'), float('inf')):
        poisoned = pred.clone()
        poisoned[5, 0 if labels[5] != 0 else 1] = bad  # a valid negative
        loss = ghmc_loss(poisoned, labels, None, row_weight, density, backend='triton')
        assert torch.isnan(loss) and torch.equal(density.acc_sum, state)
    ignored = pred.clone()
    ignored[3] = float('nan')
    ours = _run(lambda x: ghmc_loss(x, labels, None, row_weight, density, backend='triton'),
                ignored)
    theirs = _run(lambda x: mm(x, labels, row_weight), pred)
    torch.testing.assert_close(ours[0], theirs[0], **TOL)
    torch.testing.assert_close(ours[1][row_weight > 0], theirs[1][row_weight > 0], **TOL)
    assert torch.equal(ours[1][3], torch.zeros_like(ours[1][3]))
    assert torch.equal(density.acc_sum, mm.acc_sum)


@pytest.mark.parametrize('weight_mode', ['none', 'row', 'element'])
@pytest.mark.parametrize('label_dtype', [torch.int64, torch.int8, torch.uint8])
@pytest.mark.parametrize('bias_correction', [False, True])  # fused / PyTorch weighing
def test_out_of_range_label_rejects_the_call_in_the_kernels(weight_mode, label_dtype,
                                                            bias_correction):
    """The Triton kernels check the labels' range themselves (GHMC's input checks leave it to
    them on CUDA): one label outside [0, C], even on an ignored row, gives a NaN loss (every
    element for 'none') and leaves the EMA state as it was, with a finite gradient (a NaN there
    would reach every parameter); labels in [0, C] are then counted as before."""
    n, c = 40, 5
    pred, labels, row_weight = _cls_random(n, c, seed=21)
    row_weight[7] = 0
    weight = dict(none=None, row=row_weight,
                  element=row_weight[:, None].expand(n, c).contiguous())[weight_mode]
    labels = labels.to(label_dtype)
    density = GradientDensity(10, 0.75, CLS_LAST_EDGE, bias_correction=bias_correction)

    def call(y, reduction='mean'):
        x = pred.clone().requires_grad_()
        loss = ghmc_loss(x, y, None, weight, density, reduction=reduction, backend='triton')
        loss.sum().backward()
        assert torch.isfinite(x.grad).all()
        return loss.detach()

    first = call(labels)
    state = density.acc_sum.clone()
    bad_values = [c + 1, 127] + ([-1] if label_dtype != torch.uint8 else [255])
    for row in (3, 7, n - 1):  # a valid row, the ignored one (with weights), the last
        for bad in bad_values:
            bad_labels = labels.clone()
            bad_labels[row] = bad
            for reduction in ('mean', 'sum', 'none'):
                loss = call(bad_labels, reduction)
                assert torch.isnan(loss).all(), (row, bad, reduction)
                assert torch.equal(density.acc_sum, state)
    reference = GradientDensity(10, 0.75, CLS_LAST_EDGE, bias_correction=bias_correction)
    ghmc_loss(pred, labels, None, weight, reference, backend='triton')
    again = ghmc_loss(pred, labels, None, weight, reference, backend='triton')
    assert torch.equal(call(labels), again) and torch.isfinite(first)


@pytest.mark.parametrize('label_dtype, classes', [(torch.int8, 200), (torch.uint8, 300)])
def test_narrow_labels_with_many_classes_reach_the_kernels_widened(label_dtype, classes):
    """The kernels compare labels with C in the labels' dtype: int8 / uint8 labels that cannot
    hold C are widened first, and mean what int64 labels mean."""
    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(6, classes, generator=gen)
    labels = torch.randint(0, 100, (6,), generator=gen)
    got = ghmc_loss(pred, labels.to(label_dtype), None, None, GradientDensity(10),
                    backend='triton')
    assert torch.equal(got, ghmc_loss(pred, labels, None, None, GradientDensity(10),
                                      backend='triton'))


def test_float64_gradient_factor_is_float64_on_every_path():
    """float64 pred: the backward factor ((grad_out * loss_weight) / divisor) * weight is formed
    in float64 by the Triton kernel, the CPU backend and the differentiable (create_graph) path
    alike (a float32 product would differ by ~5e-8 relative)."""
    gen = torch.Generator().manual_seed(12)
    pred = torch.randn(60, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 6, (60,), generator=gen)
    weight = (torch.rand(60, generator=gen) > 0.2).double()
    grads = []
    for backend, create_graph in (('triton', False), ('triton', True), ('cpu', False)):
        p = pred.clone().requires_grad_()
        # loss_weight exact in float32: the interpreter rounds a float scalar argument to
        # float32 (on a GPU the kernels take it as float64)
        loss = ghmc_loss(p, labels, None, weight, GradientDensity(10, 0.75), 0.75,
                         backend=backend) * 1.3
        grads.append(torch.autograd.grad(loss, p, create_graph=create_graph)[0].detach())
    for grad in grads[1:]:
        torch.testing.assert_close(grad, grads[0], rtol=1e-13, atol=0)
