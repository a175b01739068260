"""README's main job: train a config with MMEngine's runner, evaluate it with the COCO metric, and
say where the checkpoint, the log and the metrics are.

    python -m mmdet_ghm.main_job configs/retinanet_r18-tiny_fpn_ghm_shapes.py   # (tools/main.sh)

The config's own train loop validates at its end (``val_interval == max_epochs``); this script adds
nothing to training, it only records the metrics of that validation and reports them.
"""
import argparse
import json
import os.path as osp
import sys
import time

from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner


class _KeepMetrics(Hook):
    """Keeps the metrics of the last validation (the runner logs them but does not return them)."""

    priority = 'LOWEST'

    def __init__(self):
        self.metrics = None

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def _fmt(value):
    return f'{value:.3f}' if isinstance(value, (int, float)) else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='default: work_dirs/<config name>')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, as in mmdet tools/train.py')
    parser.add_argument('--target-map50', type=float, default=None,
                        help='report whether bbox mAP@0.5 on the val split reaches this value')
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    runner = Runner.from_cfg(cfg)
    keep = _KeepMetrics()
    runner.register_hook(keep)
    runner.train()
    minutes = (time.perf_counter() - start) / 60.0

    metrics = keep.metrics
    if metrics is None:  # a config whose training did not end with a validation
        metrics = runner.val()
    metrics_path = osp.join(runner.log_dir, 'metrics.json')
    with open(metrics_path, 'w') as f:
        json.dump(dict(config=args.config, minutes=round(minutes, 2), metrics=metrics), f, indent=2)

    last = osp.join(runner.work_dir, 'last_checkpoint')
    checkpoint = open(last).read().strip() if osp.isfile(last) else '(none saved)'
    log_file = osp.join(runner.log_dir, f'{runner.timestamp}.log')
    map_all, map_50 = metrics.get('coco/bbox_mAP'), metrics.get('coco/bbox_mAP_50')
    per_class = {k[len('coco/'):-len('_precision')]: v for k, v in metrics.items()
                 if k.endswith('_precision')}

    lines = [
        '',
        f'=== mmdet_ghm main job: {args.config} ===',
        f'time:       {minutes:.1f} min in all (data generation if not cached, training, eval)',
        f'bbox mAP:   {_fmt(map_all)}   mAP@0.5: {_fmt(map_50)}   '
        f'mAP@0.75: {_fmt(metrics.get("coco/bbox_mAP_75"))}   (COCO metric, val split)',
    ]
    if per_class:
        lines.append('AP by class: ' + ', '.join(f'{k} {_fmt(v)}' for k, v in per_class.items()))
    if args.target_map50 is not None and map_50 is not None:
        verdict = 'reached' if map_50 >= args.target_map50 else 'NOT reached'
        lines.append(f'target:     mAP@0.5 >= {args.target_map50} {verdict}')
    lines += [
        f'checkpoint: {osp.abspath(checkpoint)}',
        f'log:        {osp.abspath(log_file)}',
        f'metrics:    {osp.abspath(metrics_path)} (and vis_data/scalars.json next to it)',
        '',
    ]
    print('\n'.join(lines), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
