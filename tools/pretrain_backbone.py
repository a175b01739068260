"""Pretrain the tiny backbone + neck once and cache them, for issue 9's pretrained regime.

    python tools/pretrain_backbone.py     # -> data/pretrained/r18-tiny_fpn_shapes_backbone-neck.pth

trains ``configs/regimes/pretrain_r18-tiny_fpn_shapes.py`` (the focal-loss tiny RetinaNet, 4 epochs,
on a train split of generator seed 1000: other images than the comparison's train and val splits;
about 3 minutes on 2 idle CPU cores after the split is generated) and keeps the ``backbone.*`` and
``neck.*`` weights of its end, with the pretraining config's SHA-1 in ``meta``. A later call with
the same config text reuses the file, as the dataset cache is reused; ``--force`` trains again. The
fine-tuning configs (``configs/regimes/*-pretrained_shapes.py``) load it with ``load_from`` (the
head's weights are not in it, so the head starts from its own initialization).
"""
import argparse
import hashlib
import os
import os.path as osp
import sys
from typing import Optional

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(REPO, 'configs', 'regimes', 'pretrain_r18-tiny_fpn_shapes.py')
DEFAULT_OUT = 'data/pretrained/r18-tiny_fpn_shapes_backbone-neck.pth'
KEPT_PREFIXES = ('backbone.', 'neck.')


def config_sha1(cfg) -> str:
    return hashlib.sha1(cfg.pretty_text.encode()).hexdigest()


def cached(out: str, sha1: str) -> Optional[dict]:
    """The file at ``out`` when it was pretrained with the config of SHA-1 ``sha1``, else None."""
    if not osp.isfile(out):
        return None
    try:
        saved = torch.load(out, map_location='cpu', weights_only=True)
    except Exception:  # a truncated or foreign file: train again
        return None
    return saved if saved.get('meta', {}).get('config_sha1') == sha1 else None


def weights_sha256(state_dict: dict) -> str:
    """SHA-256 of the weights (names and bytes, in name order): two pretrainings are the same
    exactly when this is (the file's own bytes also hold the pickling's details)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def extract(state_dict: dict) -> dict:
    kept = {k: v for k, v in state_dict.items() if k.startswith(KEPT_PREFIXES)}
    if not kept:
        raise ValueError('the pretraining checkpoint has no backbone.* / neck.* weights')
    return kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--out', default=DEFAULT_OUT, help=f'default: {DEFAULT_OUT}')
    parser.add_argument('--work-dir', default='work_dirs/pretrain_r18-tiny_fpn_shapes')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides (part of the cache key)')
    parser.add_argument('--force', action='store_true', help='train even if the file is cached')
    args = parser.parse_args(argv)

    from mmengine.config import Config, DictAction
    from mmengine.runner import Runner

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        holder = argparse.Namespace()
        DictAction(option_strings=[], dest='opts')(None, holder, args.cfg_options)
        cfg.merge_from_dict(holder.opts)
    sha1 = config_sha1(cfg)
    saved = None if args.force else cached(args.out, sha1)
    if saved is not None:
        print(f'[pretrain] cached: {osp.abspath(args.out)} (config {sha1[:10]}, weights sha256 '
              f'{weights_sha256(saved["state_dict"])[:16]})')
        return 0
    cfg.work_dir = args.work_dir
    runner = Runner.from_cfg(cfg)
    runner.train()
    weights = {k: v.detach().cpu() for k, v in extract(runner.model.state_dict()).items()}
    digest = weights_sha256(weights)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    tmp = args.out + '.tmp'
    torch.save(dict(state_dict=weights,
                    meta=dict(config_sha1=sha1, config=osp.relpath(osp.abspath(args.config), REPO),
                              iterations=runner.iter, kept=list(KEPT_PREFIXES),
                              weights_sha256=digest)), tmp)
    os.replace(tmp, args.out)  # a complete file or none
    print(f'[pretrain] wrote {osp.abspath(args.out)}: {len(weights)} tensors after '
          f'{runner.iter} iterations (config {sha1[:10]}, weights sha256 {digest[:16]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
