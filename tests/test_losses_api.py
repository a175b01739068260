"""GHMC / GHMR beyond mmdet: optional weights, soft targets, 'sum', low precision, errors."""
import pytest
import torch

from mmdet_ghm import GHMC, GHMR


def _cls(n=60, c=7):
    return torch.randn(n, c) * 3, torch.randint(0, c + 1, (n,))


def test_label_weight_none_equals_all_ones():
    pred, labels = _cls()
    a, b = GHMC(30, 0.75), GHMC(30, 0.75)
    assert torch.equal(a(pred, labels), b(pred, labels, torch.ones(60)))
    assert torch.equal(a.density.acc_sum, b.density.acc_sum)
    pred, target = torch.randn(20, 4), torch.randn(20, 4)
    assert torch.equal(GHMR()(pred, target), GHMR()(pred, target, torch.ones(20, 4)))


def test_integer_labels_equal_onehot_targets():
    pred, labels = _cls()
    onehot = torch.zeros(60, 7)
    onehot[(labels < 7).nonzero().squeeze(1), labels[labels < 7]] = 1
    w = (torch.rand(60) > 0.3).float()
    pa, pb = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    a = GHMC(30)(pa, labels, w)
    b = GHMC(30)(pb, onehot, w)  # (N,) weight broadcast over classes
    a.backward(), b.backward()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-6, atol=1e-9)


def test_soft_targets_use_g_equal_abs_sigmoid_minus_target():
    pred, target = torch.randn(40, 5), torch.rand(40, 5)
    loss_fn = GHMC(bins=10, reduction='none')
    loss = loss_fn(pred, target)
    g = (pred.sigmoid() - target).abs()
    weights = torch.zeros_like(g)
    edges = loss_fn.density.edges
    n = 0
    for i in range(10):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        if inds.any():
            weights[inds] = g.numel() / inds.sum().item()
            n += 1
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pred, target, reduction='none')
    torch.testing.assert_close(loss, bce * weights / n)


def test_reduction_sum_is_mean_times_normalizer():
    pred, labels = _cls()
    w = (torch.rand(60) > 0.5).float()
    p_mean, p_sum = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    mean = GHMC(10)(p_mean, labels, w)
    total = GHMC(10, reduction='sum')(p_sum, labels, w)
    tot = w.sum() * 7
    torch.testing.assert_close(total, mean * tot, rtol=1e-5, atol=0)
    mean.backward()
    total.backward()
    torch.testing.assert_close(p_sum.grad, p_mean.grad * tot, rtol=1e-5, atol=1e-7)
    pred, target = torch.randn(30, 4), torch.randn(30, 4)
    mean = GHMR()(pred, target, reduction_override='mean')
    total = GHMR()(pred, target, reduction_override='sum')
    torch.testing.assert_close(total, mean * 120, rtol=1e-5, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_pred_gives_the_float32_result(dtype):
    pred, labels = _cls(500, 20)
    pred = (pred * 5).to(dtype)  # big logits: tot / density overflows in float16
    half, full = GHMC(30, 0.75), GHMC(30, 0.75)
    ph, pf = pred.clone().requires_grad_(), pred.float().requires_grad_()
    lh, lf = half(ph, labels), full(pf, labels)
    lh.backward(), lf.backward()
    assert lh.dtype == torch.float32 and ph.grad.dtype == dtype
    assert torch.equal(lh, lf)
    assert torch.equal(ph.grad, pf.grad.to(dtype))
    assert torch.equal(half.density.acc_sum, full.density.acc_sum)
    reg = (torch.randn(50, 4) * 0.05).to(dtype)
    t = torch.zeros(50, 4)
    assert torch.equal(GHMR()(reg, t), GHMR()(reg.float(), t))


def test_fcos_style_call_without_label_weight():
    pred, labels = _cls()
    loss = GHMC(30, 0.75)(pred, labels, avg_factor=12.0)
    assert loss.isfinite()


def test_non_contiguous_and_expanded_inputs():
    base = torch.randn(7, 60) * 3
    pred = base.t()  # non-contiguous (60, 7)
    labels = torch.randint(0, 8, (60,))
    w = torch.ones(1).expand(60)
    a = GHMC(30)(pred, labels, w)
    b = GHMC(30)(pred.contiguous(), labels, torch.ones(60))
    assert torch.equal(a, b)


@pytest.mark.parametrize('layout', ['transposed', 'permuted', 'channels_last'])
def test_ghmr_strided_pred_gives_mmdets_numbers(layout):
    from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR
    base = torch.randn(2, 4, 3, 5) * 0.1
    pred = {'transposed': base.reshape(8, 15).t(), 'permuted': base.permute(0, 2, 3, 1),
            'channels_last': base.contiguous(memory_format=torch.channels_last)}[layout]
    assert not pred.is_contiguous()
    target, weight = torch.zeros(pred.shape), torch.ones(pred.shape)
    ours, ref = GHMR(bins=10, momentum=0.7), MMDetGHMR(bins=10, momentum=0.7)
    p_ours, p_ref = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    loss, ref_loss = ours(p_ours, target, weight), ref(p_ref, target, weight)
    loss.backward(), ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=2e-5, atol=1e-7)
    assert torch.equal(ours.acc_sum, ref.acc_sum)


def test_repr_shows_settings():
    text = repr(GHMC(bins=30, momentum=0.75, loss_weight=2.0))
    assert 'bins=30' in text and 'momentum=0.75' in text and 'loss_weight=2.0' in text
    assert 'mu=0.02' in repr(GHMR())


@pytest.mark.parametrize('kwargs, match', [
    (dict(bins=0), '^bins '), (dict(bins=3.5), '^bins '), (dict(momentum=1.0), '^momentum '),
    (dict(momentum=-0.5), '^momentum '), (dict(use_sigmoid=False), '^use_sigmoid must be True'),
    (dict(use_sigmoid=0), '^use_sigmoid must be True'), (dict(use_sigmoid=2), '^use_sigmoid '),
    (dict(bias_correction='yes'), '^bias_correction '), (dict(reduction='avg'), '^reduction '),
])
def test_ghmc_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GHMC(**kwargs)


def test_flags_take_the_integers_of_a_hand_written_config():
    """mmdet's GHMC takes use_sigmoid=1 (its heads read it as true); so do we, and 0 / 1 for
    our own flags."""
    loss = GHMC(use_sigmoid=1, bias_correction=0, sync_across_ranks=0)
    assert loss.use_sigmoid is True and loss.density.bias_correction is False


@pytest.mark.parametrize('kwargs, match', [
    (dict(mu=0), '^mu '), (dict(mu=-1.0), '^mu '), (dict(bins=-2), '^bins '),
    (dict(momentum=2), '^momentum '), (dict(reduction=None), '^reduction '),
])
def test_ghmr_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GHMR(**kwargs)


def test_ghmc_bad_inputs():
    """Every bad argument: a ValueError whose message starts with the argument's name."""
    loss = GHMC(10)
    pred, labels = _cls(8, 3)
    cases = [
        ((pred.long(), labels), '^pred must be a floating-point'),
        (([0.5] * 3, labels), '^pred must be a tensor'),
        ((pred, labels[:5]), '^target: integer labels need pred of shape'),
        ((pred, labels + 5), r'^target: labels must lie in \[0, 3\]'),
        ((pred, labels - 10), r'^target: labels must lie in \[0, 3\]'),
        ((pred, labels.float()), '^target must be integer labels'),
        ((pred, torch.rand(8, 4)), '^target must have the shape of pred'),
        ((pred, labels, torch.ones(7)), '^label_weight must have shape'),
        ((pred, labels, torch.ones(8, 2)), '^label_weight must have shape'),
        ((pred, torch.rand(8, 3), torch.ones(5)), "^label_weight must have pred's shape"),
        ((pred, labels, [1.0] * 8), '^label_weight must be a tensor, got list'),
        ((pred, labels, torch.ones(8, dtype=torch.complex64)), '^label_weight must be a real'),
        ((pred, labels, torch.ones(8, device='meta')), "^label_weight must be on pred's device"),
        ((pred[0], labels), '^target must have the shape of pred'),
        ((pred, [1, 2]), '^target must be a tensor'),
        ((pred, (torch.rand(8, 3),)), '^target must be a tensor'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            loss(*args)
    with pytest.raises(ValueError, match='^reduction_override must be one of'):
        loss(pred, labels, reduction_override='avg')
    assert not loss.density.acc_sum.any()


def test_ghmr_bad_inputs():
    loss = GHMR()
    pred = torch.randn(8, 4)
    cases = [
        ((pred > 0, pred), '^pred must be a floating-point'),  # int pred: mmdet's number
        ((pred, pred > 0), '^target must be a tensor of regression targets'),  # mmdet too
        ((pred, (pred,)), '^target must be a tensor'),
        ((pred, pred[:, :2]), '^target must have the shape'),
        ((pred, pred, torch.ones(8)), "^label_weight must have pred's shape"),
        ((pred, pred, [1.0]), '^label_weight must be a tensor'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            loss(*args)
    with pytest.raises(ValueError, match='^reduction_override must be one of'):
        loss(pred, pred, reduction_override=True)
    # mu whose square float32 cannot hold: g = 0 / 0 where pred == target (mmdet: a NaN
    # gradient), or an infinite loss
    for mu in (1e-30, 1e20):
        with pytest.raises(ValueError, match='^mu must be a float whose square torch.float32'):
            GHMR(mu=mu)(pred, pred)
    # float64 holds 1e-60: mmdet's numbers there
    GHMR(mu=1e-30)(pred.double(), pred.double() + 1)
    assert not loss.density.acc_sum.any()


def _bad_input_worker(rank, init_file, out_dir, fn):
    import os

    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    if fn == 'labels':
        loss = GHMC(bins=10, momentum=0.75, sync_across_ranks=True)
        pred, labels = torch.randn(16, 3), torch.randint(0, 4, (16,))
        good = lambda: loss(pred, labels.clamp(max=3))  # noqa: E731
        bad = lambda: loss(pred, torch.where(torch.arange(16) == 3, 7, labels))  # noqa: E731
    else:
        loss = GHMR(bins=10, momentum=0.7, sync_across_ranks=True)
        pred, target, weight = torch.randn(16, 4) * 0.1, torch.zeros(16, 4), torch.ones(16, 4)
        good = lambda: loss(pred, target, weight)  # noqa: E731
        bad = lambda: loss(pred, target, torch.where(torch.arange(4) == 2, float('nan'),  # noqa
                                                     weight))
    good()
    state = loss.acc_sum.clone()
    errors = []
    try:
        bad() if rank == 1 else good()
    except ValueError as error:
        errors.append(str(error))
    unchanged = torch.equal(loss.acc_sum, state)
    after = good()  # the group is still usable
    torch.save({'errors': errors, 'unchanged': unchanged, 'after': after},
               os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.parametrize('fn', ['labels', 'reg_weight'])
def test_bad_input_on_one_rank_raises_on_every_rank_under_sync(tmp_path, fn):
    """Synced, a rank that raised alone would leave the other in the all-reduce."""
    import time

    import torch.multiprocessing as mp
    context = mp.spawn(_bad_input_worker, args=(str(tmp_path / 'init'), str(tmp_path), fn),
                       nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError('a rank hangs')
    for rank in (0, 1):
        result = torch.load(tmp_path / f'{rank}.pt', weights_only=True)
        assert len(result['errors']) == 1, rank
        assert result['errors'][0].startswith('target: labels must lie in [0, 3]' if fn == 'labels'
                                              else 'label_weight must not sum to NaN or +inf')
        assert ('another rank' in result['errors'][0]) == (rank == 0)
        assert result['unchanged'] and torch.isfinite(result['after'])
