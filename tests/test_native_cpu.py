"""The C++ CPU passes (mmdet_ghm.ops.native_passes) against the PyTorch passes they replace:
the same counts, EMA state and gradient to the bit, the loss to float64 rounding (the C++ pass
sums the logs more exactly), whatever the thread count; and the fallback without a compiler."""
import os
import shutil
import warnings

import pytest
import torch

from mmdet_ghm import GHMC, GHMR
from mmdet_ghm.ops import cpu_passes, native_passes
from mmdet_ghm.ops.function import ghmc_loss, ghmr_loss


@pytest.fixture
def cpp_passes():
    """The C++ passes are what a comparison tests: skipped where they cannot be built (a machine
    with a compiler must build them: test_the_library_builds_where_a_compiler_is)."""
    if native_passes.library() is None:
        pytest.skip('the C++ passes are not built on this machine')


@pytest.fixture
def pytorch_passes(monkeypatch, cpp_passes):
    """Run the CPU losses on the PyTorch passes (as on a machine without a compiler)."""
    def use(enabled):
        if enabled:
            monkeypatch.setattr(native_passes, 'library', lambda: None)
        else:
            monkeypatch.undo()
    return use


def test_the_library_builds_where_a_compiler_is():
    compiler = os.environ.get('CXX') or 'c++'
    if shutil.which(compiler) is None:
        pytest.skip(f'no C++ compiler ({compiler}) on this machine')
    assert native_passes.library() is not None


def _run(module_factory, pred, args, reduction, steps=3, threads=None):
    """(losses, grads, state) of `steps` calls of one module on the same inputs."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        module = module_factory()
        losses, grads = [], []
        for _ in range(steps):
            p = pred.clone().requires_grad_()
            loss = module(p, *args)
            (loss.sum() if reduction == 'none' else loss).backward()
            losses.append(loss.detach())
            grads.append(p.grad)
        return losses, grads, {k: v.clone() for k, v in module.state_dict().items()}
    finally:
        torch.set_num_threads(old)


def _bits(t):
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.itemsize])


def _assert_same(native, reference, loss_rtol=1e-6):
    for loss, ref_loss in zip(native[0], reference[0]):
        torch.testing.assert_close(loss, ref_loss, rtol=loss_rtol, atol=0, equal_nan=True)
    for grad, ref_grad in zip(native[1], reference[1]):
        assert grad.dtype == ref_grad.dtype and torch.equal(_bits(grad), _bits(ref_grad))
    for key in native[2]:
        assert torch.equal(native[2][key], reference[2][key]), key


def _cls_problem(m, c, dtype=torch.float32, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    pred = (torch.randn(m, c, generator=gen) * scale - 2.0).to(dtype)
    labels = torch.randint(0, c + 1, (m,), generator=gen)
    row_weight = (torch.rand(m, generator=gen) > 0.1).float()
    element_weight = (torch.rand(m, c, generator=gen) > 0.1).float()
    soft = torch.rand(m, c, generator=gen) * (torch.rand(m, c, generator=gen) < 0.05)
    return pred, labels, row_weight, element_weight, soft


# (M, C): empty, one element, odd, crossing the C++ tiles (1024) and blocks (16384) unevenly
SHAPES = [(0, 5), (1, 1), (7, 3), (1031, 7), (70001, 3)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('targets', ['labels', 'soft'])
@pytest.mark.parametrize('weights', [None, 'row', 'element'])
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_ghmc_native_equals_pytorch_passes(shape, targets, weights, reduction, pytorch_passes):
    pred, labels, row_weight, element_weight, soft = _cls_problem(*shape)
    target = labels if targets == 'labels' else soft
    weight = dict(row=row_weight, element=element_weight).get(weights)
    args = (target,) if weight is None else (target, weight)

    def module():
        return GHMC(bins=30, momentum=0.75, loss_weight=2.0, reduction=reduction)
    native = _run(module, pred, args, reduction)
    pytorch_passes(True)
    reference = _run(module, pred, args, reduction)
    _assert_same(native, reference)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('targets', ['labels', 'soft'])
def test_ghmc_native_half_precision(dtype, targets, pytorch_passes):
    pred, labels, row_weight, _, soft = _cls_problem(3001, 9, dtype)
    target = labels if targets == 'labels' else soft.to(dtype)
    native = _run(lambda: GHMC(bins=10, momentum=0.7), pred, (target, row_weight), 'mean')
    pytorch_passes(True)
    reference = _run(lambda: GHMC(bins=10, momentum=0.7), pred, (target, row_weight), 'mean')
    _assert_same(native, reference)


@pytest.mark.parametrize('bins', [1, 2, 7, 64, 253])
def test_ghmc_native_bins(bins, pytorch_passes):
    pred, labels, row_weight, _, _ = _cls_problem(2000, 11, scale=6.0)
    native = _run(lambda: GHMC(bins=bins, momentum=0.5), pred, (labels, row_weight), 'mean')
    pytorch_passes(True)
    reference = _run(lambda: GHMC(bins=bins, momentum=0.5), pred, (labels, row_weight), 'mean')
    _assert_same(native, reference)


def test_ghmc_native_infinite_and_nan_logits(pytorch_passes):
    """Saturated logits (BCE's limits: x = -inf with t = 0, x = +inf with t = 1 give 0), and NaN
    or inf at ignored elements (their gradient 0, not NaN * 0)."""
    pred, labels, row_weight, _, _ = _cls_problem(500, 6)
    onehot = torch.zeros(500, 6)
    pos = labels < 6
    onehot[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    pred[~pos, 0] = -float('inf')
    pred[pos.nonzero().squeeze(1), labels[pos]] = float('inf')
    ignored = row_weight == 0
    pred[ignored.nonzero().squeeze(1)[::2], 1] = float('nan')
    pred[ignored.nonzero().squeeze(1)[1::2], 2] = float('inf')
    for target in (labels, onehot):
        native = _run(lambda: GHMC(bins=30, momentum=0.75), pred, (target, row_weight), 'mean')
        assert all(torch.isfinite(loss) for loss in native[0])
        assert all(torch.isfinite(grad).all() for grad in native[1])
        pytorch_passes(True)
        reference = _run(lambda: GHMC(bins=30, momentum=0.75), pred, (target, row_weight), 'mean')
        pytorch_passes(False)
        _assert_same(native, reference)


def test_ghmc_native_an_infinite_positive_logit_alone(pytorch_passes):
    """A valid positive at +inf and nothing else non-finite: ignored elements keep their signed
    zero gradient ((s - t) * 0, as mmdet's) on both CPU paths."""
    labels, weight = torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.0, 1.0])
    pred = torch.zeros(3, 2)
    pred[0, 0] = float('inf')
    native = _run(lambda: GHMC(bins=10, momentum=0.7), pred, (labels, weight), 'mean')
    pytorch_passes(True)
    reference = _run(lambda: GHMC(bins=10, momentum=0.7), pred, (labels, weight), 'mean')
    _assert_same(native, reference)
    assert torch.equal(_bits(native[1][0][1]), _bits(torch.tensor([0.0, -0.0]))) or \
        torch.equal(_bits(native[1][0][1]), _bits(torch.tensor([-0.0, -0.0])))


@pytest.mark.parametrize('x', [-25.0, -36.0, -60.0, -80.0])
def test_ghmc_native_loss_of_very_negative_logits(x, pytorch_passes):
    """Easy negatives far out (q = sigmoid(x) below 2^-30, where 1 - q is not exact in float64):
    the loss stays within 1e-6 of float64 softplus on both CPU paths."""
    pred, labels = torch.full((100, 10), x), torch.full((100,), 10)
    exact = torch.nn.functional.softplus(torch.tensor(x, dtype=torch.float64)).item()
    for use_pytorch in (False, True):
        pytorch_passes(use_pytorch)
        loss = GHMC(bins=10)(pred, labels)  # one bin: weight tot / count / 1 = 1, mean = BCE
        assert abs(loss.item() - exact) <= 1e-6 * exact, (use_pytorch, loss.item(), exact)


@pytest.mark.parametrize('x, t', [(1e10, 1e30), (-3e38, 2.0), (1e30, -1e10)])
def test_ghmc_native_soft_targets_whose_bce_overflows(x, t, pytorch_passes):
    """Soft targets far outside [0, 1] whose float32 BCE overflows (mmdet: NaN loss): a
    ValueError and the state untouched on both CPU paths, as at any non-finite valid loss."""
    pred, target = torch.zeros(4, 2), torch.full((4, 2), 0.5)
    pred[0, 0], target[0, 0] = x, t
    for use_pytorch in (False, True):
        pytorch_passes(use_pytorch)
        loss = GHMC(bins=10, momentum=0.7)
        with pytest.raises(ValueError, match='NaN or inf'):
            loss(pred, target)
        assert torch.equal(loss.density.acc_sum, torch.zeros(10))


def test_ghmc_native_nan_at_a_valid_element_raises_as_before():
    pred, labels, row_weight, _, _ = _cls_problem(300, 4)
    pred[row_weight.nonzero()[0, 0], 1] = float('nan')
    loss = GHMC(bins=10, momentum=0.7)
    with pytest.raises(ValueError, match='NaN or inf'):
        loss(pred, labels, row_weight)
    assert torch.equal(loss.density.acc_sum, torch.zeros(10))


@pytest.mark.parametrize('threads', [1, 3])
def test_native_results_do_not_depend_on_the_thread_count(threads, cpp_passes):
    pred, labels, row_weight, _, soft = _cls_problem(140001, 2)
    for target in (labels, soft):
        two = _run(lambda: GHMC(bins=30, momentum=0.75), pred, (target, row_weight), 'mean',
                   threads=2)
        other = _run(lambda: GHMC(bins=30, momentum=0.75), pred, (target, row_weight), 'mean',
                     threads=threads)
        _assert_same(other, two, loss_rtol=0)  # the loss too, to the bit
    box_pred, box_target = torch.randn(70001, 4), torch.randn(70001, 4)
    two = _run(lambda: GHMR(bins=10, momentum=0.7), box_pred, (box_target,), 'mean', threads=2)
    other = _run(lambda: GHMR(bins=10, momentum=0.7), box_pred, (box_target,), 'mean',
                 threads=threads)
    _assert_same(other, two, loss_rtol=0)


@pytest.mark.parametrize('shape', [(0, 4), (1, 4), (333, 4), (70001, 4), (5, 7, 4)])
@pytest.mark.parametrize('weighted', [False, True])
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('scale', [0.01, 3.0])
def test_ghmr_native_equals_pytorch_passes(shape, weighted, reduction, scale, pytorch_passes):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(*shape, generator=gen) * scale
    target = torch.randn(*shape, generator=gen) * scale
    weight = (torch.rand(*shape, generator=gen) > 0.3).float()
    args = (target, weight) if weighted else (target,)

    def module():
        return GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=3.0, reduction=reduction)
    native = _run(module, pred, args, reduction)
    pytorch_passes(True)
    reference = _run(module, pred, args, reduction)
    _assert_same(native, reference)


def _grads_for_grad_out(module_factory, pred, args, reduction):
    """(losses, grads, state) of three calls, each backpropagating grad_out other than 1."""
    module = module_factory()
    losses, grads = [], []
    for step in range(3):
        p = pred.clone().requires_grad_()
        loss = module(p, *args)
        grad_out = torch.rand(loss.shape, generator=torch.Generator().manual_seed(step)) * 7
        loss.backward(grad_out)
        losses.append(loss.detach())
        grads.append(p.grad)
    return losses, grads, {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize('loss', ['ghmc', 'ghmr'])
@pytest.mark.parametrize('momentum', [0.0, 0.7])
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_native_gradient_for_any_grad_out_and_loss_weight(loss, momentum, reduction,
                                                           pytorch_passes):
    """The C++ slot scale ((grad_out * loss_weight) / divisor) * weight and the C++ weighing,
    with a loss_weight and grad_out that float32 does not hold exactly: PyTorch's bits."""
    pred, labels, row_weight, _, _ = _cls_problem(3001, 9)
    if loss == 'ghmc':
        def module():
            return GHMC(bins=30, momentum=momentum, loss_weight=0.3, reduction=reduction)
        args = (labels, row_weight)
    else:
        pred = pred[:, :4] * 0.1

        def module():
            return GHMR(bins=10, momentum=momentum, loss_weight=0.3, reduction=reduction)
        args = (pred * 0.5 + 0.01, row_weight[:, None].expand(-1, 4) * 1.7)
    native = _grads_for_grad_out(module, pred, args, reduction)
    pytorch_passes(True)
    reference = _grads_for_grad_out(module, pred, args, reduction)
    _assert_same(native, reference)


@pytest.mark.parametrize('weight_dtype', [torch.float64, torch.float16, torch.bool, torch.int64])
def test_ghmr_native_weights_of_any_dtype(weight_dtype, pytorch_passes):
    """The C++ pass reads float32 weights (valid where > 0): a float64 weight too small for
    float32 stays valid, as in mmdet's label_weight > 0."""
    gen = torch.Generator().manual_seed(2)
    pred, target = torch.randn(501, 4, generator=gen), torch.randn(501, 4, generator=gen)
    weight = (torch.rand(501, 4, generator=gen) * 3 - 1).to(weight_dtype)
    if weight_dtype == torch.float64:
        weight[::7] = 1e-60
    native = _run(lambda: GHMR(bins=10, momentum=0.7), pred, (target, weight), 'sum')
    pytorch_passes(True)
    reference = _run(lambda: GHMR(bins=10, momentum=0.7), pred, (target, weight), 'sum')
    _assert_same(native, reference)


def test_a_rejected_call_is_not_recorded(pytorch_passes):
    """A NaN logit raises before the state changes, and the recording skips the call too."""
    pred, labels = torch.randn(20, 4), torch.randint(0, 5, (20,))
    bad = pred.clone()
    bad[3, 1] = float('nan')

    def recorded():
        loss = GHMC(bins=10, momentum=0.75)
        loss.density.start_recording()
        loss(pred, labels)
        with pytest.raises(ValueError, match='NaN or inf'):
            loss(bad, labels)
        return loss.density.stop_recording()
    native = recorded()
    pytorch_passes(True)
    assert torch.equal(native, recorded()) and int(native.sum()) == 80


@pytest.mark.parametrize('state', ['float64', 'float16_view', 'strided'])
def test_weighing_of_a_state_that_is_not_plain_float32(state, pytorch_passes):
    """A state loaded with assign=True keeps the checkpoint's dtype and layout: the C++ weighing,
    which writes through a pointer, leaves it to the PyTorch ops (no stray writes)."""
    pred, labels = torch.randn(2000, 8) * 3, torch.randint(0, 9, (2000,))
    guard = torch.full((30,), 7.0)

    def run():
        loss = GHMC(bins=10, momentum=0.75)
        values = torch.arange(10.0) * 100 + 1
        acc = dict(float64=values.double(), float16_view=guard[:20].view(torch.float16)[:10],
                   strided=torch.stack([values, values], 1)[:, 0])[state]
        if state == 'float16_view':
            acc.copy_(values)
        loss.load_state_dict(dict(loss.state_dict(), acc_sum=acc), assign=True)
        assert loss.density.acc_sum is acc
        return [loss(pred, labels) for _ in range(2)], loss.density.acc_sum.clone()
    native = run()
    pytorch_passes(True)
    reference = run()
    assert torch.equal(torch.stack(native[0]), torch.stack(reference[0]))
    assert torch.equal(native[1], reference[1])
    assert torch.equal(guard[10:], torch.full((20,), 7.0))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_ghmr_native_half_precision(dtype, pytorch_passes):
    pred, target = torch.randn(999, 4).to(dtype), torch.randn(999, 4).to(dtype)
    native = _run(lambda: GHMR(bins=10, momentum=0.7), pred, (target,), 'mean')
    pytorch_passes(True)
    reference = _run(lambda: GHMR(bins=10, momentum=0.7), pred, (target,), 'mean')
    _assert_same(native, reference)


def test_which_backend_serves_which_call(monkeypatch, cpp_passes):
    """C++ for float32 arithmetic with mmdet's edges; PyTorch for float64 and custom edges."""
    from mmdet_ghm.density import GradientDensity
    calls = []
    for cls in (native_passes.ClassificationNative, cpu_passes.ClassificationCPU,
                native_passes.RegressionNative, cpu_passes.RegressionCPU):
        def spy(self, _original=cls.histogram, _cls=cls):
            if type(self) is _cls:
                calls.append(_cls.__name__)
            return _original(self)
        monkeypatch.setattr(cls, 'histogram', spy)
    pred, labels = torch.randn(20, 3), torch.randint(0, 4, (20,))
    ghmc_loss(pred, labels, None, None, GradientDensity(10))
    ghmc_loss(pred.double(), labels, None, None, GradientDensity(10))
    custom = GradientDensity(10)
    state = custom.state_dict()
    state['edges'] = torch.linspace(0, 1, 11) ** 2
    custom.load_state_dict(state)
    ghmc_loss(pred, labels, None, None, custom)
    ghmr_loss(pred, pred * 0.5, None, GradientDensity(10, last_edge=1e3))
    ghmr_loss(pred.double(), pred.double() * 0.5, None, GradientDensity(10, last_edge=1e3))
    assert calls == ['ClassificationNative', 'ClassificationCPU', 'ClassificationCPU',
                     'RegressionNative', 'RegressionCPU']


def test_without_a_compiler_the_pytorch_passes_serve_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv('MMDET_GHM_CACHE_DIR', str(tmp_path))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    native_passes.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match='could not build its C\\+\\+ CPU kernels'):
            assert native_passes.library() is None
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # cached: no second warning
            pred, labels = torch.randn(50, 4), torch.randint(0, 5, (50,))
            loss = GHMC(bins=10, momentum=0.7)(pred.requires_grad_(), labels)
            loss.backward()
        assert torch.isfinite(loss) and list(tmp_path.iterdir()) == []  # no stray temp file
    finally:
        native_passes.library.cache_clear()


def test_mmdet_ghm_native_0_turns_the_cpp_passes_off(monkeypatch):
    monkeypatch.setenv('MMDET_GHM_NATIVE', '0')
    native_passes.library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            assert native_passes.library() is None
    finally:
        native_passes.library.cache_clear()


def test_the_library_is_compiled_once_into_the_cache(monkeypatch, tmp_path):
    if shutil.which(os.environ.get('CXX') or 'c++') is None:
        pytest.skip('no C++ compiler on this machine')
    monkeypatch.setenv('MMDET_GHM_CACHE_DIR', str(tmp_path))
    native_passes.library.cache_clear()
    try:
        assert native_passes.library() is not None
        built = list(tmp_path.iterdir())
        assert len(built) == 1 and built[0].suffix == '.so'
        mtime = built[0].stat().st_mtime_ns
        native_passes.library.cache_clear()
        assert native_passes.library() is not None
        assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == mtime
    finally:
        native_passes.library.cache_clear()


@pytest.mark.parametrize('bins', list(range(1, 65)) + [100, 127, 200, 253])
def test_cpp_bins_match_mmdet_edges_bit_for_bit(bins, cpp_passes):
    """Every float within 300 ulps of every edge and of 1: logits of -200 give s = 0 exactly,
    so the soft target -g gives g = |s - t| = g, and the slot counts must equal mmdet's test
    on the float32 edges (soft and hard targets go through the two C++ slot rules)."""
    from mmdet_ghm.binning import search_slots  # the reference (tests/test_density.py)
    from mmdet_ghm.density import GradientDensity
    density = GradientDensity(bins)
    bits = density.edges[:-1].view(torch.int32).long()[:, None] + torch.arange(-300, 301)
    bits = torch.cat([bits.view(-1), 0x3F800000 + torch.arange(-300, 301)])
    g = bits[bits >= 0].to(torch.int32).view(torch.float32)
    g = torch.cat([g, torch.tensor([0.0, 1.0, 1.0 + 1e-6, 1.5, float('nan')])])
    expected = torch.bincount(search_slots(g, density.edges), minlength=bins + 2)
    soft = native_passes.ClassificationNative(torch.full((g.numel(), 1), -200.0), None,
                                              -g[:, None], None, density.binning)
    assert torch.equal(soft.histogram()[0], expected)
    # hard targets: g = s for negatives; PyTorch's sigmoid gives the s, the C++ pass its slot
    x = torch.linspace(-12, 12, 200001)
    s = torch.sigmoid(x)
    hard = native_passes.ClassificationNative(x[:, None], torch.ones(x.numel(), dtype=torch.long),
                                              None, None, density.binning)
    assert torch.equal(hard.histogram()[0],
                       torch.bincount(search_slots(s, density.edges), minlength=bins + 2))
