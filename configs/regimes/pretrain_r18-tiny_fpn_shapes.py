# Issue 9, pretrained regime: what tools/pretrain_backbone.py trains once to get the backbone + neck
# that configs/regimes/*-pretrained_shapes.py fine-tune. The focal-loss tiny RetinaNet with the
# from-scratch recipe, 4 epochs, on a train split generated with generator seed 1000 into its own
# folder: images the comparison's train (seed 0) and val splits do not contain. No validation.
_base_ = '../retinanet_r18-tiny_fpn_focal_shapes.py'

pretrain_epochs = 4
train_dataloader = dict(dataset=dict(data_root='data/ghm_shapes_pretrain/', seed=1000))
train_cfg = dict(max_epochs=pretrain_epochs, val_interval=pretrain_epochs + 1)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.02, begin=0, end=pretrain_epochs,
         by_epoch=True, convert_to_iter_based=True)
]
default_hooks = dict(checkpoint=dict(interval=pretrain_epochs))
