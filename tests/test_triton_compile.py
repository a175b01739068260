"""The Triton kernels compiled for an H100/H200 (sm_90) with the installed triton and its bundled
ptxas, no GPU needed: what the GPU will run, checked where the interpreter cannot look.

- every kernel compiles for the real backend (the interpreter runs Python, not Triton's typing),
  the candidate kernels the GPU check times (benchmarks/triton_candidates.py) too;
- GHM-C's sigmoid is the CUDA math library's expf (its ``fma.rm`` rounding step) and an IEEE
  division (``div.rn.f32``), not ``tl.sigmoid``'s approximations;
- GHM-R's kernels contain no FMA at all (``d * d + mu^2`` rounds twice, as in PyTorch), and use
  IEEE ``sqrt.rn`` and ``div.rn``;
- no 64-bit integer division per element, no atomics.

The compilation runs in a child process: under TRITON_INTERPRET=1 (tests/conftest.py) the kernels
are interpreter objects.
"""
import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _compile_all() -> dict:
    """PTX of each kernel variant for sm_90 (run in the child process)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mmdet_ghm.ops import triton_kernels as K
    from mmdet_ghm.ops import triton_passes as P
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    import triton_candidates as TC  # what the GPU check times beside the shipped kernels

    def ptx(kernel, types, constexprs, **options):
        signature = {name: 'constexpr' if name in constexprs else types[name]
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs),
                                  target=GPUTarget('cuda', 90, 32),
                                  options=dict(options, enable_reflect_ftz=False))
        return compiled.asm['ptx']

    common = dict(pred_ptr='*fp16', label_ptr='*i64', target_ptr='*fp32', weight_ptr='*fp32',
                  edges_ptr='*fp32', counts_part_ptr='*i32', sums_part_ptr='*fp32', numel='i64',
                  num_programs='i32', slot_weight_ptr='*fp32', out_ptr='*fp32',
                  loss_weight='fp64', grad_out_ptr='*fp32', divisor_ptr='*fp32',
                  grad_ptr='*fp16', mu='fp64', mu_sq='fp64', counts_ptr='*i64',
                  sums_ptr='*fp64', x_ptr='*fp32', s_ptr='*fp32', acc_ptr='*fp32',
                  updates_ptr='*fp32', tot_ptr='*fp32', poison_ptr='*u8', loss_ptr='*fp32',
                  skip_ptr='*u8', momentum='fp64', keep='fp64')
    cls = dict(C=80, BINS=30, LABELS=True, WEIGHT=K.WEIGHT_ROW, CDT=tl.float32, EXACT=True,
               BLOCK=P.CLS_BLOCK)
    cls_options = dict(num_warps=P.CLS_WARPS, enable_fp_fusion=P.CLS_FP_FUSION)
    reg = dict(BINS=10, HAS_WEIGHT=True, CDT=tl.float32, BLOCK=P.REG_BLOCK)
    reg_options = dict(num_warps=P.REG_WARPS, enable_fp_fusion=P.REG_FP_FUSION)

    cls_hist = dict(cls, BLOCK=P.HIST_BLOCK, BLOCKS=P.HIST_BLOCKS, SLOTS_P2=32)
    hist_options = dict(num_warps=P.HIST_WARPS, enable_fp_fusion=P.CLS_FP_FUSION)
    weigh = dict(BINS=30, SLOTS_P2=32, TOT_FROM_COUNTS=True, HAS_POISON=True, EMA=True,
                 REDUCTION=1, CDT=tl.float32)
    return {
        'ghmc_histogram': ptx(K.ghmc_histogram_kernel, common, cls_hist, **hist_options),
        # unsigned labels: the kernels' range check (label < 0, label > C) compiles for them
        'ghmc_histogram_u8_labels': ptx(K.ghmc_histogram_kernel, dict(common, label_ptr='*u8'),
                                        cls_hist, **hist_options),
        'ghmc_histogram_soft': ptx(K.ghmc_histogram_kernel, common,
                                   dict(cls_hist, C=1, LABELS=False, WEIGHT=K.WEIGHT_ELEMENT),
                                   **hist_options),
        'ghmc_grad': ptx(K.ghmc_grad_kernel, common, dict(cls, ELEMENTWISE=True), **cls_options),
        'ghmc_elementwise_loss': ptx(K.ghmc_elementwise_loss_kernel, common, cls, **cls_options),
        'ghmr_histogram': ptx(K.ghmr_histogram_kernel, common,
                              dict(reg, BLOCK=P.HIST_BLOCK, BLOCKS=P.HIST_BLOCKS, SLOTS_P2=16),
                              num_warps=P.HIST_WARPS, enable_fp_fusion=P.REG_FP_FUSION),
        'ghmr_grad': ptx(K.ghmr_grad_kernel, common, dict(reg, ELEMENTWISE=True), **reg_options),
        # half-precision weights (_positive widens them first): compile for the GPU too
        'ghmc_grad_bf16_weight': ptx(K.ghmc_grad_kernel, dict(common, weight_ptr='*bf16'),
                                     dict(cls, ELEMENTWISE=True), **cls_options),
        'ghmr_grad_fp16_weight': ptx(K.ghmr_grad_kernel, dict(common, weight_ptr='*fp16'),
                                     dict(reg, ELEMENTWISE=True), **reg_options),
        'ghmr_elementwise_loss': ptx(K.ghmr_elementwise_loss_kernel, common, reg, **reg_options),
        'ghmc_histogram_f64': ptx(K.ghmc_histogram_kernel, dict(
            common, pred_ptr='*fp64', sums_part_ptr='*fp64'), dict(cls_hist, CDT=tl.float64),
            **hist_options),
        'weigh': ptx(K.ghm_weigh_kernel, common, weigh, num_warps=P.WEIGH_WARPS,
                     enable_fp_fusion=False),
        'sigmoid': ptx(K.sigmoid_kernel, common, dict(EXACT=True, BLOCK=1024), num_warps=4,
                       enable_fp_fusion=P.CLS_FP_FUSION),
        'reduce': ptx(K.slot_partials_reduce_kernel, common, dict(RBLOCK=P.REDUCE_BLOCK),
                      num_warps=P.REDUCE_WARPS, enable_fp_fusion=False),
        'candidate_count': ptx(TC.ghmc_count_kernel, common, dict(
            cls_hist, BLOCK=TC.COUNT_CONFIGS[-1][0], BLOCKS=TC.COUNT_CONFIGS[-1][1]),
            num_warps=TC.COUNT_CONFIGS[-1][2], enable_fp_fusion=P.CLS_FP_FUSION),
        'candidate_weighted_loss': ptx(TC.ghmc_weighted_loss_kernel, dict(
            common, partials_ptr='*fp32'), dict(cls, BLOCKS=TC.LOSS_CONFIGS[0][1]), **cls_options),
        'candidate_finalize': ptx(TC.loss_finalize_kernel, dict(
            common, partials_ptr='*fp32', loss_ptr='*fp32', skip_ptr='*u8'),
            dict(CDT=tl.float32, RBLOCK=P.REDUCE_BLOCK), num_warps=P.REDUCE_WARPS,
            enable_fp_fusion=False),
    }


@pytest.fixture(scope='module')
def ptx():
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                            timeout=600, cwd=REPO)
    if result.returncode == 3:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm90(ptx):
    assert all('.target sm_90' in text for text in ptx.values())


def test_ghmc_sigmoid_is_cuda_expf_and_ieee_division(ptx):
    for name in ('ghmc_histogram', 'ghmc_histogram_soft', 'ghmc_grad', 'ghmc_elementwise_loss',
                 'sigmoid', 'candidate_count', 'candidate_weighted_loss'):
        assert re.search(r'fma\.rm\.f32', ptx[name]), name  # libdevice expf's rounding step
        assert re.search(r'div\.rn\.f32', ptx[name]), name
    assert re.search(r'div\.rn\.f64', ptx['ghmc_histogram_f64'])


def test_ghmr_kernels_have_no_fma_and_ieee_sqrt_and_division(ptx):
    for name in ('ghmr_histogram', 'ghmr_grad', 'ghmr_elementwise_loss'):
        assert not re.search(r'\bfma\.', ptx[name]), name
        assert re.search(r'sqrt\.rn\.f32', ptx[name]) and re.search(r'div\.rn\.f32', ptx[name])


def test_weighing_kernel_rounds_as_pytorchs_ops(ptx):
    """The EMA ``acc * m + c`` rounds twice (two PyTorch kernels in mmdet): no FMA; the
    reciprocal and the division by the number of non-empty bins are IEEE."""
    assert not re.search(r'\bfma\.', ptx['weigh'])
    assert re.search(r'div\.rn\.f32', ptx['weigh'])


def test_no_64bit_division_and_no_atomics(ptx):
    for name, text in ptx.items():
        assert not re.search(r'\b(div|rem)\.[su]64', text), name
        assert not re.search(r'\b(atom|red)\.global', text), name


if __name__ == '__main__':
    os.environ.pop('TRITON_INTERPRET', None)
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f'no NVIDIA backend in this triton: {e}')
        sys.exit(3)
    print(json.dumps(_compile_all()))
