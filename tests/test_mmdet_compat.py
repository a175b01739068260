"""Drop-in compatibility with mmdet 3.3.0's GHMC / GHMR, compared with mmdet's own classes.

What mmdet's own loss tests (tests/test_models/test_losses/test_loss.py) assert about GHMC/GHMR
is asserted here of the classes the registry builds; then the inputs and settings mmdet accepts
(numpy scalars, one-hot integer targets, (N, 1) label weights, zero classes, float64, a changed
momentum) give mmdet's numbers, and bad arguments raise an error that is a ValueError naming the
argument.
"""
import numpy as np
import pytest
import torch
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR
from mmdet.registry import MODELS

import mmdet_ghm  # noqa: F401  (registers ours under mmdet's names)
from mmdet_ghm import GHMC, GHMR
from mmdet_ghm.inputs import GHMArgumentError

TOL = dict(rtol=2e-5, atol=1e-7)


def _build(name, **kwargs):
    loss = MODELS.build(dict(type=name, **kwargs))
    assert type(loss).__module__ == 'mmdet_ghm.losses'
    return loss


def _run(loss, pred, *args, **kwargs):
    pred = pred.clone().requires_grad_()
    value = loss(pred, *args, **kwargs)
    (value.sum() if value.dim() else value).backward()
    return value.detach(), pred.grad


@pytest.mark.parametrize('name, reference', [('GHMC', MMDetGHMC), ('GHMR', MMDetGHMR)])
def test_bad_reduction_override_is_an_assertion_error_as_mmdet_tests_expect(name, reference):
    """mmdet's test passes a tuple target, no weight and reduction_override=True, and expects
    AssertionError; ours is also a ValueError naming the argument."""
    pred, target = torch.rand(10, 4), (torch.rand(10, 4),)
    with pytest.raises(AssertionError):
        reference()(pred, target, None, reduction_override=True)
    with pytest.raises(AssertionError, match='reduction_override') as caught:
        _build(name)(pred, target, None, reduction_override=True)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, GHMArgumentError)


@pytest.mark.parametrize('shape', [(10, 4), (0, 4)])
def test_ghmr_forward_with_weight_returns_a_tensor_like_mmdet(shape):
    pred, target, weight = torch.rand(shape), torch.rand(shape), torch.rand(shape)
    loss = _build('GHMR')(pred, target, weight)
    ref = MMDetGHMR()(pred, target, weight)
    assert isinstance(loss, torch.Tensor)
    torch.testing.assert_close(loss, ref, **TOL)


@pytest.mark.parametrize('kwargs', [
    dict(bins=np.int64(30), momentum=np.float32(0.75), loss_weight=np.float32(0.5)),
    dict(bins=np.int32(10), momentum=np.float64(0.7), loss_weight=np.float64(2.0)),
    dict(bins=np.uint8(5), momentum=np.int64(0), loss_weight=np.int64(1)),
])
def test_numpy_scalar_settings_give_mmdets_numbers(kwargs):
    ours, ref = GHMC(**kwargs), MMDetGHMC(**kwargs)
    assert type(ours.bins) is int and type(ours.momentum) is float
    assert type(ours.loss_weight) is float
    for _ in range(3):
        pred, labels = torch.randn(50, 6) * 3, torch.randint(0, 7, (50,))
        weight = torch.ones(50)
        loss, grad = _run(ours, pred, labels, weight)
        ref_loss, ref_grad = _run(ref, pred, labels, weight)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        if kwargs['momentum'] > 0:
            assert torch.equal(ours.acc_sum, ref.acc_sum)
    reg_kwargs = dict(mu=np.float32(0.02), bins=kwargs['bins'], momentum=kwargs['momentum'])
    ours, ref = GHMR(**reg_kwargs), MMDetGHMR(**reg_kwargs)
    pred, target = torch.randn(30, 4) * 0.1, torch.zeros(30, 4)
    weight = torch.ones(30, 4)
    torch.testing.assert_close(ours(pred, target, weight), ref(pred, target, weight), **TOL)


@pytest.mark.parametrize('loss_class, kwargs, name', [
    (GHMR, dict(mu=float('inf')), 'mu'), (GHMR, dict(mu=float('nan')), 'mu'),
    (GHMR, dict(mu=np.float32('inf')), 'mu'), (GHMR, dict(mu='0.02'), 'mu'),
    (GHMC, dict(bins=np.float64(10)), 'bins'), (GHMC, dict(bins=True), 'bins'),
    (GHMC, dict(momentum=np.float32(1.0)), 'momentum'),
    (GHMC, dict(momentum=float('nan')), 'momentum'),
    (GHMC, dict(loss_weight=float('inf')), 'loss_weight'),
    (GHMC, dict(loss_weight=None), 'loss_weight'),
    (GHMC, dict(reduction=['mean']), 'reduction'),
    (GHMC, dict(use_sigmoid=False), 'use_sigmoid'),
    (GHMC, dict(bias_correction='yes'), 'bias_correction'),
    (GHMR, dict(sync_across_ranks=None), 'sync_across_ranks'),
])
def test_bad_settings_raise_a_value_error_naming_the_argument(loss_class, kwargs, name):
    with pytest.raises(GHMArgumentError, match=f'^{name} ') as caught:
        loss_class(**kwargs)
    assert isinstance(caught.value, ValueError)


def _cls_inputs(n=80, c=7):
    pred = torch.randn(n, c) * 3
    labels = torch.randint(0, c + 1, (n,))
    weight = (torch.rand(n) > 0.25).float()
    return pred, labels, weight


@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_onehot_integer_targets_give_mmdets_numbers(reduction):
    ours = GHMC(30, 0.75, reduction=reduction)
    ref = MMDetGHMC(30, 0.75, reduction=reduction)
    for dtype in (torch.int64, torch.uint8, torch.bool):
        pred, labels, weight = _cls_inputs()
        onehot = torch.nn.functional.one_hot(labels, 8)[:, :7].to(dtype)
        full_weight = weight[:, None].expand(80, 7)
        loss, grad = _run(ours, pred, onehot, full_weight)
        ref_loss, ref_grad = _run(ref, pred, onehot, full_weight)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        assert torch.equal(ours.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('reduction', ['mean', 'none'])
@pytest.mark.parametrize('targets', ['labels', 'float'])
def test_column_label_weight_gives_mmdets_numbers(reduction, targets):
    """An (N, 1) label weight: with labels mmdet expands it over the classes; with float targets
    it broadcasts and mmdet's normalizer counts the valid rows of the weight as given."""
    ours = GHMC(30, 0.75, reduction=reduction)
    ref = MMDetGHMC(30, 0.75, reduction=reduction)
    for _ in range(3):
        pred, labels, weight = _cls_inputs()
        target = labels if targets == 'labels' else torch.rand(80, 7)
        loss, grad = _run(ours, pred, target, weight[:, None])
        ref_loss, ref_grad = _run(ref, pred, target, weight[:, None])
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        assert torch.equal(ours.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_ghmr_broadcast_label_weight_gives_mmdets_numbers(reduction):
    ours, ref = GHMR(bins=10, momentum=0.7, reduction=reduction), MMDetGHMR(
        bins=10, momentum=0.7, reduction=reduction)
    for _ in range(3):
        pred, target = torch.randn(40, 4) * 0.1, torch.randn(40, 4) * 0.1
        weight = (torch.rand(40, 1) > 0.3).float() * 2.0
        loss, grad = _run(ours, pred, target, weight)
        ref_loss, ref_grad = _run(ref, pred, target, weight)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        assert torch.equal(ours.acc_sum, ref.acc_sum)


@pytest.mark.parametrize('reduction', ['mean', 'none'])
@pytest.mark.parametrize('shape', [(12, 0), (0, 5)])
def test_zero_classes_or_anchors_give_mmdets_numbers(reduction, shape):
    ours = GHMC(10, 0.75, reduction=reduction)
    ref = MMDetGHMC(10, 0.75, reduction=reduction)
    pred = torch.randn(shape)
    labels = torch.full(shape[:1], shape[1], dtype=torch.long)  # all background
    weight = torch.ones(shape[:1])
    loss, grad = _run(ours, pred, labels, weight)
    ref_loss, ref_grad = _run(ref, pred, labels, weight)
    assert loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss.float())
    assert grad.shape == pred.shape and not grad.any()
    assert not ours.acc_sum.any()


def test_float64_inputs_give_mmdets_numbers():
    ours, ref = GHMC(30, 0.75), MMDetGHMC(30, 0.75)
    for _ in range(3):
        pred, labels, weight = _cls_inputs()
        loss, grad = _run(ours, pred.double(), labels, weight)
        ref_loss, ref_grad = _run(ref, pred.double(), labels, weight)
        assert grad.dtype == torch.float64
        torch.testing.assert_close(loss.double(), ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        assert torch.equal(ours.acc_sum, ref.acc_sum)
        assert ours.acc_sum.dtype == torch.float32
    reg, reg_ref = GHMR(bins=10, momentum=0.7), MMDetGHMR(bins=10, momentum=0.7)
    pred, target = torch.randn(40, 4, dtype=torch.float64) * 0.1, torch.zeros(40, 4)
    weight = torch.ones(40, 4)
    loss, grad = _run(reg, pred, target, weight)
    ref_loss, ref_grad = _run(reg_ref, pred, target, weight)
    torch.testing.assert_close(loss.double(), ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


def test_momentum_can_be_changed_between_calls_like_mmdets_attribute():
    ours, ref = GHMC(30, 0.75), MMDetGHMC(30, 0.75)
    for step in range(4):
        if step == 2:
            ours.momentum = np.float64(0.5)
            ref.momentum = 0.5
        pred, labels, weight = _cls_inputs()
        loss, _ = _run(ours, pred, labels, weight)
        ref_loss, _ = _run(ref, pred, labels, weight)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        assert torch.equal(ours.acc_sum, ref.acc_sum), step
    assert ours.momentum == 0.5 and type(ours.momentum) is float
    for bad in (1.0, -0.1, 'x', float('nan')):
        with pytest.raises(GHMArgumentError, match='^momentum '):
            ours.momentum = bad
    assert ours.momentum == 0.5


def test_acc_sum_and_edges_are_the_live_state_under_mmdets_names():
    ours, ref = GHMC(30, 0.75), MMDetGHMC(30, 0.75)
    assert torch.equal(ours.edges, ref.edges)
    acc_sum = ours.acc_sum
    pred, labels, weight = _cls_inputs()
    ours(pred, labels, weight)
    ref(pred, labels, weight)
    assert acc_sum.any() and torch.equal(acc_sum, ref.acc_sum)  # updated in place
    assert ours.acc_sum is ours.density.acc_sum and ours.edges is ours.density.edges
    reg = GHMR(bins=10)
    assert torch.equal(reg.edges, MMDetGHMR(bins=10).edges)


@pytest.mark.parametrize('cast', ['half', 'bfloat16', 'double', 'to_float16', 'to_float64'])
def test_module_dtype_casts_keep_the_state_float32(cast):
    """`model.half()` (or `.double()`, `.to(dtype)`) over a detector reaches the losses' buffers:
    the state stays float32 and the losses keep mmdet's float32 numbers."""
    ours, ref = GHMC(30, 0.75), MMDetGHMC(30, 0.75)
    pred, labels, weight = _cls_inputs()
    ours(pred, labels, weight)
    ref(pred, labels, weight)
    head = torch.nn.Module()
    head.loss_cls = ours
    head.loss_bbox = GHMR(bins=10, momentum=0.7)
    if cast.startswith('to_'):
        head.to(getattr(torch, cast[3:]))
    else:
        getattr(head, cast)()
    for loss in (head.loss_cls, head.loss_bbox):
        assert loss.edges.dtype == loss.acc_sum.dtype == torch.float32
        assert loss.density.num_updates.dtype == torch.float32
    assert torch.equal(ours.edges, ref.edges) and torch.equal(ours.acc_sum, ref.acc_sum)
    pred, labels, weight = _cls_inputs()
    dtype = {'half': torch.float16, 'to_float16': torch.float16, 'bfloat16': torch.bfloat16,
             }.get(cast, torch.float64)
    low = pred.to(dtype)
    loss, grad = _run(ours, low, labels, weight)
    ref_loss, ref_grad = _run(ref, low.to(torch.float32 if dtype != torch.float64 else dtype),
                              labels, weight)
    assert grad.dtype == dtype
    torch.testing.assert_close(loss.to(ref_loss.dtype), ref_loss, **TOL)
    assert torch.equal(ours.acc_sum, ref.acc_sum)
