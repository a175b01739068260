"""GHMC / GHMR against mmdet 3.3.0's own implementation: loss, gradient and EMA state."""
import pytest
import torch
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

from mmdet_ghm import GHMC, GHMR

TOL = dict(rtol=2e-5, atol=1e-7)


def _cls_inputs(n, c, ignore=0.2, scale=3.0):
    pred = torch.randn(n, c) * scale
    labels = torch.randint(0, c + 1, (n,))  # c = background
    label_weight = (torch.rand(n) > ignore).float()
    return pred, labels, label_weight


def _onehot(labels, c):
    target = torch.zeros(labels.numel(), c)
    pos = labels < c
    target[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    return target


def _run(loss, pred, *args, **kwargs):
    pred = pred.clone().requires_grad_()
    value = loss(pred, *args, **kwargs)
    (value.sum() if value.dim() else value).backward()
    return value.detach(), pred.grad


def _state(loss):
    return loss.density.acc_sum if hasattr(loss, 'density') else getattr(loss, 'acc_sum', None)


@pytest.mark.parametrize('bins', [1, 10, 30])
@pytest.mark.parametrize('momentum', [0.0, 0.75])
@pytest.mark.parametrize('targets', ['labels', 'onehot'])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_ghmc_matches_mmdet_over_successive_calls(bins, momentum, targets, reduction):
    ours = GHMC(bins=bins, momentum=momentum, loss_weight=0.5, reduction=reduction)
    ref = MMDetGHMC(bins=bins, momentum=momentum, loss_weight=0.5, reduction=reduction)
    for step in range(12):
        n, c = (173, 11) if step % 2 else (64, 11)
        pred, labels, label_weight = _cls_inputs(n, c)
        onehot = _onehot(labels, c)
        target = labels if targets == 'labels' else onehot
        weight = label_weight if targets == 'labels' else label_weight[:, None].expand(n, c)
        loss, grad = _run(ours, pred, target, weight)
        ref_loss, ref_grad = _run(ref, pred, onehot, label_weight[:, None].expand(n, c))
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        if momentum > 0:
            assert torch.equal(_state(ours), ref.acc_sum), step


@pytest.mark.parametrize('threads', [1, 2])
def test_ghmc_matches_mmdet_bit_for_bit_at_scale_over_chunks(threads):
    """Several chunks, 1 or 2 threads: gradient and state equal to mmdet's to the bit, except
    where mmdet's own sigmoid rounds differently (its scalar tail at each thread's split, so
    mmdet's bits change with the thread count: a few elements)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, ref = GHMC(bins=30, momentum=0.75), MMDetGHMC(bins=30, momentum=0.75)
        for _ in range(3):
            pred, labels, label_weight = _cls_inputs(7001, 80, ignore=0.05)
            pred = pred - 3.0
            loss, grad = _run(ours, pred, labels, label_weight)
            ref_loss, ref_grad = _run(ref, pred, labels, label_weight)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=0)
            assert (grad != ref_grad).sum() <= 16 * threads
            assert torch.equal(_state(ours), ref.acc_sum)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize('bins', [1, 10, 30])
@pytest.mark.parametrize('momentum', [0.0, 0.7])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_ghmr_matches_mmdet_over_successive_calls(bins, momentum, reduction):
    ours = GHMR(mu=0.02, bins=bins, momentum=momentum, loss_weight=10.0, reduction=reduction)
    ref = MMDetGHMR(mu=0.02, bins=bins, momentum=momentum, loss_weight=10.0,
                    reduction=reduction)
    for step in range(12):
        n = 97 if step % 2 else 40
        pred = torch.randn(n, 4) * 0.1
        target = torch.randn(n, 4) * 0.1
        weight = (torch.rand(n, 1) > 0.3).float().expand(n, 4).contiguous()
        loss, grad = _run(ours, pred, target, weight, avg_factor=7.0)
        ref_loss, ref_grad = _run(ref, pred, target, weight, avg_factor=7.0)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        if momentum > 0:
            assert torch.equal(_state(ours), ref.acc_sum), step


def test_ghmc_saturated_logits_count_in_the_last_bin():
    """g == 1 exactly (a saturated sigmoid on the wrong side) must count, as in mmdet."""
    ours, ref = GHMC(bins=30, momentum=0.75), MMDetGHMC(bins=30, momentum=0.75)
    pred = torch.tensor([[40.0, -40.0, 0.0], [-40.0, 40.0, 3.0]])
    labels = torch.tensor([1, 0])  # both rows: g == 1 at the positive and at a negative
    lw = torch.ones(2)
    loss, grad = _run(ours, pred, labels, lw)
    ref_loss, ref_grad = _run(ref, pred, _onehot(labels, 3), lw[:, None].expand(2, 3))
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert torch.equal(_state(ours), ref.acc_sum)
    assert _state(ours)[-1] > 0


@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_all_ignored_and_empty_inputs(reduction):
    for ours, ref, make in [
        (GHMC(30, 0.75, reduction=reduction), MMDetGHMC(30, 0.75, reduction=reduction),
         lambda n: (torch.randn(n, 5), torch.randint(0, 6, (n,)), torch.zeros(n))),
        (GHMR(bins=10, momentum=0.7, reduction=reduction),
         MMDetGHMR(bins=10, momentum=0.7, reduction=reduction),
         lambda n: (torch.randn(n, 4), torch.randn(n, 4), torch.zeros(n, 4))),
    ]:
        for n in (9, 0):
            pred, target, weight = make(n)
            loss, grad = _run(ours, pred, target, weight)
            if isinstance(ours, GHMC):
                ref_target = _onehot(target, 5)
                ref_weight = weight[:, None].expand(n, 5)
            else:
                ref_target, ref_weight = target, weight
            ref_loss, ref_grad = _run(ref, pred, ref_target, ref_weight)
            torch.testing.assert_close(loss, ref_loss)
            torch.testing.assert_close(grad, ref_grad)
            assert not _state(ours).any()


def test_label_weight_values_only_mark_validity_in_ghmc():
    pred, labels, _ = _cls_inputs(50, 6)
    w = torch.rand(50) * (torch.rand(50) > 0.3)
    a = GHMC(10)(pred, labels, w)
    b = GHMC(10)(pred, labels, (w > 0).float())
    assert torch.equal(a, b)


@pytest.mark.parametrize('targets', ['labels', 'onehot'])
def test_ghmc_gradient_for_any_grad_out(targets):
    """The CPU passes form the gradient for grad_out == 1 in the forward; any other grad_out (a
    scaled loss, a second backward through a retained graph) gets mmdet's gradient all the same,
    and a call under no_grad gives the same loss."""
    ours, ref, no_grad_twin = GHMC(30, 0.75), MMDetGHMC(30, 0.75), GHMC(30, 0.75)
    for step, scale in enumerate([1.0, 2.5, 1.0, -0.125]):
        pred, labels, label_weight = _cls_inputs(3001, 9, ignore=0.1)
        onehot = _onehot(labels, 9)
        target, weight = ((labels, label_weight) if targets == 'labels'
                          else (onehot, label_weight[:, None].expand(3001, 9)))
        with torch.no_grad():
            no_grad_loss = no_grad_twin(pred, target, weight)
        p, r = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        loss = ours(p, target, weight)
        ref_loss = ref(r, onehot, label_weight[:, None].expand(3001, 9))
        assert torch.equal(loss, no_grad_loss)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        (loss * scale).backward(retain_graph=True)
        (ref_loss * scale).backward(retain_graph=True)
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)
        first = p.grad.clone()
        p.grad = None
        loss.backward()  # the retained graph again, grad_out == 1
        r.grad = None
        ref_loss.backward()
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)
        if scale == 1.0:
            assert torch.equal(p.grad, first)
        assert torch.equal(_state(ours), ref.acc_sum), step


@pytest.mark.parametrize('bins', [126, 127, 253])
def test_ghmc_matches_mmdet_with_many_bins(bins):
    """Up to 126 bins the CPU passes gather the weights of two slots at once (an int16 view of
    the uint8 slots); above, one at a time: both equal mmdet."""
    ours, ref = GHMC(bins=bins, momentum=0.75), MMDetGHMC(bins=bins, momentum=0.75)
    for n in (640, 333):  # an even and an odd number of elements
        pred, labels, label_weight = _cls_inputs(n, 7, ignore=0.1)
        loss, grad = _run(ours, pred, labels, label_weight)
        ref_loss, ref_grad = _run(ref, pred, _onehot(labels, 7), label_weight[:, None].expand(n, 7))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=0)
        assert torch.equal(_state(ours), ref.acc_sum)


def test_pair_gather_equals_indexing_at_any_offset_and_size():
    from mmdet_ghm.ops.cpu_passes import _gather_slots, _slot_pair_table

    table = torch.rand(32)
    pairs = _slot_pair_table(table)
    slots = torch.randint(0, 32, (1001,), dtype=torch.uint8)
    for start, stop in [(0, 1000), (0, 1001), (1, 1001), (2, 1000), (3, 3)]:
        part = slots[start:stop]
        assert torch.equal(_gather_slots(table, pairs, part), table[part.long()])
    assert _slot_pair_table(torch.rand(129)) is None  # slots >= 128: one at a time
