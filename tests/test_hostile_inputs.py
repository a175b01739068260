"""NaN/inf, bias correction, out-of-range labels on the device path, large index arithmetic."""
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
    """The Triton path (run by the interpreter here) cannot raise without a sync: the NaN
    element is left out of the counts, the loss is NaN, the other elements update the state."""
    density, clean = GradientDensity(10, 0.75), GradientDensity(10, 0.75)
    pred = torch.rand(30, 4)
    if fn == 'cls':
        run = lambda p, d: ghmc_loss(p, None, torch.zeros(30, 4), None, d, backend='triton')
    else:
        density, clean = GradientDensity(10, 0.75, 1e3), GradientDensity(10, 0.75, 1e3)
        run = lambda p, d: ghmr_loss(p, torch.zeros(30, 4), None, d, backend='triton')
    poisoned = pred.clone()
    poisoned[0, 0] = float('nan')
    assert torch.isnan(run(poisoned, density))
    keep = torch.ones(30, 4, dtype=torch.bool)
    keep[0, 0] = False
    reference = pred[keep].view(-1, 1)  # the same elements without the NaN one
    clean_loss = (ghmc_loss(reference, None, torch.zeros_like(reference), None, clean,
                            backend='cpu') if fn == 'cls' else
                  ghmr_loss(reference, torch.zeros_like(reference), None, clean, backend='cpu'))
    assert torch.isfinite(clean_loss)
    torch.testing.assert_close(density.acc_sum, clean.acc_sum)


def test_out_of_range_labels_on_the_device_path_give_nan_and_keep_the_state():
    density = GradientDensity(10, 0.75)
    pred, labels = torch.randn(8, 3), torch.randint(0, 4, (8,))
    ghmc_loss(pred, labels, None, None, density, backend='triton')
    state = density.acc_sum.clone()
    loss = ghmc_loss(pred, labels, None, None, density, poison=torch.tensor(True),
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
    """Every kernel forms its element offsets from an int64 program id, so an element past
    2 ** 31 (row = offset // C included) is addressed without overflow; the launchers pass numel
    as a Python int, which Triton types as int64 past 2 ** 31. (A real 2 ** 31-element run needs
    8 GiB per input and hours in the interpreter: it belongs on a GPU.)"""
    import inspect

    from mmdet_ghm.ops import triton_kernels as K
    kernels = [K.ghmc_histogram_kernel, K.ghmc_loss_kernel, K.ghmc_grad_kernel,
               K.ghmr_histogram_kernel, K.ghmr_loss_kernel, K.ghmr_grad_kernel]
    for kernel in kernels:
        source = inspect.getsource(kernel.fn)
        assert 'tl.program_id(0).to(tl.int64)' in source, kernel.fn.__name__
        assert 'tl.program_id(0) *' not in source, kernel.fn.__name__
