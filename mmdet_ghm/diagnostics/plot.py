"""Figures of a run's GHM density records (written by :class:`~mmdet_ghm.diagnostics.GHMDensityHook`).

    python -m mmdet_ghm.diagnostics.plot WORK_DIR [--out-dir DIR] [--step N]

For every GHM loss of the run (``bbox_head.loss_cls`` for GHM-C, ``bbox_head.loss_bbox`` for GHM-R)
it writes into ``WORK_DIR/ghm_plots/`` (or ``--out-dir``):

* ``gradient_norm_distribution_<loss>.png``: the fraction of the valid elements in each gradient
  norm bin, log scale, at recorded iterations (left) and over the whole training (right): the
  paper's Fig. 1, as the run saw it;
* ``reweighted_gradient_norm_<loss>.png``: the gradient norm an element gets after reweighting,
  against its original gradient norm g, log scale: for GHM-C next to cross entropy and focal loss
  (the paper's Fig. 2), for GHM-R next to smooth L1 and unweighted Authentic Smooth L1. The GHM
  curve uses the harmonized weights of one recorded iteration (the last, or ``--step``).

The records are read from ``WORK_DIR/<timestamp>/vis_data/ghm_density.json`` (the latest run in
WORK_DIR when there are several; ``--records FILE`` picks one).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import warnings
from typing import Dict, List, Optional

import numpy as np

from .density_hook import KEY_PREFIX, RECORDS_FILE

HOOK_HINT = ("add dict(type='GHMDensityHook', interval=50) to custom_hooks in the config of a "
             'model with GHMC/GHMR losses, train, then plot its work dir')
LOSS_TITLES = {'GHMC': 'GHM-C', 'GHMR': 'GHM-R'}


def find_records_file(work_dir: str) -> str:
    """The records file of the latest run under ``work_dir`` (or ``work_dir`` itself if it is
    a file); FileNotFoundError saying what was looked for when there is none."""
    if osp.isfile(work_dir):
        return work_dir
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'{work_dir!r} is neither a work dir nor a records file')
    found = glob.glob(osp.join(work_dir, '**', RECORDS_FILE), recursive=True)
    if not found:
        raise FileNotFoundError(
            f'no GHM density records under {work_dir!r}: expected '
            f'{osp.join(work_dir, "<timestamp>", "vis_data", RECORDS_FILE)}, which '
            f'GHMDensityHook writes. To get them, {HOOK_HINT}.')
    return max(found, key=lambda p: (osp.getmtime(p), p))


def load_records(path: str) -> Dict[str, List[dict]]:
    """``{loss path: [record, ...]}`` sorted by iteration; each record is the hook's dict
    (``loss, bins, momentum, edges, counts, invalid, nan, weights``, ``mu`` for GHM-R) plus
    ``step``. A step recorded twice (a resumed run) keeps its last record."""
    by_loss: Dict[str, Dict[int, dict]] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{line_no} is not a JSON line ({e})') from None
            for key, value in entry.items():
                if not (key.startswith(KEY_PREFIX + '/') and isinstance(value, dict)
                        and 'counts' in value):
                    continue
                record = dict(value, step=int(entry['step']))
                by_loss.setdefault(key[len(KEY_PREFIX) + 1:], {})[record['step']] = record
    if not by_loss:
        raise ValueError(f'{path} holds no GHM density record. To get them, {HOOK_HINT}.')
    return {name: [steps[s] for s in sorted(steps)] for name, steps in by_loss.items()}


# --- what each loss does to a gradient norm g (the reference curves of the paper's Fig. 2) --------

def focal_gradient_norm(g: np.ndarray, gamma: float) -> np.ndarray:
    """|dFL/dx| of sigmoid focal loss (without alpha) as a function of g = |p - p*|:
    ``g**gamma * (g - gamma * (1 - g) * ln(1 - g))`` (1 at g = 1, its limit)."""
    with np.errstate(divide='ignore', invalid='ignore'):
        tail = np.where(g < 1, (1 - g) * np.log1p(-np.minimum(g, 1)), 0.0)
    return g ** gamma * (g - gamma * tail)


def asl1_error(g: np.ndarray, mu: float) -> np.ndarray:
    """The box-delta error |d| whose ASL1 gradient norm |d| / sqrt(d^2 + mu^2) is g (g < 1)."""
    return mu * g / np.sqrt(1 - g * g)


def smooth_l1_gradient_norm(g: np.ndarray, mu: float, beta: float) -> np.ndarray:
    """|dSL1/dd| = min(|d| / beta, 1) at the error |d| of ASL1 gradient norm g."""
    return np.minimum(asl1_error(g, mu) / beta, 1.0)


def harmonized_gradient_norm(g: np.ndarray, record: dict) -> np.ndarray:
    """g times the harmonized weight of its bin in ``record``; NaN in empty bins (no element
    there, nothing to weigh), so that a log plot leaves them out."""
    edges = np.asarray(record['edges'], dtype=np.float64)
    weights = np.asarray(record['weights'], dtype=np.float64)
    counts = np.asarray(record['counts'])
    bins = np.clip(np.searchsorted(edges, g, side='right') - 1, 0, len(weights) - 1)
    return np.where(counts[bins] > 0, g * weights[bins], np.nan)


# --- figures --------------------------------------------------------------------------------------

def _g_label(record: dict) -> str:
    if record['loss'] == 'GHMR':
        return rf'gradient norm $g = |d|\,/\sqrt{{d^2+\mu^2}}$ ($\mu$ = {record.get("mu", 0.02):g})'
    return r'gradient norm $g = |p - p^*|$'


def _title(name: str, record: dict) -> str:
    return f'{LOSS_TITLES.get(record["loss"], record["loss"])} ({name})'


def _display_edges(record: dict) -> np.ndarray:
    # GHM-R's last edge is 1e3 (it catches g in [0.9, 1)); g < 1 always, so draw it up to 1.
    return np.minimum(np.asarray(record['edges'], dtype=np.float64), 1.0)


def _fractions(record: dict) -> np.ndarray:
    counts = np.asarray(record['counts'], dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.full_like(counts, np.nan)


def _pick(records: List[dict], max_curves: int) -> List[dict]:
    if len(records) <= max_curves:
        return records
    idx = np.unique(np.round(np.linspace(0, len(records) - 1, max_curves)).astype(int))
    return [records[i] for i in idx]


def plot_distribution(name: str, records: List[dict], path: str, max_curves: int = 8) -> None:
    """The paper's Fig. 1 over training: fraction of valid elements per g bin (log scale)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    records = [r for r in records if sum(r['counts']) > 0]
    if not records:
        raise ValueError(f'{name}: every record is empty (no valid element was counted)')
    last = records[-1]
    edges = _display_edges(last)
    steps = np.array([r['step'] for r in records])
    fractions = np.stack([_fractions(r) for r in records])  # (records, bins)

    fig, (ax, ax_map) = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    cmap = plt.get_cmap('viridis')
    norm = Normalize(vmin=steps.min(), vmax=max(steps.max(), steps.min() + 1))
    for record in _pick(records, max_curves):
        frac = np.where(_fractions(record) > 0, _fractions(record), np.nan)
        ax.stairs(frac, edges, color=cmap(norm(record['step'])), linewidth=1.6)
    ax.set_yscale('log')
    ax.set_xlim(0, 1)
    ax.set_xlabel(_g_label(last))
    ax.set_ylabel('fraction of valid elements in the bin (log scale)')
    valid = np.mean([sum(r['counts']) for r in records])
    ax.set_title(f'{_title(name, last)}: gradient norm distribution\n'
                 f'{last["bins"]} bins, ~{valid:,.0f} valid elements per iteration')
    ax.grid(True, which='major', alpha=0.3)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label='training iteration')

    # Right: every record as a column; columns span halfway to the neighbouring records.
    if len(steps) > 1:
        mids = (steps[1:] + steps[:-1]) / 2
        x_edges = np.concatenate([[steps[0] - (mids[0] - steps[0])], mids,
                                  [steps[-1] + (steps[-1] - mids[-1])]])
    else:
        x_edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    shown = np.ma.masked_less_equal(fractions.T, 0)
    positive = fractions[fractions > 0]
    mesh = ax_map.pcolormesh(x_edges, edges, shown, cmap='magma',
                             norm=LogNorm(vmin=positive.min(), vmax=positive.max()))
    ax_map.set_facecolor('0.85')  # empty bins
    ax_map.set_xlabel('training iteration')
    ax_map.set_ylabel(_g_label(last))
    ax_map.set_title(f'over training ({len(records)} recorded iterations; grey: empty bin)')
    fig.colorbar(mesh, ax=ax_map, label='fraction of valid elements (log scale)')
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _select(records: List[dict], step: Optional[int]) -> dict:
    nonempty = [r for r in records if sum(r['counts']) > 0]
    if not nonempty:
        raise ValueError('every record is empty (no valid element was counted)')
    if step is None:
        return nonempty[-1]
    for record in nonempty:
        if record['step'] == step:
            return record
    raise ValueError(f'no record of iteration {step}; recorded: {[r["step"] for r in nonempty]}')


def plot_reweighted(name: str, records: List[dict], path: str, step: Optional[int] = None,
                    focal_gamma: float = 2.0, smooth_l1_beta: float = 0.11) -> None:
    """The paper's Fig. 2: reweighted gradient norm against g (log scale), for GHM-C next to
    CE and focal loss, for GHM-R next to smooth L1 and unweighted ASL1."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    record = _select(records, step)
    g = np.linspace(1e-4, 1 - 1e-4, 4000)
    ghm = harmonized_gradient_norm(g, record)
    fig, ax = plt.subplots(figsize=(7.5, 5.2), constrained_layout=True)
    ghm_label = f'{LOSS_TITLES.get(record["loss"], record["loss"])} (weights of iteration ' \
                f'{record["step"]})'
    if record['loss'] == 'GHMR':
        mu = record.get('mu', 0.02)
        ax.plot(g, g, color='0.45', linestyle='--', label='ASL1, unweighted ($g$)')
        ax.plot(g, smooth_l1_gradient_norm(g, mu, smooth_l1_beta), color='tab:orange',
                label=rf'smooth L1 ($\beta$ = {smooth_l1_beta:g}) at the same $|d|$')
        ax.plot(g, ghm, color='tab:blue', linewidth=2.2, label=ghm_label)
        top = ax.secondary_xaxis('top', functions=(
            lambda x: asl1_error(np.clip(x, 0, 1 - 1e-9), mu),
            lambda d: d / np.sqrt(d * d + mu * mu)))
        top.set_xticks([0.002, 0.005, 0.01, 0.02, 0.04, 0.1])
        top.set_xlabel(r'box regression error $|d|$ (normalized deltas)')
        ax.set_ylabel(r'gradient norm w.r.t. $d$ after reweighting (log scale)')
    else:
        ax.plot(g, g, color='0.45', linestyle='--', label='cross entropy ($g$)')
        ax.plot(g, focal_gradient_norm(g, focal_gamma), color='tab:orange',
                label=rf'focal loss ($\gamma$ = {focal_gamma:g}, $\alpha$ omitted)')
        ax.plot(g, ghm, color='tab:blue', linewidth=2.2, label=ghm_label)
        ax.set_ylabel('gradient norm w.r.t. the logit after reweighting (log scale)')
    ax.set_yscale('log')
    # Down to the GHM curve, not to focal loss's g**3 at the smallest g (1e-12).
    ghm_min = np.nanmin(ghm[ghm > 0]) if np.any(ghm > 0) else 1e-4
    ax.set_ylim(bottom=min(1e-4, 0.5 * ghm_min))
    ax.set_xlim(0, 1)
    ax.set_xlabel(_g_label(record))
    ax.set_title(f'{_title(name, record)}: reweighted gradient norm')
    ax.grid(True, which='both', alpha=0.25)
    ghm_name = LOSS_TITLES.get(record['loss'], record['loss'])
    ax.legend(loc='lower right', alignment='left', title_fontsize=8,
              title=f'per element, before loss_weight ({ghm_name}\'s: '
                    f'{record.get("loss_weight", 1.0):g})\n'
                    f'{ghm_name}: g x the weight of its bin; gaps: empty bins')
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(work_dir: str, out_dir: Optional[str] = None, records_file: Optional[str] = None,
             step: Optional[int] = None, focal_gamma: float = 2.0, smooth_l1_beta: float = 0.11,
             max_curves: int = 8) -> List[str]:
    """Write every figure of a run; returns the PNG paths. A loss whose records are all empty
    (e.g. GHM-R in a run without positive anchors) is skipped with a warning, and so is the
    reweighted-gradient figure of a loss whose record of ``step`` is empty; ValueError if every
    loss is skipped, or ``step`` was not recorded."""
    records_file = records_file or find_records_file(work_dir)
    by_loss = load_records(records_file)
    if out_dir is None:
        out_dir = osp.join(work_dir if osp.isdir(work_dir) else osp.dirname(records_file),
                           'ghm_plots')
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, records in sorted(by_loss.items()):
        if not any(sum(r['counts']) > 0 for r in records):
            warnings.warn(f'{name}: no figure, every record is empty (no valid element was '
                          'counted)', stacklevel=2)
            continue
        path = osp.join(out_dir, f'gradient_norm_distribution_{name}.png')
        plot_distribution(name, records, path, max_curves)
        written.append(path)
        if records[-1]['loss'] in ('GHMC', 'GHMR'):
            if step is not None and any(r['step'] == step and not sum(r['counts'])
                                        for r in records):
                warnings.warn(f'{name}: no reweighted-gradient figure, its record of iteration '
                              f'{step} is empty (no valid element was counted)', stacklevel=2)
                continue
            path = osp.join(out_dir, f'reweighted_gradient_norm_{name}.png')
            plot_reweighted(name, records, path, step, focal_gamma, smooth_l1_beta)
            written.append(path)
    if not written:
        raise ValueError(f'{records_file}: every record of every loss is empty (no valid '
                         'element was counted)')
    return written


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {text}')
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m mmdet_ghm.plot',
        description='Figures of the GHM density records of a run (written by GHMDensityHook): '
                    'the gradient norm distribution over training and the reweighted gradient '
                    'norm against g.')
    parser.add_argument('work_dir', help='the run\'s work dir (or its ghm_density.json)')
    parser.add_argument('--out-dir', help='where the PNGs go (default: WORK_DIR/ghm_plots)')
    parser.add_argument('--records', help='records file to use (default: the latest run\'s)')
    parser.add_argument('--step', type=int, help='iteration whose weights the reweighted-gradient '
                        'figures use (default: the last recorded)')
    parser.add_argument('--focal-gamma', type=float, default=2.0,
                        help='gamma of the focal-loss reference curve (default: 2)')
    parser.add_argument('--smooth-l1-beta', type=float, default=0.11,
                        help='beta of the smooth-L1 reference curve (default: 0.11, RetinaNet)')
    parser.add_argument('--max-curves', type=_positive_int, default=8,
                        help='iterations drawn as curves in the distribution figure')
    args = parser.parse_args(argv)
    try:
        written = plot_run(args.work_dir, args.out_dir, args.records, args.step,
                           args.focal_gamma, args.smooth_l1_beta, args.max_curves)
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print('\n'.join(written))
    return 0


if __name__ == '__main__':
    sys.exit(main())
