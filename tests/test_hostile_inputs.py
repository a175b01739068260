"""NaN/inf, bias correction, out-of-range labels on the device path, large index arithmetic."""
import os

import pytest
import torch

from mmdet_ghm import GHMC, GHMR, GradientDensity
from mmdet_ghm.ops import ghmc_loss, ghmr_loss


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_logits_raise_on_cpu_and_keep_the_state(bad):
    loss = GHMC(30, 0.75)
    pred = torch.randn(40, 5)
    loss(pred, torch.randint(0, 6, (40,)))
    state = loss.density.acc_sum.clone()
    pred[3, 2] = bad
    labels = torch.randint(0, 6, (40,))
    labels[3] = 5  # background: -inf is then a perfectly easy negative
    if bad == -float('inf'):
        assert torch.isfinite(loss(pred, labels))
        return
    with pytest.raises(ValueError, match='NaN or inf'):
        loss(pred, labels)
    assert torch.equal(loss.density.acc_sum, state)


def test_non_finite_regression_raises_on_cpu():
    loss = GHMR(bins=10, momentum=0.7)
    pred = torch.randn(20, 4)
    pred[0, 0] = float('nan')
    with pytest.raises(ValueError, match='NaN or inf'):
        loss(pred, torch.zeros(20, 4))
    assert not loss.density.acc_sum.any()


@pytest.mark.parametrize('fn', ['cls', 'reg'])
def test_nan_on_the_device_path_never_enters_the_state(fn):
    """The Triton path (run by the interpreter here) cannot raise without a sync: a NaN element
    makes the loss NaN and leaves the EMA state as it was (the CPU path raises instead)."""
    pred = torch.rand(30, 4)
    if fn == 'cls':
        density = GradientDensity(10, 0.75)
        run = lambda p, d: ghmc_loss(p, None, torch.zeros(30, 4), None, d, backend='triton')
    else:
        density = GradientDensity(10, 0.75, 1e3)
        run = lambda p, d: ghmr_loss(p, torch.zeros(30, 4), None, d, backend='triton')
    assert torch.isfinite(run(pred, density))
    state = density.acc_sum.clone()
    assert state.any()
    poisoned = pred.clone()
    poisoned[0, 0] = float('nan')
    assert torch.isnan(run(poisoned, density))
    assert torch.equal(density.acc_sum, state)
    with pytest.raises(ValueError, match='NaN or inf'):
        if fn == 'cls':
            ghmc_loss(poisoned, None, torch.zeros(30, 4), None, density, backend='cpu')
        else:
            ghmr_loss(poisoned, torch.zeros(30, 4), None, density, backend='cpu')
    assert torch.equal(density.acc_sum, state)


def test_out_of_range_labels_on_the_device_path_give_nan_and_keep_the_state():
    density = GradientDensity(10, 0.75)
    pred, labels = torch.randn(8, 3), torch.randint(0, 4, (8,))
    ghmc_loss(pred, labels, None, None, density, backend='triton')
    state = density.acc_sum.clone()
    loss = ghmc_loss(pred, labels, None, None, density, poison=torch.tensor(True),
                     backend='triton')
    assert torch.isnan(loss)
    assert torch.equal(density.acc_sum, state)


@pytest.mark.parametrize('bad', ['label', 'score'])
def test_bad_quality_pair_on_the_device_path_gives_nan_and_keeps_the_state(bad):
    """What a CUDA call of GHMC does with a (labels, scores) pair out of range: the input check
    returns poison instead of raising (no host read), the Triton path gives NaN, state kept."""
    from mmdet_ghm.inputs import ghmc_inputs
    density = GradientDensity(10, 0.75)
    pred, labels, scores = torch.randn(8, 3), torch.randint(0, 4, (8,)), torch.rand(8)
    x = ghmc_inputs(pred, (labels, scores), None, check_labels_now=False)
    assert not x.poison
    ghmc_loss(x.pred, None, x.soft_target, None, density, poison=x.poison, backend='triton')
    state = density.acc_sum.clone()
    if bad == 'label':
        labels[3] = 4
    else:
        scores[3] = 1.5
    x = ghmc_inputs(pred, (labels, scores), None, check_labels_now=False)
    loss = ghmc_loss(x.pred, None, x.soft_target, None, density, poison=x.poison,
                     backend='triton')
    assert torch.isnan(loss)
    assert torch.equal(density.acc_sum, state)


def test_bias_correction_removes_the_first_weights_inflation():
    momentum = 0.75
    pred, labels = torch.randn(200, 6) * 3, torch.randint(0, 7, (200,))
    plain = GHMC(30, momentum, reduction='none')(pred, labels)
    corrected = GHMC(30, momentum, reduction='none', bias_correction=True)(pred, labels)
    no_ema = GHMC(30, 0.0, reduction='none')(pred, labels)
    # mmdet's first call: acc = (1 - m) * count, weights inflated by 1 / (1 - m)
    torch.testing.assert_close(plain, no_ema / (1 - momentum), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(corrected, no_ema, rtol=1e-5, atol=1e-7)
    assert 'bias_correction=True' in repr(GHMC(30, momentum, bias_correction=True))


def test_bias_correction_fades_out():
    d = GradientDensity(5, 0.5, bias_correction=True)
    g = torch.full((100,), 0.3)
    for _ in range(40):
        w = d(g)
    torch.testing.assert_close(w, torch.ones(100))  # tot / count / n with one bin: 1
    assert d.num_updates[1] == 40


def test_kernel_offsets_are_int64_by_construction():
    """Every per-element kernel forms its block's base offset through ``_block``, which widens
    the program id to int64 before multiplying, so an element past 2 ** 31 is addressed without
    overflow. (A real 2 ** 31-element run needs 8 GiB per input and hours in the interpreter:
    it belongs on a GPU.)"""
    import inspect

    from mmdet_ghm.ops import triton_kernels as K
    assert 'pid.to(tl.int64) * BLOCK' in inspect.getsource(K._block.fn)
    # the per-element kernels (the reduction and the weighing read (bins + 2)-sized tables)
    kernels = [getattr(K, name) for name in dir(K) if name.endswith('_kernel')
               and name not in ('slot_partials_reduce_kernel', 'ghm_weigh_kernel')]
    assert len(kernels) >= 6
    for kernel in kernels:
        source = inspect.getsource(kernel.fn)
        assert '_block(' in source, kernel.fn.__name__
        assert 'tl.program_id(0) *' not in source, kernel.fn.__name__


# --- issue 13: the ops layer against mmdet 3.3's GHMC / GHMR where mmdet defines the answer ---

from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC  # noqa: E402
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR  # noqa: E402


def _cls_problem(n=300, c=7, scale=3.0):
    pred = torch.randn(n, c) * scale
    labels = torch.randint(0, c + 1, (n,))
    weight = (torch.rand(n) > 0.2).float()
    onehot = torch.zeros(n, c)
    pos = labels < c
    onehot[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    return pred, labels, weight, onehot


def _loss_and_grad(fn, pred, reduction='mean'):
    p = pred.clone().requires_grad_()
    loss = fn(p)
    (loss.sum() if reduction == 'none' else loss).backward()
    return loss.detach(), p.grad


@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_float64_pred_gives_mmdets_float64_loss(reduction):
    """model.double(): mmdet computes in float64; so do we (the loss was 4e26 instead of 4.09)."""
    pred, labels, weight, onehot = _cls_problem()
    density, ref = GradientDensity(30, 0.75), MMDetGHMC(30, 0.75, reduction=reduction).double()
    for _ in range(3):
        loss, grad = _loss_and_grad(lambda p: ghmc_loss(p, labels, None, weight, density,
                                                        reduction=reduction), pred.double(),
                                    reduction)
        ref_loss, ref_grad = _loss_and_grad(
            lambda p: ref(p, onehot.double(), weight[:, None].expand_as(onehot).double()),
            pred.double(), reduction)
        assert loss.dtype == grad.dtype == torch.float64
        # mmdet's .double() also turns its EMA state to float64; ours stays float32
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(density.acc_sum.double(), ref.acc_sum, rtol=1e-6, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_pred_is_computed_in_float32(dtype):
    pred, labels, weight, onehot = _cls_problem()
    pred = pred.to(dtype)
    density, ref = GradientDensity(30, 0.75), MMDetGHMC(30, 0.75)
    loss, grad = _loss_and_grad(lambda p: ghmc_loss(p, labels, None, weight, density), pred)
    ref_loss, ref_grad = _loss_and_grad(
        lambda p: ref(p.float(), onehot, weight[:, None].expand_as(onehot)), pred)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.equal(density.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_soft_targets_outside_unit_interval_are_left_out_as_in_mmdet(reduction):
    """g = |s - t| beyond the last edge falls in no bin: not counted, weight 0 (mmdet)."""
    pred = torch.randn(200, 5) * 2
    target = torch.rand(200, 5) * 3 - 1  # in [-1, 2]: about half outside [0, 1]
    weight = (torch.rand(200, 5) > 0.2).float()
    density, ref = GradientDensity(10, 0.7), MMDetGHMC(10, 0.7, reduction=reduction)
    for _ in range(3):
        loss, grad = _loss_and_grad(lambda p: ghmc_loss(p, None, target, weight, density,
                                                        reduction=reduction), pred, reduction)
        ref_loss, ref_grad = _loss_and_grad(lambda p: ref(p, target, weight), pred, reduction)
        torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(grad, ref_grad, rtol=2e-5, atol=1e-9)
        assert torch.equal(density.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('fn', ['cls', 'reg'])
def test_double_backward_equals_mmdets(fn):
    """A gradient penalty (create_graph=True) differentiates the gradient: not a silent zero."""
    if fn == 'cls':
        pred, labels, weight, onehot = _cls_problem()
        ours = lambda p, d: ghmc_loss(p, labels, None, weight, d)  # noqa: E731
        ref = MMDetGHMC(30, 0.75)
        theirs = lambda p: ref(p, onehot, weight[:, None].expand_as(onehot))  # noqa: E731
        density = GradientDensity(30, 0.75)
    else:
        pred, target = torch.randn(50, 4) * 0.1, torch.randn(50, 4) * 0.1
        weight = (torch.rand(50, 4) > 0.3).float()
        ours = lambda p, d: ghmr_loss(p, target, weight, d)  # noqa: E731
        ref = MMDetGHMR(bins=10, momentum=0.7)
        theirs = lambda p: ref(p, target, weight)  # noqa: E731
        density = GradientDensity(10, 0.7, 1e3)
    results = []
    for loss_fn in (lambda p: ours(p, density), theirs):
        p = pred.clone().requires_grad_()
        grad, = torch.autograd.grad(loss_fn(p), p, create_graph=True)
        (grad.square().sum() * 1e3).backward()
        results.append((grad.detach(), p.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-9)
    assert results[1][1].abs().max() > 0
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-9)


def test_torch_func_grad_equals_autograd():
    pred, labels, weight, _ = _cls_problem()
    expected = _loss_and_grad(lambda p: ghmc_loss(p, labels, None, weight,
                                                  GradientDensity(30)), pred)[1]
    got = torch.func.grad(lambda p: ghmc_loss(p, labels, None, weight, GradientDensity(30)))(pred)
    assert torch.equal(got, expected)
    target, w = torch.randn(20, 4), torch.ones(20, 4)
    got = torch.func.grad(lambda p: ghmr_loss(p, target, w, GradientDensity(10, 0, 1e3)))(
        torch.randn(20, 4))
    assert got.shape == (20, 4) and got.abs().sum() > 0


def test_torch_compile_gives_the_eager_loss_and_gradient():
    """Dynamo traces the loss (with graph breaks at the C++ passes), as mmengine's compile=True."""
    pred, labels = torch.randn(100, 5), torch.randint(0, 6, (100,))

    def run(fn):
        p = pred.clone().requires_grad_()
        loss = fn(p)
        loss.backward()
        return loss.detach(), p.grad

    def loss_of(module):
        return lambda p: module(p, labels)
    eager = run(loss_of(GHMC(bins=10, momentum=0.7)))
    compiled = run(torch.compile(loss_of(GHMC(bins=10, momentum=0.7)), backend='eager'))
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])


@pytest.mark.parametrize('fn', ['cls', 'reg'])
def test_pred_modified_in_place_before_backward_is_detected(fn):
    pred = torch.randn(30, 4, requires_grad=True)
    p = pred * 1.0
    if fn == 'cls':
        loss = ghmc_loss(p, torch.randint(0, 5, (30,)), None, None, GradientDensity(10))
    else:
        loss = ghmr_loss(p, torch.zeros(30, 4), None, GradientDensity(10, 0, 1e3))
    p.mul_(2.0)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        loss.backward()


def test_minus_inf_logits_finite_and_consistent_in_every_reduction():
    """x = -inf at a negative: BCE's limit 0 and gradient 0 (mmdet's gradient and bins; its loss
    is NaN from torch's formula): 'none' has no NaN and sums to what 'sum' gives."""
    pred, labels, weight, onehot = _cls_problem()
    pred[0] = -float('inf')
    labels[0] = pred.shape[1]  # background row
    onehot[0] = 0.0
    losses = {}
    for reduction in ('none', 'sum', 'mean'):
        density = GradientDensity(30, 0.75)
        losses[reduction], grad = _loss_and_grad(
            lambda p: ghmc_loss(p, labels, None, weight, density, reduction=reduction), pred,
            reduction)
        if reduction != 'sum':  # mmdet's GHMC cannot sum (it always passes avg_factor)
            ref = MMDetGHMC(30, 0.75, reduction=reduction)
            _, ref_grad = _loss_and_grad(
                lambda p: ref(p, onehot, weight[:, None].expand_as(onehot)), pred, reduction)
            torch.testing.assert_close(grad, ref_grad, rtol=2e-5, atol=1e-9)
            assert torch.equal(density.acc_sum, ref.acc_sum)
    assert torch.isfinite(losses['none']).all() and (losses['none'][0] == 0).all()
    torch.testing.assert_close(losses['none'].sum(), losses['sum'], rtol=1e-5, atol=0)
    assert torch.isfinite(losses['mean'])


@pytest.mark.parametrize('layout', ['permuted', 'transposed', 'channels_last'])
def test_ghmr_on_non_contiguous_pred_equals_mmdet(layout):
    pred, target = torch.randn(2, 4, 3, 5) * 0.1, torch.randn(2, 4, 3, 5) * 0.1
    weight = (torch.rand(2, 4, 3, 5) > 0.3).float()
    if layout == 'permuted':
        make = lambda t: t.permute(0, 2, 3, 1)  # noqa: E731
    elif layout == 'transposed':
        make = lambda t: t.reshape(24, 5).t()  # noqa: E731
    else:
        make = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    p = make(pred.clone()).requires_grad_()
    assert layout == 'channels_last' or not p.is_contiguous()
    density, ref = GradientDensity(10, 0.7, 1e3), MMDetGHMR(bins=10, momentum=0.7)
    loss = ghmr_loss(p, make(target), make(weight), density)
    loss.backward()
    r = make(pred.clone()).contiguous().requires_grad_()
    ref_loss = ref(r, make(target).contiguous(), make(weight).contiguous())
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=0)
    torch.testing.assert_close(p.grad, r.grad, rtol=2e-5, atol=1e-9)
    assert torch.equal(density.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('shape', [(6, 0), (0, 5)])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_ghmc_zero_classes_or_rows_as_mmdet(shape, reduction):
    n, c = shape
    density, ref = GradientDensity(10, 0.7), MMDetGHMC(10, 0.7, reduction=reduction)
    labels = torch.full((n,), c, dtype=torch.int64)
    loss, grad = _loss_and_grad(lambda p: ghmc_loss(p, labels, None, torch.ones(n), density,
                                                    reduction=reduction), torch.randn(shape),
                                reduction)
    ref_loss, ref_grad = _loss_and_grad(lambda p: ref(p, torch.zeros(shape), torch.ones(shape)),
                                        torch.randn(shape), reduction)
    assert loss.shape == ref_loss.shape and grad.shape == ref_grad.shape
    torch.testing.assert_close(loss, ref_loss)
    assert not density.acc_sum.any()


def test_ghmr_square_overflow_is_named_and_ignored_elements_never_raise():
    pred, target = torch.randn(20, 4) * 0.1, torch.randn(20, 4) * 0.1
    weight = torch.ones(20, 4)
    pred[3, 1] = 3e19  # finite; its square overflows float32
    with pytest.raises(ValueError, match='overflows') as info:
        ghmr_loss(pred, target, weight, GradientDensity(10, 0.7, 1e3))
    assert 'NaN' not in str(info.value)
    weight[3, 1] = 0.0  # ignored: no error, and the other elements give mmdet's loss
    density, ref = GradientDensity(10, 0.7, 1e3), MMDetGHMR(bins=10, momentum=0.7)
    loss, grad = _loss_and_grad(lambda p: ghmr_loss(p, target, weight, density), pred)
    tame = pred.clone()
    tame[3, 1] = 0.0  # mmdet would give NaN (inf * 0): compare with the element made harmless
    ref_loss, ref_grad = _loss_and_grad(lambda p: ref(p, target, weight), tame)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=2e-5, atol=1e-9)
    assert torch.equal(density.acc_sum, ref.acc_sum)
    with pytest.raises(ValueError, match='NaN or inf'):
        ghmr_loss(torch.full((2, 4), float('nan')), torch.zeros(2, 4), None,
                  GradientDensity(10, 0.7, 1e3))


def _assert_same_on_1_2_3_threads(loss_fn, make_density, pred):
    """Two calls of ``loss_fn(p, density)`` on a fresh density per thread count (1, 2, 3): the
    losses, gradients and EMA state bitwise equal across the thread counts."""
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            density = make_density()
            out = [_loss_and_grad(lambda p: loss_fn(p, density), pred) for _ in range(2)]
            results.append((out, density.acc_sum.clone()))
    finally:
        torch.set_num_threads(previous)
    for out, state in results[1:]:
        assert torch.equal(state, results[0][1])
        for (loss, grad), (loss0, grad0) in zip(out, results[0][0]):
            assert torch.equal(loss, loss0) and torch.equal(grad, grad0)


def test_ghmr_same_state_loss_and_gradient_whatever_the_thread_count():
    """GHM-R's sqrt is not correctly rounded in PyTorch's vectorized CPU loop: the same
    results on 1, 2 and 3 threads all the same."""
    # differences whose g = |d| / sqrt(d^2 + mu^2) lies within a few ulps of a bin edge
    edges = torch.arange(1, 10, dtype=torch.float64) / 10
    d = (edges * 0.02 / (1 - edges ** 2).sqrt()).float()
    near = d.view(torch.int32)[:, None] + torch.arange(-2000, 2000, dtype=torch.int32)
    pred = torch.cat([near.view(-1).view(torch.float32), torch.randn(280004 - near.numel())
                      * 0.05])[torch.randperm(280004)].view(70001, 4)
    target = torch.zeros(70001, 4)
    _assert_same_on_1_2_3_threads(lambda p, density: ghmr_loss(p, target, None, density),
                                  lambda: GradientDensity(10, 0.7, 1e3), pred)


@pytest.mark.parametrize('targets', ['labels', 'soft'])
def test_same_state_loss_and_gradient_whatever_the_thread_count(targets):
    """The sigmoid's vectorized and scalar loops round differently; PyTorch's thread split
    decides which elements take the scalar one. Ours does not depend on it: bitwise the same
    results on 1, 2 and 3 threads, for sizes that are not multiples of anything."""
    pred = torch.randn(70001, 13) * 3 - 2
    labels = torch.randint(0, 14, (70001,))
    target = torch.rand(70001, 13) if targets == 'soft' else None
    _assert_same_on_1_2_3_threads(
        lambda p, density: ghmc_loss(p, labels if target is None else None, target, None,
                                     density),
        lambda: GradientDensity(30, 0.75), pred)


@pytest.mark.parametrize('op', [torch.sigmoid, torch.sqrt, torch.log1p])
def test_exact_ops_give_each_element_the_same_bits_at_any_position(op):
    """The ops whose vectorized and scalar loops round differently (the binning depends on
    sigmoid and sqrt) are evaluated so that an element's bits depend on its value only: the
    same in a 1-element tensor, in a scalar tail, or deep inside a long one, on any thread
    count."""
    from mmdet_ghm.ops.cpu_passes import _exact
    x = torch.randn(100003) * 4  # plain torch.sigmoid: ~5% of its scalar tails differ here
    x = x.abs() if op is torch.sqrt else -x.abs() / (1 + x.abs()) if op is torch.log1p else x
    previous = torch.get_num_threads()
    try:
        reference = None
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            full = _exact(op, x, torch.empty_like(x))
            reference = full if reference is None else reference
            assert torch.equal(full, reference)
            for start, length in [(0, 1), (5, 17), (100000, 3), (31, 64), (7, 40001)]:
                part = x[start:start + length]
                assert torch.equal(_exact(op, part, torch.empty_like(part)),
                                   reference[start:start + length])
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize('fn', ['cls', 'soft', 'reg'])
def test_non_finite_ignored_elements_give_zero_gradient_and_loss(fn):
    """An ignored element (label weight 0) never counts: NaN or inf there gives no error, a
    zero gradient and a zero 'none' loss (mmdet's NaN * 0 would be NaN)."""
    pred = torch.randn(40, 3)
    pred[2, 1], pred[5, 0] = float('nan'), float('inf')
    weight = torch.ones(40, 3)
    weight[2, 1] = weight[5, 0] = 0.0
    for reduction in ('mean', 'none'):
        p = pred.clone().requires_grad_()
        if fn == 'reg':
            loss = ghmr_loss(p, torch.zeros(40, 3), weight, GradientDensity(10, 0.7, 1e3),
                             reduction=reduction)
        else:
            labels = torch.randint(0, 4, (40,)) if fn == 'cls' else None
            target = torch.rand(40, 3) if fn == 'soft' else None
            loss = ghmc_loss(p, labels, target, weight, GradientDensity(10, 0.7),
                             reduction=reduction)
        (loss.sum() if reduction == 'none' else loss).backward()
        assert torch.isfinite(loss).all() and torch.isfinite(p.grad).all()
        assert p.grad[2, 1] == 0 and p.grad[5, 0] == 0
        if reduction == 'none':
            assert loss[2, 1] == 0 and loss[5, 0] == 0


def test_one_dimensional_pred_with_element_weights_equals_mmdet():
    """pred (N,) with a target and a weight of its shape: every element its own weight (not the
    first element's for all, as a per-row weight of one row would be)."""
    pred, target = torch.randn(30) * 3, torch.rand(30)
    weight = (torch.rand(30) > 0.5).float()
    weight[0] = 0.0
    onehot = (torch.rand(30) > 0.7).long()
    for tgt in (target, onehot):
        ours, ref = GHMC(10, 0.75), MMDetGHMC(bins=10, momentum=0.75)
        for _ in range(2):
            loss, grad = _loss_and_grad(lambda p: ours(p, tgt, weight), pred)
            ref_loss, ref_grad = _loss_and_grad(lambda p: ref(p, tgt, weight), pred)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
            assert torch.equal(grad, ref_grad) and torch.equal(ours.acc_sum, ref.acc_sum)
        elementwise = GHMC(10)(pred, tgt, weight, reduction_override='none')
        assert elementwise.shape == (30,) and not elementwise[weight == 0].any()


@pytest.mark.parametrize('fn', ['cls', 'reg'])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_target_gradient_equals_mmdets(fn, reduction):
    """A target that requires grad gets mmdet's gradient (autograd's through mmdet's loss),
    also when it is the only input that does."""
    if fn == 'cls':
        pred, target = torch.randn(60, 6) * 3, torch.rand(60, 6)
        weight = (torch.rand(60, 6) > 0.2).float()
        ours, ref = GHMC(10, 0.75, reduction=reduction), MMDetGHMC(10, 0.75, reduction=reduction)
    else:
        pred, target = torch.randn(60, 4) * 0.1, torch.randn(60, 4) * 0.1
        weight = (torch.rand(60, 4) > 0.3).float()
        ours, ref = GHMR(bins=10, momentum=0.7, reduction=reduction), \
            MMDetGHMR(bins=10, momentum=0.7, reduction=reduction)
    grad_out = torch.rand(pred.shape) if reduction == 'none' else torch.tensor(1.7)
    for _ in range(2):
        grads = []
        for loss in (ours, ref):
            p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
            loss(p, t, weight).backward(grad_out)
            grads.append((p.grad, t.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        assert grads[0][1].abs().sum() > 0
    t = target.clone().requires_grad_()
    ours(pred, t, weight).backward(grad_out)  # pred without grad: the target's gradient only
    ref_t = target.clone().requires_grad_()
    ref(pred, ref_t, weight).backward(grad_out)
    assert torch.equal(t.grad, ref_t.grad)


@pytest.mark.parametrize('backend', ['cpu', 'triton'])
@pytest.mark.parametrize('fn', ['soft', 'labels', 'weight', 'reg', 'reg_weight'])
def test_inputs_modified_in_place_before_backward(backend, fn):
    """An input the backward reads again, modified in place after the forward: autograd's error
    (mmdet's GHMC raises for its target too), never a gradient from the modified values. One
    the backward does not read again (the CPU backend keeps labels and validity) gives the
    gradient of the values the forward saw."""
    pred = torch.randn(40, 4) * 2
    labels, target = torch.randint(0, 5, (40,)), torch.rand(40, 4)
    weight = (torch.rand(40, 4) > 0.3).float()
    if fn in ('soft', 'labels', 'weight'):
        tgt = target if fn == 'soft' else labels
        run = lambda p: ghmc_loss(p, tgt if fn != 'soft' else None,  # noqa: E731
                                  tgt if fn == 'soft' else None, weight, GradientDensity(10),
                                  backend=backend)
        changed = {'soft': target, 'labels': labels, 'weight': weight}[fn]
    else:
        run = lambda p: ghmr_loss(p, target, weight, GradientDensity(10, 0, 1e3),  # noqa: E731
                                  backend=backend)
        changed = target if fn == 'reg' else weight
    expected = _loss_and_grad(run, pred)[1]
    p = pred.clone().requires_grad_()
    loss = run(p)
    changed.mul_(0).add_(1)  # values that would change the gradient
    reread = backend == 'triton' or fn in ('soft', 'reg')
    if reread:
        with pytest.raises(RuntimeError, match='modified by an inplace operation'):
            loss.backward()
    else:
        loss.backward()
        assert torch.equal(p.grad, expected)


def test_integer_regression_targets_as_mmdet():
    """mmdet's ``pred - target`` promotes integer targets to pred's dtype; bool ones it
    refuses, and so do we (ValueError)."""
    pred, target = torch.randn(40, 4) * 2, torch.randint(-3, 4, (40, 4))
    ours, ref = GHMR(bins=10, momentum=0.7), MMDetGHMR(bins=10, momentum=0.7)
    for _ in range(2):
        loss, grad = _loss_and_grad(lambda p: ours(p, target), pred)
        ref_loss, ref_grad = _loss_and_grad(lambda p: ref(p, target, torch.ones(40, 4)), pred)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        assert torch.equal(grad, ref_grad) and torch.equal(ours.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_ghmr_non_finite_weights_raise_or_skip_the_call(bad):
    """NaN / +inf weights make mmdet's normalizer (their sum) NaN / inf and its loss NaN, with the
    state updated: the module raises on the CPU, the functional (and the Triton path, which
    cannot raise without a host sync) returns NaN; the EMA state is kept in every case."""
    pred, target = torch.randn(30, 4) * 0.1, torch.randn(30, 4) * 0.1
    weight = torch.ones(30, 4)
    loss = GHMR(bins=10, momentum=0.7)
    loss(pred, target, weight)
    state = loss.acc_sum.clone()
    weight[2, 1] = bad
    with pytest.raises(ValueError, match='^label_weight must not sum to NaN or \\+inf'):
        loss(pred, target, weight)
    assert torch.equal(loss.acc_sum, state)
    for backend in ('cpu', 'triton'):
        density = GradientDensity(10, 0.7, 1e3)
        ghmr_loss(pred, target, torch.ones(30, 4), density, backend=backend)
        state = density.acc_sum.clone()
        for reduction in ('mean', 'none'):
            out = ghmr_loss(pred, target, weight, density, reduction=reduction, backend=backend)
            assert torch.isnan(out).all() and torch.equal(density.acc_sum, state)


@pytest.mark.parametrize('weights', ['one -inf', 'sum overflows to -inf'])
def test_ghmr_weights_summing_to_minus_inf_give_mmdets_number(weights):
    """mmdet's normalizer is max(sum of the weights, 1): a sum of -inf is 1, a finite loss (the
    elements with weight <= 0 are not valid). The module, the CPU functional and the Triton path
    give that number and mmdet's EMA state."""
    from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR
    gen = torch.Generator().manual_seed(3)
    pred, target = torch.randn(30, 4, generator=gen) * 0.1, torch.randn(30, 4, generator=gen) * 0.1
    weight = torch.ones(30, 4)
    if weights == 'one -inf':
        weight[2, 1] = -float('inf')
    else:
        weight[2, 1] = weight[5, 0] = -3e38
    ref = MMDetGHMR(bins=10, momentum=0.7)
    want = [ref(pred, target, weight) for _ in range(2)]
    assert all(torch.isfinite(w) for w in want)
    ours = GHMR(bins=10, momentum=0.7)
    for w in want:
        torch.testing.assert_close(ours(pred, target, weight), w, rtol=1e-6, atol=0)
    assert torch.equal(ours.acc_sum, ref.acc_sum)
    for backend in ('cpu', 'triton'):
        density = GradientDensity(10, 0.7, 1e3)
        for w in want:
            got = ghmr_loss(pred, target, weight, density, backend=backend)
            torch.testing.assert_close(got, w, rtol=1e-6, atol=0)
        assert torch.equal(density.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('backend', ['cpu', 'triton'])
def test_narrow_label_dtypes_mean_the_same_classes(backend):
    """Labels of any integer dtype mean what int64 labels mean, also in a (labels, scores) pair
    and given to ghmc_loss directly. uint8 labels with C >= 256 (int8 with C >= 128): PyTorch
    compares them with C in their own dtype, where C wraps (mmdet's one-hot then drops those
    classes); narrow labels that hold C must still index the classes."""
    from mmdet_ghm.inputs import ghmc_inputs

    def run(p, target, backend):
        density = GradientDensity(30, 0.75)
        i = ghmc_inputs(p, target, None)
        return ghmc_loss(i.pred, i.labels, i.soft_target, None, density, backend=backend)

    def run_directly(p, labels, backend):
        return ghmc_loss(p, labels, None, None, GradientDensity(30, 0.75), backend=backend)

    scores = torch.rand(6)
    for classes, labels, dtype in ((300, [5, 250, 255, 0, 17, 128], torch.uint8),
                                   (150, [3, 100, 120, 127, 0, 7], torch.int8),
                                   (7, [0, 7, 2, 6, 7, 3], torch.uint8),
                                   (7, [0, 7, 2, 6, 7, 3], torch.int8),
                                   (7, [0, 7, 2, 6, 7, 3], torch.int16),
                                   (7, [0, 7, 2, 6, 7, 3], torch.int32)):
        pred, wide = torch.randn(6, classes) * 2, torch.tensor(labels)
        for target, narrow in ((wide, wide.to(dtype)), ((wide, scores), (wide.to(dtype), scores))):
            got = _loss_and_grad(lambda p: run(p, narrow, backend), pred)
            ref = _loss_and_grad(lambda p: run(p, target, 'cpu'), pred)
            torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)
            torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-9)
        got = _loss_and_grad(lambda p: run_directly(p, wide.to(dtype), backend), pred)
        ref = _loss_and_grad(lambda p: run_directly(p, wide, 'cpu'), pred)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match='labels must lie'):  # still checked, now in int64
        GHMC()(torch.randn(2, 300), torch.tensor([5, 301]).to(torch.int16))


@pytest.mark.parametrize('fn', ['cls_row', 'cls_elem', 'reg'])
def test_half_precision_weights_on_the_triton_path(fn):
    """bfloat16 / float16 weights, negative and -0.0 among them: invalid, as on the CPU."""
    values = torch.tensor([1.0, -1.0, -0.0, 0.5, 0.0, 2.0])
    pred, target = torch.randn(6, 4) * 0.1, torch.zeros(6, 4)
    logits, labels = torch.randn(6, 5) * 2, torch.tensor([0, 1, 5, 2, 3, 4])
    for dtype in (torch.bfloat16, torch.float16):
        results = []
        for backend in ('cpu', 'triton'):
            if fn == 'reg':
                weight = values[:, None].expand(6, 4).to(dtype).contiguous()
                results.append(_loss_and_grad(lambda p: ghmr_loss(
                    p, target, weight, GradientDensity(10, 0.7, 1e3), backend=backend), pred))
            else:
                weight = (values if fn == 'cls_row' else values[:, None].expand(6, 5)).to(dtype)
                results.append(_loss_and_grad(lambda p: ghmc_loss(
                    p, labels, None, weight.contiguous(), GradientDensity(10, 0.75),
                    backend=backend), logits))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-9)


def test_edges_edited_in_place_bin_as_mmdet():
    """The binning follows an in-place edit of ``edges`` (its version counter), and a restore,
    as mmdet's loop over the edges does: loss, gradient and EMA state equal mmdet's."""
    pred, labels, weight, _ = _cls_problem(n=500, c=6)
    ours, theirs = GHMC(bins=4, momentum=0.7), MMDetGHMC(bins=4, momentum=0.7)
    for loss in (ours, theirs):  # the binning of mmdet's edges is built and cached
        _loss_and_grad(lambda p: loss(p, labels, weight), pred)
    uniform = ours.edges.clone()
    for edges in (torch.tensor([0.0, 0.05, 0.2, 0.6, 1.0 + 1e-6]), torch.tensor(
            [0.0, 0.25, 0.5, 0.75, 0.9]), uniform):
        with torch.no_grad():
            ours.edges.copy_(edges)
            theirs.edges.copy_(edges)
        (loss_a, grad_a), (loss_b, grad_b) = (
            _loss_and_grad(lambda p: m(p, labels, weight), pred) for m in (ours, theirs))
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
        assert torch.equal(grad_a, grad_b) and torch.equal(ours.acc_sum, theirs.acc_sum)
    assert ours.density.binning.unit_edges  # back on the C++ passes


def test_edges_that_do_not_increase_raise_and_keep_the_state():
    loss = GHMC(bins=10, momentum=0.7)
    labels = torch.randint(0, 6, (40,))
    loss(torch.randn(40, 5), labels)
    state = loss.acc_sum.clone()
    with torch.no_grad():
        loss.edges[-1] = 0.5  # mmdet's bin 9 is then empty, and its test is no binning
    with pytest.raises(ValueError, match='edges: expected strictly increasing'):
        loss(torch.randn(40, 5), labels)
    assert torch.equal(loss.acc_sum, state)
    with pytest.raises(ValueError, match='edges: expected strictly increasing'):
        loss.density(torch.rand(8))  # the density's own API bins with the same check


@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1', reason='needs the interpreter')
def test_triton_path_refuses_edges_that_are_not_mmdets():
    density = GradientDensity(4, 0.7)
    density.load_state_dict({'edges': torch.tensor([0.0, 0.05, 0.2, 0.6, 1.0 + 1e-6]),
                             'acc_sum': density.acc_sum, 'num_updates': density.num_updates})
    with pytest.raises(ValueError, match='edges: the Triton path'):
        ghmc_loss(torch.randn(20, 3), torch.randint(0, 4, (20,)), None, None, density,
                  backend='triton')
    assert not density.acc_sum.any()


def test_state_can_be_assigned_as_on_mmdets_classes():
    """``acc_sum`` and ``edges`` are buffers of mmdet's classes: assigning them (an EMA reset,
    torch.func.functional_call) works here too."""
    loss = GHMC(bins=10, momentum=0.7)
    pred, labels = torch.randn(40, 5), torch.randint(0, 6, (40,))
    loss(pred, labels)
    loss.acc_sum = torch.zeros(10)
    assert loss.density.acc_sum is loss.acc_sum and not loss.acc_sum.any()
    state = torch.zeros(10)
    torch.func.functional_call(loss, {'acc_sum': state}, (pred, labels))
    assert state.sum() > 0 and not loss.acc_sum.any()
    loss.edges = torch.arange(11).float() / 10
    with pytest.raises(ValueError, match='edges: expected strictly increasing'):
        loss.edges = torch.zeros(11)
        loss(pred, labels)


@pytest.mark.parametrize('native', [True, False])
def test_state_written_by_a_call_fails_a_graph_that_saved_it(native, monkeypatch):
    """The fused weighings write the EMA state through a pointer; its version counter moves as
    an in-place op's would, so autograd refuses a graph that saved the old state."""
    if not native:  # the PyTorch passes
        from mmdet_ghm.ops import native_passes
        monkeypatch.setattr(native_passes, 'applies', lambda pred, binning: False)
    loss = GHMC(bins=10, momentum=0.7)
    pred, labels = torch.randn(40, 5), torch.randint(0, 6, (40,))
    loss(pred, labels)
    scale = torch.ones(10, requires_grad=True)
    saved = (scale * loss.acc_sum).sum()  # mul saves acc_sum
    loss(pred, labels)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        saved.backward()


@pytest.mark.parametrize('dtype', [torch.int8, torch.int16, torch.uint8, torch.int32])
def test_double_backward_with_narrow_integer_labels(dtype):
    pred = torch.randn(30, 4, requires_grad=True)
    labels = torch.randint(0, 5, (30,)).to(dtype)
    grad, = torch.autograd.grad(GHMC(bins=10)(pred, labels), pred, create_graph=True)
    grad.sum().backward()
    assert pred.grad is not None


@pytest.mark.parametrize('dtype,tiny', [(torch.float32, 1e-45), (torch.float64, 1e-300)])
def test_ghmr_weight_that_broadcasts_gives_mmdets_numbers(dtype, tiny):
    """An (N, 1) weight: tiny positive weights stay valid, and tot is the sum of the N weights
    as given (mmdet's), not of N x 4 rounded quarters."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(1000, 4, generator=gen) * 0.1
    target = torch.randn(1000, 4, generator=gen) * 0.1
    weight = (torch.rand(1000, 1, generator=gen) + 0.1).to(dtype)
    weight[::2] = tiny
    ours, theirs = GHMR(mu=0.02, bins=10, momentum=0.7), MMDetGHMR(mu=0.02, bins=10, momentum=0.7)
    (loss_a, grad_a), (loss_b, grad_b) = (
        _loss_and_grad(lambda p: m(p, target, weight), pred) for m in (ours, theirs))
    acc_a, acc_b = ours.acc_sum, theirs.acc_sum
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    assert torch.equal(grad_a, grad_b) and torch.equal(acc_a, acc_b)


@pytest.fixture(params=['cpu', 'triton'])
def module_backend(request, monkeypatch):
    """The loss modules on the CPU passes, or on the Triton path (the interpreter's here)."""
    if request.param == 'triton':
        from mmdet_ghm.ops import function
        use_triton = function._use_triton
        monkeypatch.setattr(function, '_use_triton', lambda device, backend: (
            True if backend is None else use_triton(device, backend)))
    return request.param


@pytest.mark.parametrize('state', ['short', 'long', 'expanded', 'num_updates'])
def test_state_without_one_entry_per_bin_raises(state, module_backend):
    """A shorter acc_sum made the fused weighings read and write past its end (mmdet raises an
    IndexError); an expanded one has one element for all bins."""
    loss = GHMC(bins=10, momentum=0.75)
    pred, labels = torch.randn(40, 5), torch.randint(0, 6, (40,))
    if state == 'num_updates':
        loss.density.num_updates = torch.zeros(9)
    else:
        loss.acc_sum = dict(short=torch.ones(5), long=torch.ones(11),
                            expanded=torch.ones(1).expand(10))[state]
    before = loss.acc_sum.clone()
    name = 'num_updates' if state == 'num_updates' else 'acc_sum'
    with pytest.raises(ValueError, match=f'{name} must have one entry per bin'):
        loss(pred, labels)
    with pytest.raises(ValueError, match=f'{name} must have one entry per bin'):
        loss.density(torch.rand(8))
    assert torch.equal(loss.acc_sum, before)


@pytest.mark.parametrize('state', ['strided', 'int64', 'float64'])
def test_state_of_another_layout_or_dtype_weighs_as_mmdets(state, module_backend):
    """A state the fused weighings cannot write through a pointer (strided, another dtype,
    e.g. from load_state_dict(assign=True) or set_default_dtype(float64)) is updated by
    PyTorch's ops, as mmdet's: the Triton path had ignored the strides and dtype (a wrong loss
    and state) or failed to compile for float64."""
    pred, labels = torch.randn(40, 5) * 3, torch.randint(0, 6, (40,))
    results = []  # momentum 0.9: (1 - m) * count is not exact in float32
    for loss in (GHMC(bins=10, momentum=0.9), MMDetGHMC(bins=10, momentum=0.9)):
        loss.acc_sum = dict(strided=torch.arange(1.0, 21.0).reshape(10, 2)[:, 1],
                            int64=torch.arange(1, 11), float64=torch.linspace(1, 3, 10).double(),
                            )[state]
        results.append([_loss_and_grad(lambda p: loss(p, labels, torch.ones(40)), pred)
                        for _ in range(3)] + [loss.acc_sum])
    (ours, theirs) = results
    for (loss_a, grad_a), (loss_b, grad_b) in zip(ours[:3], theirs[:3]):
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-6, atol=1e-9)
    assert torch.equal(ours[3], theirs[3])


def test_default_dtype_float64_gives_mmdets_float64_state(module_backend):
    """Built under set_default_dtype(float64), the state is float64 on both sides, and its EMA
    is formed in float64 as mmdet's."""
    pred, labels, weight, _ = _cls_problem(n=60, c=5)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs = GHMC(bins=10, momentum=0.9), MMDetGHMC(bins=10, momentum=0.9)
    finally:
        torch.set_default_dtype(default)
    for _ in range(3):
        (loss_a, grad_a), (loss_b, grad_b) = (
            _loss_and_grad(lambda p: m(p, labels, weight), pred) for m in (ours, theirs))
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-6, atol=1e-9)
    assert ours.acc_sum.dtype == torch.float64 and torch.equal(ours.acc_sum, theirs.acc_sum)


def test_ghmc_float64_weights_are_valid_as_float32(module_backend):
    """mmdet tests ``label_weight.float() > 0``: a float64 weight below float32's range is not
    valid (it had been counted)."""
    pred, labels, _, _ = _cls_problem(n=60, c=5)
    weight = torch.ones(60, dtype=torch.float64)
    weight[:20] = 1e-300
    ours, theirs = GHMC(bins=10, momentum=0.75), MMDetGHMC(bins=10, momentum=0.75)
    (loss_a, grad_a), (loss_b, grad_b) = (
        _loss_and_grad(lambda p: m(p, labels, weight), pred) for m in (ours, theirs))
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-6, atol=1e-9)
    assert not grad_a[:20].any() and torch.equal(ours.acc_sum, theirs.acc_sum)


@pytest.mark.parametrize('shape', [(1,), (1, 1), (60, 1, 1)])
def test_labels_with_one_weight_or_an_anchor_column_give_mmdets_numbers(shape, module_backend):
    """mmdet expands label_weight.view(-1, 1) to (label_weight.size(0), C): one weight then
    stands for every anchor, with tot = C (one row's elements)."""
    pred, labels, _, _ = _cls_problem(n=60, c=5)
    weight = torch.rand(shape) + 0.5
    ours, theirs = GHMC(bins=10, momentum=0.75), MMDetGHMC(bins=10, momentum=0.75)
    (loss_a, grad_a), (loss_b, grad_b) = (
        _loss_and_grad(lambda p: m(p, labels, weight), pred) for m in (ours, theirs))
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-6, atol=1e-9)
    assert torch.equal(ours.acc_sum, theirs.acc_sum)
    with pytest.raises(ValueError, match='label_weight must have shape'):
        ours(pred, labels, torch.ones(2, 1))


def test_loss_weight_and_bins_assignments_are_checked():
    """A tensor loss_weight was silently taken as a float (its gradient dropped); bins cannot
    change after the edges and state were built (an AttributeError before)."""
    loss = GHMC(bins=10, loss_weight=2)
    loss.loss_weight = 0.5
    assert loss.loss_weight == 0.5
    with pytest.raises(ValueError, match='loss_weight must be a finite float'):
        loss.loss_weight = torch.tensor(3.0, requires_grad=True)
    with pytest.raises(ValueError, match='bins is fixed'):
        loss.bins = 5
    assert loss.bins == 10 and loss.loss_weight == 0.5


def test_a_module_pickled_with_a_plain_loss_weight_attribute_loads():
    """torch.save(model) of an earlier version holds loss_weight in the module's __dict__."""
    loss = GHMC(bins=10, loss_weight=2.0)
    state = dict(loss.__dict__)
    state['loss_weight'] = state.pop('_loss_weight')
    restored = GHMC.__new__(GHMC)
    restored.__setstate__(state)
    assert restored.loss_weight == 2.0
    assert torch.isfinite(restored(torch.randn(4, 3), torch.randint(0, 4, (4,))))


def test_edges_data_assigned_bin_as_mmdet():
    """``loss.edges.data = t`` swaps the storage without a version bump: the binning follows
    it. (An in-place edit through ``.data`` changes neither: docs/inputs.md.)"""
    pred, labels, weight, _ = _cls_problem(n=500, c=6)
    ours, theirs = GHMC(bins=4, momentum=0.7), MMDetGHMC(bins=4, momentum=0.7)
    for loss in (ours, theirs):
        _loss_and_grad(lambda p: loss(p, labels, weight), pred)
        loss.edges.data = torch.tensor([0.0, 0.05, 0.2, 0.6, 1.0 + 1e-6])
    (loss_a, grad_a), (loss_b, grad_b) = (
        _loss_and_grad(lambda p: m(p, labels, weight), pred) for m in (ours, theirs))
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    assert torch.equal(grad_a, grad_b) and torch.equal(ours.acc_sum, theirs.acc_sum)


def test_every_state_dict_key_of_the_loss_is_its_attribute():
    """torch.func.functional_call and torch.distributed.checkpoint resolve state_dict keys as
    attributes: num_updates had been silently ignored by the first and crashed the second."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    loss = GHMC(bins=10, momentum=0.75, bias_correction=True)
    pred, labels = torch.randn(100, 4), torch.randint(0, 5, (100,))
    loss(pred, labels)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    assert set(get_model_state_dict(loss)) == set(state) == {'edges', 'acc_sum', 'num_updates'}
    state['num_updates'] += 50
    reference = GHMC(bins=10, momentum=0.75, bias_correction=True)
    reference.load_state_dict({k: v.clone() for k, v in state.items()})
    assert torch.equal(torch.func.functional_call(loss, state, (pred, labels)),
                       reference(pred, labels))


def test_mmdet_state_loaded_with_bias_correction_is_used_as_it_is():
    """mmdet's checkpoints have acc_sum and no num_updates: an EMA of unknown age, taken as
    warmed up (the correction had divided it by 1 - m^0 = 0 and given a 4x smaller loss)."""
    gen = torch.Generator().manual_seed(0)
    theirs = MMDetGHMC(bins=10, momentum=0.75)
    batches = [(torch.randn(400, 5, generator=gen) * 2, torch.randint(0, 6, (400,), generator=gen))
               for _ in range(31)]
    for pred, labels in batches[:30]:
        theirs(pred, labels, torch.ones(400))
    ours = GHMC(bins=10, momentum=0.75, bias_correction=True)
    ours.load_state_dict(theirs.state_dict())
    pred, labels = batches[30]
    torch.testing.assert_close(ours(pred, labels), theirs(pred, labels, torch.ones(400)),
                               rtol=1e-6, atol=0)
    assert torch.equal(ours.acc_sum, theirs.acc_sum)


def test_ghmr_integer_pred_gives_mmdets_number():
    """Integer box regressions (no model makes them, but mmdet computes them): mmdet's
    ``pred - target`` and ``sqrt`` promote them to a floating target's dtype or torch's default;
    so does GHMR, with mmdet's loss and EMA state. bool pred stays a ValueError (mmdet's
    subtraction raises)."""
    from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(-3, 4, (20, 4), generator=gen)
    target = torch.randint(-3, 4, (20, 4), generator=gen)
    weight = torch.ones(20, 4)
    ours, ref = GHMR(mu=0.5, momentum=0.7), MMDetGHMR(mu=0.5, momentum=0.7)
    for t in (target, target.float(), target.double()):
        got, want = ours(pred, t, weight), ref(pred, t, weight)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert torch.equal(ours.acc_sum, ref.acc_sum)
    with pytest.raises(ValueError, match='^pred must be a floating-point tensor'):
        ours(pred > 0, target.float(), weight)


@pytest.mark.parametrize('backend', ['cpu', 'triton'])
def test_ghmc_loss_of_saturated_negatives_is_within_mmdets_rounding(backend):
    """Every element a saturated easy negative (x = -12, background): mmdet's float32
    ``(1 - t) x - log_sigmoid(x)`` cancels to within ulp(|x|) / 2 per element, 7 % of such a
    loss. Ours lies between mmdet's and the exact value: within that bound of both (the C++ passes
    give the exact value, the PyTorch passes and the Triton kernels mmdet's rounding)."""
    import math

    import torch.nn.functional as F
    from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
    pred, labels, weight = torch.full((64, 2), -12.0), torch.full((64,), 2), torch.ones(64)
    exact = math.log1p(math.exp(-12.0))
    mmdet = float(MMDetGHMC()(pred, labels, weight))
    bound = 12.0 * 2.0 ** -24  # ulp(12) / 2
    assert abs(mmdet - exact) > 0.05 * exact  # the cancellation this test is about
    ours = float(ghmc_loss(pred, labels, None, weight, GradientDensity(10), backend=backend))
    assert abs(ours - exact) <= bound and abs(ours - mmdet) <= bound
    assert float(F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred))) == mmdet


def test_a_misspelt_label_weight_is_not_taken_for_all_valid():
    """``label_weights=`` (the anchor head's variable name): mmdet's GHMC raises, as it requires
    label_weight; ours must not take every element as valid. With label_weight given, unknown
    keywords are ignored, as mmdet's GHMC ignores them."""
    torch.manual_seed(0)
    pred, labels = torch.randn(20, 4), torch.randint(0, 5, (20,))
    label_weight = (torch.rand(20) > 0.5).float()
    with pytest.raises(TypeError):
        MMDetGHMC()(pred, labels, label_weights=label_weight)
    with pytest.raises(ValueError, match=r"label_weight.*\['label_weights'\]"):
        GHMC()(pred, labels, label_weights=label_weight)
    ours = GHMC()(pred, labels, label_weight, unknown=1)
    torch.testing.assert_close(ours, MMDetGHMC()(pred, labels, label_weight, unknown=1))
    assert GHMC()(pred, labels, weight=label_weight, unknown=1) == ours


def test_the_functional_losses_check_shapes_and_kinds():
    """ghmc_loss / ghmr_loss are exported: a target, weight or labels of another shape must
    not reach the C++ passes, which would read past the end of the tensor."""
    d = GradientDensity(10, 0.75)
    pred, labels = torch.randn(6, 8), torch.randint(0, 9, (6,))
    bad_cls = [
        (dict(labels=labels[:3]), 'labels must be integer labels of shape'),
        (dict(labels=labels.float()), 'labels must be integer labels'),
        (dict(labels=None, target=torch.rand(1, 8)), 'target must be a float tensor'),
        (dict(labels=None, target=None), 'labels, target: give exactly one'),
        (dict(weight=torch.ones(2, 8)), r'weight must be None, \(6,\) or \(6, 8\)'),
        (dict(poison=True), 'poison must be a tensor'),
        (dict(poison=torch.ones(2, dtype=torch.bool)), 'poison must be None or a one-element'),
        (dict(tot=3.0), 'tot must be a tensor'),
        (dict(reduction='avg'), 'reduction must be one of'),
    ]
    for change, match in bad_cls:
        args = dict(labels=labels, target=None, weight=None, poison=None, tot=None,
                    reduction='mean')
        args.update(change)
        with pytest.raises(ValueError, match=match):
            ghmc_loss(pred, args['labels'], args['target'], args['weight'], d,
                      reduction=args['reduction'], poison=args['poison'], tot=args['tot'])
    with pytest.raises(ValueError, match=r'pred must be \(M, C\)'):
        ghmc_loss(pred.view(-1), labels, None, None, d)
    reg = torch.randn(6, 4)
    r = GradientDensity(10, 0.7, 1e3)
    with pytest.raises(ValueError, match='target must be a float tensor of shape'):
        ghmr_loss(reg, torch.zeros(1, 4), None, r)
    with pytest.raises(ValueError, match='weight must be None or of shape'):
        ghmr_loss(reg, torch.zeros(6, 4), torch.ones(6, 1), r)
    with pytest.raises(ValueError, match='mu must be'):
        ghmr_loss(reg, torch.zeros(6, 4), None, r, mu=0.0)
    assert not d.acc_sum.any() and not r.acc_sum.any()
