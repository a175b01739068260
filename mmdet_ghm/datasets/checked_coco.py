"""``CheckedCocoDataset``: mmdet's CocoDataset that first says what is missing, and where."""
import os.path as osp

from mmengine.fileio import LocalBackend, get_file_backend

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """:class:`~mmdet.datasets.CocoDataset` that checks its files first.

    Without COCO on disk, mmdet fails deep inside pycocotools with a bare ``FileNotFoundError``;
    this raises one that names the missing folder or file, the resolved location, and how to fix
    it. It loads, samples and evaluates exactly like ``CocoDataset`` once the files are there.
    Paths on another storage backend (``backend_args``, or a URI prefix such as ``s3://``) are
    left to ``CocoDataset``.
    """

    def full_init(self):
        if not self._fully_initialized:
            self._check_files()
        super().full_init()

    def _local(self, path: str) -> bool:
        try:
            # exactly the local disk: a backend built on it may map paths elsewhere
            return type(get_file_backend(path, backend_args=self.backend_args)) is LocalBackend
        except ImportError:  # a remote backend whose client is missing: CocoDataset says so
            return False

    def _check_files(self):
        split = 'val/test' if self.test_mode else 'train'
        missing = []
        if self.data_root and self._local(self.data_root) and not osp.isdir(self.data_root):
            missing.append(f'data_root {self.data_root!r} (-> {osp.abspath(self.data_root)})')
        if self._local(self.ann_file) and not osp.isfile(self.ann_file):
            missing.append(f'annotation file {self.ann_file!r} (-> {osp.abspath(self.ann_file)})')
        img_dir = self.data_prefix.get('img', '')
        if img_dir and self._local(img_dir) and not osp.isdir(img_dir):
            missing.append(f'image folder {img_dir!r} (-> {osp.abspath(img_dir)})')
        if missing:
            raise FileNotFoundError(
                f'COCO {split} data not found: missing ' + '; '.join(missing) + '.\n'
                'Put COCO 2017 at the configured data_root (it must hold annotations/'
                'instances_train2017.json, annotations/instances_val2017.json, train2017/ and '
                'val2017/), e.g. `mkdir -p data && ln -s /path/to/coco data/coco`, or point the '
                'config at it: set the data_root of its dataloaders and evaluators, or pass '
                '--cfg-options '
                'train_dataloader.dataset.data_root=/path/to/coco/ '
                'val_dataloader.dataset.data_root=/path/to/coco/ '
                'test_dataloader.dataset.data_root=/path/to/coco/ '
                'val_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json '
                'test_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json')
