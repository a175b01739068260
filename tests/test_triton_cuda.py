"""The Triton path on a real CUDA device (skipped where torch.cuda.is_available() is False).

Runs benchmarks/gpu_check.py's sigmoid, parity and syncs steps in a child process without
TRITON_INTERPRET (tests/conftest.py sets it for the interpreter tests): compiled kernels against
PyTorch's CUDA ops and mmdet's classes on the same GPU, bit for bit where the claim is bitwise,
and no host sync in any call path."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def test_triton_on_cuda_matches_pytorch_and_mmdet_and_never_syncs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'gpu_check.py'), '--out',
         str(tmp_path), '--steps', 'env,sigmoid,parity,syncs', '--budget', '500'],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    report = json.loads((tmp_path / 'results.json').read_text())
    failed = [c for c in report['checks'] if c['status'] in ('FAIL', 'SKIP')]
    assert result.returncode == 0 and not failed, json.dumps(failed, indent=1)[:4000]
