# A from-scratch RetinaNet small enough to train on the embedded shapes dataset with 2 CPU cores:
# ResNet-18 layout at 1/4 width, 64-channel FPN on strides 8-64, 2-conv GN head, 3 anchors a place.
# The loss-specific configs (GHM, focal baseline) inherit from this file.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
    './ghm_shapes_dataset.py',
]
custom_imports = dict(imports=['mmdet_ghm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        depth=18,
        base_channels=16,  # stage outputs 16/32/64/128 instead of 64/128/256/512
        out_indices=(1, 2, 3),  # strides 8, 16, 32
        frozen_stages=-1,  # trained from scratch: nothing is frozen,
        norm_eval=False,  # and BN statistics must be learned
        init_cfg=None),  # no pretrained weights
    neck=dict(in_channels=[32, 64, 128], out_channels=64, start_level=0, num_outs=4),
    bbox_head=dict(
        num_classes=5,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        # GroupNorm in the head: trained from scratch, the head converges in fewer epochs with it.
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        # Objects are 12-56 px: anchors of 16-25 px at stride 8 up to 128-203 px at stride 64;
        # three scales an octave give the small objects more than one positive anchor.
        anchor_generator=dict(
            octave_base_scale=2, scales_per_octave=3, ratios=[1.0], strides=[8, 16, 32, 64])),
    test_cfg=dict(nms_pre=300, score_thr=0.05, max_per_img=50))

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# AdamW converges in few epochs from scratch, where SGD needs a pretrained backbone.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.02,
        begin=0,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1, save_last=True))
log_processor = dict(window_size=25)
custom_hooks = [dict(type='GHMCheckHook'), dict(type='WeightsOnlyCheckpointHook')]
randomness = dict(seed=0)
