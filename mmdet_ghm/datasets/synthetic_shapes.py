"""``SyntheticShapesDataset``: the embedded COCO-format dataset, generated on first use."""
import os.path as osp

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.logging import print_log

from .annotation_noise import apply_annotation_noise, check_noise
from .shapes_generator import DEFAULT_NUM_IMAGES, SHAPE_CLASSES, SHAPE_PALETTE, ensure_split


@DATASETS.register_module()
class SyntheticShapesDataset(CocoDataset):
    """Five shape classes with GHM's imbalances (rare classes, small objects, clutter, occlusion,
    easy negatives), generated deterministically into ``data_root`` the first time a split is used.

    It is a :class:`~mmdet.datasets.CocoDataset` over
    ``<data_root>/annotations/instances_<split>.json`` and ``<data_root>/<split>/``, so mmdet's
    ``CocoMetric`` evaluates it from that annotation file.
    A later run with the same (split, num_images, seed, image_size) reuses the files.

    Args:
        split (str): 'train', 'val' or 'test' (each split has its own seed stream).
        num_images (int, optional): images in the split; default 2000 for train, 300 otherwise.
        seed (int): base seed of the generator.
        image_size (int): side of the square images, in pixels.
        data_root (str): cache folder of the generated files.
        annotation_noise (dict, optional): noise applied to the loaded annotations of the train
            split (never to the files, never to val/test): keys ``drop``, ``flip``, ``jitter``
            (fractions of the boxes), ``jitter_scale`` (largest edge move as a fraction of the
            box side, default 0.2) and ``seed`` (default 0); see
            :func:`~mmdet_ghm.datasets.annotation_noise.apply_annotation_noise`.
        **kwargs: the other :class:`~mmdet.datasets.CocoDataset` arguments (pipeline, test_mode,
            filter_cfg, ...). ``ann_file`` and ``data_prefix`` follow from ``split``.
    """

    METAINFO = dict(classes=SHAPE_CLASSES, palette=SHAPE_PALETTE)

    def __init__(self, split='train', num_images=None, seed=0, image_size=160,
                 data_root='data/ghm_shapes/', annotation_noise=None, **kwargs):
        for derived in ('ann_file', 'data_prefix'):
            if derived in kwargs:
                raise ValueError(
                    f'SyntheticShapesDataset sets `{derived}` from `split`; remove '
                    f'`{derived}` from the dataset config and choose the split with '
                    "split='train'/'val'/'test'.")
        if num_images is None:
            num_images = DEFAULT_NUM_IMAGES.get(split, DEFAULT_NUM_IMAGES['val'])
        self.split, self.num_images = split, num_images
        self.seed, self.image_size = seed, image_size
        if annotation_noise is not None:
            if split != 'train' or kwargs.get('test_mode', False):
                raise ValueError(
                    'annotation_noise applies to the train split only (the metric needs the '
                    f'clean annotations); got split={split!r}, '
                    f'test_mode={kwargs.get("test_mode", False)}')
            annotation_noise = check_noise(annotation_noise)
        self.annotation_noise = annotation_noise
        ensure_split(data_root, split, num_images, seed, image_size,
                     logger=lambda msg: print_log(msg, logger='current'))
        super().__init__(data_root=data_root,
                         ann_file=osp.join('annotations', f'instances_{split}.json'),
                         data_prefix=dict(img=f'{split}/'),
                         **kwargs)

    def load_data_list(self):
        data_list = super().load_data_list()
        if not self.annotation_noise:
            return data_list
        data_list, counts = apply_annotation_noise(data_list, len(SHAPE_CLASSES),
                                                   self.annotation_noise)
        print_log(f'[mmdet_ghm] annotation noise {self.annotation_noise} on the {self.split} '
                  f'split: of {counts["boxes"]} boxes {counts["dropped"]} dropped, then '
                  f'{counts["flipped"]} flipped and {counts["jittered"]} jittered',
                  logger='current')
        return data_list
