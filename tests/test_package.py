"""The package as a user installs it: a wheel built from the repository, installed into a scratch
environment that has the tested stack but not the repository, imports, declares the tested
dependency ranges, and ships every config of ``configs/`` where mim looks for them, so that
``mim train mmdet_ghm <config name>`` trains from the installed wheel alone."""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# What setup.py needs to build the wheel; copied so that the build leaves the repository alone.
SOURCES = ['setup.py', 'MANIFEST.in', 'README.md', 'mmdet_ghm', 'configs']


def _clean_env(**extra):
    """The environment without PYTHONPATH: nothing may lead the scratch python to the clone."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(extra)
    return env


def _run(cmd, **kwargs):
    kwargs.setdefault('env', _clean_env())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f'{cmd}\n{(proc.stdout + proc.stderr)[-4000:]}'
    return proc.stdout


def _repo_configs():
    return sorted(osp.relpath(p, osp.join(REPO, 'configs'))
                  for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp('src')
    for name in SOURCES:
        path = osp.join(REPO, name)
        if osp.isdir(path):
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp('dist')
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index',
          '-q', '-w', str(out), str(src)])
    (path,) = glob.glob(str(out / 'mmdet_ghm-*.whl'))
    return path


@pytest.fixture(scope='module')
def scratch_python(wheel, tmp_path_factory):
    """A new venv with the wheel installed, seeing the tested stack (torch, mmcv, mmdet, ...) of
    this environment through a .pth line, but not the repository nor its editable install."""
    env_dir = tmp_path_factory.mktemp('venv')
    _run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)])
    python = str(env_dir / 'bin' / 'python')
    site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).strip()
    # A plain path line: the .pth files over there (the editable install of the repository
    # among them) are not processed, so mmdet_ghm can only come from the wheel.
    with open(osp.join(site, 'tested_stack.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    # --ignore-installed: the repository's editable install, visible through the .pth line, is
    # neither taken for this wheel nor touched.
    _run([sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', '--no-index',
          '--ignore-installed', '-q', wheel])
    return python


def test_wheel_ships_every_config_and_declares_the_tested_ranges(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    shipped = sorted(n[len('mmdet_ghm/.mim/configs/'):] for n in names
                     if n.startswith('mmdet_ghm/.mim/configs/') and n.endswith('.py'))
    assert shipped == _repo_configs()
    assert {'mmdet_ghm/.mim/tools/train.py', 'mmdet_ghm/.mim/tools/test.py',
            'mmdet_ghm/ops/ghm_cpu.cpp'} <= set(names)  # the C++ CPU passes' source
    requires = sorted(line.split(':', 1)[1].strip() for line in metadata.splitlines()
                      if line.startswith('Requires-Dist:') and 'extra ==' not in line)
    assert requires == ['mmcv<2.2,>=2.1', 'mmdet<3.4,>=3.3', 'mmengine<0.11,>=0.10.7', 'numpy']
    assert not any(r.startswith(('torch', 'triton')) for r in requires)  # left to the user
    from mmdet_ghm import __version__
    assert f'\nVersion: {__version__}\n' in metadata


def test_tested_stack_satisfies_the_declared_ranges(wheel):
    from importlib.metadata import version

    from packaging.requirements import Requirement
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist()
                                if n.endswith('.dist-info/METADATA'))).decode()
    for line in metadata.splitlines():
        if line.startswith('Requires-Dist:') and 'extra ==' not in line:
            requirement = Requirement(line.split(':', 1)[1])
            assert requirement.specifier.contains(version(requirement.name)), requirement


def test_installed_wheel_imports_and_builds_packaged_configs(scratch_python, tmp_path):
    code = '''
import os.path as osp, sys
import mmdet_ghm
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
assert mmdet_ghm.__file__.startswith(sys.prefix), mmdet_ghm.__file__
configs = osp.join(osp.dirname(mmdet_ghm.__file__), '.mim', 'configs')
register_all_modules()
cfg = Config.fromfile(osp.join(configs, 'retinanet_r18-tiny_fpn_ghm_shapes.py'))
model = MODELS.build(cfg.model)
print(type(model.bbox_head.loss_cls).__module__, type(model.bbox_head.loss_bbox).__module__)
coco = Config.fromfile(osp.join(configs, 'retinanet_r50_fpn_ghm.py'))
print(coco.model.bbox_head.loss_cls.type, coco.train_dataloader.dataset.type,
      [h['type'] for h in coco.custom_hooks])
from mmdet_ghm.ops import native_passes
print(native_passes.SOURCE.startswith(sys.prefix), native_passes.library() is not None)
'''
    out = _run([scratch_python, '-c', code], cwd=tmp_path).split('\n')
    assert out[0] == 'mmdet_ghm.losses mmdet_ghm.losses'
    assert out[1] == "GHMC CheckedCocoDataset ['GHMCheckHook', 'WeightsOnlyCheckpointHook']"
    assert out[2] == 'True True'  # the C++ CPU passes build from the installed source


def test_mim_train_from_the_installed_wheel(scratch_python, tmp_path):
    """`mim train mmdet_ghm <config name>`: mim finds the config and its train script in the
    installed package, and mmdet's training script trains two iterations with it."""
    work_dir = tmp_path / 'work'
    cmd = [scratch_python, '-m', 'mim', 'train', 'mmdet_ghm',
           'retinanet_r18-tiny_fpn_ghm_shapes.py', '--gpus', '0', '--work-dir', str(work_dir),
           '--cfg-options', 'train_dataloader.dataset.num_images=4',
           'val_dataloader.dataset.num_images=2', 'test_dataloader.dataset.num_images=2',
           'train_dataloader.batch_size=2', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=2',
           'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=1']
    out = _run(cmd, cwd=tmp_path)
    assert 'mmdet_ghm/.mim/configs/retinanet_r18-tiny_fpn_ghm_shapes.py' in out
    assert (work_dir / 'epoch_1.pth').is_file()
    (log,) = glob.glob(str(work_dir / '*' / '*.log'))
    assert 'Epoch(train) [1][2/2]' in open(log).read()
