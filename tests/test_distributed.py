"""sync_across_ranks: 2 processes (gloo, CPU) against one process fed the union of the batches."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    (lc + lr).backward()
    return lc.detach(), lr.detach(), p.grad, r.grad


def _make_losses(sync):
    from mmdet_ghm import GHMC, GHMR
    return (GHMC(bins=30, momentum=0.75, sync_across_ranks=sync),
            GHMR(mu=0.02, bins=10, momentum=0.7, sync_across_ranks=sync))


def _worker(rank, init_file, sync, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    losses = _make_losses(sync)
    results = []
    for step in range(STEPS):
        pred, labels, weight, reg, reg_target, reg_weight = _batches(step)
        rows, reg_rows = slice(rank * 257, (rank + 1) * 257), slice(rank * 60, (rank + 1) * 60)
        results.append(_run(losses, pred[rows], labels[rows], weight[rows], reg[reg_rows],
                            reg_target[reg_rows], reg_weight[reg_rows]))
    torch.save({'results': results, 'acc_cls': losses[0].density.acc_sum,
                'acc_reg': losses[1].density.acc_sum}, os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


def _spawn(tmp_path, sync):
    mp.spawn(_worker, args=(str(tmp_path / 'init'), sync, str(tmp_path)), nprocs=WORLD,
             join=True)
    return [torch.load(tmp_path / f'{r}.pt', weights_only=True) for r in range(WORLD)]


def test_synced_density_equals_one_process_on_the_union(tmp_path):
    ranks = _spawn(tmp_path, sync=True)
    union = _make_losses(False)
    for step in range(STEPS):
        lc, lr, gc, gr = _run(union, *_batches(step))
        per_rank = [r['results'][step] for r in ranks]
        # the mean of the ranks' losses is the union's loss, and DDP's mean of the gradients
        # (each rank's rows scaled by 1 / WORLD) is the union's gradient
        torch.testing.assert_close(sum(r[0] for r in per_rank) / WORLD, lc, rtol=1e-5, atol=0)
        torch.testing.assert_close(sum(r[1] for r in per_rank) / WORLD, lr, rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.cat([r[2] for r in per_rank]) / WORLD, gc,
                                   rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(torch.cat([r[3] for r in per_rank]) / WORLD, gr,
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
