# Issue 9, E4 (pretrained regime): GHM-C + smooth L1, fine-tuned from the cached
# pretrained backbone + neck (python tools/pretrain_backbone.py) with the SGD recipe of
# _base_/pretrained_finetune.py.
_base_ = './_base_/pretrained_finetune.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True, type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=0.11, loss_weight=1.0)))
