"""Side-by-side benchmark: mmdet_ghm's GHMC/GHMR vs mmdet's GHMC/GHMR vs plain losses.

Forward + backward time and the extra peak memory of one forward + backward, at RetinaNet scale:
50k anchors x 80 classes (GHM-C: bins 30, momentum 0.75) and 50k x 4 box deltas (GHM-R: mu 0.02,
bins 10, momentum 0.7). On CPU (2 threads by default) and, where a GPU is present, on CUDA (there
with a fused focal loss as the reference too).

Time: the median over rounds; a round times every method of one kind (GHM-C's and GHM-R's
apart, so that a box loss never follows a 30-80 MiB classification call that its reference did
not follow) on its third call in a row, with Python's garbage collector paused, as timeit does.
The collection between rounds leaves caches and branch predictors cold for a few calls, so each
round starts at the next method: every method follows it equally often.

    python benchmarks/bench_losses.py [--threads 2] [--rounds 30] [--device cpu|cuda|all]

"CPU ms" is the process's CPU time over the same call (all threads; on a shared, oversubscribed
machine it is steadier than the wall time, which then measures the scheduler as much as the code).
Extra peak memory is the peak of live tensor bytes over one call above what was live before it:
on CPU from the profiler's allocation/free events (RSS would measure malloc's arenas and caching
instead), on CUDA torch.cuda.max_memory_allocated. The gradient itself counts for every method.
"""
import argparse
import gc
import statistics
import time

import torch
import torch.nn.functional as F

N_ANCHORS, N_CLASSES = 50_000, 80
WARMUP_CALLS = 2  # before each timed call


def cls_inputs(device, n=N_ANCHORS, c=N_CLASSES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # RetinaNet-like: logits around the prior bias (-4.6), ~1% positives, ~5% ignored anchors
    pred = torch.randn(n, c, generator=gen) * 2.0 - 4.0
    labels = torch.full((n,), c, dtype=torch.int64)
    pos = torch.rand(n, generator=gen) < 0.01
    labels[pos] = torch.randint(0, c, (int(pos.sum()),), generator=gen)
    label_weight = (torch.rand(n, generator=gen) > 0.05).float()
    onehot = torch.zeros(n, c)
    onehot[pos.nonzero().squeeze(1), labels[pos]] = 1.0
    return [t.to(device) for t in (pred, labels, label_weight, onehot)]


def reg_inputs(device, n=N_ANCHORS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, 4, generator=gen) * 0.1
    target = torch.randn(n, 4, generator=gen) * 0.1
    weight = (torch.rand(n, 1, generator=gen) < 0.3).float().expand(n, 4).contiguous()
    return [t.to(device) for t in (pred, target, weight)]


def focal_reference(device):
    """A fused focal loss: mmcv's op where mmcv has its CUDA ops, else torch.compile."""
    try:
        from mmcv.ops import sigmoid_focal_loss
        probe = torch.zeros(2, 3, device=device, requires_grad=True)
        sigmoid_focal_loss(probe, torch.zeros(2, dtype=torch.long, device=device), 2.0, 0.25,
                           None, 'mean').backward()
        return 'focal (mmcv CUDA op)', lambda p, labels: sigmoid_focal_loss(
            p, labels, 2.0, 0.25, None, 'mean')
    except Exception:  # mmcv without CUDA ops (or without ops at all)
        pass

    def focal(p, target):
        prob = p.sigmoid()
        ce = F.binary_cross_entropy_with_logits(p, target, reduction='none')
        p_t = prob * target + (1 - prob) * (1 - target)
        loss = ce * (1 - p_t) ** 2.0
        return ((0.25 * target + 0.75 * (1 - target)) * loss).mean()
    return 'focal (torch.compile)', torch.compile(focal)


def methods(device):
    """name -> (kind, make_fn); make_fn() builds the loss and returns fn(pred) -> loss."""
    from mmdet.models.losses.ghm_loss import GHMC as MMDetGHMC
    from mmdet.models.losses.ghm_loss import GHMR as MMDetGHMR

    from mmdet_ghm import GHMC, GHMR

    def cls(make_loss, use_onehot=False):
        def make():
            pred, labels, lw, onehot = cls_inputs(device)
            loss = make_loss()
            if use_onehot:  # the same label weights, broadcast over the classes
                return pred, lambda p: loss(p, onehot, lw[:, None])
            return pred, lambda p: loss(p, labels, lw)
        return make

    def reg(make_loss):
        def make():
            pred, target, weight = reg_inputs(device)
            loss = make_loss()
            return pred, lambda p: loss(p, target, weight)
        return make

    table = {
        'GHMC mmdet_ghm': ('cls', cls(lambda: GHMC(bins=30, momentum=0.75).to(device))),
        'GHMC mmdet': ('cls', cls(lambda: MMDetGHMC(bins=30, momentum=0.75).to(device))),
        'BCE-with-logits': ('cls', cls(lambda: lambda p, t, w: F.binary_cross_entropy_with_logits(
            p, t, w), True)),
        'GHMR mmdet_ghm': ('reg', reg(lambda: GHMR(mu=0.02, bins=10, momentum=0.7).to(device))),
        'GHMR mmdet': ('reg', reg(lambda: MMDetGHMR(mu=0.02, bins=10, momentum=0.7).to(device))),
        'SmoothL1': ('reg', reg(lambda: lambda p, t, w: F.smooth_l1_loss(p * w, t * w,
                                                                          beta=1.0 / 9))),
    }
    if device == 'cuda':
        name, focal = focal_reference(device)
        uses_labels = 'mmcv' in name

        def make_focal():
            pred, labels, _, onehot = cls_inputs(device)
            return pred, lambda p: focal(p, labels if uses_labels else onehot)
        table[name] = ('cls', make_focal)
    return table


def fwd_bwd(fn, pred):
    p = pred.detach().requires_grad_()
    fn(p).backward()
    return p


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_all(device, rounds):
    table = methods(device)
    built = {name: make() for name, (_, make) in table.items()}
    samples = {name: [] for name in table}
    for name, (pred, fn) in built.items():  # warm-up (and compilation)
        for _ in range(2):
            fwd_bwd(fn, pred)
    sync(device)
    kinds = [{name: b for name, b in built.items() if table[name][0] == kind}
             for kind in ('cls', 'reg')]
    gc.disable()  # as timeit does: a collection of mmdet's many objects lands on whichever call
    try:
        for same_kind in kinds:
            order = list(same_kind.items())
            for r in range(rounds):
                gc.collect()
                start = r % len(order)
                _time_round(order[start:] + order[:start], samples, device)
    finally:
        gc.enable()
    wall = {name: statistics.median(w for w, _ in v) for name, v in samples.items()}
    cpu = {name: statistics.median(c for _, c in v) for name, v in samples.items()}
    spread = {name: (min(w for w, _ in v), max(w for w, _ in v)) for name, v in samples.items()}
    return wall, cpu, spread


def _time_round(methods_in_order, samples, device):
    """One call of every method, interleaved, so machine noise hits every method alike."""
    for name, (pred, fn) in methods_in_order:
        # untimed calls first, so that the allocator's state is this method's own: after mmdet's
        # GHMC (~80 MiB freed) the first large free of the next call can make glibc trim the heap's
        # top, its own buffers with it, and the second call then faults 16 MiB back in
        for _ in range(WARMUP_CALLS):
            fwd_bwd(fn, pred)
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fwd_bwd(fn, pred)
        sync(device)
        samples[name].append(((time.perf_counter() - start) * 1e3,
                              (time.process_time() - cpu_start) * 1e3))


def peak_memory_cuda(name):
    pred, fn = methods('cuda')[name][1]()
    fwd_bwd(fn, pred)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    p = fwd_bwd(fn, pred)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    del p
    return extra / 2**20


def peak_memory_cpu(name):
    """Peak of live bytes from PyTorch's CPU allocator over one call (after a warm-up call),
    from the profiler's raw allocation and free events, in order."""
    from torch.profiler import ProfilerActivity, profile
    pred, fn = methods('cpu')[name][1]()
    fwd_bwd(fn, pred)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        p = fwd_bwd(fn, pred)
    del p
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]')
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def report(device, times, memory, cpu_times=None, spread=None):
    rows = []
    header = (f'| {device} | fwd+bwd ms (min-max) | x plain loss | mmdet / this (time) | '
              f'CPU ms | x plain (CPU) | extra peak MiB | mmdet / this (memory) |')
    rows.append(header)
    rows.append('|' + '---|' * 8)
    cpu_times = cpu_times or {}
    for kind, ours, ref, plain in (('cls', 'GHMC mmdet_ghm', 'GHMC mmdet', 'BCE-with-logits'),
                                   ('reg', 'GHMR mmdet_ghm', 'GHMR mmdet', 'SmoothL1')):
        for name in [n for n in times if methods_kind(n) == kind]:
            t, m = times[name], memory[name]
            speed = f'{times[ref] / t:.1f}x' if name != ref else ''
            mem = f'{memory[ref] / m:.1f}x' if name != ref and m > 0 else ''
            low_high = f' ({spread[name][0]:.1f}-{spread[name][1]:.1f})' if spread else ''
            c = cpu_times.get(name)
            cpu = '' if c is None else f'{c:.1f}'
            cpu_ratio = '' if c is None or not cpu_times.get(plain) else \
                f'{c / cpu_times[plain]:.2f}'
            rows.append(f'| {name} | {t:.1f}{low_high} | {t / times[plain]:.2f} | {speed} | '
                        f'{cpu} | {cpu_ratio} | {m:.1f} | {mem} |')
    return '\n'.join(rows)


def methods_kind(name):
    return 'reg' if name.startswith(('GHMR', 'SmoothL1')) else 'cls'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--device', default='all', choices=['cpu', 'cuda', 'all'])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    devices = [d for d in devices if d == 'cpu' or torch.cuda.is_available()]
    print(f'torch {torch.__version__}, {args.threads} CPU threads, {N_ANCHORS} anchors x '
          f'{N_CLASSES} classes, median of {args.rounds} interleaved rounds')
    for device in devices:
        times, cpu_times, spread = time_all(device, args.rounds)
        if device == 'cuda':
            memory = {name: peak_memory_cuda(name) for name in times}
            print(f'GPU: {torch.cuda.get_device_name()}')
        else:
            memory = {name: peak_memory_cpu(name) for name in times}
        print(report(device, times, memory, cpu_times if device == 'cpu' else None, spread))
        print()


if __name__ == '__main__':
    main()
