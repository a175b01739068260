"""`mim train mmdet <embedded config>` and the main job in a fresh directory: the dataset is
generated on first use through custom_imports, a few iterations train on CPU, the COCO metric runs,
a checkpoint is saved."""
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
    """README's main job (tools/main.sh runs this module) on a tiny split: it trains, evaluates and
    prints the paths of the checkpoint, the log and the metrics, which exist."""
    cmd = [sys.executable, '-m', 'mmdet_ghm.main_job', CONFIG, '--work-dir', str(tmp_path / 'work'),
           '--target-map50', '0.7', '--cfg-options', *SMALL_RUN]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = proc.stdout[proc.stdout.index('=== mmdet_ghm main job'):]
    paths = dict(line.split(':', 1) for line in summary.splitlines()
                 if line.startswith(('checkpoint:', 'log:', 'metrics:')))
    assert set(paths) == {'checkpoint', 'log', 'metrics'}
    for what, value in paths.items():
        assert osp.isfile(value.split(' (')[0].strip()), (what, value)
    assert 'mAP@0.5:' in summary and 'target:     mAP@0.5 >= 0.7' in summary
