"""sync_across_ranks: 2 processes (gloo, CPU) against one process fed the union of the batches."""
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmdet_ghm import GHMC, GHMR

WORLD = 2
STEPS = 3


def _batches(step):
    gen = torch.Generator().manual_seed(100 + step)
    pred = torch.randn(2 * 257, 11, generator=gen) * 3 - 2
    labels = torch.randint(0, 12, (2 * 257,), generator=gen)
    weight = (torch.rand(2 * 257, generator=gen) > 0.1).float()
    reg = torch.randn(2 * 60, 4, generator=gen) * 0.05
    reg_target = torch.randn(2 * 60, 4, generator=gen) * 0.05
    reg_weight = (torch.rand(2 * 60, 4, generator=gen) > 0.5).float() * 2
    return pred, labels, weight, reg, reg_target, reg_weight


def _run(losses, pred, labels, weight, reg, reg_target, reg_weight):
    ghmc, ghmr = losses
    p, r = pred.clone().requires_grad_(), reg.clone().requires_grad_()
    lc, lr = ghmc(p, labels, weight), ghmr(r, reg_target, reg_weight)
    (lc.sum() + lr.sum()).backward()
    return lc.detach(), lr.detach(), p.grad, r.grad


def _make_losses(sync, reduction='mean'):
    from mmdet_ghm import GHMC, GHMR
    return (GHMC(bins=30, momentum=0.75, sync_across_ranks=sync, reduction=reduction),
            GHMR(mu=0.02, bins=10, momentum=0.7, sync_across_ranks=sync, reduction=reduction))


def _worker(rank, init_file, sync, out_dir, reduction='mean'):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    losses = _make_losses(sync, reduction)
    results = []
    for step in range(STEPS):
        pred, labels, weight, reg, reg_target, reg_weight = _batches(step)
        rows, reg_rows = slice(rank * 257, (rank + 1) * 257), slice(rank * 60, (rank + 1) * 60)
        results.append(_run(losses, pred[rows], labels[rows], weight[rows], reg[reg_rows],
                            reg_target[reg_rows], reg_weight[reg_rows]))
    torch.save({'results': results, 'acc_cls': losses[0].density.acc_sum,
                'acc_reg': losses[1].density.acc_sum}, os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


def _spawn(tmp_path, sync, reduction='mean', worker=None):
    context = mp.spawn(worker or _worker,
                       args=(str(tmp_path / 'init'), sync, str(tmp_path), reduction),
                       nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120  # a rank stuck in a collective must fail the test
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError('a rank hangs')
    return [torch.load(tmp_path / f'{r}.pt', weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_synced_density_equals_one_process_on_the_union(tmp_path, reduction):
    """'mean': the mean of the ranks' losses is the union's loss and DDP's mean of the
    gradients (each rank's rows scaled by 1 / WORLD) the union's gradient. 'sum': the ranks'
    losses add up to the union's, their gradients are the union's rows. 'none': the ranks'
    element losses and gradients are the union's rows."""
    ranks = _spawn(tmp_path, sync=True, reduction=reduction)
    union = _make_losses(False, reduction)
    scale = WORLD if reduction == 'mean' else 1
    for step in range(STEPS):
        lc, lr, gc, gr = _run(union, *_batches(step))
        per_rank = [r['results'][step] for r in ranks]
        for i, expected in ((0, lc), (1, lr)):
            if reduction == 'none':
                got = torch.cat([r[i] for r in per_rank])
            else:
                got = sum(r[i] for r in per_rank) / scale
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(torch.cat([r[2] for r in per_rank]) / scale, gc,
                                   rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(torch.cat([r[3] for r in per_rank]) / scale, gr,
                                   rtol=1e-5, atol=1e-9)
    for r in ranks:
        assert torch.equal(r['acc_cls'], union[0].density.acc_sum)
        assert torch.equal(r['acc_reg'], union[1].density.acc_sum)


def test_without_sync_each_rank_keeps_its_own_state_as_mmdet(tmp_path):
    ranks = _spawn(tmp_path, sync=False)
    for rank, result in enumerate(ranks):
        alone = _make_losses(False)
        for step in range(STEPS):
            pred, labels, weight, reg, reg_target, reg_weight = _batches(step)
            rows, reg_rows = slice(rank * 257, (rank + 1) * 257), slice(rank * 60, (rank + 1) * 60)
            expected = _run(alone, pred[rows], labels[rows], weight[rows], reg[reg_rows],
                            reg_target[reg_rows], reg_weight[reg_rows])
            for a, b in zip(result['results'][step], expected):
                assert torch.equal(a, b)
        assert torch.equal(result['acc_cls'], alone[0].density.acc_sum)
    assert not torch.equal(ranks[0]['acc_cls'], ranks[1]['acc_cls'])


def _nan_worker(rank, init_file, sync, out_dir, loss_name):
    """Rank 1 feeds a NaN; every rank must raise the same ValueError, then carry on."""
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    if loss_name == 'GHMC':
        loss = GHMC(bins=30, momentum=0.75, sync_across_ranks=True)
        make = lambda: (torch.randn(64, 5), torch.randint(0, 6, (64,)))  # noqa: E731
    else:
        loss = GHMR(bins=10, momentum=0.7, sync_across_ranks=True)
        make = lambda: (torch.randn(64, 4), torch.randn(64, 4))  # noqa: E731
    pred, target = make()
    loss(pred, target)
    state = loss.density.acc_sum.clone()
    if rank == 1:
        pred[5, 1] = float('nan')
    errors = []
    try:
        loss(pred, target)
    except ValueError as error:
        errors.append(str(error))
    unchanged = torch.equal(loss.density.acc_sum, state)
    pred, target = make()
    after = loss(pred, target)  # the group is still usable: nobody died in the collective
    torch.save({'errors': errors, 'unchanged': unchanged, 'after': after,
                'acc': loss.density.acc_sum}, os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


def _assert_one_error_on_every_rank(ranks, text=''):
    """Rank 1 had the bad input: its error says so, rank 0's names another rank."""
    for rank, result in enumerate(ranks):
        assert len(result['errors']) == 1, rank
        assert text in result['errors'][0]
        assert ('another rank' in result['errors'][0]) == (rank == 0), result['errors'][0]


@pytest.mark.parametrize('loss_name', ['GHMC', 'GHMR'])
def test_nan_on_one_rank_raises_the_same_error_on_every_rank(tmp_path, loss_name):
    ranks = _spawn(tmp_path, True, loss_name, worker=_nan_worker)
    _assert_one_error_on_every_rank(ranks, 'NaN or inf')
    for result in ranks:
        assert result['unchanged'] and torch.isfinite(result['after'])
    assert torch.equal(ranks[0]['acc'], ranks[1]['acc'])


def _empty_rank_worker(rank, init_file, sync, out_dir, loss_name):
    """reduction='none', rank 0 without elements, rank 1 with a bad input that only it can see
    (a label outside [0, C]; GHM-R weights summing to NaN): rank 0's empty loss has no element
    to be NaN, yet it must raise too, or it would wait in the next collective alone."""
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    n = 0 if rank == 0 else 4
    if loss_name == 'GHMC':
        loss = GHMC(bins=10, momentum=0.75, sync_across_ranks=True, reduction='none')
        labels = torch.full((n,), 1)
        labels[:1] = 9  # C = 5
        call = lambda: loss(torch.randn(n, 5), labels)  # noqa: E731
    else:
        loss = GHMR(sync_across_ranks=True, reduction='none')
        weight = torch.ones(n, 4)
        weight[:1, 0] = float('nan')
        call = lambda: loss(torch.randn(n, 4), torch.randn(n, 4), weight)  # noqa: E731
    errors = []
    try:
        call()
    except ValueError as error:
        errors.append(str(error))
    torch.save({'errors': errors}, os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.parametrize('loss_name', ['GHMC', 'GHMR'])
def test_a_rank_without_elements_raises_with_the_others(tmp_path, loss_name):
    _assert_one_error_on_every_rank(_spawn(tmp_path, True, loss_name, worker=_empty_rank_worker))
