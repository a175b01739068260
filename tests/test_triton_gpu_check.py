"""benchmarks/gpu_check.py's own logic, run here as its --dry-run: CPU tensors under the Triton
interpreter, tiny shapes. Its figures mean nothing; it proves the check imports, runs every step's
code path (parity against mmdet's classes included, and the candidate forward of
benchmarks/triton_candidates.py against the shipped one) and writes its results."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run_writes_a_passing_report(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'gpu_check.py'),
                             '--dry-run', '--out', str(tmp_path)], capture_output=True,
                            text=True, env=env, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / 'results.json').read_text())
    assert report['verdict'] == 'PASS' and report['dry_run']
    by_step = {}
    for check in report['checks']:
        by_step.setdefault(check['step'], []).append(check)
    assert set(by_step) == {'env', 'sigmoid', 'parity', 'syncs', 'bigoffs', 'timing'}
    parity = by_step['parity']
    assert len(parity) >= 8 and all(c['status'] == 'PASS' for c in parity)
    assert any('vs mmdet' in c['detail'] and 'EMA state equal' in c['detail'] for c in parity)
    assert by_step['bigoffs'][0]['status'] == 'PASS'
    candidate = [c for c in by_step['timing'] if 'candidate two-read' in c['name']]
    assert len(candidate) == 2 and all(c['status'] == 'INFO' for c in candidate)
    assert all(c['detail'].startswith('counts equal') and 'EMA state equal' in c['detail']
               for c in candidate)
    methods = {row['method'] for row in report['timing']}
    assert {'GHM-C mmdet_ghm (Triton)', 'BCE-with-logits (eager)', 'GHM-C mmdet 3.3.0',
            'GHM-C mmdet_ghm (Triton), trained-detector g'} <= methods
    host = {row['method']: row.get('host_ms') for row in report['timing']}
    assert host['GHM-C mmdet_ghm (Triton)'] > 0 and host['GHM-R mmdet_ghm (Triton)'] > 0
    markdown = (tmp_path / 'results.md').read_text()
    assert 'DRY RUN' in markdown and '| size | method |' in markdown
