"""Issue 9's results table and verdicts, from the comparisons' JSON files (docs/regimes.md).

    python tools/regimes_table.py          # prints markdown: every cell, then every comparison

Reads ``docs/loss_comparison/loss_comparison.json`` (the clean, per-level cells) and
``docs/experiments/*/loss_comparison.json`` (the queue's), and applies the decision rule fixed in
docs/regimes.md before any run: for cells A and B, ``Δ = mean(A) - mean(B)`` of bbox mAP and
``SE = sqrt(sd(A)²/n(A) + sd(B)²/n(B))``; "A above B" when ``Δ >= 2·SE`` and
``Δ >= threshold``, "A below B" when ``Δ <= -2·SE`` and ``Δ <= -threshold``, else "no
measurable difference". For a loss to noise the cells are differences (clean - noisy) and the SE
sums four terms. A comparison is decided only when every cell it uses has 3 seeds; otherwise it
says what is missing.
"""
import argparse
import glob
import json
import math
import os.path as osp
import statistics
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
STEM = 'retinanet_r18-tiny_fpn_{}'
SEEDS_NEEDED = 3

# (claim, kind, cells, threshold, reading[, metric]): kind 'diff' compares A - B; kind 'noise'
# compares (A_clean - A_noisy) - (B_clean - B_noisy), the loss of A to the noise minus that of B;
# metric 'maps' (bbox mAP, the default) or 'map75' (mAP@0.75).
COMPARISONS = [
    ('E3', 'diff', ('ghmc-batch_shapes', 'ghmc_shapes'), 0.01,
     'batch-wide vs per-level GHM-C + smooth L1'),
    ('E3', 'diff', ('ghm-batch_shapes', 'ghm_shapes'), 0.01,
     'batch-wide vs per-level GHM-C + GHM-R'),
    ('E3', 'diff', ('ghmc-batch_shapes', 'focal_shapes'), 0.01,
     'batch-wide GHM-C + smooth L1 vs focal loss'),
    ('E1', 'noise', ('focal_shapes', 'focal_shapes-drop30', 'ghmc_shapes', 'ghmc_shapes-drop30'),
     0.04, 'focal loss\'s loss to 30 % dropped boxes minus GHM-C\'s'),
    ('E1', 'noise', ('ce_shapes', 'ce_shapes-drop30', 'ghmc_shapes', 'ghmc_shapes-drop30'),
     0.04, 'CE\'s loss to 30 % dropped boxes minus GHM-C\'s'),
    ('E1', 'noise', ('focal_shapes', 'focal_shapes-flip20', 'ghmc_shapes', 'ghmc_shapes-flip20'),
     0.04, 'focal loss\'s loss to 20 % flipped classes minus GHM-C\'s'),
    ('E1', 'noise', ('ce_shapes', 'ce_shapes-flip20', 'ghmc_shapes', 'ghmc_shapes-flip20'),
     0.04, 'CE\'s loss to 20 % flipped classes minus GHM-C\'s'),
    ('E2', 'noise', ('focal_shapes', 'focal_shapes-jitter20', 'focal-ghmr_shapes',
                     'focal-ghmr_shapes-jitter20'),
     0.02, 'smooth L1\'s loss to 20 % jittered boxes minus GHM-R\'s (focal cls)'),
    ('E2', 'diff', ('focal-ghmr_shapes-jitter20', 'focal_shapes-jitter20'), 0.01,
     'GHM-R vs smooth L1 under jitter'),
    ('E2', 'diff', ('focal-ghmr_shapes-jitter20', 'focal_shapes-jitter20'), 0.01,
     'GHM-R vs smooth L1 under jitter, in mAP@0.75', 'map75'),
    ('E4', 'diff', ('ghmc-pretrained_shapes', 'focal-pretrained_shapes'), 0.01,
     'pretrained: GHM-C vs focal loss'),
    ('E4', 'diff', ('ghmc-pretrained_shapes', 'ce-pretrained_shapes'), 0.01,
     'pretrained: GHM-C vs CE'),
    ('E4', 'diff', ('ghm-pretrained_shapes', 'ghmc-pretrained_shapes'), 0.01,
     'pretrained: GHM-C + GHM-R vs GHM-C + smooth L1'),
    # the ablation finalists (ABLATIONS below), 3 seeds against their base
    ('Ablation', 'diff', ('ghmc-bins10_shapes', 'ghmc_shapes'), 0.01,
     'GHM-C bins 10 vs 30 (momentum 0.75, + smooth L1)'),
    ('Ablation', 'diff', ('ghmc-mom05_shapes', 'ghmc_shapes'), 0.01,
     'GHM-C momentum 0.5 vs 0.75 (bins 30, + smooth L1)'),
]

# (ablation, its base): screened at seed 0; |Δ| >= FINALIST makes a finalist for 3 seeds
ABLATIONS = [('ghmc-bins10_shapes', 'ghmc_shapes'), ('ghmc-mom05_shapes', 'ghmc_shapes'),
             ('ghmc-biascorr_shapes', 'ghmc_shapes'), ('focal-gamma1_shapes', 'focal_shapes'),
             ('focal-gamma3_shapes', 'focal_shapes')]
FINALIST = 0.03


def load_cells(paths):
    """stem -> dict(label, maps={seed: bbox mAP}, map75={seed: mAP@0.75}, source)."""
    cells = {}
    for path in paths:
        report = json.load(open(path))
        for run in report['runs']:
            if run.get('failed') or run.get('pending'):
                continue
            cell = cells.setdefault(run['stem'], dict(label=run['label'], maps={}, map75={},
                                                      source=osp.relpath(path, REPO)))
            cell['maps'][run['seed']] = run['metrics']['coco/bbox_mAP']
            if 'coco/bbox_mAP_75' in run['metrics']:
                cell['map75'][run['seed']] = run['metrics']['coco/bbox_mAP_75']
    return cells


def _stats(values):
    values = list(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    return mean, sd, len(values)


def verdict(delta, se, threshold):
    if delta >= 2 * se and delta >= threshold:
        return 'above'
    if delta <= -2 * se and delta <= -threshold:
        return 'below'
    return 'no measurable difference'


def compare(cells, kind, stems, threshold, metric='maps'):
    """(delta, se, verdict or what is missing)."""
    missing = [s for s in stems if len(cells.get(STEM.format(s), {}).get(metric, {}))
               < SEEDS_NEEDED]
    have = [STEM.format(s) in cells for s in stems]
    if not all(have):
        return None, None, 'missing: ' + ', '.join(
            f'{s} ({len(cells.get(STEM.format(s), {}).get(metric, {}))} seeds)' for s in missing)
    stats = [_stats(cells[STEM.format(s)][metric].values()) for s in stems]
    sign = [1, -1] if kind == 'diff' else [1, -1, -1, 1]
    delta = sum(k * m for k, (m, _, _) in zip(sign, stats))
    if missing or any(sd is None for _, sd, _ in stats):
        return delta, None, 'not decided: ' + ', '.join(
            f'{s} has {len(cells[STEM.format(s)][metric])} seed(s)' for s in missing)
    se = math.sqrt(sum(sd ** 2 / n for _, sd, n in stats))
    return delta, se, verdict(delta, se, threshold)


def render(cells) -> str:
    lines = ['| cell | losses | seeds | bbox mAP | mAP@0.75 | source |',
             '|---|---|---|---|---|---|']
    for stem in sorted(cells):
        c = cells[stem]
        m, sd, n = _stats(c['maps'].values())
        m75 = _stats(c['map75'].values()) if c['map75'] else None
        fmt = (lambda m, sd: f'{m:.3f}' + (f' ± {sd:.3f}' if sd is not None else ''))
        lines.append(f'| `{stem[len(STEM.format("")):]}` | {c["label"]} | '
                     f'{", ".join(map(str, sorted(c["maps"])))} | {fmt(m, sd)} | '
                     f'{fmt(*m75[:2]) if m75 else "n/a"} | `{c["source"]}` |')
    lines += ['', '| claim | comparison | Δ (bbox mAP unless named) | SE | threshold | reading |',
              '|---|---|---|---|---|---|']
    for claim, kind, stems, threshold, text, *metric in COMPARISONS:
        delta, se, reading = compare(cells, kind, stems, threshold, *metric)
        lines.append(f'| {claim} | {text} | {"n/a" if delta is None else f"{delta:+.3f}"} | '
                     f'{"n/a" if se is None else f"{se:.3f}"} | {threshold} | {reading} |')
    lines += ['', '| ablation (seed 0) | base | Δ bbox mAP | reading |', '|---|---|---|---|']
    for stem, base in ABLATIONS:
        a, b = (cells.get(STEM.format(x), {}).get('maps', {}).get(0) for x in (stem, base))
        if a is None or b is None:
            lines.append(f'| `{stem}` | `{base}` | n/a | not run yet |')
            continue
        reading = 'finalist (3 seeds)' if abs(a - b) >= FINALIST else 'screened out'
        lines.append(f'| `{stem}` | `{base}` | {a - b:+.3f} | {reading} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--reports', nargs='+', default=None,
                        help='comparison JSON files (default: docs/loss_comparison and '
                             'docs/experiments/*)')
    args = parser.parse_args(argv)
    paths = args.reports or (
        [osp.join(REPO, 'docs', 'loss_comparison', 'loss_comparison.json')]
        + sorted(glob.glob(osp.join(REPO, 'docs', 'experiments', '*', 'loss_comparison.json'))))
    print(render(load_cells([p for p in paths if osp.isfile(p)])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
