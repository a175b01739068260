"""Resume: MMEngine's runner trains the embedded config, saves, resumes; the GHM state and the
next losses are bit-identical to an uninterrupted run. The checkpoint (written through the
config's WeightsOnlyCheckpointHook) loads with torch's weights_only default, as the resume does:
nothing here switches weights_only off. Without the hook, MMEngine 0.10.7's message hub makes
the file unloadable that way."""
import copy
import os.path as osp
from collections import OrderedDict

import numpy as np
import pytest

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
    return {k: v.clone() for k, v in head.state_dict().items()
            if k.startswith(('loss_cls.', 'loss_bbox.'))}


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)
    data_root = str(tmp_path / 'shapes') + '/'
    full = Runner.from_cfg(_cfg(tmp_path / 'full', data_root, 2))
    full_losses = _LossRecorder()
    full.register_hook(full_losses)
    full.train()

    first = Runner.from_cfg(_cfg(tmp_path / 'part', data_root, 1))
    first.train()
    ckpt = tmp_path / 'part' / 'epoch_1.pth'
    assert osp.exists(ckpt)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
    whole = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert any(k.endswith('loss_cls.acc_sum') for k in whole['state_dict'])

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
    # the message hub came back whole: the resumed run's loss history continues the first run's
    full_history = full.message_hub.get_scalar('train/loss').data
    resumed_history = resumed.message_hub.get_scalar('train/loss').data
    assert len(resumed_history[0]) == 8
    for full_part, resumed_part in zip(full_history, resumed_history):
        assert np.array_equal(full_part, resumed_part)


def test_message_hub_round_trip_is_exact(tmp_path):
    """What the hook writes is tensors and plain containers; what it reads back is the same
    HistoryBuffer / numpy values, dtypes included."""
    import pickle

    from mmengine.logging import HistoryBuffer

    from mmdet_ghm.engine import WeightsOnlyCheckpointHook

    buffer = HistoryBuffer([0.5, 1.25, 2.0], [1, 2, 1], max_length=7)
    checkpoint = dict(
        meta=dict(seed=3, dataset_meta=dict(classes=('a', 'b'), palette=[(1, 2, 3)])),
        message_hub=dict(log_scalars={'train/loss': buffer},
                         runtime_info=OrderedDict(eta=np.float64(1.5), ids=np.arange(4, dtype=np.int16),
                                                  iter=8, half=np.float16(1.5), zero_d=np.array(2.5),
                                                  # values no tensor holds
                                                  names=np.array([['a', 'bc']]), tag=np.str_('x'),
                                                  raw=np.array([b'ab', b'\xff']),
                                                  one=np.array('xy'), big=np.arange(3, dtype='>i4'),
                                                  nat=np.array(['NaT', '2026-12-05'],
                                                               dtype='datetime64[D]'),
                                                  when=np.datetime64('2026-12-05T03:00'),
                                                  took=np.timedelta64(5, 's')),
                         resumed_keys={'train/loss': True, 'iter': True}),
        state_dict=OrderedDict(w=torch.ones(2)))
    expected = pickle.dumps({k: checkpoint[k] for k in ('meta', 'message_hub')})
    hook = WeightsOnlyCheckpointHook()
    hook.before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, tmp_path / 'c.pth')
    loaded = torch.load(tmp_path / 'c.pth', weights_only=True)
    hook.after_load_checkpoint(None, loaded)
    assert pickle.dumps({k: loaded[k] for k in ('meta', 'message_hub')}) == expected
    buffer_back = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer_back, HistoryBuffer) and buffer_back.max_length == 7
    assert buffer_back.mean() == buffer.mean()


def test_object_arrays_are_refused():
    from mmdet_ghm.engine import WeightsOnlyCheckpointHook

    checkpoint = dict(meta=dict(odd=np.array([object()], dtype=object)))
    with pytest.raises(TypeError, match=r"meta\['odd'\] is a numpy array of Python objects"):
        WeightsOnlyCheckpointHook().before_save_checkpoint(None, checkpoint)
