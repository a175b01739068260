"""Deterministic generator of the embedded "synthetic shapes" detection dataset (COCO format).

The data is built to show the imbalance GHM is about, at a size a 2-core CPU trains on in minutes:

* class imbalance: five shape classes drawn with frequencies 36/28/20/10/6 % (``cross`` and
  ``ring`` are rare);
* small objects: sizes are log-uniform in [12, 56] px on 160 x 160 images, so about half of them are
  under 24 px (COCO calls everything under 32 x 32 px "small");
* clutter and occlusion: thin line segments and speckles on a noisy gradient background, and objects
  that overlap (each keeps at least half of its pixels visible; boxes are the visible extent);
* many easy negatives: most of every image is background, and 8 % of the images hold no object.

Every image is rendered from its own generator seeded by ``(seed, split, index)`` and every output
byte depends only on those and on :data:`GENERATOR_VERSION`: the same arguments give the same files.

Command line: ``python -m mmdet_ghm.datasets.shapes_generator --data-root data/ghm_shapes``.
"""
import argparse
import contextlib
import json
import numbers
import os
import os.path as osp
import shutil
import tempfile

import numpy as np

# Bump whenever rendering or annotation changes: caches of an older version are regenerated.
GENERATOR_VERSION = 1

SHAPE_CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring')
SHAPE_PALETTE = [(220, 20, 60), (0, 0, 230), (0, 160, 0), (255, 160, 0), (160, 0, 200)]
CLASS_FREQUENCIES = (0.36, 0.28, 0.20, 0.10, 0.06)
SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}
DEFAULT_NUM_IMAGES = {'train': 2000, 'val': 300, 'test': 300}

EMPTY_IMAGE_PROB = 0.08
MAX_OBJECTS = 8
MIN_SIZE, MAX_SIZE = 12.0, 56.0
MIN_VISIBLE_FRACTION = 0.5
JPEG_QUALITY = 95


def _inside(name, x, y, orientation):
    """Whether unit-box coordinates (x, y in [-1, 1], y pointing down) lie inside the shape."""
    if name == 'circle':
        return x * x + y * y <= 1.0
    if name == 'square':
        return (np.abs(x) <= 1.0) & (np.abs(y) <= 1.0)
    if name == 'triangle':
        # Isosceles triangle, apex at the top, turned by a multiple of 90 degrees.
        for _ in range(orientation):
            x, y = -y, x
        return (y <= 1.0) & (np.abs(x) <= (y + 1.0) / 2.0)
    if name == 'cross':
        arm = 0.32
        return ((np.abs(x) <= arm) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= arm) & (np.abs(x) <= 1.0))
    if name == 'ring':
        r2 = x * x + y * y
        return (r2 <= 1.0) & (r2 >= 0.55 * 0.55)
    raise KeyError(name)


def _coverage(name, cx, cy, w, h, orientation, size):
    """Anti-aliased coverage (2 x 2 supersampling) of one shape, cropped to its bounding box.

    Returns (x0, y0, coverage[h', w']) with the crop's top-left pixel."""
    x0, y0 = max(int(np.floor(cx - w / 2)), 0), max(int(np.floor(cy - h / 2)), 0)
    x1, y1 = min(int(np.ceil(cx + w / 2)) + 1, size), min(int(np.ceil(cy + h / 2)) + 1, size)
    sub = np.array([0.25, 0.75])
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1)
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1)
    u = (xs[None, :] - cx) / (w / 2)
    v = (ys[:, None] - cy) / (h / 2)
    inside = _inside(name, u, v, orientation).astype(np.float32)
    cov = inside.reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3))
    return x0, y0, cov


def _bright_color(rng):
    """A saturated, bright RGB color: it stands out from the darker background."""
    hue = rng.uniform(0.0, 6.0)
    sat, val = rng.uniform(0.45, 1.0), rng.uniform(190.0, 255.0)
    k = np.mod(np.array([5.0, 3.0, 1.0]) + hue, 6.0)
    return val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _draw_segment(img, rng, size, color, width):
    """A straight line segment (clutter), drawn by dense sampling."""
    x0, y0 = rng.uniform(0, size, 2)
    length, angle = rng.uniform(8.0, 48.0), rng.uniform(0.0, np.pi)
    t = np.linspace(0.0, 1.0, int(length * 2) + 2)
    xs = np.clip(np.round(x0 + t * length * np.cos(angle)).astype(int), 0, size - 1)
    ys = np.clip(np.round(y0 + t * length * np.sin(angle)).astype(int), 0, size - 1)
    for dy in range(width):
        img[np.clip(ys + dy, 0, size - 1), xs] = color


def render_image(rng, size):
    """Render one image. Returns (RGB uint8 image, list of (class index, [x, y, w, h], area))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: a dark-to-mid linear gradient with sensor-like noise (easy negatives everywhere).
    c0, c1 = rng.uniform(15.0, 120.0, 3), rng.uniform(15.0, 120.0, 3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * ramp[..., None]
    img += rng.normal(0.0, 5.0, img.shape)

    # Clutter under the objects: segments of any brightness, and small speckles.
    for _ in range(rng.integers(2, 7)):
        color = _bright_color(rng) if rng.random() < 0.5 else rng.uniform(40.0, 200.0, 3)
        _draw_segment(img, rng, size, color, int(rng.integers(1, 3)))
    for _ in range(rng.integers(4, 16)):
        r = rng.uniform(1.0, 2.5)
        cx, cy = rng.uniform(0, size, 2)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[mask] = _bright_color(rng)

    owner = np.full((size, size), -1, dtype=np.int32)  # which object shows at each pixel
    full_area = []  # pixel count of each object before occlusion
    objects = []  # (class index, ...)
    num_objects = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(num_objects):
        label = int(rng.choice(len(SHAPE_CLASSES), p=CLASS_FREQUENCIES))
        for _attempt in range(20):
            s = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))))
            aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
            w, h = s * np.sqrt(aspect), s / np.sqrt(aspect)
            cx = rng.uniform(w / 2 + 1, size - w / 2 - 1)
            cy = rng.uniform(h / 2 + 1, size - h / 2 - 1)
            orientation = int(rng.integers(0, 4))
            x0, y0, cov = _coverage(SHAPE_CLASSES[label], cx, cy, w, h, orientation, size)
            solid = cov >= 0.5
            region = owner[y0:y0 + cov.shape[0], x0:x0 + cov.shape[1]]
            # Reject a placement that would hide more than half of an object already there.
            covered = np.bincount(region[solid & (region >= 0)], minlength=len(objects))
            visible = np.bincount(owner[owner >= 0], minlength=len(objects)) - covered
            if all(visible[i] >= MIN_VISIBLE_FRACTION * full_area[i] for i in range(len(objects))):
                break
        else:
            continue
        color = _bright_color(rng)
        patch = img[y0:y0 + cov.shape[0], x0:x0 + cov.shape[1]]
        patch *= 1.0 - cov[..., None]
        patch += cov[..., None] * color[None, None, :]
        region[solid] = len(objects)
        full_area.append(int(solid.sum()))
        objects.append(label)

    # Clutter on top: a few thin segments that cross objects.
    for _ in range(rng.integers(0, 3)):
        _draw_segment(img, rng, size, rng.uniform(40.0, 255.0, 3), 1)

    annotations = []
    for index, label in enumerate(objects):
        ys, xs = np.nonzero(owner == index)
        x_min, y_min = int(xs.min()), int(ys.min())
        w, h = int(xs.max()) + 1 - x_min, int(ys.max()) + 1 - y_min
        annotations.append((label, [x_min, y_min, w, h], int(xs.size)))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), annotations


def split_spec(split, num_images, seed, image_size):
    """What identifies a generated split; stored in the annotation file's ``info``."""
    if split not in SPLIT_IDS:
        raise ValueError(f'split must be one of {sorted(SPLIT_IDS)}, got {split!r}')
    for name, value in (('num_images', num_images), ('seed', seed), ('image_size', image_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f'{name} must be an integer, got {value!r}')
    if int(num_images) < 1 or int(image_size) < 64:
        raise ValueError(f'need num_images >= 1 and image_size >= 64, '
                         f'got {num_images}, {image_size}')
    if int(seed) < 0:  # numpy's generators take non-negative seeds only
        raise ValueError(f'seed must be an integer >= 0, got {seed}')
    return dict(generator='mmdet_ghm.datasets.shapes_generator', version=GENERATOR_VERSION,
                split=split, num_images=int(num_images), seed=int(seed), image_size=int(image_size))


def generate_split(out_dir, split, num_images, seed=0, image_size=160):
    """Write ``<out_dir>/<split>/*.jpg`` and ``<out_dir>/annotations/instances_<split>.json``."""
    import cv2  # an mmcv dependency; imported here so the module stays importable without it

    spec = split_spec(split, num_images, seed, image_size)
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for index in range(spec['num_images']):
        rng = np.random.default_rng([spec['seed'], SPLIT_IDS[split], index])
        img, objects = render_image(rng, spec['image_size'])
        file_name = f'{index:06d}.jpg'
        ok, encoded = cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f'could not encode {file_name}')
        with open(osp.join(out_dir, split, file_name), 'wb') as f:
            f.write(encoded.tobytes())
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name,
                           width=img.shape[1], height=img.shape[0]))
        for label, bbox, area in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    category_id=label + 1, bbox=bbox, area=area, iscrowd=0))
    coco = dict(info=spec, images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape')
                            for i, n in enumerate(SHAPE_CLASSES)])
    with open(annotation_path(out_dir, split), 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return annotation_path(out_dir, split)


def annotation_path(data_root, split):
    return osp.join(data_root, 'annotations', f'instances_{split}.json')


def _cached_spec(data_root, split):
    path = annotation_path(data_root, split)
    if not osp.isfile(path) or not osp.isdir(osp.join(data_root, split)):
        return None
    try:
        with open(path) as f:
            return json.load(f).get('info')
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(data_root):
    """An exclusive lock on the cache (distributed ranks and parallel jobs generate it once)."""
    import fcntl

    with open(osp.join(data_root, '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_split(data_root, split, num_images, seed=0, image_size=160, logger=print):
    """Generate the split into ``data_root`` unless the same split (same spec) is already there.

    Generation writes into a temporary folder next to the cache and moves the result into place, so
    an interrupted run never leaves a half-written split behind. Returns the annotation file."""
    spec = split_spec(split, num_images, seed, image_size)
    os.makedirs(data_root, exist_ok=True)
    with _locked(data_root):
        if _cached_spec(data_root, split) == spec:
            return annotation_path(data_root, split)
        if logger is not None:
            logger(f'[mmdet_ghm] generating the synthetic shapes {split} split '
                   f'({spec["num_images"]} images, seed {spec["seed"]}) '
                   f'into {osp.abspath(data_root)}')
        tmp = tempfile.mkdtemp(prefix=f'.{split}-', dir=data_root)
        try:
            generate_split(tmp, split, spec['num_images'], spec['seed'], spec['image_size'])
            final_ann = annotation_path(data_root, split)
            os.makedirs(osp.dirname(final_ann), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(final_ann)  # the annotation file marks a complete split: drop it first
            shutil.rmtree(osp.join(data_root, split), ignore_errors=True)
            os.replace(osp.join(tmp, split), osp.join(data_root, split))
            os.replace(annotation_path(tmp, split), final_ann)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return annotation_path(data_root, split)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-root', default='data/ghm_shapes')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'], choices=sorted(SPLIT_IDS))
    parser.add_argument('--num-images', type=int, nargs='+', default=None,
                        help='one count per split (default: train 2000, val/test 300)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--image-size', type=int, default=160)
    args = parser.parse_args(argv)
    counts = args.num_images or [DEFAULT_NUM_IMAGES[s] for s in args.splits]
    if len(counts) != len(args.splits):
        parser.error('--num-images needs one count per split')
    for split, count in zip(args.splits, counts):
        print(ensure_split(args.data_root, split, count, args.seed, args.image_size))


if __name__ == '__main__':
    main()
