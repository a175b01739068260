# Issue 9, ablation (the paper's Table 2): GHM-C + smooth L1 with 10 bins instead of 30.
_base_ = '../../loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py'

model = dict(bbox_head=dict(loss_cls=dict(bins=10)))
