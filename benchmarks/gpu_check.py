#!/usr/bin/env python3
"""The GPU check of mmdet_ghm's Triton path: one command, one results table (docs/gpu.md).

    bash benchmarks/gpu_check.sh                      # on a CUDA machine, from the repo root
    python benchmarks/gpu_check.py --out DIR [--steps a,b] [--budget S] [--quick]
    python benchmarks/gpu_check.py --dry-run --out DIR  # CPU, Triton interpreter, tiny shapes

Steps (each check PASS / FAIL / WARN / INFO / SKIP, written to DIR/results.json and the markdown
table DIR/results.md after every check, so a run cut short still leaves what it had):

- env: versions, device, nominal peak memory bandwidth, measured copy bandwidth.
- sigmoid: the kernels' sigmoid against torch.sigmoid on the same GPU, bit for bit (uniform and
  near-edge logits), with FP fusion on and off: which one is PyTorch's.
- parity: the Triton path against PyTorch's own ops on the same device (slot counts bit for bit,
  loss sums) and against mmdet's GHMC/GHMR there (loss, gradient, EMA state over 3 calls):
  50k x 80, odd shapes, empty, fp32/fp16/bf16, bins 1-64, inputs on the bin edges.
- syncs: every call path (GHM-C/GHM-R, with/without weights, mean/sum/none) under
  torch.cuda.set_sync_debug_mode('error'); kernels launched per call.
- bigoffs: one fp16 GHM-C call on more than 2**31 elements (int64 offsets).
- timing: fwd+bwd at 50k x 80 and 1M x 80 against a fused focal loss (torch.compile), BCE and
  mmdet's GHMC; effective bandwidth against the device's peak; each pass alone; the candidate
  two-read forward (benchmarks/triton_candidates.py) against the shipped one; all of it again on
  logits whose g is distributed as a trained detector's.

The dry run exercises the same code on CPU tensors under TRITON_INTERPRET=1 with tiny shapes (CI
runs it: tests/test_triton_gpu_check.py); its figures say nothing about a GPU.
"""
import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
import traceback
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ('env', 'sigmoid', 'parity', 'syncs', 'bigoffs', 'timing')
# share of the budget each step may use (what does not fit is reported SKIP); compiling the
# kernel variants is most of the parity step's time on a fresh machine
STEP_SHARE = dict(env=0.05, sigmoid=0.08, parity=0.37, syncs=0.12, bigoffs=0.1, timing=0.28)
# nominal peak memory bandwidth (vendor datasheets), bytes/s, by a substring of the device name
PEAK_BANDWIDTH = (('H200', 4.8e12), ('H100 PCIe', 2.0e12), ('H100', 3.35e12),
                  ('A100-SXM4-80GB', 2.039e12), ('A100', 1.555e12), ('L40S', 0.864e12))
# bins where floor(g * bins) disagrees with mmdet's float32 edges (tests/test_triton_parity.py)
EDGE_BINS = (11, 29, 41, 61)


class Report:
    """Checks of the run, rewritten to results.json / results.md after each one."""

    def __init__(self, out: str, deadline: float, dry_run: bool):
        self.out, self.deadline, self.dry_run = out, deadline, dry_run
        self.step_deadline = deadline
        self.checks, self.info, self.timing = [], {}, []
        os.makedirs(out, exist_ok=True)

    def left(self) -> float:
        return min(self.deadline, self.step_deadline) - time.time()

    def add(self, step, name, status, detail='', **data):
        self.checks.append(dict(step=step, name=name, status=status, detail=str(detail), **data))
        print(f'[{status:4}] {step}/{name}: {detail}', flush=True)
        self.write()

    def guard(self, step, name, fn, *args, min_left=10.0):
        """Run one check; an exception is its FAIL, not the end of the run."""
        if self.left() < min_left:
            self.add(step, name, 'SKIP', 'time budget spent')
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            tb = ' | '.join(traceback.format_exc(limit=-3).strip().splitlines()[-6:])
            self.add(step, name, 'FAIL', f'{type(e).__name__}: {str(e)[:300]} || {tb[-600:]}')
            return None

    def write(self):
        verdict = 'FAIL' if any(c['status'] == 'FAIL' for c in self.checks) else 'PASS'
        data = dict(verdict=verdict, dry_run=self.dry_run, info=self.info, checks=self.checks,
                    timing=self.timing)
        with open(os.path.join(self.out, 'results.json.tmp'), 'w') as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(os.path.join(self.out, 'results.json.tmp'),
                   os.path.join(self.out, 'results.json'))
        with open(os.path.join(self.out, 'results.md'), 'w') as f:
            f.write(self.markdown(verdict))

    def markdown(self, verdict) -> str:
        lines = [f'# mmdet_ghm GPU check: {verdict}' + (' (DRY RUN on CPU: no GPU figures)'
                                                      if self.dry_run else ''), '']
        lines += [f'- {k}: {v}' for k, v in self.info.items()] + ['']
        if self.timing:
            lines += ['| size | method | fwd+bwd ms | host ms | vs fused focal | eff. bandwidth '
                      '| % of peak |', '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
            for r in self.timing:
                host = '' if r.get('host_ms') is None else f"{r['host_ms']:.3f}"
                lines.append(f"| {r['size']} | {r['method']} | {r['ms']:.3f} | {host} | "
                             f"{r['vs_focal']} | {r['tbs']} | {r['pct_peak']} |")
            lines.append('')
        lines += ['| step | check | status | detail |', '| --- | --- | --- | --- |']
        for c in self.checks:
            detail = c['detail'].replace('|', '/').replace('\n', ' ')[:400]
            lines.append(f"| {c['step']} | {c['name']} | {c['status']} | {detail} |")
        return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------
# loading mmdet_ghm, with mmdet when it imports, else its ops alone

def stub_mmcv_ext() -> bool:
    """mmcv-lite has no compiled mmcv._ext, which `import mmdet.models` reaches through mmcv.ops;
    GHM uses none of mmcv's ops: a stand-in whose every op raises. True if installed."""
    try:
        importlib.import_module('mmcv._ext')
        return False
    except Exception:  # noqa: BLE001
        pass
    ext = types.ModuleType('mmcv._ext')

    def __getattr__(name):
        if name.startswith('__'):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f'mmcv-lite has no compiled op {name}')
        return missing

    ext.__getattr__ = __getattr__
    sys.modules['mmcv._ext'] = ext
    return True


def load_ghm(report: Report):
    """Namespace: density, function, triton_passes (K: kernels), mmdet_ghm_loss (mmdet's
    ghm_loss module or None)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    ns = types.SimpleNamespace(mmdet_ghm_loss=None, losses=None)
    try:
        try:
            import mmcv  # noqa: F401
            report.info['mmcv._ext stand-in'] = stub_mmcv_ext()
        except ImportError:
            pass
        import mmdet_ghm  # noqa: F401  (registers ours in mmdet's registry)
        ns.mmdet_ghm_loss = importlib.import_module('mmdet.models.losses.ghm_loss')
        ns.losses = importlib.import_module('mmdet_ghm.losses')
        report.info['mmdet'] = 'imported: parity against mmdet\'s GHMC/GHMR runs'
    except Exception as e:  # noqa: BLE001
        report.info['mmdet'] = (f'not importable ({type(e).__name__}: {str(e)[:120]}): mmdet '
                                'parity skipped, PyTorch-ops parity still runs')
        for key in [k for k in sys.modules if k == 'mmdet_ghm' or k.startswith('mmdet_ghm.')]:
            del sys.modules[key]
        pkg = types.ModuleType('mmdet_ghm')  # the ops without mmdet_ghm/__init__ (mmdet)
        pkg.__path__ = [os.path.join(REPO, 'mmdet_ghm')]
        sys.modules['mmdet_ghm'] = pkg
    ns.density = importlib.import_module('mmdet_ghm.density')
    ns.function = importlib.import_module('mmdet_ghm.ops.function')
    ns.tp = importlib.import_module('mmdet_ghm.ops.triton_passes')
    ns.K = importlib.import_module('mmdet_ghm.ops.triton_kernels')
    return ns


# ------------------------------------------------------------------------------------------------
# inputs and references (pure PyTorch on the device: what mmdet's classes compute there)

def mmdet_edges(torch, bins, last_edge, device):
    edges = torch.arange(bins + 1).float() / bins
    edges[-1] = last_edge
    return edges.to(device)


def ref_slots(torch, g, edges, valid):
    """mmdet's test edges[i] <= g < edges[i + 1] as slots; 0 where not valid."""
    slots = torch.bucketize(g, edges.to(g.dtype), right=True)
    return slots * valid


def cls_case(torch, n, c, mode, dtype, device, seed):
    """GHM-C inputs: RetinaNet-like logits, a few hard ones and saturated ones."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen) * 2.5 - 3.0
    if n and c:
        hard = torch.rand(n, c, generator=gen) < 0.03
        x = torch.where(hard, torch.randn(n, c, generator=gen) * 8, x)
        x[:, 0] = torch.where(torch.rand(n, generator=gen) < 0.1, 30.0, x[:, 0])
    labels = target = weight = None
    if mode.startswith('labels'):
        labels = torch.where(torch.rand(n, generator=gen) < 0.3,
                             torch.randint(0, max(c, 1), (n,), generator=gen),
                             torch.full((n,), c))
        if mode == 'labels_row':
            weight = (torch.rand(n, generator=gen) > 0.1).float()
    else:
        target = torch.rand(n, c, generator=gen).masked_fill(torch.rand(n, c, generator=gen) < .5, 0)
        if mode == 'soft_elem':
            weight = torch.rand(n, c, generator=gen) - 0.1
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return x.to(dtype).to(device), mv(labels), mv(target), mv(weight)


def trained_case(torch, n, c, device, seed):
    """GHM-C inputs (logits, labels, row weights) whose g is distributed as a trained
    detector's: 91% of the elements in the lowest of 30 bins (88% drawn there, plus the
    tail's share below 1/30), the rest exponentially rarer towards g = 1 (a tenfold drop every 0.23; our RetinaNet after training,
    docs/experiments/e3_density_scope, as the paper's Fig. 1). 1% positive anchors, 5%
    ignored."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(n, generator=gen) < 0.01,
                         torch.randint(0, c, (n,), generator=gen), torch.full((n,), c))
    weight = (torch.rand(n, generator=gen) > 0.05).float()
    g = torch.where(torch.rand(n, c, generator=gen) < 0.88, torch.rand(n, c, generator=gen) / 30,
                    torch.empty(n, c).exponential_(10.0, generator=gen)).clamp(1e-7, 0.999)
    positive = labels[:, None] == torch.arange(c)[None, :]
    s = torch.where(positive, 1 - g, g).double()
    x = (torch.log(s) - torch.log1p(-s)).float()
    return x.to(device), labels.to(device), weight.to(device)


def dense_target(torch, F, labels, target, n, c, device):
    if labels is None:
        return target.float()
    return F.one_hot(labels, c + 1)[:, :c].float() if n else torch.zeros(0, c, device=device)


def valid_mask(torch, weight, shape, device):
    if weight is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return (weight > 0)[:, None].expand(shape) if weight.dim() == 1 else weight > 0


def cls_edge_case(torch, bins, device):
    """Soft targets on, below and above every edge with logits -100 / +100 (sigmoid 0 / 1)."""
    e = torch.arange(bins + 1, dtype=torch.float32) / bins
    e[-1] = 1.0 + 1e-6
    t = torch.cat([e, torch.nextafter(e, torch.tensor(-2.0)), torch.nextafter(e, torch.tensor(2.0)),
                   torch.tensor([1.5, -0.25])])
    target = torch.stack([t, t, 1.0 - t], dim=1)
    pred = torch.tensor([-100.0, 100.0, 100.0]).expand_as(target).contiguous()
    return pred.to(device), target.to(device)


def near_edge_logits(torch, bins, n, device, seed):
    """Logits whose sigmoid is within a few ulps of an interior edge k / bins."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(1, max(bins, 2), (n,), generator=gen).double() / bins
    x = torch.log(k) - torch.log1p(-k)
    return (x * (1 + (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 4e-7)).float().to(device)


def reg_edge_diffs(torch, bins, mu, device, scan=64):
    e = torch.arange(1, bins, dtype=torch.float64) / bins
    d0 = (mu * e / torch.sqrt(1 - e * e)).float()
    d = (d0.view(torch.int32)[:, None] + torch.arange(-scan, scan + 1, dtype=torch.int32))
    d = d.view(torch.float32).reshape(-1)
    return torch.cat([d, -d]).to(device)


def run_fb(torch, fn, pred, grad_out=None):
    p = pred.detach().clone().requires_grad_()
    loss = fn(p)
    if grad_out is None:
        grad_out = torch.ones((), device=pred.device) if loss.dim() == 0 else torch.linspace(
            0.5, 1.5, loss.numel(), device=pred.device).view(loss.shape)
    loss.backward(grad_out)
    return loss.detach(), p.grad


def close(torch, a, b, rtol, atol=0.0):
    """(ok, text) for tensors a ~ b (float64 on CPU; NaN equal to NaN)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return False, f'shape {tuple(a.shape)} vs {tuple(b.shape)}'
    if a.numel() == 0:
        return True, 'empty'
    both_nan = a.isnan() & b.isnan()
    err = (a - b).abs().masked_fill(both_nan, 0)
    tol = b.abs() * rtol + atol
    bad = int((err > tol).sum())
    return bad == 0, f'max|d| {err.max().item():.3g} (max|ref| {b.abs().max().item():.3g}), {bad} beyond tol'


# ------------------------------------------------------------------------------------------------
# steps

def step_env(R, G, torch, dev):
    import triton
    R.info['python / torch / triton'] = (f'{sys.version.split()[0]} / {torch.__version__} '
                                         f'(CUDA {torch.version.cuda}) / {triton.__version__}')
    R.info['TRITON_INTERPRET'] = os.environ.get('TRITON_INTERPRET')
    if dev == 'cpu':
        R.add('env', 'device', 'INFO', 'dry run: CPU tensors, Triton interpreter')
        return
    p = torch.cuda.get_device_properties(0)
    R.info['device'] = f'{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs'
    peak = next((bw for key, bw in PEAK_BANDWIDTH if key in p.name), None)
    R.info['peak bandwidth (nominal)'] = 'unknown' if peak is None else f'{peak / 1e12:.2f} TB/s'
    R.peak = peak
    x = torch.empty(2 ** 29 // 4, device=dev)  # 512 MiB, well past L2
    y = torch.empty_like(x)
    ms = cuda_time(torch, lambda: y.copy_(x), reps=20)
    copy_bw = 2 * x.numel() * 4 / (ms * 1e-3)
    R.info['copy bandwidth (measured, read+write)'] = f'{copy_bw / 1e12:.2f} TB/s'
    R.add('env', 'interpreter_off', 'PASS' if 'TRITON_INTERPRET' not in os.environ else 'FAIL',
          f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} (must be unset on a GPU)")


def step_sigmoid(R, G, torch, dev):
    """The kernels' sigmoid vs torch.sigmoid on this device, bit for bit."""
    import triton
    exact = not G.tp.interpreting()
    n = 1 << 12 if R.dry_run else 1 << 24
    gen = torch.Generator().manual_seed(0)
    xs = {'uniform': ((torch.rand(n, generator=gen) - 0.5) * 60).to(dev),
          'near_edges': torch.cat([near_edge_logits(torch, bins, n // 8, dev, bins)
                                   for bins in (10, 11, 29, 30, 41, 64)])}
    shipped = {}
    for fusion in (True, False):
        for name, x in xs.items():
            s = torch.empty_like(x)
            G.K.sigmoid_kernel[(triton.cdiv(x.numel(), 1024),)](
                x, s, x.numel(), EXACT=exact, BLOCK=1024, enable_fp_fusion=fusion,
                enable_reflect_ftz=False)
            differ = int((s != torch.sigmoid(x)).sum())
            shipped.setdefault(fusion, 0)
            shipped[fusion] += differ
            R.add('sigmoid', f'{name}_fusion_{"on" if fusion else "off"}',
                  'INFO', f'{differ} of {x.numel()} differ from torch.sigmoid on {dev}')
    ours = G.tp.CLS_FP_FUSION
    status = 'PASS' if shipped[ours] == 0 else ('WARN' if R.dry_run else 'FAIL')
    R.add('sigmoid', 'shipped_setting_is_pytorchs', status,
          f'CLS_FP_FUSION={ours}: {shipped[ours]} mismatches; the other setting: '
          f'{shipped[not ours]}' + (' (interpreter: numpy exp, not CUDA expf)' if R.dry_run
                                    else ''))


def _cls_parity(R, G, torch, F, dev, name, n, c, mode, dtype, bins, calls=3):
    """Counts vs PyTorch's ops; loss/grad/EMA vs mmdet's GHMC (or the PyTorch reference)."""
    density = G.density.GradientDensity(bins, 0.75, 1.0 + 1e-6).to(dev)
    mm = None
    if G.mmdet_ghm_loss is not None:
        mm = G.mmdet_ghm_loss.GHMC(bins=bins, momentum=0.75, loss_weight=0.5).to(dev)
    edges = mmdet_edges(torch, bins, 1.0 + 1e-6, dev)
    msgs, ok = [], True
    for call in range(calls):
        x, labels, target, weight = cls_case(torch, n, c, mode, dtype, dev, seed=call * 7 + bins)
        t = dense_target(torch, F, labels, target, n, c, dev)
        valid = valid_mask(torch, weight, (n, c), dev)
        g = (torch.sigmoid(x.float()) - t).abs()
        slots = ref_slots(torch, g, edges, valid)
        counts, sums = G.tp.ClassificationTriton(x, labels, target, weight,
                                                  density.binning).histogram()
        ref_counts = torch.bincount(slots.view(-1), minlength=bins + 2)
        if not torch.equal(counts, ref_counts):
            ok = False
            moved = int((counts - ref_counts).abs().sum()) // 2
            msgs.append(f'call {call}: COUNTS differ from torch ops ({moved} elements moved)')
        bce = F.binary_cross_entropy_with_logits(x.float(), t, reduction='none').double()
        ref_sums = torch.zeros(bins + 2, dtype=torch.float64, device=dev).index_add_(
            0, slots.view(-1), bce.view(-1))
        good, text = close(torch, sums[1:-1], ref_sums[1:-1], 1e-5, 1e-6)
        ok &= good
        if not good:
            msgs.append(f'call {call}: loss sums {text}')
        if mm is not None:
            w = weight
            if w is None:
                w = torch.ones(n, device=dev) if labels is not None else torch.ones(n, c, device=dev)
            ours = run_fb(torch, lambda p: G.function.ghmc_loss(
                p, labels, target, weight, density, 0.5, backend='triton'), x)
            theirs = run_fb(torch, lambda p: mm(p.float(), labels if labels is not None else target,
                                                w), x)
            good_l, text_l = close(torch, ours[0], theirs[0], 2e-5, 1e-7)
            rel = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 2e-5)
            good_g, text_g = close(torch, ours[1].float(), theirs[1].float(), rel,
                                   1e-6 * float(theirs[1].abs().max()) if theirs[1].numel() else 0)
            same_state = torch.equal(density.acc_sum, mm.acc_sum)
            ok &= good_l and good_g and same_state
            if not (good_l and good_g and same_state) or call == calls - 1:
                msgs.append(f'call {call} vs mmdet: loss {text_l}; grad {text_g}; EMA state '
                            f'{"equal" if same_state else "DIFFERS"}')
    R.add('parity', name, 'PASS' if ok else 'FAIL', ' || '.join(msgs) or 'counts and sums equal')


def _edge_parity(R, G, torch, F, dev, bins):
    """Inputs on the bin edges: counts bit for bit vs PyTorch's ops on this device."""
    lines, ok = [], True
    x, t = cls_edge_case(torch, bins, dev)
    counts, _ = G.tp.ClassificationTriton(x, None, t, None, G.density.GradientDensity(
        bins, 0.0).to(dev).binning).histogram()
    edges = mmdet_edges(torch, bins, 1.0 + 1e-6, dev)
    ref = torch.bincount(ref_slots(torch, (torch.sigmoid(x) - t).abs(), edges, True).view(-1),
                         minlength=bins + 2)
    ok &= torch.equal(counts, ref)
    lines.append(f'soft targets on edges: {"equal" if torch.equal(counts, ref) else "DIFFER"}')
    n = 1024 if R.dry_run else 1 << 20
    x = near_edge_logits(torch, bins, n, dev, seed=bins).view(-1, 1)
    labels = torch.full((n,), 1, device=dev)  # background: g = sigmoid(x)
    counts, _ = G.tp.ClassificationTriton(x, labels, None, None, G.density.GradientDensity(
        bins, 0.0).to(dev).binning).histogram()
    ref = torch.bincount(ref_slots(torch, torch.sigmoid(x), edges, True).view(-1),
                         minlength=bins + 2)
    moved = int((counts - ref).abs().sum()) // 2
    ok &= moved == 0 or R.dry_run  # the interpreter's exp is numpy's, not CUDA's expf
    lines.append(f'{n} logits with sigmoid near an edge: {moved} moved'
                 + (' (interpreter exp: informative)' if R.dry_run and moved else ''))
    d = reg_edge_diffs(torch, bins, 0.02, dev)
    counts, _ = G.tp.RegressionTriton(d, torch.zeros_like(d), None, G.density.GradientDensity(
        bins, 0.0, 1e3).to(dev).binning, 0.02).histogram()
    g = (d / torch.sqrt(0.02 * 0.02 + d * d)).abs()
    ref = torch.bincount(ref_slots(torch, g, mmdet_edges(torch, bins, 1e3, dev), True),
                         minlength=bins + 2)
    moved = int((counts - ref).abs().sum()) // 2
    ok &= moved == 0 or R.dry_run  # CPU torch.sqrt is not IEEE; the interpreter's is
    lines.append(f'GHM-R d near edges: {moved} of {d.numel()} moved'
                 + (' (CPU sqrt differs: informative)' if R.dry_run and moved else ''))
    R.add('parity', f'edges_bins{bins}', 'PASS' if ok else 'FAIL', '; '.join(lines))


def _reg_parity(R, G, torch, dev, name, shape, weighted, dtype, bins):
    mu = 0.02
    density = G.density.GradientDensity(bins, 0.7, 1e3).to(dev)
    mm = None
    if G.mmdet_ghm_loss is not None:
        mm = G.mmdet_ghm_loss.GHMR(mu=mu, bins=bins, momentum=0.7, loss_weight=10.0).to(dev)
    msgs, ok = [], True
    for call in range(3):
        gen = torch.Generator().manual_seed(call)
        pred = (torch.randn(shape, generator=gen) * 0.05).to(dtype).to(dev)
        target = (torch.randn(shape, generator=gen) * 0.05).to(dev)
        weight = ((torch.rand(shape, generator=gen) > 0.25).float() * 2).to(dev) if weighted else None
        d = pred.float() - target
        g = (d / torch.sqrt(mu * mu + d * d)).abs()
        valid = valid_mask(torch, weight, shape, dev)
        slots = ref_slots(torch, g, mmdet_edges(torch, bins, 1e3, dev), valid)
        counts, _ = G.tp.RegressionTriton(pred, target, weight, density.binning, mu).histogram()
        same = torch.equal(counts, torch.bincount(slots.view(-1), minlength=bins + 2))
        ok &= same or (R.dry_run and dev == 'cpu')
        if not same:
            msgs.append(f'call {call}: counts differ from torch ops')
        if mm is not None:
            w = torch.ones(shape, device=dev) if weight is None else weight
            ours = run_fb(torch, lambda p: G.function.ghmr_loss(p, target, weight, density, mu,
                                                                10.0, backend='triton'), pred)
            theirs = run_fb(torch, lambda p: mm(p.float(), target, w), pred)
            good_l, text_l = close(torch, ours[0], theirs[0], 2e-5, 1e-7)
            good_g, text_g = close(torch, ours[1].float(), theirs[1].float(),
                                   2e-3 if dtype != torch.float32 else 2e-5, 1e-7)
            same_state = torch.equal(density.acc_sum, mm.acc_sum)
            ok &= good_l and good_g and (same_state or (R.dry_run and dev == 'cpu'))
            if not (good_l and good_g and same_state) or call == 2:
                msgs.append(f'call {call} vs mmdet: loss {text_l}; grad {text_g}; EMA state '
                            f'{"equal" if same_state else "DIFFERS"}')
    R.add('parity', name, 'PASS' if ok else 'FAIL', ' || '.join(msgs) or 'counts equal')


def step_parity(R, G, torch, dev):
    import torch.nn.functional as F
    big, odd = ((64, 9), (37, 13)) if R.dry_run else ((50000, 80), (4097, 3))
    rn = 64 if R.dry_run else 50000
    dt = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
    cases = [('labels_row', 'fp32', 30, big), ('labels_none', 'fp32', 30, big),
             ('soft_elem', 'fp32', 30, big), ('labels_row', 'fp16', 30, big),
             ('labels_row', 'bf16', 30, big), ('labels_row', 'fp32', 30, odd),
             ('soft_elem', 'fp32', 11, odd), ('labels_row', 'fp32', 30, (0, 80))]
    cases += [('labels_row', 'fp32', bins, odd) for bins in (1, 2, 10, 29, 41, 64)]
    edge_bins = (30,) + EDGE_BINS
    reg_cases = (((rn, 4), True, 'fp32', 10), ((rn, 4), False, 'fp32', 10),
                 ((rn, 4), True, 'fp16', 10), ((3, 5, 2), True, 'fp32', 64),
                 ((0, 4), True, 'fp32', 10))
    if R.dry_run:  # the same code paths, fewer variants (the interpreter is slow)
        cases = cases[2:4] + cases[7:8] + cases[8:9] + cases[-1:]
        edge_bins, reg_cases = (11,), reg_cases[1:4]
    for bins in edge_bins:  # first: the bitwise claims
        R.guard('parity', f'edges_bins{bins}', _edge_parity, R, G, torch, F, dev, bins)
    for mode, dtype, bins, (n, c) in cases:
        name = f'ghmc_{mode}_{dtype}_{n}x{c}_bins{bins}'
        R.guard('parity', name, _cls_parity, R, G, torch, F, dev, name, n, c, mode, dt[dtype], bins)
    for shape, weighted, dtype, bins in reg_cases:
        name = f'ghmr_{"w" if weighted else "now"}_{dtype}_{"x".join(map(str, shape))}_bins{bins}'
        R.guard('parity', name, _reg_parity, R, G, torch, dev, name, shape, weighted, dt[dtype],
                bins)


def step_syncs(R, G, torch, dev):
    if dev == 'cpu':
        R.add('syncs', 'sync_debug_mode', 'SKIP', 'no CUDA in a dry run')
        return
    n, c = 50000, 80
    x, labels, _, row_w = cls_case(torch, n, c, 'labels_row', torch.float32, dev, 1)
    soft, elem_w = torch.rand(n, c, device=dev), (torch.rand(n, c, device=dev) > 0.1).float()
    rp, rt = torch.randn(n, 4, device=dev) * 0.05, torch.randn(n, 4, device=dev) * 0.05
    rw = (torch.rand(n, 4, device=dev) > 0.3).float()
    cd = G.density.GradientDensity(30, 0.75).to(dev)
    rd = G.density.GradientDensity(10, 0.7, 1e3).to(dev)
    paths = {}
    for red in ('mean', 'sum', 'none'):
        paths[f'ghmc_labels_rowweight_{red}'] = (lambda p, red=red: G.function.ghmc_loss(
            p, labels, None, row_w, cd, reduction=red), x)
        paths[f'ghmc_labels_noweight_{red}'] = (lambda p, red=red: G.function.ghmc_loss(
            p, labels, None, None, cd, reduction=red), x)
        paths[f'ghmc_soft_elemweight_{red}'] = (lambda p, red=red: G.function.ghmc_loss(
            p, None, soft, elem_w, cd, reduction=red), x)
        paths[f'ghmr_weight_{red}'] = (lambda p, red=red: G.function.ghmr_loss(
            p, rt, rw, rd, reduction=red), rp)
        paths[f'ghmr_noweight_{red}'] = (lambda p, red=red: G.function.ghmr_loss(
            p, rt, None, rd, reduction=red), rp)

    if G.losses is not None:  # the public modules too (their input checks must not sync)
        ghmc = G.losses.GHMC(bins=30, momentum=0.75).to(dev)
        ghmr = G.losses.GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0).to(dev)
        for red in ('mean', 'sum', 'none'):
            paths[f'GHMC_module_labels_rowweight_{red}'] = (
                lambda p, red=red: ghmc(p, labels, row_w, reduction_override=red), x)
            paths[f'GHMC_module_soft_noweight_{red}'] = (
                lambda p, red=red: ghmc(p, soft, reduction_override=red), x)
            paths[f'GHMR_module_weight_{red}'] = (
                lambda p, red=red: ghmr(p, rt, rw, reduction_override=red), rp)
            paths[f'GHMR_module_noweight_{red}'] = (
                lambda p, red=red: ghmr(p, rt, reduction_override=red), rp)

    def one(name, fn, p0):
        run_fb(torch, fn, p0)  # compile first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            run_fb(torch, fn, p0)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        torch.cuda.synchronize()
        R.add('syncs', name, 'PASS', 'forward + backward under set_sync_debug_mode("error")')
    for name, (fn, p0) in paths.items():
        R.guard('syncs', name, one, name, fn, p0)

    def bad_labels(name, fn, density):
        """A label outside [0, C] (C + 1 on one row, -1 on another): the kernels reject the
        call, NaN loss and state kept, without a sync."""
        bad = labels.clone()
        bad[0], bad[bad.numel() // 2] = c + 1, -1
        state = density.acc_sum.clone()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            loss, _ = run_fb(torch, lambda p: fn(p, bad), x)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        kept = torch.equal(density.acc_sum, state)
        R.add('syncs', f'bad_labels_{name}', 'PASS' if bool(torch.isnan(loss).all()) and kept
              else 'FAIL', f'labels C + 1 and -1: loss {float(loss):.3g} (NaN expected), state '
              f'{"kept" if kept else "CHANGED"}, no sync')
    R.guard('syncs', 'bad_labels_functional', bad_labels, 'functional',
            lambda p, y: G.function.ghmc_loss(p, y, None, row_w, cd), cd)
    if G.losses is not None:
        R.guard('syncs', 'bad_labels_module', bad_labels, 'module',
                lambda p, y: ghmc(p, y, row_w), ghmc.density)

    def launches(name):
        from torch.profiler import ProfilerActivity, profile
        fn, p0 = paths[name]
        run_fb(torch, fn, p0)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run_fb(torch, fn, p0)
            torch.cuda.synchronize()
        kernels = [e.name for e in prof.events() if e.device_type.name == 'CUDA']
        triton_k = [k for k in kernels if 'kernel' in k and ('ghm' in k or 'slot' in k)]
        R.add('syncs', f'launches_{name}', 'INFO',
              f'{len(kernels)} GPU kernels/copies per fwd+bwd ({len(triton_k)} Triton: '
              f'{sorted(set(triton_k))}; the others: {sorted(set(kernels) - set(triton_k))})')
    for name in ('ghmc_labels_rowweight_mean', 'GHMC_module_labels_rowweight_mean',
                 'ghmr_weight_mean'):
        if name in paths:
            R.guard('syncs', f'launches_{name}', launches, name)


def step_bigoffs(R, G, torch, dev):
    """One fp16 GHM-C call on more than 2**31 elements: counts vs chunked PyTorch ops, and the
    gradient on rows on both sides of element 2**31 and at the end (one factor per slot)."""
    import torch.nn.functional as F
    c, bins = 80, 30
    numel_min = 4096 if R.dry_run else 2 ** 31 + 2 ** 22
    m = numel_min // c + 1
    if dev != 'cpu' and torch.cuda.mem_get_info()[0] < 24 * 2 ** 30:
        R.add('bigoffs', 'fp16_past_2^31', 'SKIP', 'needs ~20 GiB of free GPU memory')
        return
    gen = torch.Generator(device=dev).manual_seed(0)
    pred = torch.randint(0, 64, (m, c), device=dev, generator=gen, dtype=torch.uint8)
    pred = pred.to(torch.float16).mul_(0.25).sub_(10.0)  # logits -10 .. 5.75
    labels = torch.where(torch.rand(m, device=dev, generator=gen) < 0.05,
                         torch.randint(0, c, (m,), device=dev, generator=gen),
                         torch.full((m,), c, device=dev))
    labels[-1000:] = 3  # positives past element 2**31
    lw = (torch.rand(m, device=dev, generator=gen) > 0.1).float()
    density = G.density.GradientDensity(bins, 0.0).to(dev)

    def slots_of(r0, r1):
        t = F.one_hot(labels[r0:r1], c + 1)[:, :c].float()
        s = torch.sigmoid(pred[r0:r1].float())
        return s - t, ref_slots(torch, (s - t).abs(), density.edges, (lw[r0:r1] > 0)[:, None])
    counts = torch.zeros(bins + 2, dtype=torch.int64, device=dev)
    rows = max(1, (1 << 26) // c)
    for r0 in range(0, m, rows):
        counts += torch.bincount(slots_of(r0, r0 + rows)[1].view(-1), minlength=bins + 2)
    ours, _ = G.tp.ClassificationTriton(pred, labels, None, lw, density.binning).histogram()
    p = pred.detach().requires_grad_()
    loss = G.function.ghmc_loss(p, labels, None, lw, density)
    loss.backward(torch.full((), 2.0 ** 30, device=dev))  # fp16 gradients above underflow
    lines, ok = [], torch.equal(ours, counts) and bool(torch.isfinite(loss))
    middle = (2 ** 31) // c if not R.dry_run else m // 2
    for name, r0 in (('head', 0), ('across 2^31', middle - 16), ('tail', m - 32)):
        diff, slots = slots_of(r0, r0 + 32)
        factor = p.grad[r0:r0 + 32].float() / diff
        # one factor per slot (0 for ignored rows): the kernel read each element's own slot
        spread = 0.0
        for k in slots.unique().tolist():
            f = factor[(slots == k) & (diff.abs() > 1e-3)]
            if f.numel() and k > 0:
                spread = max(spread, float((f.max() - f.min()) / f.abs().max()))
        zero_ok = bool((p.grad[r0:r0 + 32][slots == 0] == 0).all())
        ok &= spread < 2e-2 and zero_ok
        lines.append(f'{name}: factor spread within slots {spread:.1e}, ignored zero {zero_ok}')
    R.add('bigoffs', 'fp16_past_2^31' if not R.dry_run else 'fp16_small_same_logic',
          'PASS' if ok else 'FAIL',
          f'{m * c} elements: counts {"equal" if torch.equal(ours, counts) else "DIFFER"}, loss '
          f'{float(loss.detach()):.6g}; ' + '; '.join(lines))


def cuda_time(torch, fn, reps=30, warmup=3):
    """Median time of fn() in ms (CUDA events on a GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def host_time(torch, fn, reps=30):
    """Median CPU time in ms to issue fn() without waiting for the GPU (the launches queue up):
    where it reaches the CUDA-event time, the call is bound by the host, not the kernels."""
    for _ in range(3):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return statistics.median(times)


def focal(torch, F, p, labels, lw, avg):
    c = p.shape[1]
    t = (labels[:, None] == torch.arange(c, device=p.device)[None, :]).to(p.dtype)
    prob = torch.sigmoid(p)
    ce = F.binary_cross_entropy_with_logits(p, t, reduction='none')
    p_t = prob * t + (1 - prob) * (1 - t)
    loss = ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))
    return (loss * lw[:, None]).sum() / avg


def _kernel_timing(R, G, torch, dev, size, x, labels, lw, reps):
    """Each GHM-C pass alone over a block-size sweep, and how many slots a block holds."""
    n, c = x.shape
    density = G.density.GradientDensity(30, 0.75).to(dev)
    weight = torch.rand(32, device=dev)
    go, divisor = torch.tensor(1.0, device=dev), torch.tensor(float(n), device=dev)
    nbytes = n * c * x.element_size() + n * 12
    lines = []
    saved = (G.tp.HIST_BLOCK, G.tp.HIST_BLOCKS, G.tp.HIST_WARPS, G.tp.CLS_BLOCK, G.tp.CLS_WARPS)
    try:
        hist_configs = ((256, 8, 1),) if R.dry_run else (
            (256, 1, 1), (256, 8, 1), (256, 32, 1), (512, 4, 2), (2048, 1, 8))
        for block, blocks, warps in hist_configs:
            G.tp.HIST_BLOCK, G.tp.HIST_BLOCKS, G.tp.HIST_WARPS = block, blocks, warps
            backend = G.tp.ClassificationTriton(x, labels, None, lw, density.binning)
            ms = cuda_time(torch, backend.histogram, reps)
            lines.append(f'histogram+reduce {blocks} x {block} elements/{warps} warps: '
                         f'{ms * 1e3:.0f} us ({nbytes / (ms * 1e-3) / 1e12:.2f} TB/s)')
        grad_configs = ((2048, 8),) if R.dry_run else ((1024, 4), (2048, 8), (4096, 8))
        for block, warps in grad_configs:
            G.tp.CLS_BLOCK, G.tp.CLS_WARPS = block, warps
            backend = G.tp.ClassificationTriton(x, labels, None, lw, density.binning)
            ms = cuda_time(torch, lambda: backend.grad(weight, go, divisor, 1.0, False), reps)
            lines.append(f'grad block {block}/{warps} warps: {ms * 1e3:.0f} us '
                         f'({(nbytes + n * c * x.element_size()) / (ms * 1e-3) / 1e12:.2f} TB/s)')
    finally:
        (G.tp.HIST_BLOCK, G.tp.HIST_BLOCKS, G.tp.HIST_WARPS, G.tp.CLS_BLOCK,
         G.tp.CLS_WARPS) = saved
    backend = G.tp.ClassificationTriton(x, labels, None, lw, density.binning)
    counts, sums = backend.histogram()
    call = types.SimpleNamespace(density=density, reduction='mean', tot=None, poison=None,
                                 loss_weight=1.0, can_raise=False)
    ms = cuda_time(torch, lambda: backend.weigh(counts, sums, call), reps)
    lines.append(f'weighing (one kernel): {ms * 1e3:.0f} us')
    import torch.nn.functional as F
    t = F.one_hot(labels, c + 1)[:, :c].float()
    slots = ref_slots(torch, (torch.sigmoid(x.float()) - t).abs(), density.edges,
                      (lw > 0)[:, None]).view(-1)
    block = min(G.tp.HIST_BLOCK, slots.numel())
    rows = slots[:slots.numel() // block * block].view(-1, block).sort(dim=1).values
    present = ((rows[:, 1:] != rows[:, :-1]).sum(1) + 1).float()
    lines.append(f'slots present per {block}-element block: mean {present.mean().item():.1f}, '
                 f'max {int(present.max().item())}')
    R.add('timing', f'{size} kernels', 'INFO', '; '.join(lines))


def _candidate_timing(R, G, torch, dev, size, x, labels, lw, reps):
    """The candidate two-read forward (benchmarks/triton_candidates.py) against the shipped
    forward on the same inputs: counts, loss and EMA state of the first call compared, then the
    forward's kernels timed (histogram or count pass + reduction, weighing, weighted loss)."""
    if os.path.join(REPO, 'benchmarks') not in sys.path:
        sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    import triton_candidates as TC

    def call(density):
        return types.SimpleNamespace(density=density, reduction='mean', tot=None, poison=None,
                                     loss_weight=1.0, can_raise=False)
    shipped_density, candidate_density = (G.density.GradientDensity(30, 0.75).to(dev)
                                          for _ in range(2))
    shipped = G.tp.ClassificationTriton(x, labels, None, lw, shipped_density.binning)
    candidate = G.tp.ClassificationTriton(x, labels, None, lw, candidate_density.binning)
    counts, sums = shipped.histogram()
    loss = shipped.weigh(counts, sums, call(shipped_density)).loss
    candidate_counts, candidate_loss = TC.two_read_forward(candidate, call(candidate_density))
    loss_ok, loss_text = close(torch, candidate_loss, loss, 1e-5)
    counts_ok = torch.equal(candidate_counts, counts)
    state_ok = torch.equal(candidate_density.acc_sum, shipped_density.acc_sum)
    lines = [f'counts {"equal" if counts_ok else "DIFFER"}, loss {loss_text}, EMA state '
             f'{"equal" if state_ok else "DIFFERS"}']
    fwd_ms = cuda_time(torch, lambda: shipped.weigh(*shipped.histogram(), call(shipped_density)),
                       reps)
    lines.append(f'shipped forward (histogram, reduction, weighing) {fwd_ms * 1e3:.0f} us')
    weighing = candidate.weigh(*TC.count_pass(candidate), call(candidate_density))
    for config in TC.LOSS_CONFIGS[:1] if R.dry_run else TC.LOSS_CONFIGS:
        loss_ms = cuda_time(torch, lambda: TC.weighted_loss(candidate, weighing, 1.0, config),
                            reps)
        lines.append(f'candidate weighted loss {config[1]} x {config[0]}/{config[2]} warps + '
                     f'finalize {loss_ms * 1e3:.0f} us')
    for config in TC.COUNT_CONFIGS[:1] if R.dry_run else TC.COUNT_CONFIGS:
        count_ms = cuda_time(torch, lambda: TC.count_pass(candidate, config), reps)
        total_ms = cuda_time(torch, lambda: TC.two_read_forward(
            candidate, call(candidate_density), config), reps)
        lines.append(f'candidate count {config[1]} x {config[0]}/{config[2]} warps: count + '
                     f'reduction {count_ms * 1e3:.0f} us, forward {total_ms * 1e3:.0f} us '
                     f'({total_ms / fwd_ms:.2f}x shipped)')
    R.add('timing', f'{size} candidate two-read forward',
          'INFO' if counts_ok and loss_ok and state_ok else 'WARN', '; '.join(lines))


def ghmc_bytes(n, c):
    """Bytes a GHM-C fwd+bwd must move: logits read twice, grad written, labels + weights."""
    return 3 * n * c * 4 + 2 * n * 12


def add_ghmc_timing(R, size, method, ms, focal_ms, nbytes, host_ms=None):
    """One row of the timing table, with its effective bandwidth."""
    tbs = nbytes / (ms * 1e-3) / 1e12
    peak = getattr(R, 'peak', None)
    R.timing.append(dict(size=size, method=method, ms=ms, host_ms=host_ms,
                         vs_focal='' if focal_ms is None else f'{ms / focal_ms:.2f}x',
                         tbs=f'{tbs:.2f} TB/s',
                         pct_peak='' if not peak else f'{100 * tbs * 1e12 / peak:.0f}%'))
    R.write()


def step_timing(R, G, torch, dev):
    import torch.nn.functional as F
    sizes = ((64, 80),) if R.dry_run else ((50000, 80), (1000000, 80))
    reps = 1 if R.dry_run else 30
    peak = getattr(R, 'peak', None)
    fused_focal = (lambda *a: focal(torch, F, *a)) if dev == 'cpu' else torch.compile(
        lambda *a: focal(torch, F, *a), dynamic=False)
    for n, c in sizes:
        size = f'{n // 1000}k x {c}' if n >= 1000 else f'{n} x {c}'
        x, labels, _, lw = cls_case(torch, n, c, 'labels_row', torch.float32, dev, 11)
        onehot = F.one_hot(labels, c + 1)[:, :c].float()
        ghmc_density = G.density.GradientDensity(30, 0.75).to(dev)
        methods = [('GHM-C mmdet_ghm (Triton)', lambda p: G.function.ghmc_loss(
                        p, labels, None, lw, ghmc_density, backend='triton')),
                   ('focal (torch.compile)' if dev != 'cpu' else 'focal (eager)',
                    lambda p: fused_focal(p, labels, lw, float(max(1, n // 100)))),
                   ('BCE-with-logits (eager)', lambda p: F.binary_cross_entropy_with_logits(
                       p, onehot, lw[:, None].expand(n, c)))]
        if G.losses is not None:  # what a config gets: the module, with its input checks
            module = G.losses.GHMC(bins=30, momentum=0.75).to(dev)
            methods.append(('GHM-C mmdet_ghm GHMC module', lambda p: module(p, labels, lw)))
        if G.mmdet_ghm_loss is not None:
            mm = G.mmdet_ghm_loss.GHMC(bins=30, momentum=0.75).to(dev)
            methods.append(("GHM-C mmdet 3.3.0", lambda p: mm(p, labels, lw)))
        results, hosts = {}, {}
        for name, fn in methods:
            def fb(fn=fn):
                p = x.detach().requires_grad_()
                fn(p).backward()

            def timed(name=name, fb=fb):
                calls = 5 if 'mmdet 3' in name else reps
                results[name] = cuda_time(torch, fb, reps=calls)
                hosts[name] = host_time(torch, fb, reps=calls)
            R.guard('timing', f'{size} {name}', timed, min_left=20)
        focal_ms = next((v for k, v in results.items() if k.startswith('focal')), None)
        nbytes = ghmc_bytes(n, c)
        for name, ms in results.items():
            add_ghmc_timing(R, size, name, ms, focal_ms, nbytes, hosts.get(name))
        ours = results.get('GHM-C mmdet_ghm (Triton)')
        theirs = results.get('GHM-C mmdet 3.3.0')
        if ours and focal_ms and not R.dry_run:
            status = 'PASS' if ours <= 1.2 * focal_ms else 'WARN'
            R.add('timing', f'{size} target_vs_focal', status,
                  f'{ours / focal_ms:.2f}x the fused focal loss (target <= 1.2x)')
        if ours and theirs and not R.dry_run:
            status = 'PASS' if theirs >= 30 * ours else 'WARN'
            R.add('timing', f'{size} target_vs_mmdet', status,
                  f"{theirs / ours:.1f}x faster than mmdet's GHMC (target >= 30x)")
        R.guard('timing', f'{size} kernels', _kernel_timing, R, G, torch, dev, size, x, labels,
                lw, reps, min_left=30)
        R.guard('timing', f'{size} candidate', _candidate_timing, R, G, torch, dev, size, x,
                labels, lw, reps, min_left=30)
        R.guard('timing', f'{size} trained g', _trained_timing, R, G, torch, dev, size, n, c,
                reps, focal_ms, min_left=30)
        if ours and peak and n >= 10 ** 6:
            pct = 100 * nbytes / (ours * 1e-3) / peak
            R.add('timing', f'{size} target_bandwidth', 'PASS' if pct >= 50 else 'WARN',
                  f'{pct:.0f}% of the nominal peak bandwidth (target >= 50%)')
    R.guard('timing', 'ghmr', _ghmr_timing, R, G, torch, dev, reps, min_left=20)


def _trained_timing(R, G, torch, dev, size, n, c, reps, focal_ms):
    """GHM-C fwd+bwd, its kernels and the candidate forward on logits whose g is distributed
    as a trained detector's (:func:`trained_case`): fewer slots a block than the spread
    benchmark logits, so a cheaper histogram pass."""
    x, labels, lw = trained_case(torch, n, c, dev, 13)
    density = G.density.GradientDensity(30, 0.75).to(dev)

    def fb():
        p = x.detach().requires_grad_()
        G.function.ghmc_loss(p, labels, None, lw, density, backend='triton').backward()
    add_ghmc_timing(R, size, 'GHM-C mmdet_ghm (Triton), trained-detector g',
                    cuda_time(torch, fb, reps), focal_ms, ghmc_bytes(n, c))
    _kernel_timing(R, G, torch, dev, f'{size}, trained g', x, labels, lw, reps)
    _candidate_timing(R, G, torch, dev, f'{size}, trained g', x, labels, lw, reps)


def _ghmr_timing(R, G, torch, dev, reps):
    """GHM-R fwd+bwd (box deltas, N x 4, 75% valid) against smooth L1 and mmdet's GHMR."""
    import torch.nn.functional as F
    n = 64 if R.dry_run else 200000
    gen = torch.Generator().manual_seed(5)
    pred, target = (torch.randn(n, 4, generator=gen) * 0.05).to(dev), \
        (torch.randn(n, 4, generator=gen) * 0.05).to(dev)
    w = (torch.rand(n, 4, generator=gen) > 0.25).float().to(dev)
    density = G.density.GradientDensity(10, 0.7, 1e3).to(dev)
    methods = [('GHM-R mmdet_ghm (Triton)', lambda p: G.function.ghmr_loss(
                   p, target, w, density, 0.02, backend='triton')),
               ('smooth L1 (eager)', lambda p: (F.smooth_l1_loss(
                   p, target, reduction='none', beta=1 / 9) * w).sum() / w.sum())]
    if G.mmdet_ghm_loss is not None:
        mm = G.mmdet_ghm_loss.GHMR(mu=0.02, bins=10, momentum=0.7).to(dev)
        methods.append(('GHM-R mmdet 3.3.0', lambda p: mm(p, target, w)))
    results, hosts = {}, {}
    for name, fn in methods:
        def fb(fn=fn):
            p = pred.detach().requires_grad_()
            fn(p).backward()
        results[name] = cuda_time(torch, fb, reps=reps)
        hosts[name] = host_time(torch, fb, reps=reps)
    base = results['smooth L1 (eager)']
    size = f'{n // 1000}k x 4' if n >= 1000 else f'{n} x 4'
    for name, ms in results.items():
        R.timing.append(dict(size=size, method=name, ms=ms, host_ms=hosts[name],
                             vs_focal=f'{ms / base:.2f}x SL1', tbs='', pct_peak=''))
    R.write()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=os.environ.get('OUT', '/tmp/ghm_gpu_check'))
    parser.add_argument('--steps', default=','.join(STEPS))
    parser.add_argument('--budget', type=float, default=450.0, help='seconds for the whole run')
    parser.add_argument('--dry-run', action='store_true',
                        help='CPU tensors under the Triton interpreter, tiny shapes')
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ['TRITON_INTERPRET'] = '1'  # before the first @triton.jit is defined
    R = Report(args.out, time.time() + args.budget, args.dry_run)
    import torch
    dev = 'cpu' if args.dry_run else 'cuda'
    if dev == 'cuda' and not torch.cuda.is_available():
        R.add('env', 'cuda', 'FAIL', 'torch.cuda.is_available() is False (use --dry-run on CPU)')
        return 1
    G = load_ghm(R)
    steps = dict(env=step_env, sigmoid=step_sigmoid, parity=step_parity, syncs=step_syncs,
                 bigoffs=step_bigoffs, timing=step_timing)
    names = args.steps.split(',')
    for i, name in enumerate(names):
        # this step's share, plus what earlier steps left unused
        shares = sum(STEP_SHARE[n] for n in names[i:])
        R.step_deadline = time.time() + (R.deadline - time.time()) * STEP_SHARE[name] / shares
        R.guard(name, 'step', steps[name], R, G, torch, dev, min_left=1)
        if dev == 'cuda':
            torch.cuda.empty_cache()
    R.step_deadline = R.deadline
    R.info['wall time'] = f'{args.budget - R.left():.0f} s'
    R.write()
    print(open(os.path.join(args.out, 'results.md')).read())
    return 1 if any(c['status'] == 'FAIL' for c in R.checks) else 0


if __name__ == '__main__':
    sys.exit(main())
