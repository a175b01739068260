"""The Triton kernels (run by the interpreter on CPU tensors) against the PyTorch CPU path."""
import os

import pytest
import torch

from mmdet_ghm import GradientDensity
from mmdet_ghm.ops import ghmc_loss, ghmr_loss

pytestmark = pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1',
                                reason='needs TRITON_INTERPRET=1 (tests/conftest.py sets it)')

TOL = dict(rtol=1e-5, atol=1e-6)
BINS = [1, 2, 3, 7, 10, 16, 30, 31, 33, 64]


def _pair(bins, momentum, last_edge):
    return (GradientDensity(bins, momentum, last_edge), GradientDensity(bins, momentum, last_edge))


def _run(fn, pred, *args, reduction='mean', **kwargs):
    pred = pred.clone().requires_grad_()
    loss = fn(pred, *args, reduction=reduction, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape)  # same for both paths
    loss.backward(grad_out)
    return loss.detach(), pred.grad


@pytest.mark.parametrize('bins', BINS)
@pytest.mark.parametrize('shape', [(1, 1), (5, 3), (37, 13), (130, 9), (0, 4)])
@pytest.mark.parametrize('mode', ['labels_row', 'labels_none', 'soft_elem', 'soft_none'])
def test_ghmc_triton_matches_cpu(bins, shape, mode):
    n, c = shape
    pred = torch.randn(n, c) * 4
    pred[:, :1] = 30.0  # saturated: g == 1 for negatives
    labels = torch.randint(0, c + 1, (n,))
    target = torch.rand(n, c)
    weights = {'labels_row': torch.rand(n) > 0.3, 'soft_elem': torch.rand(n, c) - 0.2}
    weight = weights.get(mode)
    lab, tgt = (labels, None) if mode.startswith('labels') else (None, target)
    d_cpu, d_tri = _pair(bins, 0.75, 1.0 + 1e-6)
    for reduction in ('mean', 'sum', 'none'):
        out_cpu = _run(ghmc_loss, pred, lab, tgt, weight, d_cpu, 0.5, reduction=reduction,
                       backend='cpu')
        out_tri = _run(ghmc_loss, pred, lab, tgt, weight, d_tri, 0.5, reduction=reduction,
                       backend='triton')
        torch.testing.assert_close(out_tri, out_cpu, **TOL)
        assert torch.equal(d_tri.acc_sum, d_cpu.acc_sum)


@pytest.mark.parametrize('bins', BINS)
@pytest.mark.parametrize('shape', [(1, 4), (7, 4), (251, 4), (3, 5, 2), (0, 4)])
@pytest.mark.parametrize('weighted', [True, False])
def test_ghmr_triton_matches_cpu(bins, shape, weighted):
    pred, target = torch.randn(shape) * 0.05, torch.randn(shape) * 0.05
    weight = (torch.rand(shape) > 0.25).float() * 2 if weighted else None
    d_cpu, d_tri = _pair(bins, 0.7, 1e3)
    for reduction in ('mean', 'sum', 'none'):
        out_cpu = _run(ghmr_loss, pred, target, weight, d_cpu, 0.02, 10.0, reduction=reduction,
                       backend='cpu')
        out_tri = _run(ghmr_loss, pred, target, weight, d_tri, 0.02, 10.0, reduction=reduction,
                       backend='triton')
        torch.testing.assert_close(out_tri, out_cpu, **TOL)
        assert torch.equal(d_tri.acc_sum, d_cpu.acc_sum)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_low_precision_pred_gives_float32_result_and_pred_dtype_grad(dtype):
    pred = (torch.randn(33, 7) * 3).to(dtype)
    labels = torch.randint(0, 8, (33,))
    d_cpu, d_tri = _pair(30, 0.75, 1.0 + 1e-6)
    loss_cpu, grad_cpu = _run(ghmc_loss, pred.float(), labels, None, None, d_cpu,
                              backend='cpu')
    loss_tri, grad_tri = _run(ghmc_loss, pred, labels, None, None, d_tri, backend='triton')
    assert loss_tri.dtype == torch.float32 and grad_tri.dtype == dtype
    torch.testing.assert_close(loss_tri, loss_cpu, **TOL)
    torch.testing.assert_close(grad_tri.float(), grad_cpu, rtol=1e-2, atol=1e-4)
    assert torch.equal(d_tri.acc_sum, d_cpu.acc_sum)


def test_triton_is_deterministic():
    pred = torch.randn(300, 11) * 3
    labels = torch.randint(0, 12, (300,))
    results = [_run(ghmc_loss, pred, labels, None, None, GradientDensity(30, 0.75),
                    backend='triton') for _ in range(2)]
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
