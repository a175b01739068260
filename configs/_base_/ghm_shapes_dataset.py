# The embedded synthetic shapes dataset (mmdet_ghm.datasets.SyntheticShapesDataset): five shape
# classes in COCO format, generated deterministically into data_root the first time it is used.
dataset_type = 'SyntheticShapesDataset'
data_root = 'data/ghm_shapes/'
image_size = 160
backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    # The images have this size already: Resize records the scale_factor predict(rescale=True) uses.
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=16,
    # Decoding 160 px JPEGs is cheap: worker processes would only compete for the two cores.
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        num_images=2000,
        image_size=image_size,
        # Images without objects stay: they are the easy negatives GHM down-weights.
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        num_images=300,
        image_size=image_size,
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    classwise=True,  # per-class AP shows what happens to the rare classes
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
