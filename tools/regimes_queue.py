"""Issue 9's experiment queue (docs/regimes.md): train the cells of configs/regimes/queue.txt in
order through tools/compare_losses.py, one run at a time, and commit each finished run's table.

    setsid nohup nice -n 19 .venv/bin/python tools/regimes_queue.py \\
        >> work_dirs/regimes/queue.log 2>&1 &

Before every run it checks out the branch's latest commit into ``work_dirs/regimes/snapshot`` (a
private clone) and runs that code and that queue file, so an uncommitted edit in the worktree never
reaches a run, and a cell committed later joins the queue. Each call of compare_losses trains one
run (``--max-runs 1``, seed by seed); its table and JSON in ``docs/experiments/<experiment>/`` are
then committed (that path only). Runs live in ``work_dirs/regimes/<config>/seed<S>/``; a finished
run is reused, so starting the queue again resumes it. A failed run is skipped until the next start.
It ends when every cell is done (while cells wait for configs that are not committed yet, it checks
again every few minutes).

Queue file lines: ``<experiment> <seeds, comma-separated> <config> [<config> ...]``, or
``run <command ...>`` (run once per queue start when reached, in the snapshot; ``python`` is this
interpreter); ``#`` comments.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUEUE_FILE = 'configs/regimes/queue.txt'


def log(msg):
    print(time.strftime('%H:%M:%S'), msg, flush=True)


def git(*args, cwd=REPO, check=True):
    return subprocess.run(['git', *args], cwd=cwd, check=check, text=True,
                          capture_output=True).stdout.strip()


def refresh_snapshot(snapshot):
    """The branch's HEAD commit, checked out into a private clone; returns the commit."""
    commit = git('rev-parse', 'HEAD')
    if not osp.isdir(osp.join(snapshot, '.git')):
        os.makedirs(osp.dirname(snapshot), exist_ok=True)
        git('clone', '-q', '--no-checkout', REPO, snapshot)
    git('fetch', '-q', REPO, commit, cwd=snapshot)
    git('checkout', '-q', '--detach', '--force', commit, cwd=snapshot)
    return commit


def read_queue(path):
    steps = []
    for line in open(path):
        line = line.split('#', 1)[0].split()
        if line and line[0] == 'run':
            steps.append(dict(run=line[1:]))
        elif line:
            steps.append(dict(experiment=line[0],
                              seeds=[int(s) for s in line[1].split(',')], configs=line[2:]))
    return steps


def load_compare(snapshot):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'compare_losses_snapshot', osp.join(snapshot, 'tools', 'compare_losses.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pending(step, snapshot, work_dir, skip, density_interval):
    """(config, seed) of the step without an up-to-date result, seed by seed (a run of the
    experiment's committed table counts as finished: compare_losses restores it)."""
    compare = load_compare(snapshot)
    report = osp.join(REPO, 'docs', 'experiments', step['experiment'], 'loss_comparison.json')
    report_runs = json.load(open(report))['runs'] if osp.isfile(report) else []
    runs = compare.run_all([osp.join(snapshot, c) for c in step['configs']], step['seeds'],
                           work_dir, {}, density_interval, False, log=lambda *a: None,
                           max_runs=0, report_runs=report_runs)
    # run_all lists them config by config; compare_losses trains them seed by seed
    stems = [osp.splitext(osp.basename(c))[0] for c in step['configs']]
    todo = [(r['stem'], r['seed']) for r in runs
            if r.get('pending') and (r['stem'], r['seed']) not in skip]
    return sorted(todo, key=lambda run: (step['seeds'].index(run[1]), stems.index(run[0])))


def commit(paths, message):
    for attempt in range(20):
        try:
            git('add', '-A', '--', *paths)
            if not git('status', '--porcelain', '--', *paths):
                return
            git('commit', '-q', '-m', message, '--only', '--', *paths)
            return
        except subprocess.CalledProcessError as e:  # index.lock of a concurrent commit
            log(f'commit attempt {attempt + 1} failed: {e.stderr.strip()[:200]}')
            time.sleep(5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'regimes'))
    parser.add_argument('--density-interval', type=int, default=25)
    parser.add_argument('--wait', type=int, default=300,
                        help='seconds between checks while cells wait for their configs')
    args = parser.parse_args(argv)
    work_dir = osp.abspath(args.work_dir)
    snapshot = osp.join(work_dir, 'snapshot')
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, 'queue.pid'), 'w') as f:  # `kill -- -PID` stops it and its run
        f.write(f'{os.getpid()}\n')
    log(f'queue started, pid {os.getpid()} (process group {os.getpgrp()})')
    refresh_snapshot(snapshot)
    # Reading configs imports their custom_imports (mmdet_ghm): the snapshot's, not another copy.
    sys.path.insert(0, snapshot)
    skip, commands_run = set(), set()
    while True:
        commit_id = refresh_snapshot(snapshot)
        steps = read_queue(osp.join(snapshot, QUEUE_FILE))
        todo, waiting = None, []
        for step in steps:
            if 'run' in step:
                key = ' '.join(step['run'])
                if key not in commands_run:
                    todo = (step, None)
                    break
                continue
            missing = [c for c in step['configs'] if not osp.isfile(osp.join(snapshot, c))]
            if missing:
                waiting.append(step['experiment'])
                continue
            runs = pending(step, snapshot, work_dir, skip, args.density_interval)
            if runs:
                todo = (step, runs[0])
                break
        if todo is None:
            if not waiting:
                log('queue done: every cell has its runs')
                return 0
            log(f'nothing to run; waiting for configs of {sorted(set(waiting))}')
            time.sleep(args.wait)
            continue
        if 'run' in todo[0]:
            command = [sys.executable if a == 'python' else a for a in todo[0]['run']]
            log(f'run {" ".join(todo[0]["run"])} (commit {commit_id[:7]})')
            proc = subprocess.run(command, cwd=snapshot, text=True, capture_output=True,
                                  env=dict(os.environ, PYTHONPATH=snapshot))
            log(f'exit {proc.returncode}:\n' + (proc.stdout + proc.stderr)[-2000:])
            commands_run.add(' '.join(todo[0]['run']))
            continue
        step, (stem, seed) = todo
        out_dir = osp.join(REPO, 'docs', 'experiments', step['experiment'])
        log(f'{step["experiment"]}: training {stem} seed {seed} (commit {commit_id[:7]})')
        cmd = [sys.executable, osp.join(snapshot, 'tools', 'compare_losses.py'),
               '--configs', *step['configs'], '--seeds', *map(str, step['seeds']),
               '--work-dir', work_dir, '--out-dir', out_dir, '--max-runs', '1',
               '--density-interval', str(args.density_interval)]
        env = dict(os.environ, PYTHONPATH=snapshot)
        proc = subprocess.run(cmd, cwd=snapshot, env=env, text=True, capture_output=True)
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        log('\n'.join(line for line in tail if line.startswith('[compare]')))
        report = osp.join(out_dir, 'loss_comparison.json')
        runs = json.load(open(report))['runs'] if osp.isfile(report) else []
        this = [r for r in runs if r['stem'] == stem and r['seed'] == seed]
        if not this or this[0].get('failed') or this[0].get('pending'):
            log(f'FAILED {stem} seed {seed} (exit {proc.returncode}); skipped until the next '
                f'start:\n' + '\n'.join(tail[-20:]))
            skip.add((stem, seed))
            continue
        metrics = this[0]['metrics']
        commit([osp.relpath(out_dir, REPO)],
               f'regimes {step["experiment"]}: {this[0]["label"]} ({stem}), seed {seed}: '
               f'bbox mAP {metrics.get("coco/bbox_mAP", float("nan")):.3f}, mAP@0.5 '
               f'{metrics.get("coco/bbox_mAP_50", float("nan")):.3f}')
        log(f'committed {step["experiment"]}/{stem} seed {seed}')


if __name__ == '__main__':
    sys.exit(main())
