"""tools/compare_losses.py on a tiny setting (2 configs, 1 seed, 2 iterations each): every run
trains in its own process with its exact config saved, the table and the JSON hold its numbers,
the GHM run gets the density figures, a second call reuses the finished runs; the comparison
configs build the losses their labels name."""
import importlib.util
import json
import os.path as osp

import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('compare_losses',
                                               osp.join(REPO, 'tools', 'compare_losses.py'))
compare_losses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_losses)

CE = 'configs/loss_comparison/retinanet_r18-tiny_fpn_ce_shapes.py'
GHMC_SL1 = 'configs/loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py'
TINY = [
    # 4 train images, batch 2: 2 iterations, 1 epoch, then the COCO metric on 2 val images
    'train_dataloader.dataset.num_images=4', 'val_dataloader.dataset.num_images=2',
    'test_dataloader.dataset.num_images=2', 'train_dataloader.batch_size=2',
    'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
    # 2 iterations leave every score near the 0.01 prior: keep them so that COCO eval has input
    'model.test_cfg.score_thr=0.0',
    'default_hooks.checkpoint.interval=100', 'default_hooks.checkpoint.save_last=False',
]


def test_default_configs_and_labels():
    labels = [compare_losses.describe_losses(Config.fromfile(osp.join(REPO, c)))
              for c in compare_losses.DEFAULT_CONFIGS]
    assert labels == ['CE (sigmoid) + smooth L1', 'focal loss + smooth L1', 'GHM-C + smooth L1',
                      'GHM-C + GHM-R']
    ce = Config.fromfile(osp.join(REPO, CE)).model.bbox_head
    assert ce.loss_cls.use_sigmoid and ce.loss_bbox.beta == 0.11
    ghmc = Config.fromfile(osp.join(REPO, GHMC_SL1)).model.bbox_head
    assert (ghmc.loss_cls.bins, ghmc.loss_cls.momentum, ghmc.loss_cls.use_sigmoid) == \
        (30, 0.75, True)
    assert ghmc.loss_bbox.type == 'SmoothL1Loss' and ghmc.loss_bbox.beta == 0.11
    batch = Config.fromfile(
        osp.join(REPO, 'configs/regimes/retinanet_r18-tiny_fpn_ghmc-batch_shapes.py'))
    assert compare_losses.describe_losses(batch) == 'GHM-C + smooth L1 (batch-wide density)'


def test_tiny_comparison(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the configs' relative data_root: the tiny splits land here
    args = ['--configs', CE, GHMC_SL1, '--seeds', '7', '--work-dir', 'work', '--out-dir', 'out',
            '--density-interval', '1', '--cfg-options', *TINY]
    # --max-runs 1: the first run only; the other is in the table as not run yet
    assert compare_losses.main(args + ['--max-runs', '1']) == 0, capsys.readouterr().out[-3000:]
    printed = capsys.readouterr().out
    assert printed.count('[compare] train') == 1
    report = json.loads((tmp_path / 'out' / 'loss_comparison.json').read_text())
    assert [bool(r.get('pending')) for r in report['runs']] == [False, True]
    assert report['summary'][1]['pending_seeds'] == [7] and report['summary'][1]['seeds'] == []
    assert '| GHM-C + smooth L1 | 7 | not run yet |' in \
        (tmp_path / 'out' / 'loss_comparison.md').read_text()

    assert compare_losses.main(args) == 0, capsys.readouterr().out[-3000:]
    printed = capsys.readouterr().out
    assert printed.count('[compare] train') == 1 and printed.count('[compare] reuse') == 1

    report = json.loads((tmp_path / 'out' / 'loss_comparison.json').read_text())
    assert [r['label'] for r in report['runs']] == ['CE (sigmoid) + smooth L1', 'GHM-C + smooth L1']
    for run in report['runs']:
        assert run['seed'] == 7 and run['iterations'] == 2 and not run.get('failed')
        assert 0 <= run['metrics']['coco/bbox_mAP'] <= 1
        assert 0 <= run['metrics']['coco/bbox_mAP_50'] <= 1
        assert run['sec_per_iter'] > 0 and run['timed_iterations'] >= 1
    for row, run in zip(report['summary'], report['runs']):  # one seed: the mean is the run
        assert row['coco/bbox_mAP'] == [run['metrics']['coco/bbox_mAP'], None]
        assert row['sec_per_iter'][0] == pytest.approx(run['sec_per_iter'])
    assert report['command'].startswith('python tools/compare_losses.py --configs ' + CE)

    # The exact config of each run: its seed, and the density hook in the GHM run only.
    work = tmp_path / 'work'
    ghm_cfg = Config.fromfile(str(work / 'retinanet_r18-tiny_fpn_ghmc_shapes/seed7/config.py'))
    ce_cfg = Config.fromfile(str(work / 'retinanet_r18-tiny_fpn_ce_shapes/seed7/config.py'))
    assert ghm_cfg.randomness.seed == 7 and ce_cfg.randomness.seed == 7
    assert dict(type='GHMDensityHook', interval=1) in ghm_cfg.custom_hooks
    assert all(h['type'] != 'GHMDensityHook' for h in ce_cfg.custom_hooks)
    assert ghm_cfg.train_dataloader.dataset.num_images == 4

    table = (tmp_path / 'out' / 'loss_comparison.md').read_text()
    mean_map = report['summary'][1]['coco/bbox_mAP'][0]
    assert f'| GHM-C + smooth L1 | `{GHMC_SL1}` | 7 | {mean_map:.3f} |' in table
    assert report['command'] in table
    figures = sorted(p.name for p in (tmp_path / 'out' / 'figures'
                                      / 'retinanet_r18-tiny_fpn_ghmc_shapes_seed7').iterdir())
    assert figures == ['gradient_norm_distribution_bbox_head.loss_cls.png',
                       'reweighted_gradient_norm_bbox_head.loss_cls.png']
    assert 'table: out/loss_comparison.md' in printed

    # A second call reuses both finished runs (same config text): no training.
    assert compare_losses.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count('[compare] reuse') == 2 and '[compare] train' not in printed

    # Another clone (another work dir, the committed report): restored from the report, figures
    # kept, and the restored results are reused by the next call.
    args2 = [a if a != 'work' else 'work2' for a in args]
    for _ in range(2):
        assert compare_losses.main(args2) == 0
        printed = capsys.readouterr().out
        assert printed.count('[compare] reuse') == 2 and '[compare] train' not in printed
    assert printed.count('restored from the report') == 0  # the second call: result.json
    again = json.loads((tmp_path / 'out' / 'loss_comparison.json').read_text())
    assert [r['metrics'] for r in again['runs']] == [r['metrics'] for r in report['runs']]
    assert all(r['restored_from'] == str(work / r['stem'] / 'seed7') for r in again['runs'])
    assert f'{figures[0]}' in (tmp_path / 'out' / 'loss_comparison.md').read_text()
    # A run whose config differs from the recorded one (another density interval: the GHM run's
    # hook) is not restored; the CE run's config is the same and is.
    assert compare_losses.main([a if a != 'work' else 'work3' for a in args]
                               + ['--max-runs', '0', '--density-interval', '2']) == 0
    printed = capsys.readouterr().out
    assert printed.count('restored from the report') == 1 and 'reuse CE (sigmoid)' in printed
    assert '| GHM-C + smooth L1 | 7 | not run yet |' in \
        (tmp_path / 'out' / 'loss_comparison.md').read_text()


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """A run whose config was trained up to an epoch checkpoint goes on from there; a changed
    config never resumes from another config's checkpoint."""
    monkeypatch.chdir(tmp_path)
    import argparse

    from mmengine.config import DictAction
    options = argparse.Namespace()
    # the tiny setting with compare_losses' own checkpointing (every epoch)
    DictAction(option_strings=[], dest='opts')(
        None, options, [o for o in TINY if not o.startswith('default_hooks.checkpoint')])
    run_dir = str(tmp_path / 'run')
    # One epoch of a two-epoch run, as if it had been stopped after its first epoch.
    path, _, _ = compare_losses.prepare_run(osp.join(REPO, CE), 3, run_dir, options.opts, 0)
    assert Config.fromfile(path).default_hooks.checkpoint.interval == 1
    first = compare_losses.train_one(path)
    assert first['iterations'] == 2 and first['resumed_from_iteration'] == 0
    assert (tmp_path / 'run' / 'last_checkpoint').is_file()
    cfg = Config.fromfile(path)
    cfg.train_cfg.max_epochs = 2
    cfg.dump(path)
    second = compare_losses.train_one(path)
    assert second['resumed_from_iteration'] == 2 and second['iterations'] == 4
    # prepare_run with another config text forgets the checkpoint: the next training starts at 0
    compare_losses.prepare_run(osp.join(REPO, GHMC_SL1), 3, run_dir, options.opts, 0)
    assert not (tmp_path / 'run' / 'last_checkpoint').exists()
