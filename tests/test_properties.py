"""Property tests against mmdet's own GHMC/GHMR on random shapes, bins and momenta, and
bitwise determinism of the CPU path."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

from mmdet_ghm import GHMC, GHMR

TOL = dict(rtol=2e-5, atol=1e-7)
momenta = st.one_of(st.just(0.0), st.floats(0.05, 0.95))


def _run(loss, pred, *args):
    pred = pred.clone().requires_grad_()
    value = loss(*(pred,) + args)
    value.backward()
    return value.detach(), pred.grad


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), c=st.integers(1, 24), bins=st.integers(1, 40), momentum=momenta,
       scale=st.floats(0.1, 20.0), seed=st.integers(0, 2**31 - 1))
def test_ghmc_property_matches_mmdet(n, c, bins, momentum, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    ours, ref = GHMC(bins, momentum), MMDetGHMC(bins, momentum)
    for _ in range(2):
        pred = torch.randn(n, c, generator=gen) * scale
        labels = torch.randint(0, c + 1, (n,), generator=gen)
        weight = (torch.rand(n, generator=gen) > 0.2).float()
        onehot = torch.zeros(n, c)
        pos = labels < c
        onehot[pos.nonzero().squeeze(1), labels[pos]] = 1.0
        loss, grad = _run(ours, pred, labels, weight)
        ref_loss, ref_grad = _run(ref, pred, onehot, weight[:, None].expand(n, c))
        # PyTorch's BCE-with-logits (mmdet's) forms x - log_sigmoid(x) for a negative: up to an
        # ulp of |x| off (ours is not); the weights sum to at most tot / (1 - m) of them.
        bce_slack = 4e-7 * float(pred.abs().max()) / (1 - momentum) if n else 0.0
        torch.testing.assert_close(loss, ref_loss, rtol=TOL['rtol'], atol=TOL['atol'] + bce_slack)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        if momentum > 0:
            assert torch.equal(ours.density.acc_sum, ref.acc_sum)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), k=st.integers(1, 8), bins=st.integers(1, 40), momentum=momenta,
       mu=st.floats(0.005, 0.5), seed=st.integers(0, 2**31 - 1))
def test_ghmr_property_matches_mmdet(n, k, bins, momentum, mu, seed):
    gen = torch.Generator().manual_seed(seed)
    ours, ref = GHMR(mu, bins, momentum), MMDetGHMR(mu, bins, momentum)
    for _ in range(2):
        pred = torch.randn(n, k, generator=gen) * mu * 3
        target = torch.randn(n, k, generator=gen) * mu * 3
        weight = (torch.rand(n, k, generator=gen) > 0.3).float()
        loss, grad = _run(ours, pred, target, weight)
        ref_loss, ref_grad = _run(ref, pred, target, weight)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        if momentum > 0:
            assert torch.equal(ours.density.acc_sum, ref.acc_sum)


def test_cpu_path_is_bitwise_deterministic_over_chunks():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pred = torch.randn(7001, 80) * 3 - 3
        labels = torch.randint(0, 81, (7001,))
        results = []
        for _ in range(3):
            loss = GHMC(30, 0.75)
            results.append(_run(loss, pred, labels) + (loss.density.acc_sum,))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(previous)
