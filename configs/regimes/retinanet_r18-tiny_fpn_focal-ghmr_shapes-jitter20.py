# Issue 9, E2 (box noise): focal loss + GHM-R with 20 % of the train split's boxes jittered, each
# edge moved by up to 20 % of the box side (noise seed 0); the val split stays clean.
_base_ = './retinanet_r18-tiny_fpn_focal-ghmr_shapes.py'

train_dataloader = dict(
    dataset=dict(annotation_noise=dict(jitter=0.2, jitter_scale=0.2, seed=0)))
