"""The fused weighings (the Triton kernel, the C++ function) against GHMBackend.weigh's PyTorch
ops, which follow mmdet's rounding: slot weights, EMA state, divisor and skip flag bit for bit,
the loss within float64 summation order (a float64 dot product rounded to float32)."""
import os

import pytest
import torch

from mmdet_ghm import GradientDensity
from mmdet_ghm.ops import native_passes
from mmdet_ghm.ops.backend import GHMBackend


class _WeighCall:
    """The attributes of ops.function._Call that weigh() reads."""

    def __init__(self, density, reduction, tot=None, poison=None, loss_weight=0.7):
        self.density, self.reduction, self.tot, self.poison = density, reduction, tot, poison
        self.loss_weight, self.can_raise = loss_weight, False
        self.non_finite_message = None


def _fused_backend(kind, pred, target, binning):
    if kind == 'triton':
        if os.environ.get('TRITON_INTERPRET') != '1':
            pytest.skip('needs TRITON_INTERPRET=1 (tests/conftest.py sets it)')
        from mmdet_ghm.ops.triton_passes import ClassificationTriton
        return ClassificationTriton(pred, None, target, None, binning)
    if native_passes.library() is None:
        pytest.skip('the C++ passes are not built on this machine')
    return native_passes.ClassificationNative(pred, None, target, None, binning)


TOTS = {'tot': 123.0, 'inf_tot': float('inf'), 'minus_inf_tot': -float('inf'),
        'nan_tot': float('nan'), 'tot_below_one': 0.25}


@pytest.mark.parametrize('kind', ['triton', 'cpp'])
@pytest.mark.parametrize('momentum', [0.0, 0.7, 0.75])
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('case', ['plain', 'poison', 'non_finite', 'empty_bins', *TOTS])
def test_fused_weighing_equals_the_pytorch_weighing(kind, momentum, reduction, case):
    """Four calls on one state; a tot of NaN or +inf (GHM-R weights summing to it) skips the
    call, -inf becomes 1 (mmdet's max(sum, 1))."""
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(50, 7, generator=gen)
    backend = _fused_backend(kind, pred, torch.rand(50, 7, generator=gen),
                             GradientDensity(12, momentum).binning)
    fused, plain = GradientDensity(12, momentum), GradientDensity(12, momentum)
    for call_no in range(4):
        counts = torch.randint(0, 40, (14,), generator=gen)
        if case == 'empty_bins':
            counts[torch.rand(14, generator=gen) < 0.5] = 0
        sums = counts.double() * torch.rand(14, generator=gen, dtype=torch.float64)
        tot = torch.tensor(TOTS[case]) if case in TOTS and call_no != 0 else None
        poison = torch.tensor(call_no == 2) if case == 'poison' else None
        if case == 'non_finite' and call_no == 1:
            sums[5] = float('nan')
        got = backend.weigh(counts, sums, _WeighCall(fused, reduction, tot, poison))
        want = GHMBackend.weigh(backend, counts, sums, _WeighCall(plain, reduction, tot, poison))
        assert torch.equal(got.slot_weight, want.slot_weight) or (
            case == 'nan_tot' and torch.equal(got.slot_weight.isnan(), want.slot_weight.isnan()))
        assert bool(got.skip) == bool(want.skip)
        assert torch.equal(fused.acc_sum, plain.acc_sum)
        assert torch.equal(fused.num_updates, plain.num_updates)
        if reduction == 'none':
            assert got.loss is None and want.loss is None
            continue
        if reduction == 'mean':
            assert torch.equal(got.divisor, want.divisor) or case == 'nan_tot'
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-7, atol=0, equal_nan=True)
    if case in ('poison', 'non_finite'):
        assert int(fused.num_updates.max()) <= (3 if momentum else 0)
    if case in ('inf_tot', 'nan_tot'):
        assert int(fused.num_updates.max()) <= (1 if momentum else 0)
    if case == 'minus_inf_tot':
        assert not bool(got.skip)
