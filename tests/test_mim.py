"""`mim train mmdet <embedded config>` and the main job in a fresh directory: the dataset is
generated on first use through custom_imports, a few iterations train on CPU, the COCO metric runs,
a checkpoint is saved; the main job also draws the GHM figures of its run."""
import glob
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'retinanet_r18-tiny_fpn_ghm_shapes.py')
SMALL_RUN = [
    # A few iterations on a small split (8 train images, batch 2 -> 4 iterations, 1 epoch).
    'train_dataloader.dataset.num_images=8', 'val_dataloader.dataset.num_images=4',
    'test_dataloader.dataset.num_images=4', 'train_dataloader.batch_size=2',
    'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'default_hooks.logger.interval=2',
    # 4 iterations leave every score near the 0.01 prior: keep them so that COCO eval has input.
    'model.test_cfg.score_thr=0.0',
]


def test_mim_train_embedded_config(tmp_path, mim_exe):
    work_dir = tmp_path / 'work'
    cmd = [mim_exe, 'train', 'mmdet', CONFIG, '--work-dir', str(work_dir), '--cfg-options',
           *SMALL_RUN]
    # Run from an empty directory: the config's relative data_root lands there.
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    data_root = tmp_path / 'data' / 'ghm_shapes'
    assert len(os.listdir(data_root / 'train')) == 8 and len(os.listdir(data_root / 'val')) == 4
    assert (work_dir / 'epoch_1.pth').is_file()
    logs = glob.glob(str(work_dir / '*' / '*.log'))
    assert len(logs) == 1
    log = open(logs[0]).read()
    assert 'Epoch(train) [1][4/4]' in log  # the logger reports the iterations
    assert 'coco/bbox_mAP_50' in log  # and the COCO evaluation at the end


def test_main_job_prints_where_things_are(tmp_path):
    """README's main job (tools/main.sh runs tools/main_job.py) on a tiny split: it trains,
    records the GHM density, evaluates, draws the gradient-norm figures of its own run and prints
    the paths of the checkpoint, the log, the metrics and the figures, which exist; with
    --tensorboard it also writes TensorBoard event files."""
    cmd = [sys.executable, osp.join(REPO, 'tools', 'main_job.py'), CONFIG,
           '--work-dir', str(tmp_path / 'work'), '--target-map50', '0.7', '--density-interval', '2',
           '--tensorboard', '--cfg-options', *SMALL_RUN]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = proc.stdout[proc.stdout.index('=== mmdet_ghm main job'):]
    fields = [line.split(':', 1) for line in summary.splitlines()
              if line.startswith(('checkpoint:', 'log:', 'metrics:', 'figure:'))]
    assert sorted({what for what, _ in fields}) == ['checkpoint', 'figure', 'log', 'metrics']
    for what, value in fields:
        assert osp.isfile(value.split(' (')[0].strip()), (what, value)
    figures = sorted(osp.basename(value.strip()) for what, value in fields if what == 'figure')
    assert figures == sorted(f'{kind}_bbox_head.{loss}.png'
                             for kind in ('gradient_norm_distribution', 'reweighted_gradient_norm')
                             for loss in ('loss_cls', 'loss_bbox'))
    assert 'mAP@0.5:' in summary and 'target:     mAP@0.5 >= 0.7' in summary
    # third-party deprecation notices that a user cannot act on are not shown
    for notice in ('pkg_resources is deprecated', 'torch.meshgrid: in an upcoming release',
                   '"FileClient" will be deprecated', '"HardDiskBackend" is the alias'):
        assert notice not in proc.stdout + proc.stderr, notice
    # --tensorboard: event files beside the local records, and the command to open them
    assert glob.glob(str(tmp_path / 'work' / '*' / 'vis_data' / 'events.out.tfevents.*'))
    assert f'tensorboard --logdir {tmp_path / "work"}' in summary


def test_main_job_without_density_records_still_reports(tmp_path):
    """A visualizer without LocalVisBackend writes no records file: the job says so and still
    prints its summary (the figures are extras)."""
    config = tmp_path / 'tensorboard_only.py'
    config.write_text(f'_base_ = {CONFIG!r}\n'
                      "visualizer = dict(vis_backends=[dict(type='TensorboardVisBackend')])\n")
    cmd = [sys.executable, osp.join(REPO, 'tools', 'main_job.py'), str(config),
           '--work-dir', str(tmp_path / 'work'), '--density-interval', '2', '--cfg-options',
           *SMALL_RUN]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert 'no density figures: no ' in proc.stdout and 'LocalVisBackend' in proc.stdout
    summary = proc.stdout[proc.stdout.index('=== mmdet_ghm main job'):]
    assert 'checkpoint:' in summary and 'figure:' not in summary


def test_main_job_finds_ghm_losses_by_any_spelling_of_their_type():
    import importlib.util
    spec = importlib.util.spec_from_file_location('main_job', osp.join(REPO, 'tools',
                                                                       'main_job.py'))
    main_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_job)
    from mmdet_ghm import GHMC
    for kind in ('GHMC', 'mmdet.GHMR', GHMC):
        assert main_job.uses_ghm(dict(bbox_head=dict(loss_cls=dict(type=kind))))
    assert not main_job.uses_ghm(dict(bbox_head=dict(loss_cls=dict(type='mmdet.FocalLoss'))))
