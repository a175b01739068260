# Issue 9, ablation: GHM-C + smooth L1 with the EMA's bias correction (this package's option;
# off in mmdet and in the paper).
_base_ = '../../loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py'

model = dict(bbox_head=dict(loss_cls=dict(bias_correction=True)))
