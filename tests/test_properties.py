"""Property tests: GHMC / GHMR against mmdet 3.3.0's own classes over shapes, strides, dtypes
(of the inputs and of the module), value ranges (edges, +-inf, NaN, subnormals, huge values),
label weights, target kinds, reductions and successive calls.

Where mmdet defines the answer we give mmdet's loss, gradient and EMA state. Where mmdet's own
number is not finite (NaN / inf logits, overflowing squares) the answer is defined here:

- an element whose loss has a finite limit (logit -inf with target 0, +inf with target 1) gets that
  limit, i.e. mmdet's number for a saturated finite logit (its bin is the same);
- an ignored element (label weight <= 0) never matters, whatever its value;
- any other valid non-finite element makes the call raise ValueError and leaves the state as it was.

The hypothesis profile (tests/conftest.py) is derandomized: the same examples on every run.
"""
import copy
import functools
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
# mmdet's classes, as mmdet defines them (importing mmdet_ghm replaces the registry names only)
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

from mmdet_ghm import GHMC, GHMR
from mmdet_ghm.ops import ghmc_loss, ghmr_loss
from test_independent_reference import edge_neighbourhood, mmdet_edges

DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'float32': torch.float32,
          'float64': torch.float64}
REDUCTIONS = ('none', 'mean', 'sum')
momenta = st.one_of(st.just(0.0), st.floats(0.0, 0.99), st.sampled_from([0.5, 0.75, 0.9]))


def scalar_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's sigmoid through its scalar loop (a strided input takes it, as the tail of a
    vectorized loop does)."""
    return torch.sigmoid(torch.stack([x, x], 1).view(-1)[::2])


@functools.lru_cache(maxsize=None)
def edge_logits(bins: int) -> torch.Tensor:
    """float32 logits whose sigmoid is exactly an inner edge of ``bins`` bins or one ulp either
    side of it, the same through PyTorch's vectorized and scalar sigmoid (mmdet's result does not
    then depend on where in memory the logit sits)."""
    g = edge_neighbourhood(bins)
    g64 = g.double().clamp(1e-30, 1 - 1e-7)
    start = torch.log(g64 / (1 - g64)).float()
    bits = start.view(torch.int32)[:, None] + torch.arange(-128, 128, dtype=torch.int32)
    x = bits.view(torch.float32)
    flat = x.reshape(-1)
    same = (torch.sigmoid(flat) == scalar_sigmoid(flat)).view(x.shape)
    hit = (torch.sigmoid(x) == g[:, None]) & same
    return x[torch.arange(len(x)), hit.float().argmax(1)][hit.any(1)]


@functools.lru_cache(maxsize=None)
def edge_diffs(bins: int, mu: float) -> torch.Tensor:
    """float32 d >= 0 whose mmdet gradient norm ``|d / sqrt(mu*mu + d*d)|`` is exactly an inner
    edge of ``bins`` bins or one ulp either side of it."""
    g = edge_neighbourhood(bins)
    g64 = g.double()
    start = (mu * g64 / torch.sqrt(1 - g64 * g64)).float()
    bits = start.view(torch.int32)[:, None] + torch.arange(-256, 257, dtype=torch.int32)
    d = bits.view(torch.float32)
    hit = torch.abs(d / torch.sqrt(mu * mu + d * d)) == g[:, None]
    return d[torch.arange(len(d)), hit.float().argmax(1)][hit.any(1)]


SPECIALS = ('edge', 'zero', 'subnormal', 'big', 'inf', '-inf', 'nan')


def _special_value(kind: str, edge_pool: torch.Tensor, gen: torch.Generator) -> float:
    sign = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
    if kind == 'edge':
        if edge_pool.numel() == 0:
            return 0.0
        return float(edge_pool[torch.randint(0, edge_pool.numel(), (), generator=gen)])
    return {'zero': 0.0, 'subnormal': sign * 1e-40, 'big': sign * 3e4, 'inf': math.inf,
            '-inf': -math.inf, 'nan': math.nan}[kind]


def _place_specials(values: torch.Tensor, specials, edge_pool, gen) -> torch.Tensor:
    flat = values.reshape(-1)
    if flat.numel():
        for kind in specials:
            flat[torch.randint(0, flat.numel(), (), generator=gen)] = _special_value(
                kind, edge_pool, gen)
    return flat.view(values.shape)


def _layout(base: torch.Tensor, layout: str):
    """A leaf tensor and a view of it with base's values in the given memory layout (strides);
    gradients are compared on the leaf."""
    if layout == 'transposed':
        leaf = base.transpose(0, 1).contiguous().requires_grad_()
        return leaf, leaf.transpose(0, 1)
    if layout == 'strided':  # every other column of a wider tensor
        leaf = torch.stack([base, torch.zeros_like(base)], -1).flatten(-2).requires_grad_()
        return leaf, leaf[..., ::2]
    if layout == 'offset':  # a view that starts inside its storage
        leaf = torch.cat([torch.zeros(1, *base.shape[1:], dtype=base.dtype), base]) \
            .requires_grad_()
        return leaf, leaf[1:]
    if layout == 'expanded':  # stride 0 over the first dim: every row is the first
        leaf = base[:1].clone().requires_grad_()
        return leaf, leaf.expand(base.shape)
    if layout == 'channels_last':
        leaf = base.contiguous(memory_format=torch.channels_last).requires_grad_()
        return leaf, leaf
    leaf = base.clone().requires_grad_()
    return leaf, leaf


def _with_layout_values(base: torch.Tensor, layout: str) -> torch.Tensor:
    """base with the values the layout can hold (an expanded view repeats its first row)."""
    if layout == 'expanded' and base.shape[0] > 0:
        return base[:1].expand(base.shape).clone()
    return base


def _backward(value: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (value.sum() if value.dim() else value).backward()
    grad, leaf.grad = leaf.grad, None
    return grad


# ---------------------------------------------------------------------------------------------
# GHM-C
# ---------------------------------------------------------------------------------------------

def _ghmc_target(kind: str, labels: torch.Tensor, c: int, gen) -> torch.Tensor:
    onehot = torch.zeros(labels.numel(), c)
    pos = labels < c
    onehot[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    if kind == 'labels':
        return labels
    if kind == 'labels_int32':
        return labels.int()
    if kind == 'onehot_float':
        return onehot
    if kind == 'onehot_int':
        return onehot.long()
    if kind == 'onehot_bool':
        return onehot.bool()
    soft = torch.rand(labels.numel(), c, generator=gen)
    if kind == 'soft_wide':  # outside [0, 1] too: g may exceed the last edge (in no bin)
        return soft * 1.6 - 0.3
    return soft  # soft targets in [0, 1)


def _ghmc_weight(kind: str, n: int, c: int, gen):
    if kind == 'none':
        return None
    if kind == 'zeros':
        return torch.zeros(n)
    if kind == 'row':  # the values only mark validity in GHM-C
        return (torch.rand(n, generator=gen) > 0.2).float() * 2.0
    if kind == 'row1':
        return (torch.rand(n, 1, generator=gen) > 0.2).float()
    return (torch.rand(n, c, generator=gen) > 0.2).float() * torch.rand(n, c, generator=gen)


def _mmdet_ghmc_args(target, weight, n, c, target_kind, weight_kind):
    """What mmdet's GHMC is given for the same question: the same tensors where mmdet takes them,
    else their equivalent (one-hot float targets, a weight expanded over the classes)."""
    labels_given = target.dim() == 1
    if weight is None:  # every element valid
        return target, torch.ones(n) if labels_given else torch.ones(n, c)
    if labels_given and weight.dim() == 2 and weight.shape[1] == c and c != 1:
        onehot = torch.zeros(n, c)
        pos = target < c
        onehot[pos.nonzero().squeeze(1), target[pos].long()] = 1.0
        return onehot, weight
    if not labels_given and weight_kind in ('row', 'zeros') and n not in (1, c):
        # (N,) per anchor: mmdet would broadcast it against the classes, not the rows (where it
        # can, N == 1 or N == C, that is mmdet's number and ours)
        return target, weight[:, None].expand(n, c)
    return target, weight


def _ghmc_sanitized(pred, soft, valid):
    """mmdet's number for our answer: logits whose loss has a finite limit replaced by a
    saturated finite logit of the same bin; ignored NaN by 0. None if some valid element's
    loss is not finite (the call must raise)."""
    x = pred.double()
    bad = valid & (torch.isnan(x) | torch.isnan(soft) | ((x == math.inf) & (soft != 1))
                   | ((x == -math.inf) & (soft != 0)))
    if bad.any():
        return None
    x = torch.where(x == math.inf, 200.0, torch.where(x == -math.inf, -200.0, x))
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # ignored (else bad above)
    return x.to(pred.dtype)


def _bce_slack(x, soft, elementwise, reduction, ref_weight, valid):
    """How far float32 BCE-with-logits (mmdet's, PyTorch's ``(1 - t) * x - log_sigmoid(x)``)
    may be from an exact one: ~2 ulp of |x| per element, times the element's weight."""
    x = x.double()
    bce = torch.clamp(x, min=0) - x * soft + torch.log1p(torch.exp(-x.abs()))
    weight = torch.where(bce > 0, elementwise / bce, torch.zeros_like(bce)).abs()
    per_element = 2.4e-7 * x.abs() * weight
    if reduction == 'none':
        return per_element
    total = per_element.sum()
    if reduction == 'sum':
        return total
    return total / max(float((ref_weight > 0).sum()), 1.0)


@given(n=st.integers(0, 48), c=st.integers(0, 9), bins=st.integers(1, 64), momentum=momenta,
       loss_weight=st.sampled_from([1.0, 0.5, 3.0]),
       reduction=st.sampled_from(REDUCTIONS),
       target_kind=st.sampled_from(['labels', 'labels_int32', 'onehot_float', 'onehot_int',
                                    'onehot_bool', 'soft', 'soft_wide']),
       weight_kind=st.sampled_from(['none', 'row', 'row1', 'elem', 'zeros']),
       dtype=st.sampled_from(list(DTYPES)), module_dtype=st.sampled_from(list(DTYPES)),
       layout=st.sampled_from(['contiguous', 'transposed', 'strided', 'offset', 'expanded']),
       scale=st.sampled_from([0.5, 3.0, 12.0]),
       specials=st.lists(st.sampled_from(SPECIALS), max_size=4),
       seed=st.integers(0, 2**16))
def test_ghmc_matches_mmdet(n, c, bins, momentum, loss_weight, reduction, target_kind,
                            weight_kind, dtype, module_dtype, layout, scale, specials, seed):
    assume(c > 0 or target_kind in ('labels', 'onehot_float', 'soft'))
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[dtype]
    ours = GHMC(bins, momentum, loss_weight=loss_weight, reduction=reduction).to(
        DTYPES[module_dtype])
    ref = MMDetGHMC(bins, momentum, loss_weight=loss_weight)
    edge_pool = edge_logits(bins) if dtype in (torch.float32, torch.float64) else torch.zeros(0)
    for call in range(2):
        base = torch.randn(n, c, generator=gen) * scale
        base = _place_specials(base, specials if call == 0 else (), edge_pool, gen).to(dtype)
        base = _with_layout_values(base, layout)
        labels = torch.randint(0, c + 1, (n,), generator=gen)
        target = _ghmc_target(target_kind, labels, c, gen)
        weight = _ghmc_weight(weight_kind, n, c, gen)
        ref_target, ref_weight = _mmdet_ghmc_args(target, weight, n, c, target_kind, weight_kind)
        soft = ref_target.double() if ref_target.dim() == 2 else torch.zeros(n, c).double()
        if ref_target.dim() == 1:
            pos = (ref_target < c).nonzero().squeeze(1)
            soft[pos, ref_target[pos].long()] = 1.0
        valid = (ref_weight > 0).expand(n, c) if ref_weight.dim() == 2 else \
            (ref_weight > 0)[:, None].expand(n, c)
        sane = _ghmc_sanitized(base, soft, valid)

        leaf, pred = _layout(base, layout)
        state = ours.density.acc_sum.clone()
        if sane is None:
            with pytest.raises(ValueError):
                ours(pred, target, weight)
            assert torch.equal(ours.density.acc_sum, state)
            continue
        value = ours(pred, target, weight)
        grad = _backward(value, leaf)

        # mmdet computes in its input's dtype: give it float32 for fp16/bf16 (what we compute in)
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        ref_leaf, ref_pred = _layout(sane.to(ref_dtype), layout)
        with torch.no_grad():  # mmdet's element weights (times loss_weight), from its twin
            twin = copy.deepcopy(ref)
            elementwise = twin(sane.to(ref_dtype), ref_target, ref_weight,
                               reduction_override='none').double()
        ref_value = ref(ref_pred, ref_target, ref_weight,
                        reduction_override='none' if reduction != 'mean' else 'mean')
        if reduction == 'sum':  # mmdet's 'sum' raises (it always passes avg_factor)
            ref_value = ref_value.sum()
        ref_grad = _backward(ref_value, ref_leaf)
        slack = _bce_slack(sane, soft, elementwise, reduction, ref_weight, valid)

        assert value.dtype == torch.float32 if dtype != torch.float64 else value.dtype in (
            torch.float32, torch.float64)
        assert value.shape == ref_value.shape
        assert grad.dtype == dtype and grad.shape == leaf.shape
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
        if momentum > 0:
            assert torch.equal(ours.density.acc_sum, ref.acc_sum.float()), call
        error = (value.double() - ref_value.double()).abs()
        assert (error <= 2e-5 * ref_value.double().abs() + slack + 1e-7).all(), \
            f'loss {value} vs mmdet {ref_value}'
        if dtype in (torch.float16, torch.bfloat16):
            torch.testing.assert_close(grad, ref_grad.to(dtype))
        else:
            torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=2e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# GHM-R
# ---------------------------------------------------------------------------------------------

GHMR_SHAPES = [(0, 4), (1, 4), (7, 4), (33, 4), (5, 12), (3, 5, 4), (2, 4, 3, 5)]


def _ghmr_weight(kind, shape, gen):
    if kind == 'none':
        return None
    if kind == 'zeros':
        return torch.zeros(shape)
    if kind == 'row1':  # broadcast over the last dim: mmdet's tot is the sum of it as given
        return (torch.rand(*shape[:-1], 1, generator=gen) > 0.3).float()
    return (torch.rand(shape, generator=gen) > 0.3).float() * torch.rand(shape, generator=gen) * 2


def _ghmr_sanitized(pred, target, valid, mu):
    """None if a valid element's loss is not finite (NaN / inf / overflowing d * d: the call must
    raise); else the inputs with the ignored elements whose loss is not finite set to 0 (mmdet's
    NaN there means nothing)."""
    d = pred.float() - target.float()  # what is computed in float32
    if pred.dtype == torch.float64:
        d = pred - target
    finite = torch.isfinite(torch.sqrt(d * d + mu * mu) - mu)
    if (valid & ~finite).any():
        return None
    zero = torch.zeros_like(pred)
    return torch.where(finite, pred, zero), torch.where(finite, target, zero.to(target.dtype))


@given(shape=st.sampled_from(GHMR_SHAPES), bins=st.integers(1, 64), momentum=momenta,
       mu=st.one_of(st.sampled_from([0.02, 0.03, 0.1]), st.floats(0.005, 0.5)),
       loss_weight=st.sampled_from([1.0, 10.0]), reduction=st.sampled_from(REDUCTIONS),
       weight_kind=st.sampled_from(['none', 'elem', 'row1', 'zeros']),
       dtype=st.sampled_from(list(DTYPES)), module_dtype=st.sampled_from(list(DTYPES)),
       layout=st.sampled_from(['contiguous', 'transposed', 'strided', 'offset', 'expanded',
                               'channels_last']),
       specials=st.lists(st.sampled_from(SPECIALS), max_size=4),
       seed=st.integers(0, 2**16))
def test_ghmr_matches_mmdet(shape, bins, momentum, mu, loss_weight, reduction, weight_kind,
                            dtype, module_dtype, layout, specials, seed):
    assume(layout != 'channels_last' or len(shape) == 4)
    assume(layout != 'transposed' or len(shape) >= 2)
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[dtype]
    ours = GHMR(mu, bins, momentum, loss_weight=loss_weight, reduction=reduction).to(
        DTYPES[module_dtype])
    ref = MMDetGHMR(mu, bins, momentum, loss_weight=loss_weight)
    edge_pool = edge_diffs(bins, mu) if dtype in (torch.float32, torch.float64) \
        else torch.zeros(0)
    for call in range(2):
        base = torch.randn(shape, generator=gen) * mu * 4
        base = _place_specials(base, specials if call == 0 else (), edge_pool, gen)
        target = torch.zeros(shape)
        if 'big' in specials and call == 0 and base.numel():  # a finite d whose square overflows
            base.view(-1)[0] = 3e20
        base, target = _with_layout_values(base.to(dtype), layout), target.to(dtype)
        weight = _ghmr_weight(weight_kind, shape, gen)
        ref_weight = torch.ones(shape) if weight is None else weight
        valid = (ref_weight > 0).expand(shape)
        sane = _ghmr_sanitized(base, target, valid, mu)

        leaf, pred = _layout(base, layout)
        _, target_view = _layout(target, layout)
        state = ours.density.acc_sum.clone()
        if sane is None:
            with pytest.raises(ValueError):
                ours(pred, target_view.detach(), weight)
            assert torch.equal(ours.density.acc_sum, state)
            continue
        value = ours(pred, target_view.detach(), weight)
        grad = _backward(value, leaf)

        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        ref_leaf, ref_pred = _layout(sane[0].to(ref_dtype), layout)
        ref_value = ref(ref_pred, sane[1].to(ref_dtype), ref_weight,
                        reduction_override='none' if reduction != 'mean' else 'mean')
        if reduction == 'sum':
            ref_value = ref_value.sum()
        ref_grad = _backward(ref_value, ref_leaf)

        assert value.shape == ref_value.shape
        assert grad.dtype == dtype and grad.shape == leaf.shape
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
        if momentum > 0:
            assert torch.equal(ours.density.acc_sum, ref.acc_sum.float()), call
        torch.testing.assert_close(value.double(), ref_value.double(), rtol=2e-5, atol=1e-7)
        if dtype in (torch.float16, torch.bfloat16):
            torch.testing.assert_close(grad, ref_grad.to(dtype))
        else:
            torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=2e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Arguments mmdet rejects (an AssertionError or a crash there): ValueError here
# ---------------------------------------------------------------------------------------------

@given(bins=st.one_of(st.integers(-3, 0), st.floats(1.5, 3.5), st.just(True), st.none()))
def test_bad_bins_raise_value_error(bins):
    for make in (lambda: GHMC(bins=bins), lambda: GHMR(bins=bins)):
        with pytest.raises(ValueError, match='bins'):
            make()


@given(momentum=st.one_of(st.floats(1.0, 10.0), st.floats(-10.0, -1e-9), st.just(math.nan),
                          st.just(math.inf), st.none()))
def test_bad_momentum_raises_value_error(momentum):
    for make in (lambda: GHMC(momentum=momentum), lambda: GHMR(momentum=momentum)):
        with pytest.raises(ValueError, match='momentum'):
            make()


@given(mu=st.one_of(st.floats(-1.0, 0.0), st.just(math.nan), st.just(math.inf), st.none()))
def test_bad_mu_raises_value_error(mu):
    with pytest.raises(ValueError, match='mu'):
        GHMR(mu=mu)


@given(override=st.one_of(st.sampled_from(['avg', 'Mean', 'max', '']), st.integers(0, 3)))
def test_bad_reduction_override_raises_value_error_like_mmdets_assertion(override):
    """mmdet asserts reduction_override in (None, 'none', 'mean', 'sum'): ours raises an error
    that is both (a ValueError, as promised, caught by mmdet's AssertionError tests)."""
    pred, labels = torch.randn(4, 3), torch.randint(0, 4, (4,))
    with pytest.raises(AssertionError):
        MMDetGHMC()(pred, labels, torch.ones(4), reduction_override=override)
    with pytest.raises(ValueError, match='reduction'):
        GHMC()(pred, labels, torch.ones(4), reduction_override=override)
    with pytest.raises(ValueError, match='reduction'):
        GHMR()(pred, torch.zeros(4, 3), None, reduction_override=override)


@given(n=st.integers(1, 20), c=st.integers(1, 6), low=st.booleans())
def test_out_of_range_labels_give_mmdets_number_or_a_value_error(n, c, low):
    """mmdet's one-hot expansion makes a label outside [0, C] background: either that number, or
    a ValueError naming the labels with the state left as it was."""
    labels = torch.randint(0, c + 1, (n,))
    labels[0] = -1 if low else c + 1
    pred = torch.randn(n, c)
    ours, ref = GHMC(10, 0.5), MMDetGHMC(10, 0.5)
    try:
        value = ours(pred, labels, torch.ones(n))
    except ValueError as error:
        assert 'label' in str(error) or 'target' in str(error)
        assert not ours.density.acc_sum.any()
        return
    torch.testing.assert_close(value, ref(pred, labels, torch.ones(n)), rtol=2e-5, atol=1e-7)
    assert torch.equal(ours.density.acc_sum, ref.acc_sum)


# ---------------------------------------------------------------------------------------------
# Same inputs, same bits: memory layout and thread count do not change our result
# ---------------------------------------------------------------------------------------------

@settings(max_examples=15)  # 4 runs of 700 x 80 logits an example
@given(bins=st.sampled_from([10, 11, 29, 30, 41]), classes=st.sampled_from([1, 7, 80]),
       seed=st.integers(0, 2**16))
def test_layout_and_threads_do_not_change_the_bits(bins, classes, seed):
    """Logits on and next to edges, contiguous or transposed, 1 or 2 threads: one result, bit
    for bit (loss, gradient, state), including elements PyTorch's sigmoid code paths round
    apart."""
    gen = torch.Generator().manual_seed(seed)
    rows = 700
    pool = torch.cat([edge_logits(bins), torch.randn(200, generator=gen) * 3])
    base = pool[torch.randint(0, pool.numel(), (rows, classes), generator=gen)]
    labels = torch.randint(0, classes + 1, (rows,), generator=gen)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads, layout in [(1, 'contiguous'), (2, 'contiguous'), (2, 'transposed'),
                                (1, 'strided')]:
            torch.set_num_threads(threads)
            loss = GHMC(bins, 0.75)
            leaf, pred = _layout(base, layout)
            value = loss(pred, labels, None)
            grad = _backward(value, leaf)
            if layout == 'strided':
                grad = grad[..., ::2]
            elif layout == 'transposed':
                grad = grad.transpose(0, 1)
            results.append((value.detach(), grad.contiguous(), loss.density.acc_sum.clone()))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# The Triton path (run by the interpreter on CPU tensors) against mmdet on the same inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1',
                    reason='the Triton path on CPU tensors needs TRITON_INTERPRET=1 (conftest)')
@given(n=st.integers(0, 24), c=st.integers(1, 6), bins=st.integers(1, 64), momentum=momenta,
       reduction=st.sampled_from(REDUCTIONS), labels_given=st.booleans(),
       weight_kind=st.sampled_from(['none', 'row', 'elem', 'zeros']),
       dtype=st.sampled_from(list(DTYPES)),
       specials=st.lists(st.sampled_from(SPECIALS[1:]), max_size=3),  # no edge values: the
       seed=st.integers(0, 2**16))  # interpreter's numpy exp is not PyTorch's sigmoid
def test_triton_ghmc_matches_mmdet(n, c, bins, momentum, reduction, labels_given, weight_kind,
                                   dtype, specials, seed):
    """Where a valid element's loss is not finite the Triton path cannot raise without a host
    sync: the loss is NaN and the state is left as it was."""
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[dtype]
    ours, ref = GHMC(bins, momentum), MMDetGHMC(bins, momentum)
    for call in range(2):
        base = _place_specials(torch.randn(n, c, generator=gen) * 3,
                               specials if call == 0 else (), torch.zeros(0), gen).to(dtype)
        labels = torch.randint(0, c + 1, (n,), generator=gen)
        onehot = _ghmc_target('onehot_float', labels, c, gen)
        weight = _ghmc_weight(weight_kind, n, c, gen)
        ref_weight = torch.ones(n, c) if weight is None else (
            weight[:, None].expand(n, c) if weight.dim() == 1 else weight)
        valid = ref_weight > 0
        sane = _ghmc_sanitized(base, onehot.double(), valid)
        lab, tgt = (labels, None) if labels_given else (None, onehot)

        pred = base.clone().requires_grad_()
        state = ours.density.acc_sum.clone()
        value = ghmc_loss(pred, lab, tgt, weight, ours.density, 1.0, reduction,
                          backend='triton')
        if sane is None:
            assert torch.isnan(value).all()
            assert torch.equal(ours.density.acc_sum, state)
            continue
        grad = _backward(value, pred)
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        ref_pred = sane.to(ref_dtype).requires_grad_()
        with torch.no_grad():
            elementwise = copy.deepcopy(ref)(sane.to(ref_dtype), onehot, ref_weight,
                                             reduction_override='none').double()
        ref_value = ref(ref_pred, onehot, ref_weight,
                        reduction_override='none' if reduction != 'mean' else 'mean')
        if reduction == 'sum':
            ref_value = ref_value.sum()
        ref_grad = _backward(ref_value, ref_pred)
        slack = _bce_slack(sane, onehot.double(), elementwise, reduction, ref_weight, valid)

        assert grad.dtype == dtype and torch.isfinite(grad).all()
        if momentum > 0:
            assert torch.equal(ours.density.acc_sum, ref.acc_sum), call
        error = (value.double() - ref_value.double()).abs()
        assert (error <= 2e-5 * ref_value.double().abs() + slack + 1e-7).all(), \
            f'loss {value} vs mmdet {ref_value}'
        if dtype in (torch.float16, torch.bfloat16):
            torch.testing.assert_close(grad, ref_grad.to(dtype))
        else:
            torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=2e-5, atol=1e-8)


@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1',
                    reason='the Triton path on CPU tensors needs TRITON_INTERPRET=1 (conftest)')
@given(shape=st.sampled_from([(0, 4), (1, 4), (9, 4), (3, 5, 4)]), bins=st.integers(1, 64),
       momentum=momenta, mu=st.sampled_from([0.02, 0.1]), reduction=st.sampled_from(REDUCTIONS),
       weight_kind=st.sampled_from(['none', 'elem', 'zeros']),
       dtype=st.sampled_from(list(DTYPES)), transposed=st.booleans(),
       specials=st.lists(st.sampled_from(SPECIALS[1:]), max_size=3),
       seed=st.integers(0, 2**16))
def test_triton_ghmr_matches_mmdet(shape, bins, momentum, mu, reduction, weight_kind, dtype,
                                   transposed, specials, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[dtype]
    ours, ref = GHMR(mu, bins, momentum), MMDetGHMR(mu, bins, momentum)
    for call in range(2):
        base = _place_specials(torch.randn(shape, generator=gen) * mu * 4,
                               specials if call == 0 else (), torch.zeros(0), gen)
        if 'big' in specials and call == 0 and base.numel():
            base.view(-1)[0] = 3e20
        base, target = base.to(dtype), torch.zeros(shape, dtype=dtype)
        weight = _ghmr_weight(weight_kind, shape, gen)
        ref_weight = torch.ones(shape) if weight is None else weight
        sane = _ghmr_sanitized(base, target, ref_weight > 0, mu)

        leaf, pred = _layout(base, 'transposed' if transposed else 'contiguous')
        _, target_view = _layout(target, 'transposed' if transposed else 'contiguous')
        _, weight_view = (None, None) if weight is None else _layout(
            weight, 'transposed' if transposed else 'contiguous')
        state = ours.density.acc_sum.clone()
        value = ghmr_loss(pred, target_view.detach(),
                          None if weight_view is None else weight_view.detach(), ours.density,
                          mu, 1.0, reduction, backend='triton')
        if sane is None:
            assert torch.isnan(value).all()
            assert torch.equal(ours.density.acc_sum, state)
            continue
        grad = _backward(value, leaf)
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        ref_leaf, ref_pred = _layout(sane[0].to(ref_dtype),
                                     'transposed' if transposed else 'contiguous')
        ref_value = ref(ref_pred, sane[1].to(ref_dtype), ref_weight,
                        reduction_override='none' if reduction != 'mean' else 'mean')
        if reduction == 'sum':
            ref_value = ref_value.sum()
        ref_grad = _backward(ref_value, ref_leaf)

        assert grad.dtype == dtype and torch.isfinite(grad).all()
        if momentum > 0:
            assert torch.equal(ours.density.acc_sum, ref.acc_sum), call
        torch.testing.assert_close(value.double(), ref_value.double(), rtol=2e-5, atol=1e-7)
        if dtype in (torch.float16, torch.bfloat16):
            torch.testing.assert_close(grad, ref_grad.to(dtype))
        else:
            torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=2e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Ignored elements never matter, whatever their value
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('backend', ['cpu', 'triton'])
@pytest.mark.parametrize('loss_name', ['ghmc', 'ghmr'])
@pytest.mark.parametrize('reduction', REDUCTIONS)
@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf, 3e20])
def test_ignored_elements_change_nothing_whatever_their_value(backend, loss_name, reduction,
                                                             bad):
    """An element with label weight 0 holding NaN, +-inf or a value whose square overflows: the
    same loss and state as with a 0 there, and a gradient of exactly 0 there (mmdet's NaN loss
    means nothing: the element is ignored)."""
    if backend == 'triton' and os.environ.get('TRITON_INTERPRET') != '1':
        pytest.skip('the Triton path on CPU tensors needs TRITON_INTERPRET=1 (conftest)')
    gen = torch.Generator().manual_seed(3)
    if loss_name == 'ghmc':
        clean = torch.randn(12, 3, generator=gen) * 2
        labels = torch.randint(0, 4, (12,), generator=gen)
        weight = torch.ones(12)
        weight[[2, 7]] = 0

        def run(pred, density):
            return ghmc_loss(pred, labels, None, weight, density, 1.0, reduction,
                             backend=backend)
        density_of = lambda: GHMC(10, 0.75).density  # noqa: E731
        ignored = [(2, 1), (7, 0)]
    else:
        clean = torch.randn(6, 4, generator=gen) * 0.05
        weight = torch.ones(6, 4)
        weight[1, 2] = weight[4, 0] = 0

        def run(pred, density):
            return ghmr_loss(pred, torch.zeros(6, 4), weight, density, 0.02, 1.0, reduction,
                             backend=backend)
        density_of = lambda: GHMR(0.02, 10, 0.7).density  # noqa: E731
        ignored = [(1, 2), (4, 0)]
    dirty = clean.clone()
    for i, j in ignored:
        clean[i, j] = 0.0
        dirty[i, j] = bad
    results = []
    for values in (clean, dirty):
        density = density_of()
        pred = values.clone().requires_grad_()
        value = run(pred, density)
        results.append((value.detach(), _backward(value, pred), density.acc_sum.clone()))
    (loss, grad, state), (dirty_loss, dirty_grad, dirty_state) = results
    assert torch.equal(dirty_state, state)
    torch.testing.assert_close(dirty_loss, loss, rtol=0, atol=0)
    for i, j in ignored:
        assert dirty_grad[i, j] == 0, f'gradient {float(dirty_grad[i, j])} at an ignored element'
    torch.testing.assert_close(dirty_grad, grad, rtol=0, atol=0)
