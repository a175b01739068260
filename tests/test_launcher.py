"""sync_across_ranks driven by mmdet's own launcher: `mim train mmdet CONFIG --launcher pytorch
--gpus 2` (torch.distributed.launch, mmdet's tools/train.py, MMEngine's runner, DDP) on the
embedded config, 2 CPU processes with the gloo backend.

Two things in the harness adapt the GPU launcher to a CPU-only torch, nothing else:
* MMEngine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device(local_rank)`` unconditionally,
  which a CPU build of torch cannot do: a ``sitecustomize`` on PYTHONPATH makes it a no-op there.
* DDP takes ``device_ids=None`` for a CPU module (MMEngine passes ``[local_rank]`` by default).

Each rank writes its GHM state after training; with the option the two ranks hold the same EMA
state, bit for bit, though they trained on different images; without it they differ, as in mmdet.
"""
import os
import os.path as osp
import subprocess
import textwrap

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'retinanet_r18-tiny_fpn_ghm_shapes.py')

SITECUSTOMIZE = '''
import torch
if not torch.backends.cuda.is_built():
    torch.cuda.set_device = lambda device: None  # MMEngine's init_dist on a CPU-only torch
'''

RANK_STATE_HOOK = '''
import os
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmdet.registry import HOOKS


@HOOKS.register_module()
class RankGHMState(Hook):
    """Each rank saves the GHM buffers of its own model copy."""

    def after_run(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        state = {k: v.clone() for k, v in model.state_dict().items()
                 if '.loss_cls.' in k or '.loss_bbox.' in k}
        torch.save(state, os.path.join(runner.work_dir, f'ghm_rank{get_rank()}.pt'))
'''


def _config(tmp_path, sync):
    return textwrap.dedent(f'''
        _base_ = {CONFIG!r}
        custom_imports = dict(imports=['mmdet_ghm', 'rank_ghm_state'], allow_failed_imports=False)
        custom_hooks = [dict(type='GHMCheckHook'), dict(type='RankGHMState')]
        model = dict(bbox_head=dict(loss_cls=dict(sync_across_ranks={sync}),
                                    loss_bbox=dict(sync_across_ranks={sync})))
        env_cfg = dict(dist_cfg=dict(backend='gloo'))
        model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                dataset=dict(num_images=8, data_root={str(tmp_path / 'data')!r} + '/'))
        train_cfg = dict(max_epochs=1, val_interval=99)
        val_dataloader = None
        val_evaluator = None
        val_cfg = None
        test_dataloader = None
        test_evaluator = None
        test_cfg = None
        default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=99))
        randomness = dict(seed=0)
    ''')


def _train_two_ranks(tmp_path, sync, mim_exe):
    shim = tmp_path / 'shim'
    shim.mkdir(exist_ok=True)
    (shim / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    (shim / 'rank_ghm_state.py').write_text(RANK_STATE_HOOK)
    config = tmp_path / f'ghm_sync_{sync}.py'
    config.write_text(_config(tmp_path, sync))
    work_dir = tmp_path / f'work_{sync}'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(shim), REPO] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]),
        OMP_NUM_THREADS='1')
    cmd = [mim_exe, 'train', 'mmdet', str(config), '--launcher', 'pytorch', '--gpus', '2',
           '--port', str(29500 + (os.getpid() % 1000) + (7 if sync else 0)),
           '--work-dir', str(work_dir)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert '--nproc_per_node=2' in out and 'Distributed launcher: pytorch' in out, out[-3000:]
    return [torch.load(work_dir / f'ghm_rank{rank}.pt', weights_only=True) for rank in (0, 1)]


@pytest.mark.parametrize('sync', [True, False], ids=['sync', 'per-rank'])
def test_mim_pytorch_launcher_two_ranks(tmp_path, sync, mim_exe):
    rank0, rank1 = _train_two_ranks(tmp_path, sync, mim_exe)
    keys = [k for k in rank0 if k.endswith('.acc_sum')]
    assert len(keys) == 2  # GHM-C and GHM-R
    for key in keys:
        assert (rank0[key] > 0).any() and (rank1[key] > 0).any()
    if sync:  # every buffer of the density (EMA, update counts) is the same on both ranks
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), key
    else:
        for key in keys:
            assert not torch.equal(rank0[key], rank1[key]), key
