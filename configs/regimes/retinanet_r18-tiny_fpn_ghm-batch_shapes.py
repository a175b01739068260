# Issue 9, E3 (density scope): the main job's GHM-C + GHM-R with the paper's batch-wide density, one
# GHM call per iteration over all FPN levels instead of mmdet's one call per level.
_base_ = '../retinanet_r18-tiny_fpn_ghm_shapes.py'

model = dict(bbox_head=dict(type='BatchDensityRetinaHead'))
