"""``python -m mmdet_ghm.plot``: the reference curves are the gradients of the losses they name, the
GHM curve uses the density's own bins and weights, the figures are written for every GHM loss of a
run, and a work dir without records gets an error that says how to make them."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.visualization import LocalVisBackend
from torch import nn

from mmdet_ghm import GHMC, GHMR, GradientDensity
from mmdet_ghm.diagnostics.density_hook import RECORDS_FILE, GHMDensityHook
from mmdet_ghm.diagnostics.plot import (asl1_error, find_records_file, focal_gradient_norm,
                                        harmonized_gradient_norm, load_records, main, plot_run,
                                        smooth_l1_gradient_norm)


def _write_run(log_dir, iterations=6, interval=2, bbox_weight=1.0):
    """Records of a few 'iterations' of real GHMC/GHMR losses, written by the hook into
    ``log_dir/vis_data`` as in a run (``bbox_weight=0``: no positive anchor, GHM-R counts
    nothing; a function of the iteration index: that iteration's weight)."""
    head = nn.Module()
    head.loss_cls = GHMC(bins=30, momentum=0.75)
    head.loss_bbox = GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    model = nn.Module()
    model.bbox_head = head
    backend = LocalVisBackend(save_dir=str(log_dir / 'vis_data'))
    runner = SimpleNamespace(model=model, iter=0, max_iters=iterations,
                             visualizer=SimpleNamespace(_vis_backends={'local': backend}),
                             logger=MMLogger.get_current_instance())
    hook = GHMDensityHook(interval=interval)
    hook.before_train(runner)
    for it in range(iterations):
        runner.iter = it
        hook.before_train_iter(runner, it)
        # logits drift towards confident predictions, as in training: most g near 0
        logits = torch.randn(2000, 5) * (2 + it) - 4
        labels = torch.randint(0, 6, (2000,))
        head.loss_cls(logits, labels, torch.ones(2000))
        deltas = torch.randn(300, 4) * 0.1 / (1 + it)
        weight = bbox_weight(it) if callable(bbox_weight) else bbox_weight
        head.loss_bbox(deltas, torch.zeros(300, 4), torch.full((300, 4), weight))
        hook.after_train_iter(runner, it)
    return log_dir / 'vis_data' / RECORDS_FILE


def test_focal_curve_is_the_focal_loss_gradient():
    x = torch.linspace(-9, 9, 301, dtype=torch.float64, requires_grad=True)
    gamma = 2.0
    for t in (0.0, 1.0):
        p = x.sigmoid()
        loss = -(t * (1 - p) ** gamma * torch.log(p) + (1 - t) * p ** gamma * torch.log(1 - p))
        (grad,) = torch.autograd.grad(loss.sum(), x)
        g = (p - t).abs().detach().numpy()
        np.testing.assert_allclose(focal_gradient_norm(g, gamma), grad.abs().numpy(),
                                   rtol=1e-6, atol=1e-12)
    assert focal_gradient_norm(np.array([1.0]), gamma)[0] == 1.0  # the limit at p = 1 - t, not NaN


def test_smooth_l1_curve_is_its_gradient_at_the_same_error():
    mu, beta = 0.02, 0.11
    g = np.linspace(0.01, 0.999, 200)
    d = torch.tensor(asl1_error(g, mu), requires_grad=True)
    np.testing.assert_allclose((d / (d * d + mu * mu).sqrt()).detach().numpy(), g, rtol=1e-10)
    loss = nn.functional.smooth_l1_loss(d, torch.zeros_like(d), beta=beta, reduction='sum')
    (grad,) = torch.autograd.grad(loss, d)
    np.testing.assert_allclose(smooth_l1_gradient_norm(g, mu, beta), grad.abs().numpy(),
                               rtol=1e-10)


def test_ghm_curve_uses_the_density_bins_and_weights():
    density = GradientDensity(bins=10, momentum=0.0)
    sample = torch.rand(1000) ** 3  # skewed: some bins empty
    counts = density.count(density.slot_index(sample))
    weights = density.slot_weights(counts)
    record = dict(edges=density.edges.tolist(), counts=counts[1:-1].tolist(),
                  weights=weights.tolist())
    g = np.linspace(0, 0.9999, 5000)
    curve = harmonized_gradient_norm(g, record)
    bins = density.slot_index(torch.from_numpy(g).float()).long() - 1
    expected = g * weights[bins].double().numpy()
    empty = (counts[1:-1] == 0)[bins].numpy()
    assert np.isnan(curve[empty]).all()
    np.testing.assert_allclose(curve[~empty], expected[~empty], rtol=1e-6)


def test_figures_of_a_run(tmp_path):
    records_file = _write_run(tmp_path / 'work' / '20260101_000000')
    records = load_records(str(records_file))
    assert set(records) == {'bbox_head.loss_cls', 'bbox_head.loss_bbox'}
    assert [r['step'] for r in records['bbox_head.loss_cls']] == [1, 2, 4, 6]

    written = plot_run(str(tmp_path / 'work'))
    out = tmp_path / 'work' / 'ghm_plots'
    assert sorted(written) == sorted(
        str(out / f'{fig}_bbox_head.{loss}.png')
        for fig in ('gradient_norm_distribution', 'reweighted_gradient_norm')
        for loss in ('loss_cls', 'loss_bbox'))
    import matplotlib.image
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 400 and image.shape[1] > 600 and image[..., :3].std() > 0.05

    # --step picks the weights of a recorded iteration; an unrecorded one is an error.
    assert main([str(tmp_path / 'work'), '--step', '2', '--out-dir', str(tmp_path / 's2')]) == 0
    assert len(os.listdir(tmp_path / 's2')) == 4
    assert main([str(tmp_path / 'work'), '--step', '3', '--out-dir', str(tmp_path / 's3')]) == 2


def test_a_loss_that_never_counted_is_skipped_with_a_warning(tmp_path, capsys):
    """A run without positive anchors: GHM-R records are all empty, GHM-C's figures are still
    drawn (the whole run had failed)."""
    _write_run(tmp_path / 'work' / '20260101_000000', iterations=2, bbox_weight=0.0)
    with pytest.warns(UserWarning, match='bbox_head.loss_bbox: no figure, every record is empty'):
        written = plot_run(str(tmp_path / 'work'))
    assert [os.path.basename(p) for p in sorted(written)] == [
        'gradient_norm_distribution_bbox_head.loss_cls.png',
        'reweighted_gradient_norm_bbox_head.loss_cls.png']
    with pytest.raises(SystemExit):
        main([str(tmp_path / 'work'), '--max-curves', '0'])
    assert 'argument --max-curves: expected an integer >= 1, got 0' in capsys.readouterr().err


def test_step_where_one_loss_is_empty_draws_the_others(tmp_path):
    """--step N where GHM-R counted nothing at N (a batch without positives): GHM-R's
    reweighted-gradient figure is skipped with a warning, every other figure is drawn."""
    _write_run(tmp_path / 'work' / '20260101_000000', bbox_weight=lambda it: float(it != 3))
    with pytest.warns(UserWarning, match='bbox_head.loss_bbox: no reweighted-gradient figure, '
                                         'its record of iteration 4 is empty'):
        written = plot_run(str(tmp_path / 'work'), step=4)
    assert sorted(os.path.basename(p) for p in written) == [
        'gradient_norm_distribution_bbox_head.loss_bbox.png',
        'gradient_norm_distribution_bbox_head.loss_cls.png',
        'reweighted_gradient_norm_bbox_head.loss_cls.png']


def test_latest_run_of_a_work_dir_is_used(tmp_path):
    old = _write_run(tmp_path / 'work' / '20260101_000000', iterations=2)
    new = _write_run(tmp_path / 'work' / '20260102_000000', iterations=4)
    os.utime(old, (1e9, 1e9))
    assert find_records_file(str(tmp_path / 'work')) == str(new)


def test_work_dir_without_records_is_a_clear_error(tmp_path, capsys):
    work = tmp_path / 'work' / '20260101_000000' / 'vis_data'
    work.mkdir(parents=True)
    assert main([str(tmp_path / 'work')]) == 2
    err = capsys.readouterr().err
    assert 'no GHM density records' in err and RECORDS_FILE in err and 'GHMDensityHook' in err

    assert main([str(tmp_path / 'missing')]) == 2
    assert 'neither a work dir nor a records file' in capsys.readouterr().err

    # a log of a run without the hook (the LoggerHook's scalars only)
    scalars = work / 'scalars.json'
    scalars.write_text(json.dumps({'loss': 1.5, 'step': 25}) + '\n')
    assert main([str(scalars)]) == 2
    assert 'holds no GHM density record' in capsys.readouterr().err

    (work / RECORDS_FILE).write_text('{"step": 1, "ghm/x": \n')
    with pytest.raises(ValueError, match=f'{RECORDS_FILE}:1 is not a JSON line'):
        load_records(str(work / RECORDS_FILE))


def test_command_line(tmp_path):
    _write_run(tmp_path / 'work' / '20260101_000000', iterations=2)
    proc = subprocess.run([sys.executable, '-m', 'mmdet_ghm.plot', str(tmp_path / 'work')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.split()) == 4 and all(p.endswith('.png') for p in proc.stdout.split())
