"""The GHM paper's loss comparison on the embedded shapes dataset, as one command.

    python tools/compare_losses.py            # from the repository root: 4 losses x 3 seeds

trains the tiny RetinaNet (configs/_base_/retinanet_r18-tiny_fpn_shapes.py) with

    CE (sigmoid) + smooth L1    configs/loss_comparison/retinanet_r18-tiny_fpn_ce_shapes.py
    focal loss + smooth L1      configs/retinanet_r18-tiny_fpn_focal_shapes.py
    GHM-C + smooth L1           configs/loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py
    GHM-C + GHM-R               configs/retinanet_r18-tiny_fpn_ghm_shapes.py

for each seed (``randomness.seed``: initialization, shuffling, flips; the data are the same), one
after another, seed by seed (every config's first seed before any second one), each in its own
process, evaluates each with mmdet's COCO metric on the val split and
writes into ``--out-dir`` (default ``docs/loss_comparison``):

* ``loss_comparison.md``: the table (mean and sample standard deviation over the seeds of bbox mAP,
  mAP@0.5, mAP@0.75 and the median seconds per training iteration), the per-seed numbers, the
  exact command, the software and machine;
* ``loss_comparison.json``: the same numbers, machine-readable;
* ``figures/<config>_seed<S>/``: the gradient-norm figures of ``python -m mmdet_ghm.plot`` for the
  first seed of every GHM run (``GHMDensityHook`` is added to those runs).

Runs live in ``--work-dir`` (default ``work_dirs/compare_losses/<config>/seed<S>/``) with the exact
config each trained with. A finished run (its ``result.json``, for the same config text) is
reused, so an interrupted comparison resumes where it stopped; ``--rerun`` trains everything again.
A run that is in ``--out-dir``'s ``loss_comparison.json`` (trained on another clone, committed) is
reused too when its recorded config SHA-1 is that of the same config written for its own run
directory: a fresh clone resumes a committed comparison without training its finished runs again.
Every run saves a checkpoint at the end of each epoch (only the last is kept): a run interrupted
midway resumes from its last finished epoch when the same config is trained again (the data
order follows the epoch; the random flips restart their stream, so a resumed run is not
bit-identical to an uninterrupted one; ``resumed_from_iteration`` in its result says so).
``--max-runs N`` trains at most N runs in this call and reports the others as pending (a queue that
commits each finished run calls it with ``--max-runs 1``).
A failed run is reported in the table and makes the command exit with status 1 after the others ran.

About 8.5 minutes a run on 2 idle CPU cores: 12 runs take about 1 hour 45 minutes.
``--cfg-options`` applies to every run (e.g. a tiny setting to check the pipeline: see
tests/test_compare.py).
"""
import argparse
import datetime
import hashlib
import json
import os
import os.path as osp
import platform
import shlex
import statistics
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIGS = [
    'configs/loss_comparison/retinanet_r18-tiny_fpn_ce_shapes.py',
    'configs/retinanet_r18-tiny_fpn_focal_shapes.py',
    'configs/loss_comparison/retinanet_r18-tiny_fpn_ghmc_shapes.py',
    'configs/retinanet_r18-tiny_fpn_ghm_shapes.py',
]
RESULT_FILE = 'result.json'
#: Iterations of each epoch left out of the time per iteration (dataloader start, lazy inits);
#: fewer in a run too short to leave any.
WARMUP_ITERS = 3
METRICS = (('coco/bbox_mAP', 'bbox mAP'), ('coco/bbox_mAP_50', 'mAP@0.5'),
           ('coco/bbox_mAP_75', 'mAP@0.75'))


# --- one training run (in its own process: `compare_losses.py --train-one CONFIG`) ---------------

def train_one(config_path: str) -> dict:
    """Train and evaluate one dumped config; write and return its ``result.json``."""
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class _Measure(Hook):
        """Wall time between consecutive training iterations of an epoch (data loading included,
        as MMEngine's ``time``) and the metrics of the last validation."""

        priority = 'LOWEST'

        def __init__(self):
            self.times, self.metrics, self._last, self._in_epoch = [], None, None, 0
            self.start_iter = 0

        def before_train(self, runner):
            self.start_iter = runner.iter  # > 0 when the run resumed from its last epoch

        def before_train_epoch(self, runner):
            self._last, self._in_epoch = time.perf_counter(), 0

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            now = time.perf_counter()
            self.times.append((self._in_epoch, now - self._last))
            self._in_epoch += 1
            self._last = now

        def seconds(self):
            for warmup in (WARMUP_ITERS, 1, 0):
                timed = [s for i, s in self.times if i >= warmup]
                if timed:
                    return timed
            return []

        def after_val_epoch(self, runner, metrics=None):
            self.metrics = dict(metrics or {})

    cfg = Config.fromfile(config_path)
    # An interrupted run of this config left its last epoch's checkpoint: go on from there.
    cfg.resume = osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint'))
    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    measure = _Measure()
    runner.register_hook(measure)
    runner.train()
    if measure.metrics is None:  # a schedule that did not end with a validation
        measure.metrics = dict(runner.val())
    seconds = measure.seconds()
    result = dict(
        config_sha1=_sha1(config_path),
        metrics={k: float(v) for k, v in measure.metrics.items() if isinstance(v, (int, float))},
        iterations=runner.iter,
        resumed_from_iteration=measure.start_iter,
        # the median: a pause of the machine (another job) moves one iteration, not the figure
        sec_per_iter=statistics.median(seconds) if seconds else None,
        timed_iterations=len(seconds),
        minutes=(time.perf_counter() - start) / 60,
        log_dir=runner.log_dir)
    with open(osp.join(osp.dirname(config_path), RESULT_FILE), 'w') as f:
        json.dump(result, f, indent=2)
    return result


# --- the comparison ------------------------------------------------------------------------------

def _sha1(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha1(f.read()).hexdigest()


def _display_path(path: str) -> str:
    """Repository-relative for the repository's files (as the default command line names them)."""
    path = osp.abspath(path)
    return osp.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def _uses_ghm(cfg) -> bool:
    head = cfg.model.get('bbox_head', {})
    return any(head.get(key, {}).get('type') in ('GHMC', 'GHMR')
               for key in ('loss_cls', 'loss_bbox'))


def describe_losses(cfg) -> str:
    """'GHM-C + smooth L1' etc., from the head's loss configs."""
    head = cfg.model.bbox_head
    cls, box = head.loss_cls, head.loss_bbox
    cls_name = {'GHMC': 'GHM-C', 'FocalLoss': 'focal loss'}.get(cls.type, cls.type)
    if cls.type == 'CrossEntropyLoss':
        cls_name = 'CE (sigmoid)' if cls.get('use_sigmoid') else 'CE (softmax)'
    box_name = {'GHMR': 'GHM-R', 'SmoothL1Loss': 'smooth L1', 'L1Loss': 'L1'}.get(box.type,
                                                                                 box.type)
    scope = ' (batch-wide density)' if str(head.get('type', '')).startswith('BatchDensity') \
        else ''
    return f'{cls_name} + {box_name}{scope}'


def run_config(config: str, seed: int, run_dir: str, cfg_options: dict, density_interval: int):
    """The exact config of one run (a ``mmengine.Config``), as ``prepare_run`` writes it."""
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    # A checkpoint every epoch (only the last kept): an interrupted run resumes from its last epoch.
    cfg.default_hooks.checkpoint = dict(cfg.default_hooks.get('checkpoint', {}),
                                        type='CheckpointHook', interval=1, max_keep_ckpts=1)
    cfg.merge_from_dict(cfg_options)
    cfg.randomness = dict(cfg.get('randomness', {}), seed=seed)
    cfg.work_dir = run_dir
    if _uses_ghm(cfg) and density_interval > 0:
        hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'GHMDensityHook']
        cfg.custom_hooks = hooks + [dict(type='GHMDensityHook', interval=density_interval)]
    return cfg


def prepare_run(config: str, seed: int, run_dir: str, cfg_options: dict,
                density_interval: int):
    """Write the exact config of one run into ``run_dir/config.py``; returns (path, label, ghm)."""
    cfg = run_config(config, seed, run_dir, cfg_options, density_interval)
    os.makedirs(run_dir, exist_ok=True)
    path = osp.join(run_dir, 'config.py')
    text = cfg.pretty_text
    if not osp.isfile(path) or open(path).read() != text:
        forget_checkpoints(run_dir)  # of another config: never resume from them
        with open(path, 'w') as f:
            f.write(text)
    return path, describe_losses(cfg), _uses_ghm(cfg)


def restore_result(run: dict, report_runs: list, cfg_options: dict, density_interval: int):
    """The result of ``run`` from a written report (``loss_comparison.json``), when the report
    holds a finished run of the same config and seed whose config text, written for its own run
    directory, has the recorded SHA-1: a committed table resumes on another clone. Written into
    ``run_dir/result.json`` (with ``restored_from``); None when there is none."""
    for old in report_runs:
        if (old.get('stem'), old.get('seed')) != (run['stem'], run['seed']) \
                or old.get('failed') or old.get('pending') or not old.get('log_dir'):
            continue
        # where it was trained, and the SHA-1 of its config there (a restored run keeps both)
        old_run_dir = old.get('restored_from') or osp.dirname(old['log_dir'])
        old_sha1 = old.get('trained_config_sha1') or old['config_sha1']
        text = run_config(osp.join(REPO, run['config']), run['seed'], old_run_dir, cfg_options,
                          density_interval).pretty_text
        if hashlib.sha1(text.encode()).hexdigest() != old_sha1:
            continue
        result = {k: v for k, v in old.items()
                  if k not in ('config', 'stem', 'label', 'seed', 'ghm', 'run_dir')}
        result.update(config_sha1=_sha1(osp.join(run['run_dir'], 'config.py')),
                      restored_from=old_run_dir, trained_config_sha1=old_sha1)
        with open(osp.join(run['run_dir'], RESULT_FILE), 'w') as f:
            json.dump(result, f, indent=2)
        return result
    return None


def forget_checkpoints(run_dir: str) -> None:
    """Remove what would make the next training of ``run_dir`` resume."""
    last = osp.join(run_dir, 'last_checkpoint')
    if osp.isfile(last):
        os.remove(last)


def run_all(configs, seeds, work_dir, cfg_options, density_interval, rerun, log=print,
            max_runs=None, report_runs=()):
    """Train every (config, seed) that has no up-to-date result, seed by seed, at most
    ``max_runs`` of them (the others are returned as ``pending``); returns one dict per run, in
    config order. A run finished in ``report_runs`` (an earlier report's) is restored from it."""
    runs, trained = {}, 0
    for seed in seeds:
        for index, config in enumerate(configs):
            stem = osp.splitext(osp.basename(config))[0]
            run_dir = osp.abspath(osp.join(work_dir, stem, f'seed{seed}'))
            path, label, ghm = prepare_run(config, seed, run_dir, cfg_options, density_interval)
            run = dict(config=_display_path(config), stem=stem, label=label, seed=seed,
                       run_dir=run_dir, ghm=ghm)
            key = (index, seed)
            result_path = osp.join(run_dir, RESULT_FILE)
            if not rerun and osp.isfile(result_path):
                result = json.load(open(result_path))
                if result.get('config_sha1') == _sha1(path):
                    log(f'[compare] reuse {label}, seed {seed}: {result_path}')
                    runs[key] = dict(run, **result)
                    continue
                log(f'[compare] {label}, seed {seed}: config changed since the last run, rerunning')
            elif not rerun:
                result = restore_result(run, report_runs, cfg_options, density_interval)
                if result is not None:
                    log(f'[compare] reuse {label}, seed {seed}: restored from the report '
                        f'(trained in {result["restored_from"]})')
                    runs[key] = dict(run, **result)
                    continue
            if max_runs is not None and trained >= max_runs:
                runs[key] = dict(run, pending=True)
                continue
            trained += 1
            if osp.isfile(result_path):
                os.remove(result_path)
            if rerun:
                forget_checkpoints(run_dir)
            log(f'[compare] train {label}, seed {seed} -> {run_dir} (log: {run_dir}/train.log)')
            with open(osp.join(run_dir, 'train.log'), 'a') as out:  # after an interrupted one
                proc = subprocess.run(
                    [sys.executable, osp.abspath(__file__), '--train-one', path],
                    stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
            if proc.returncode != 0 or not osp.isfile(result_path):
                log(f'[compare] FAILED {label}, seed {seed} (exit {proc.returncode}): see '
                    f'{run_dir}/train.log')
                runs[key] = dict(run, failed=True)
                continue
            result = json.load(open(result_path))
            log(f'[compare] done {label}, seed {seed}: mAP {result["metrics"].get("coco/bbox_mAP")}'
                f', mAP@0.5 {result["metrics"].get("coco/bbox_mAP_50")}, '
                f'{result["minutes"]:.1f} min')
            runs[key] = dict(run, **result)
    return [runs[key] for key in sorted(runs)]


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(runs) -> list:
    """One row per config (in the order given): label, seeds, mean and sample std of each number."""
    rows = []
    for stem in dict.fromkeys(r['stem'] for r in runs):
        mine = [r for r in runs if r['stem'] == stem]
        done = [r for r in mine if not r.get('failed') and not r.get('pending')]
        row = dict(config=mine[0]['config'], label=mine[0]['label'],
                   seeds=[r['seed'] for r in done],
                   failed_seeds=[r['seed'] for r in mine if r.get('failed')],
                   pending_seeds=[r['seed'] for r in mine if r.get('pending')])
        for key, _ in METRICS:
            row[key] = _mean_std([r['metrics'].get(key) for r in done])
        row['sec_per_iter'] = _mean_std([r.get('sec_per_iter') for r in done])
        rows.append(row)
    return rows


def _fmt(mean_std, digits=3):
    mean, std = mean_std
    if mean is None:
        return 'n/a'
    return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def environment() -> dict:
    import mmdet
    import mmengine
    import torch
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, text=True,
                                capture_output=True).stdout.strip() or None
    except OSError:
        commit = None
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                commit=commit, python=platform.python_version(), torch=torch.__version__,
                mmengine=mmengine.__version__, mmdet=mmdet.__version__,
                machine=f'{platform.machine()}, {os.cpu_count()} CPUs, '
                        f'{torch.get_num_threads()} torch threads')


def write_report(rows, runs, out_dir, command, figures) -> str:
    env = environment()
    os.makedirs(out_dir, exist_ok=True)
    lines = [
        '# Loss comparison on the embedded shapes dataset',
        '',
        'Tiny from-scratch RetinaNet (`configs/_base_/retinanet_r18-tiny_fpn_shapes.py`), the same '
        'data and schedule for every loss; COCO bbox metrics on the val split. Mean ± sample '
        'standard deviation over the seeds; time per iteration: median wall time between training '
        f'iterations (data loading included; the first {WARMUP_ITERS} of each epoch left out when '
        'the epoch is longer).',
        '',
        '| losses | config | seeds | bbox mAP | mAP@0.5 | mAP@0.75 | s / iteration |',
        '|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        seeds = ', '.join(map(str, row['seeds'])) or 'none'
        if row['failed_seeds']:
            seeds += ' (failed: ' + ', '.join(map(str, row['failed_seeds'])) + ')'
        if row['pending_seeds']:
            seeds += ' (not run yet: ' + ', '.join(map(str, row['pending_seeds'])) + ')'
        lines.append(f'| {row["label"]} | `{row["config"]}` | {seeds} | '
                     f'{_fmt(row["coco/bbox_mAP"])} | {_fmt(row["coco/bbox_mAP_50"])} | '
                     f'{_fmt(row["coco/bbox_mAP_75"])} | {_fmt(row["sec_per_iter"], 2)} |')
    lines += ['', 'Per run:', '', '| losses | seed | bbox mAP | mAP@0.5 | mAP@0.75 | '
              's / iteration | iterations | minutes |', '|---|---|---|---|---|---|---|---|']
    for r in runs:
        if r.get('failed') or r.get('pending'):
            lines.append(f'| {r["label"]} | {r["seed"]} | '
                         f'{"failed" if r.get("failed") else "not run yet"} | | | | | |')
            continue
        m = r['metrics']
        spi = r.get('sec_per_iter')
        resumed = r.get('resumed_from_iteration') or 0
        iterations = f'{r["iterations"]}' + (f' (resumed at {resumed})' if resumed else '')
        lines.append(f'| {r["label"]} | {r["seed"]} | {m.get("coco/bbox_mAP", float("nan")):.3f} | '
                     f'{m.get("coco/bbox_mAP_50", float("nan")):.3f} | '
                     f'{m.get("coco/bbox_mAP_75", float("nan")):.3f} | '
                     f'{"n/a" if spi is None else f"{spi:.2f}"} | {iterations} | '
                     f'{r["minutes"]:.1f} |')
    if figures:
        lines += ['', 'Gradient-norm figures (`python -m mmdet_ghm.plot`, first seed of each '
                  'GHM run):', '']
        lines += [f'- `{osp.relpath(p, out_dir)}`' for p in figures]
    lines += ['', 'Made with (from the repository root):', '', '```bash', command, '```', '',
              f'{env["date"]}, commit {env["commit"]}; Python {env["python"]}, '
              f'torch {env["torch"]}, '
              f'mmengine {env["mmengine"]}, mmdet {env["mmdet"]}; {env["machine"]}.', '']
    md = osp.join(out_dir, 'loss_comparison.md')
    with open(md, 'w') as f:
        f.write('\n'.join(lines))
    with open(osp.join(out_dir, 'loss_comparison.json'), 'w') as f:
        json.dump(dict(command=command, environment=env, summary=rows,
                       runs=[{k: v for k, v in r.items() if k != 'run_dir'} for r in runs]),
                  f, indent=2)
    return md


def plot_figures(runs, out_dir, log=print) -> list:
    """``mmdet_ghm.plot`` figures of the first successful seed of every GHM config."""
    from mmdet_ghm.plot import plot_run

    written, seen = [], set()
    for r in runs:
        if not r['ghm'] or r.get('failed') or r.get('pending') or r['stem'] in seen:
            continue
        seen.add(r['stem'])
        fig_dir = osp.join(out_dir, 'figures', f'{r["stem"]}_seed{r["seed"]}')
        if r.get('restored_from'):  # its records stayed on the machine that trained it
            if osp.isdir(fig_dir):
                written += sorted(osp.join(fig_dir, f) for f in os.listdir(fig_dir))
            continue
        try:
            written += plot_run(r['run_dir'], fig_dir)
        except (FileNotFoundError, ValueError) as e:
            log(f'[compare] no figures for {r["label"]}, seed {r["seed"]}: {e}')
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS,
                        help='configs to compare (default: the four of the module docstring)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2],
                        help='randomness.seed of the runs (default: 0 1 2)')
    parser.add_argument('--work-dir', default='work_dirs/compare_losses',
                        help='where the runs go, one dir per config and seed')
    parser.add_argument('--out-dir', default='docs/loss_comparison',
                        help='where the table and the figures go')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides applied to every run (mmdet tools/train.py syntax)')
    parser.add_argument('--density-interval', type=int, default=25,
                        help='GHMDensityHook interval in the GHM runs (0: no hook, no figures)')
    parser.add_argument('--rerun', action='store_true',
                        help='train again even where a result exists')
    parser.add_argument('--max-runs', type=int, default=None, metavar='N',
                        help='train at most N runs in this call; the others are reported as '
                             'not run yet (default: all)')
    parser.add_argument('--train-one', metavar='CONFIG', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.train_one:
        train_one(args.train_one)
        return 0

    from mmengine.config import DictAction
    options = {}
    if args.cfg_options:
        holder = argparse.Namespace()
        DictAction(option_strings=[], dest='opts')(None, holder, args.cfg_options)
        options = holder.opts
    configs = [osp.abspath(c if osp.isabs(c) or osp.exists(c) else osp.join(REPO, c))
               for c in args.configs]
    missing = [c for c in configs if not osp.isfile(c)]
    if missing:
        parser.error(f'config file(s) not found: {", ".join(missing)}')
    command = shlex.join(['python', 'tools/compare_losses.py']
                         + list(sys.argv[1:] if argv is None else argv))

    if args.max_runs is not None and args.max_runs < 0:
        parser.error(f'--max-runs must be >= 0, got {args.max_runs}')
    report = osp.join(args.out_dir, 'loss_comparison.json')
    report_runs = json.load(open(report))['runs'] if osp.isfile(report) else []
    runs = run_all(configs, args.seeds, args.work_dir, options, args.density_interval, args.rerun,
                   max_runs=args.max_runs, report_runs=report_runs)
    figures = plot_figures(runs, args.out_dir)
    md = write_report(summarize(runs), runs, args.out_dir, command, figures)
    print(open(md).read())
    print(f'[compare] table: {md}')
    return 1 if any(r.get('failed') for r in runs) else 0


if __name__ == '__main__':
    sys.exit(main())
