"""Resume: MMEngine's runner trains the embedded config, saves, resumes; the GHM state and the
next losses are bit-identical to an uninterrupted run. The model part of the checkpoint (where
the GHM state lives) loads with torch's weights_only default; the whole file does not, because of
mmengine 0.10.7's own message hub (HistoryBuffer objects holding numpy arrays, which need
``getattr`` in the unpickler), whatever the losses: resuming a run with torch >= 2.6 needs
torch's own switch TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (for checkpoints you trust)."""
import copy
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


class _LossRecorder(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))


def _cfg(work_dir, data_root, max_epochs):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'retinanet_r18-tiny_fpn_ghm_shapes.py'))
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work_dir)
    train = cfg.train_dataloader
    train.batch_size = 2
    train.dataset.data_root = data_root
    train.dataset.indices = 8  # 4 iterations an epoch
    # no random flip: numpy's generator is not part of a checkpoint, the GHM state is
    train.dataset.pipeline = [p for p in train.dataset.pipeline if p['type'] != 'RandomFlip']
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=99)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                end=8)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.randomness = dict(seed=0)
    return cfg


def _ghm_state(runner):
    head = runner.model.bbox_head
    return {k: v.clone() for k, v in head.state_dict().items() if '.density.' in k}


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # mmengine's message hub
    data_root = str(tmp_path / 'shapes') + '/'
    full = Runner.from_cfg(_cfg(tmp_path / 'full', data_root, 2))
    full_losses = _LossRecorder()
    full.register_hook(full_losses)
    full.train()

    first = Runner.from_cfg(_cfg(tmp_path / 'part', data_root, 1))
    first.train()
    ckpt = tmp_path / 'part' / 'epoch_1.pth'
    assert osp.exists(ckpt)
    state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    torch.save({'state_dict': state}, tmp_path / 'model_only.pth')
    state = torch.load(tmp_path / 'model_only.pth', weights_only=True)['state_dict']
    assert any(k.endswith('loss_cls.density.acc_sum') for k in state)

    resumed_cfg = _cfg(tmp_path / 'part', data_root, 2)
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(ckpt)
    resumed = Runner.from_cfg(resumed_cfg)
    resumed_losses = _LossRecorder()
    resumed.register_hook(resumed_losses)
    resumed.train()

    assert len(full_losses.losses) == 8 and len(resumed_losses.losses) == 4
    assert resumed_losses.losses == full_losses.losses[4:]
    full_state, resumed_state = _ghm_state(full), _ghm_state(resumed)
    assert full_state.keys() == resumed_state.keys() and full_state
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
