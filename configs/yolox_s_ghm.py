# YOLOX-S, COCO 300 epochs, with GHM-C as the objectness and the classification loss
# (mmdet's yolox/yolox_s_8xb8-300e_coco.py, sigmoid BCE replaced).
# Objectness: every location with a 0/1 target, the easy negatives GHM is about. Classification:
# positives only, IoU-scaled one-hot targets (float targets shaped like the scores).
# YOLOXHead divides both summed losses by the number of positives itself, so GHM sums
# (reduction='sum': GHM's weights take the place of BCE's unit weights under YOLOX's normalization;
# 'mean' would compound with it and GHMCheckHook stops it). Summed, GHM's losses are about
# (locations / positives) times GHM's own mean: about 100 times BCE's at mmdet's init in
# docs/dense_heads.md's step, hence the gradient clipping of GHM's zoo config. loss_weight is not
# tuned and this config was not trained to a box AP here.
# GHM-R does not apply: YOLOX regresses decoded boxes with an IoU loss.
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'
custom_imports = dict(imports=['mmdet_ghm'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True,
            reduction='sum', loss_weight=1.0),
        loss_obj=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True,
            reduction='sum', loss_weight=1.0)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))

data_root = 'data/coco/'
train_dataloader = dict(
    dataset=dict(dataset=dict(type='CheckedCocoDataset', data_root=data_root)))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset', data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# YOLOX's own hooks (mode switch for the last 15 epochs, BN sync, EMA), then this package's.
custom_hooks = [
    dict(type='YOLOXModeSwitchHook', num_last_epochs=15, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True,
         priority=49),
    dict(type='GHMCheckHook'),
    dict(type='WeightsOnlyCheckpointHook'),
]
