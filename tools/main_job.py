"""The main job (``bash tools/main.sh`` runs it): train a config with MMEngine's runner, evaluate
it with the COCO metric, record what GHM does to the gradients while training, draw it, and say
where the checkpoint, the log, the metrics and the figures are.

    python tools/main_job.py configs/retinanet_r18-tiny_fpn_ghm_shapes.py [--tensorboard]

For a config with GHM losses it adds ``GHMDensityHook`` (every ``--density-interval`` iterations,
unless the config has one) and ends with ``python -m mmdet_ghm.plot``'s figures of this run.
``--tensorboard`` adds MMEngine's ``TensorboardVisBackend``: the logged scalars and the GHM
histograms then also go to TensorBoard event files in ``WORK_DIR/<timestamp>/vis_data/``.
The config's own train loop validates at its end (``val_interval == max_epochs``); the job adds
nothing to training but the records, it only keeps the metrics of that validation.
"""
import argparse
import json
import logging
import os.path as osp
import sys
import time
import warnings

# Deprecation notices from third-party code that a user of this job cannot act on; set before the
# imports that emit them. Warnings about this package's own use are left alone.
QUIET_WARNINGS = [
    # setuptools, when mmengine imports pkg_resources
    dict(category=UserWarning, message='pkg_resources is deprecated'),
    # torch, when mmdet's anchor generator calls torch.meshgrid without indexing=
    dict(category=UserWarning, message=r'torch\.meshgrid: in an upcoming release'),
]
for _quiet in QUIET_WARNINGS:
    warnings.filterwarnings('ignore', **_quiet)

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

GHM_LOSSES = ('GHMC', 'GHMR')
# The same kind of notice, logged by mmengine's logger when its hooks build a FileClient.
QUIET_LOG_MESSAGES = ('"FileClient" will be deprecated', '"HardDiskBackend" is the alias')


class _QuietLog(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith(QUIET_LOG_MESSAGES)


class _KeepMetrics(Hook):
    """Keeps the metrics of the last validation (the runner logs them but does not return them)."""

    priority = 'LOWEST'

    def __init__(self):
        self.metrics = None

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def _fmt(value):
    return f'{value:.3f}' if isinstance(value, (int, float)) else str(value)


def uses_ghm(cfg_node) -> bool:
    """Whether a config (or a part of it) builds a GHMC/GHMR loss anywhere (also as
    ``'mmdet.GHMC'``, a registry scope before the name, or as the class itself)."""
    if isinstance(cfg_node, dict):
        kind = cfg_node.get('type')
        name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
        if name.rpartition('.')[2] in GHM_LOSSES:
            return True
        return any(uses_ghm(v) for v in cfg_node.values())
    if isinstance(cfg_node, (list, tuple)):
        return any(uses_ghm(v) for v in cfg_node)
    return False


def add_density_hook(cfg, interval: int) -> bool:
    """Record the GHM density every ``interval`` iterations; returns whether the run records
    (a GHM config that has its own GHMDensityHook keeps it)."""
    if not uses_ghm(cfg.get('model', {})):
        return False
    hooks = list(cfg.get('custom_hooks') or [])
    if any(h.get('type') == 'GHMDensityHook' for h in hooks):
        return True
    if interval <= 0:
        return False
    cfg.custom_hooks = hooks + [dict(type='GHMDensityHook', interval=interval)]
    return True


def add_tensorboard(cfg) -> None:
    """MMEngine's TensorboardVisBackend beside the config's backends (mmdet's default runtime has
    LocalVisBackend, which the density figures read)."""
    visualizer = cfg.get('visualizer') or dict(type='Visualizer')
    backends = list(visualizer.get('vis_backends') or [dict(type='LocalVisBackend')])
    if not any(b.get('type') == 'TensorboardVisBackend' for b in backends):
        backends.append(dict(type='TensorboardVisBackend'))
    visualizer['vis_backends'] = backends
    cfg.visualizer = visualizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='default: work_dirs/<config name>')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, as in mmdet tools/train.py')
    parser.add_argument('--target-map50', type=float, default=None,
                        help='report whether bbox mAP@0.5 on the val split reaches this value')
    parser.add_argument('--density-interval', type=int, default=25,
                        help='record the GHM density every N iterations, then draw it '
                             '(default: 25; 0: off)')
    parser.add_argument('--tensorboard', action='store_true',
                        help="also write TensorBoard event files (MMEngine's "
                             'TensorboardVisBackend; needs the tensorboard package)')
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    records_density = add_density_hook(cfg, args.density_interval)
    if args.tensorboard:
        add_tensorboard(cfg)
    runner = Runner.from_cfg(cfg)
    runner.logger.addFilter(_QuietLog())
    keep = _KeepMetrics()
    runner.register_hook(keep)
    runner.train()

    metrics = keep.metrics
    if metrics is None:  # a config whose training did not end with a validation
        metrics = runner.val()
    figures = []
    if records_density:
        from mmdet_ghm.diagnostics import RECORDS_FILE
        from mmdet_ghm.diagnostics.plot import plot_run
        records_file = osp.join(runner.log_dir, 'vis_data', RECORDS_FILE)
        if not osp.isfile(records_file):  # the metrics still count
            print(f'no density figures: no {records_file} (the records go to a LocalVisBackend '
                  "in the config's visualizer, and the GHMDensityHook may not have recorded an "
                  'iteration of this run)')
        else:
            try:
                figures = plot_run(runner.work_dir, osp.join(runner.work_dir, 'ghm_plots'),
                                   records_file=records_file)
            except ValueError as e:  # no loss counted an element: the metrics still count
                print(f'no density figures: {e}')
    minutes = (time.perf_counter() - start) / 60.0
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
        f'time:       {minutes:.1f} min in all (data generation if not cached, training, eval, '
        'figures)',
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
    ]
    lines += [f'figure:     {osp.abspath(path)}' for path in figures]
    if args.tensorboard:
        lines.append(f'tensorboard: tensorboard --logdir {osp.abspath(runner.work_dir)}')
    lines.append('')
    print('\n'.join(lines), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
