"""The embedded shapes dataset: deterministic bytes, a cache written once, the imbalance it
promises, and the registered dataset type that generates it on first use."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest

from mmdet_ghm.datasets import shapes_generator as gen


def _digest(root):
    """sha256 of every file under root, by relative path."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _generate(root, split, num_images, seed=0):
    gen.generate_split(root, split, num_images, seed)
    return _digest(root)


def test_same_seed_same_bytes(tmp_path):
    a = _generate(str(tmp_path / 'a'), 'train', 12, seed=7)
    b = _generate(str(tmp_path / 'b'), 'train', 12, seed=7)
    assert len(a) == 13  # 12 images + the annotation file
    assert a == b


def test_other_seed_or_split_other_images(tmp_path):
    ref = _generate(str(tmp_path / 'a'), 'train', 4, seed=0)
    seed1 = _generate(str(tmp_path / 'b'), 'train', 4, seed=1)
    val = _generate(str(tmp_path / 'c'), 'val', 4, seed=0)
    assert set(ref.values()).isdisjoint(seed1.values())
    assert set(ref.values()).isdisjoint(val.values())


def test_images_do_not_depend_on_split_size(tmp_path):
    """Each image has its own seed stream: a bigger split starts with the same images."""
    small = _generate(str(tmp_path / 's'), 'val', 3)
    big = _generate(str(tmp_path / 'b'), 'val', 5)
    for i in range(3):
        key = osp.join('val', f'{i:06d}.jpg')
        assert small[key] == big[key]


def test_coco_format(tmp_path):
    ann_file = gen.generate_split(str(tmp_path), 'val', 20, seed=3)
    with open(ann_file) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(gen.SHAPE_CLASSES)
    assert [c['id'] for c in coco['categories']] == [1, 2, 3, 4, 5]
    assert len(coco['images']) == 20 and coco['info']['seed'] == 3
    ids = {im['id'] for im in coco['images']}
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])
    for a in coco['annotations']:
        x, y, w, h = a['bbox']
        assert a['image_id'] in ids and 1 <= a['category_id'] <= 5 and a['iscrowd'] == 0
        assert x >= 0 and y >= 0 and x + w <= 160 and y + h <= 160 and w > 0 and h > 0
        assert 0 < a['area'] <= w * h


def test_the_imbalance_is_there():
    """Rare classes, small objects, occlusion and empty images, measured on 400 rendered images."""
    labels, sizes, empty, overlapping = [], [], 0, 0
    for i in range(400):
        img, objects = gen.render_image(np.random.default_rng([0, 0, i]), 160)
        assert img.shape == (160, 160, 3) and img.dtype == np.uint8
        empty += not objects
        boxes = [b for _, b, _ in objects]
        for label, (x, y, w, h), area in objects:
            labels.append(label)
            sizes.append(max(w, h))
        overlapping += sum(  # pairs of objects whose visible boxes intersect: one hides the other
            min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0])
            and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])
            for i, a in enumerate(boxes) for b in boxes[i + 1:])
    freq = np.bincount(labels, minlength=5) / len(labels)
    assert freq[0] > 0.3 and freq[4] < 0.1 and freq[3] < 0.15  # circles common; rings, crosses rare
    assert np.mean(np.array(sizes) < 24) > 0.35  # many small objects
    assert 0.03 < empty / 400 < 0.15  # images with nothing but clutter
    assert overlapping > 40


def test_cache_is_written_once_and_regenerated_on_a_new_spec(tmp_path):
    root = str(tmp_path)
    messages = []
    ann = gen.ensure_split(root, 'val', 3, logger=messages.append)
    mtime = os.stat(ann).st_mtime_ns
    assert gen.ensure_split(root, 'val', 3, logger=messages.append) == ann
    assert os.stat(ann).st_mtime_ns == mtime and len(messages) == 1
    gen.ensure_split(root, 'val', 4, logger=messages.append)  # another spec: regenerated
    assert len(messages) == 2 and len(os.listdir(osp.join(root, 'val'))) == 4
    assert not [n for n in os.listdir(root) if n.startswith('.val-')]  # no temporary folder left


def test_registered_dataset_generates_on_first_use(tmp_path):
    from mmengine.registry import init_default_scope
    import mmdet_ghm  # noqa: F401  (registers the dataset type)
    from mmdet.registry import DATASETS
    init_default_scope('mmdet')
    root = str(tmp_path / 'shapes') + '/'
    ds = DATASETS.build(dict(type='SyntheticShapesDataset', data_root=root, split='val',
                             num_images=6, test_mode=True, pipeline=[]))
    assert len(ds) == 6 and ds.metainfo['classes'] == gen.SHAPE_CLASSES
    assert osp.isfile(osp.join(root, 'annotations', 'instances_val.json'))
    info = ds[0]
    assert osp.isfile(info['img_path'])
    assert all(0 <= inst['bbox_label'] < 5 for inst in info['instances'])
    with pytest.raises(ValueError, match='remove `ann_file`'):
        DATASETS.build(dict(type='SyntheticShapesDataset', data_root=root, split='val',
                            ann_file='x.json', pipeline=[]))
    with pytest.raises(ValueError, match='split must be one of'):
        DATASETS.build(dict(type='SyntheticShapesDataset', data_root=root, split='training',
                            pipeline=[]))


def test_command_line(tmp_path):
    gen.main(['--data-root', str(tmp_path), '--splits', 'val', '--num-images', '2'])
    assert sorted(os.listdir(osp.join(str(tmp_path), 'val'))) == ['000000.jpg', '000001.jpg']


def test_bad_split_specs_are_value_errors():
    from mmdet_ghm.datasets.shapes_generator import split_spec
    with pytest.raises(ValueError, match='seed must be an integer >= 0, got -1'):
        split_spec('train', 10, -1, 160)
    with pytest.raises(ValueError, match='need num_images >= 1'):
        split_spec('train', 0, 0, 160)
    with pytest.raises(ValueError, match='num_images must be an integer, got 2.7'):
        split_spec('train', 2.7, 0, 160)
