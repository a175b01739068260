"""Every config in configs/ builds its model and trains one step on tiny inputs (CPU); the checks
that turn GHM misconfigurations into clear errors fire at the right time with the right message."""
import copy
import glob
import math
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in osp.relpath(p, REPO).split(os.sep))
IDS = [osp.relpath(p, osp.join(REPO, 'configs')) for p in CONFIGS]
SHAPES_GHM = osp.join(REPO, 'configs', 'retinanet_r18-tiny_fpn_ghm_shapes.py')
COCO_GHM = osp.join(REPO, 'configs', 'retinanet_r50_fpn_ghm.py')


def _load(path):
    cfg = Config.fromfile(path)  # custom_imports imports mmdet_ghm here, as under `mim train`
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return cfg


def _build_model(cfg):
    from mmdet.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    # No weight files can be downloaded in CI: the model is left at its construction-time init.
    model_cfg.backbone.init_cfg = None
    return MODELS.build(model_cfg)


def test_every_config_is_covered():
    names = set(IDS)
    assert {'retinanet_r50_fpn_ghm.py', 'retinanet_r101_fpn_ghm.py',
            'retinanet_x101-32x4d_fpn_ghm.py', 'retinanet_x101-64x4d_fpn_ghm.py',
            'retinanet_r18-tiny_fpn_ghm_shapes.py',
            'retinanet_r18-tiny_fpn_focal_shapes.py'} <= names
    assert any(n.startswith('fcos') for n in names) and any(n.startswith('atss') for n in names)


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_trains_one_step(path):
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    torch.manual_seed(0)
    cfg = _load(path)
    assert cfg.custom_imports == dict(imports=['mmdet_ghm'], allow_failed_imports=False)
    assert {'GHMCheckHook', 'WeightsOnlyCheckpointHook'} <= {h['type'] for h in cfg.custom_hooks}
    model = _build_model(cfg)
    head = model.bbox_head
    name = osp.basename(path)
    if name.startswith('retinanet') and name.endswith(('_ghm.py', '_ghm_shapes.py')):
        # The zoo's GHM RetinaNet and the main job: both GHM losses, from the registry (that is,
        # this package's once it is imported).
        assert isinstance(head.loss_cls, MODELS.get('GHMC'))
        assert isinstance(head.loss_bbox, MODELS.get('GHMR'))
    elif '_ghm' in name:  # FCOS, ATSS: GHM-C only
        assert isinstance(head.loss_cls, MODELS.get('GHMC'))
    # the zoo's hyperparameters wherever used, except in the ablations that change them on purpose
    ablation = osp.join('configs', 'regimes', 'ablations') in path
    if cfg.model.bbox_head.loss_cls.type == 'GHMC' and not ablation:
        loss_cls = cfg.model.bbox_head.loss_cls
        assert (loss_cls.bins, loss_cls.momentum, loss_cls.use_sigmoid) == (30, 0.75, True)
        assert head.use_sigmoid_cls and head.cls_out_channels == head.num_classes
        assert cfg.optim_wrapper.clip_grad.max_norm == 35
    if cfg.model.bbox_head.get('loss_bbox', {}).get('type') == 'GHMR':
        loss_bbox = cfg.model.bbox_head.loss_bbox
        assert (loss_bbox.mu, loss_bbox.bins, loss_bbox.momentum,
                loss_bbox.loss_weight) == (0.02, 10, 0.7, 10.0)

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    data = demo_mm_inputs(batch_size=2, image_shapes=[(3, 96, 128), (3, 128, 96)],
                          num_items=[3, 1], num_classes=head.num_classes)
    before = [p.detach().clone() for p in head.parameters()]
    # What the runner records before an iteration: YOLOX's BatchSyncRandomResize reads it.
    MessageHub.get_current_instance().update_info('iter', 0)
    model.train()
    log_vars = model.train_step(data, optim_wrapper)

    losses = {k: float(v) for k, v in log_vars.items() if k.startswith('loss')}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert losses['loss'] > 0
    changed = sum(not torch.equal(b, p) for b, p in zip(before, head.parameters()))
    assert changed > 0, 'the optimizer step did not change the head'


def _shapes_cfg(tmp_path, **bbox_head):
    cfg = _load(SHAPES_GHM)
    root = str(tmp_path / 'shapes') + '/'
    for loader, n in (('train_dataloader', 4), ('val_dataloader', 2)):
        cfg[loader].dataset.update(data_root=root, num_images=n)
        cfg[loader].batch_size = 2
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator.ann_file = root + 'annotations/instances_val.json'
    cfg.test_evaluator = cfg.val_evaluator
    cfg.model.bbox_head.update(bbox_head)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.pop('visualization', None)
    return cfg


def test_ghmc_without_use_sigmoid_is_stopped_before_training(tmp_path):
    from mmengine.runner import Runner
    cfg = _shapes_cfg(tmp_path)
    cfg.model.bbox_head.loss_cls.pop('use_sigmoid')  # GHMC's own default is True; the head's False
    runners = []
    # Stopped when the model is built or, at the latest, before the first iteration.
    with pytest.raises(ValueError, match=r'use_sigmoid=True'):
        runners.append(Runner.from_cfg(cfg))
        runners[0].train()
    if runners:
        assert runners[0].iter == 0


def test_num_classes_mismatch_is_stopped_before_training(tmp_path):
    from mmengine.runner import Runner
    cfg = _shapes_cfg(tmp_path, num_classes=4)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r'model\.bbox_head\.num_classes=5') as err:
        runner.train()
    assert 'SyntheticShapesDataset' in str(err.value) and 'is 4' in str(err.value)
    assert runner.iter == 0


def test_check_detector_accepts_the_shipped_configs():
    from mmdet_ghm.datasets import SHAPE_CLASSES
    from mmdet_ghm.engine import check_detector
    check_detector(_build_model(_load(SHAPES_GHM)), SHAPE_CLASSES, 'shapes')
    with pytest.raises(ValueError, match='has 5 classes'):
        check_detector(_build_model(_load(COCO_GHM)), SHAPE_CLASSES, 'shapes')


def test_missing_coco_says_what_and_where(tmp_path):
    from mmdet.registry import DATASETS
    cfg = _load(COCO_GHM)
    missing = str(tmp_path / 'no_coco') + '/'
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset_cfg.data_root = missing
    with pytest.raises(FileNotFoundError) as err:
        DATASETS.build(dataset_cfg)
    msg = str(err.value)
    assert 'COCO train data not found' in msg
    assert missing in msg and 'annotations/instances_train2017.json' in msg
    assert 'train_dataloader.dataset.data_root=' in msg  # says how to point the config at it


def test_checked_coco_loads_a_present_dataset(tmp_path):
    """With the files there, CheckedCocoDataset is plain CocoDataset (here on generated data)."""
    from mmdet.registry import DATASETS
    from mmdet_ghm.datasets import SHAPE_CLASSES, generate_split
    root = str(tmp_path / 'coco_like')
    generate_split(root, 'val', 3, seed=1)
    ds = DATASETS.build(dict(type='CheckedCocoDataset', data_root=root,
                             ann_file='annotations/instances_val.json',
                             data_prefix=dict(img='val/'), metainfo=dict(classes=SHAPE_CLASSES),
                             test_mode=True, pipeline=[]))
    assert len(ds) == 3 and osp.isfile(ds[0]['img_path'])


def test_checked_coco_leaves_other_storage_backends_to_coco_dataset(tmp_path):
    """A file backend other than the local disk (petrel, s3, ... : here one that maps a URI
    prefix onto a folder) is CocoDataset's to read: no local-path check refuses it."""
    from mmengine.fileio import LocalBackend, register_backend
    from mmdet.registry import DATASETS
    from mmdet_ghm.datasets import SHAPE_CLASSES, generate_split
    root = str(tmp_path / 'remote')
    generate_split(root, 'val', 2, seed=1)
    prefix = 'ghmtest://root/'

    class MappedBackend(LocalBackend):
        def _local(self, path):
            return osp.join(root, str(path)[len(prefix):])

        def get(self, path):
            return super().get(self._local(path))

        def get_text(self, path, encoding='utf-8'):
            return super().get_text(self._local(path), encoding)

        def get_local_path(self, path):
            return super().get_local_path(self._local(path))

        def join_path(self, path, *paths):
            return '/'.join([path.rstrip('/')] + [p.strip('/') for p in paths])

    register_backend('ghmtest', MappedBackend, prefixes='ghmtest', force=True)
    args = dict(backend='ghmtest')
    ds = DATASETS.build(dict(type='CheckedCocoDataset', data_root=prefix,
                             ann_file='annotations/instances_val.json',
                             data_prefix=dict(img='val/'), metainfo=dict(classes=SHAPE_CLASSES),
                             backend_args=args, test_mode=True,
                             pipeline=[dict(type='LoadImageFromFile', backend_args=args)]))
    assert len(ds) == 2 and ds[0]['img'].shape == (160, 160, 3)


def test_checks_accept_a_truthy_use_sigmoid_and_class_agnostic_rpn_stages():
    """use_sigmoid=1 (e.g. from --cfg-options) builds a sigmoid head in mmdet; the RPN stages of
    Cascade RPN under rpn_head are class-agnostic (num_classes 1) like rpn_head itself."""
    from mmdet.registry import MODELS
    from mmdet_ghm.engine import check_ghm_heads, check_num_classes
    cfg = _load(SHAPES_GHM)
    head_cfg = copy.deepcopy(cfg.model.bbox_head)
    head_cfg.loss_cls.use_sigmoid = 1
    head = MODELS.build(head_cfg)

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bbox_head = head
            rpn = torch.nn.Module()
            rpn.stages = torch.nn.ModuleList([copy.deepcopy(head)])
            rpn.stages[0].num_classes = 1
            self.rpn_head = rpn

    model = Detector()
    check_ghm_heads(model)
    check_num_classes(model, ('a', 'b', 'c', 'd', 'e'))
