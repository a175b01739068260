"""Annotation noise of the embedded dataset's train split: deterministic from its seed, the
fractions asked for, the kinds of damage promised, the files and the val split untouched."""
import hashlib
import os.path as osp

import numpy as np
import pytest

from mmdet_ghm.datasets.annotation_noise import apply_annotation_noise, check_noise


def _infos(num_images=300, seed=0):
    """Data infos like CocoDataset's: xyxy boxes, labels in [0, 5), 160 x 160 images."""
    rng = np.random.default_rng(seed)
    infos = []
    for i in range(num_images):
        instances = []
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(12, 56, 2)
            instances.append(dict(bbox=[x, y, min(x + w, 160.0), min(y + h, 160.0)],
                                  bbox_label=int(rng.integers(0, 5)), ignore_flag=0))
        infos.append(dict(img_id=i + 1, width=160, height=160, instances=instances))
    return infos


def _boxes(infos):
    return [(i, inst['bbox_label'], tuple(inst['bbox']))
            for i, info in enumerate(infos) for inst in info['instances']]


def test_same_seed_same_noise_other_seed_other_noise():
    infos = _infos()
    noise = dict(drop=0.3, flip=0.2, jitter=0.2, seed=5)
    a, _ = apply_annotation_noise(infos, 5, noise)
    b, _ = apply_annotation_noise(infos, 5, noise)
    c, _ = apply_annotation_noise(infos, 5, dict(noise, seed=6))
    assert _boxes(a) == _boxes(b)
    assert _boxes(a) != _boxes(c)
    assert _boxes(infos) == _boxes(_infos())  # the input is not modified


def test_dropped_boxes_fraction():
    infos = _infos()
    total = len(_boxes(infos))
    noisy, counts = apply_annotation_noise(infos, 5, dict(drop=0.3))
    kept = _boxes(noisy)
    assert counts == dict(boxes=total, dropped=round(0.3 * total), flipped=0, jittered=0)
    assert len(kept) == total - round(0.3 * total)
    assert set(kept) <= set(_boxes(infos))  # only removed, nothing changed
    assert len(noisy) == len(infos)  # images whose boxes all went stay, as negatives


def test_flipped_classes_fraction():
    infos = _infos()
    noisy, counts = apply_annotation_noise(infos, 5, dict(flip=0.2, seed=1))
    before, after = _boxes(infos), _boxes(noisy)
    changed = [(b, a) for b, a in zip(before, after) if b[1] != a[1]]
    assert len(changed) == counts['flipped'] == round(0.2 * len(before))
    assert all(b[2] == a[2] and 0 <= a[1] < 5 for b, a in zip(before, after))
    # the new class is uniform over the other four
    shifts = np.bincount([(a[1] - b[1]) % 5 for b, a in changed], minlength=5)
    assert shifts[0] == 0 and all(abs(s - len(changed) / 4) < 4 * np.sqrt(len(changed) / 4)
                                  for s in shifts[1:])


def test_jittered_boxes_fraction_and_size():
    infos = _infos()
    noisy, counts = apply_annotation_noise(infos, 5, dict(jitter=0.2, jitter_scale=0.25))
    moved = 0
    for b, a in zip(_boxes(infos), _boxes(noisy)):
        assert b[1] == a[1]
        if b[2] == a[2]:
            continue
        moved += 1
        (x1, y1, x2, y2), (u1, v1, u2, v2) = b[2], a[2]
        w, h = x2 - x1, y2 - y1
        for old, new, side in ((x1, u1, w), (y1, v1, h), (x2, u2, w), (y2, v2, h)):
            assert abs(new - old) <= 0.25 * side + 1e-9
        assert 0 <= u1 < u2 <= 160 and 0 <= v1 < v2 <= 160
    assert moved == counts['jittered'] == round(0.2 * len(_boxes(infos)))


def test_flips_and_jitters_are_drawn_among_kept_boxes():
    infos = _infos()
    noisy, counts = apply_annotation_noise(infos, 5, dict(drop=0.3, flip=0.2, jitter=0.2))
    kept = counts['boxes'] - counts['dropped']
    assert len(_boxes(noisy)) == kept
    assert counts['flipped'] == round(0.2 * kept) and counts['jittered'] == round(0.2 * kept)


@pytest.mark.parametrize('noise, match', [
    (dict(drop=1.5), 'drop must be a fraction'),
    (dict(flip=-0.1), 'flip must be a fraction'),
    (dict(jitter=0.2, jitter_scale=0.5), r'jitter_scale must be in \(0, 0.5\)'),
    (dict(dropped=0.3), 'unknown key'),
    (dict(seed=1.5), 'seed must be an integer'),
    (dict(seed=True), 'seed must be an integer'),
    (dict(drop='x'), r'annotation_noise\.drop must be a number'),
])
def test_bad_noise_config(noise, match):
    with pytest.raises(ValueError, match=match):
        check_noise(noise)


def _sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_registered_dataset_train_noisy_val_clean(tmp_path):
    from mmengine.registry import init_default_scope
    import mmdet_ghm  # noqa: F401
    from mmdet.registry import DATASETS
    init_default_scope('mmdet')
    root = str(tmp_path / 'shapes') + '/'
    common = dict(type='SyntheticShapesDataset', data_root=root, num_images=40, pipeline=[],
                  filter_cfg=dict(filter_empty_gt=False))
    clean = DATASETS.build(dict(common, split='train'))
    ann = osp.join(root, 'annotations', 'instances_train.json')
    sha = _sha(ann)
    noise = dict(drop=0.3, flip=0.2, seed=3)
    noisy = DATASETS.build(dict(common, split='train', annotation_noise=noise))
    again = DATASETS.build(dict(common, split='train', annotation_noise=noise))
    assert _sha(ann) == sha  # the files on disk stay clean

    def labels_boxes(ds):
        return [(i, inst['bbox_label'], tuple(inst['bbox']))
                for i in range(len(ds)) for inst in ds.get_data_info(i)['instances']]

    total = len(labels_boxes(clean))
    assert total > 50
    assert len(labels_boxes(noisy)) == total - round(0.3 * total)
    assert labels_boxes(noisy) == labels_boxes(again)
    assert len(noisy) == len(clean) == 40

    with pytest.raises(ValueError, match='train split only'):
        DATASETS.build(dict(common, split='val', test_mode=True, annotation_noise=noise))
    val = DATASETS.build(dict(common, split='val', test_mode=True))
    assert val.annotation_noise is None
