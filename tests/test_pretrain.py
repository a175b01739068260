"""tools/pretrain_backbone.py on a tiny setting: it trains, keeps only the backbone and neck,
caches the file by its config, and a fine-tuning config of the pretrained regime loads it with
`load_from` (backbone and neck from the file, the head its own)."""
import importlib.util
import os.path as osp

import torch
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('pretrain_backbone',
                                               osp.join(REPO, 'tools', 'pretrain_backbone.py'))
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)

TINY = ['train_dataloader.dataset.num_images=4', 'train_dataloader.batch_size=2',
        'train_cfg.max_epochs=1', 'default_hooks.checkpoint.save_last=False',
        'default_hooks.checkpoint.interval=100']


def test_pretrain_caches_backbone_and_neck_and_finetune_loads_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = 'pre/ckpt.pth'
    args = ['--out', out, '--work-dir', 'work', '--cfg-options', *TINY]
    assert pretrain.main(args) == 0
    printed = capsys.readouterr().out
    saved = torch.load(out, map_location='cpu', weights_only=True)
    digest = pretrain.weights_sha256(saved['state_dict'])
    assert 'wrote' in printed and f'weights sha256 {digest[:16]}' in printed
    keys = list(saved['state_dict'])
    assert keys and all(k.startswith(('backbone.', 'neck.')) for k in keys)
    assert any(k.startswith('neck.') for k in keys)
    assert saved['meta']['iterations'] == 2 and saved['meta']['weights_sha256'] == digest
    # its own split: generator seed 1000 in its own folder, not the comparison's data
    assert osp.isfile('data/ghm_shapes_pretrain/annotations/instances_train.json')
    assert not osp.exists('data/ghm_shapes')

    assert pretrain.main(args) == 0  # the same config: cached, no training
    printed = capsys.readouterr().out
    assert 'cached' in printed and f'weights sha256 {digest[:16]}' in printed
    assert pretrain.main(args[:-1] + ['train_cfg.max_epochs=2']) == 0  # another config: trains
    assert torch.load(out, weights_only=True)['meta']['iterations'] == 4

    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'regimes',
                                   'retinanet_r18-tiny_fpn_ghmc-pretrained_shapes.py'))
    assert cfg.load_from == 'data/pretrained/r18-tiny_fpn_shapes_backbone-neck.pth'
    assert cfg.optim_wrapper.optimizer.type == 'SGD' and cfg.optim_wrapper.clip_grad.max_norm == 35
    cfg.load_from, cfg.work_dir = out, 'ft'
    runner = Runner.from_cfg(cfg)
    head_before = {k: v.clone() for k, v in runner.model.bbox_head.state_dict().items()}
    runner.load_or_resume()
    state = runner.model.state_dict()
    saved = torch.load(out, weights_only=True)['state_dict']
    for k, v in saved.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    for k, v in runner.model.bbox_head.state_dict().items():
        assert torch.equal(v, head_before[k])
