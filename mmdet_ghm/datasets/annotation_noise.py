"""Controlled annotation noise for a training split: missing boxes, wrong classes, loose boxes.

The noise is a function of the loaded annotations and a seed only: the same split and the same
``annotation_noise`` give the same noisy annotations in every run and every process. Each kind
draws from its own random stream, and flips and jitters are drawn among the boxes that were kept,
so ``flip=0.2`` means 20 % of the annotations the model sees carry a wrong class.
"""
import copy
import numbers

import numpy as np

NOISE_KEYS = ('drop', 'flip', 'jitter', 'jitter_scale', 'seed')
_STREAMS = dict(drop=0, flip=1, jitter=2)


def check_noise(noise: dict) -> dict:
    """The noise config with its defaults, or a ValueError that names the bad key."""
    if not isinstance(noise, dict):
        raise ValueError(f'annotation_noise must be a dict with keys {NOISE_KEYS}, got {noise!r}')
    unknown = set(noise) - set(NOISE_KEYS)
    if unknown:
        raise ValueError(f'annotation_noise: unknown key(s) {sorted(unknown)}; '
                         f'expected some of {NOISE_KEYS}')
    out = dict(drop=0.0, flip=0.0, jitter=0.0, jitter_scale=0.2, seed=0)
    out.update(noise)
    for key, value in out.items():
        kind, what = (numbers.Integral, 'an integer') if key == 'seed' else (numbers.Real,
                                                                            'a number')
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f'annotation_noise.{key} must be {what}, got {value!r}')
    for key in ('drop', 'flip', 'jitter'):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ValueError(f'annotation_noise.{key} must be a fraction in [0, 1], '
                             f'got {out[key]!r}')
    if not 0.0 < float(out['jitter_scale']) < 0.5:
        raise ValueError('annotation_noise.jitter_scale must be in (0, 0.5) (the largest edge '
                         f'move, as a fraction of the box side), got {out["jitter_scale"]!r}')
    if out['seed'] < 0:
        raise ValueError(f'annotation_noise.seed must be an integer >= 0, got {out["seed"]!r}')
    return out


def _chosen(fraction, count, seed, kind):
    """``round(fraction * count)`` distinct indices out of ``count``."""
    rng = np.random.default_rng([int(seed), _STREAMS[kind]])
    return rng, set(rng.choice(count, int(round(fraction * count)), replace=False).tolist())


def apply_annotation_noise(data_list, num_classes: int, noise: dict):
    """Noisy copy of mmdet data infos (``instances`` with xyxy ``bbox`` and ``bbox_label``).

    drop: that fraction of the boxes is removed. flip: that fraction of the kept boxes gets one of
    the other classes, uniformly. jitter: that fraction of the kept boxes has each edge moved by
    ``u * jitter_scale`` times the box's width (left, right) or height (top, bottom), ``u``
    uniform in [-1, 1], clipped to the image. Returns (data_list, counts)."""
    noise = check_noise(noise)
    data_list = copy.deepcopy(data_list)
    where = [(i, j) for i, info in enumerate(data_list)
             for j, inst in enumerate(info['instances']) if not inst.get('ignore_flag', 0)]
    _, dropped = _chosen(noise['drop'], len(where), noise['seed'], 'drop')
    kept = [w for k, w in enumerate(where) if k not in dropped]
    flip_rng, flipped = _chosen(noise['flip'], len(kept), noise['seed'], 'flip')
    jitter_rng, jittered = _chosen(noise['jitter'], len(kept), noise['seed'], 'jitter')
    for k, (i, j) in enumerate(kept):
        inst = data_list[i]['instances'][j]
        if k in flipped:
            shift = int(flip_rng.integers(1, num_classes))
            inst['bbox_label'] = (int(inst['bbox_label']) + shift) % num_classes
        if k in jittered:
            x1, y1, x2, y2 = inst['bbox']
            w, h = x2 - x1, y2 - y1
            u = jitter_rng.uniform(-1.0, 1.0, 4) * noise['jitter_scale']
            width, height = data_list[i]['width'], data_list[i]['height']
            # with jitter_scale < 0.5 the edges cannot cross; clipping keeps them in the image
            inst['bbox'] = [float(np.clip(x1 + u[0] * w, 0, width)),
                            float(np.clip(y1 + u[1] * h, 0, height)),
                            float(np.clip(x2 + u[2] * w, 0, width)),
                            float(np.clip(y2 + u[3] * h, 0, height))]
    drop_at = {where[k] for k in dropped}
    for i, info in enumerate(data_list):
        info['instances'] = [inst for j, inst in enumerate(info['instances'])
                             if (i, j) not in drop_at]
    counts = dict(boxes=len(where), dropped=len(dropped), flipped=len(flipped),
                  jittered=len(jittered))
    return data_list, counts
