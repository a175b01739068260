"""Training diagnostics: the gradient-norm histogram and the harmonized weights of every GHM loss.

GHM is a claim about the distribution of gradient norms (the paper's Fig. 1 and 2).
``GHMDensityHook`` records, every ``interval`` training iterations, for each
:class:`~mmdet_ghm.GradientDensity` in the model (``bbox_head.loss_cls`` for GHM-C,
``bbox_head.loss_bbox`` for GHM-R):

* the histogram of the gradient norms g of that iteration (all its loss calls: one per FPN level in
  RetinaNet), as the density module counted them for the loss itself (no extra pass);
* the harmonized weight of each bin, i.e. what those counts get against the EMA state after the
  iteration (:meth:`GradientDensity.slot_weights`).

It writes them through the runner's visualizer backends:

* ``LocalVisBackend``: one JSON line per record in ``<log_dir>/vis_data/ghm_density.json`` (and, as
  MMEngine's ``add_scalars(file_path=...)`` always does, in ``scalars.json``);
  ``python -m mmdet_ghm.plot WORK_DIR`` turns them into figures;
* ``TensorboardVisBackend``: per loss, two TensorBoard histograms (Histograms / Distributions
  tabs), the gradient norms g (``ghm/<loss>/gradient_norm``) and the harmonized weights of the
  elements (``ghm/<loss>/harmonized_weight``), and the summary scalars below;
* any other backend: the summary scalars ``ghm/<loss>/{valid, frac_lowest_bin, frac_highest_bin,
  weight_lowest_bin, weight_highest_bin}`` (the easy examples of the lowest bin and the very hard
  ones of the highest, and the weights GHM gives them).

Cost: on an iteration it does not record, an integer check. On a recorded one, the losses add their
counts into a small tensor on the device, and the hook copies the counts and weights of all losses
to the host in one transfer (one sync) after the iteration. Only the main process records (with
``sync_across_ranks=True`` its counts are those of all ranks, else its own).
"""
import math
from typing import Dict, List

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend

from mmdet.registry import HOOKS

from ..density import GradientDensity

#: File name of the records, in the local backend's directory (``<log_dir>/vis_data/``).
RECORDS_FILE = 'ghm_density.json'
#: Prefix of every key the hook writes.
KEY_PREFIX = 'ghm'


def find_densities(model: torch.nn.Module) -> Dict[str, GradientDensity]:
    """The gradient densities of a model, by the module path of the loss that owns them (the
    density's own path without ``.density``, e.g. ``bbox_head.loss_cls``); DDP wrappers
    unwrapped."""
    if is_model_wrapper(model):
        model = model.module
    found = {}
    for path, module in model.named_modules():
        if isinstance(module, GradientDensity):
            owner = path[:-len('.density')] if path.endswith('.density') else path
            found[owner or 'density'] = module
    return found


def describe_loss(model: torch.nn.Module, owner_path: str) -> dict:
    """What the plot needs to know about the loss that owns a density: its class name and, for
    GHM-R, ``mu`` (it defines g) and ``loss_weight``."""
    if is_model_wrapper(model):
        model = model.module
    modules = dict(model.named_modules())
    owner = modules.get(owner_path)
    info = dict(loss=type(owner).__name__ if owner is not None else 'GradientDensity')
    for attr in ('mu', 'loss_weight'):
        value = getattr(owner, attr, None)
        if isinstance(value, (int, float)):
            info[attr] = float(value)
    return info


def _add_histogram(writer, tag: str, step: int, low: float, bucket_limits: List[float],
                   bucket_counts: List[int], values: List[float]) -> None:
    """A TensorBoard histogram of ``bucket_counts`` elements, bucket i holding values in
    (limit i-1, limit i] (the first from ``low``), each counted at ``values[i]`` for the sums."""
    used = [i for i, c in enumerate(bucket_counts) if c]
    writer.add_histogram_raw(
        tag, min=low, max=bucket_limits[used[-1]], num=sum(bucket_counts),
        sum=sum(c * x for c, x in zip(bucket_counts, values)),
        sum_squares=sum(c * x * x for c, x in zip(bucket_counts, values)),
        bucket_limits=bucket_limits, bucket_counts=bucket_counts, global_step=step)


def _vis_backends(visualizer) -> List:
    # MMEngine's Visualizer has no public way to list its backends (get_backend needs their names).
    return list(getattr(visualizer, '_vis_backends', {}).values())


@HOOKS.register_module()
class GHMDensityHook(Hook):
    """Record the gradient-norm histogram and the harmonized weights of every GHM loss.

    Add it to a config (mmdet's ``default_runtime`` visualizer writes the local files)::

        custom_hooks = [dict(type='GHMCheckHook'), dict(type='WeightsOnlyCheckpointHook'),
                        dict(type='GHMDensityHook', interval=50)]

    then plot a run with ``python -m mmdet_ghm.plot WORK_DIR``. See the module docstring.

    Args:
        interval: record every ``interval`` training iterations (the ``interval``-th, 2 *
            ``interval``-th, ... as MMEngine's LoggerHook counts them).
        record_first: also record the first iteration (the distribution at initialization).
        record_last: also record the last iteration of the training.
    """

    priority = 'NORMAL'

    def __init__(self, interval: int = 50, record_first: bool = True, record_last: bool = True):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be an int >= 1, got {interval!r}')
        self.interval = interval
        self.record_first = bool(record_first)
        self.record_last = bool(record_last)
        self._densities: Dict[str, GradientDensity] = {}
        self._losses: Dict[str, dict] = {}
        self._recording = False

    def before_train(self, runner) -> None:
        self._densities = find_densities(runner.model) if is_main_process() else {}
        # Static facts of each loss, read once here: a logged iteration then syncs only once.
        self._losses = {
            name: dict(describe_loss(runner.model, name), bins=density.bins,
                       momentum=density.momentum, edges=density.edges.tolist())
            for name, density in self._densities.items()}
        if is_main_process() and not self._densities:
            runner.logger.warning(
                'GHMDensityHook: the model has no GHM loss (no GradientDensity module), so there '
                'is nothing to record.')

    def _records_iteration(self, runner) -> bool:
        return (self.every_n_train_iters(runner, self.interval)
                or (self.record_first and runner.iter == 0)
                or (self.record_last and self.is_last_train_iter(runner)))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._densities and self._records_iteration(runner):
            for density in self._densities.values():
                density.start_recording()
            self._recording = True

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._recording:
            return
        self._recording = False
        stopped = {name: d.stop_recording() for name, d in self._densities.items()}
        # None: something else (a second instance of this hook) stopped that recording first.
        names = [name for name, c in stopped.items() if c is not None]
        if not names:
            return
        counts = [stopped[name] for name in names]
        weights = [self._densities[name].slot_weights(c) for name, c in zip(names, counts)]
        # One device-to-host copy for all losses; float64 holds the integer counts exactly.
        tensors = [t.double().reshape(-1) for t in counts + weights]
        parts = torch.cat(tensors).cpu().split([t.numel() for t in tensors])
        records = {
            name: dict(slot_counts=[int(c) for c in parts[i].tolist()],
                       weights=parts[len(names) + i].tolist())
            for i, name in enumerate(names)}
        step = runner.iter + 1  # the LoggerHook's numbering of this iteration
        self.write(runner.visualizer, step, records)

    def _full_record(self, name: str, slot_counts: List[int], weights: List[float]) -> dict:
        return dict(
            **self._losses[name],
            counts=slot_counts[1:-1],
            invalid=slot_counts[0],
            nan=slot_counts[-1],
            weights=weights)

    @staticmethod
    def summary(counts: List[int], weights: List[float]) -> dict:
        """Scalar summary of one histogram: the number of valid elements, the fractions of them
        in the lowest and highest bins and the weights of those bins (0 for an empty bin)."""
        valid = sum(counts)
        return dict(
            valid=valid,
            frac_lowest_bin=counts[0] / valid if valid else math.nan,
            frac_highest_bin=counts[-1] / valid if valid else math.nan,
            weight_lowest_bin=weights[0],
            weight_highest_bin=weights[-1])

    def write(self, visualizer, step: int, records: Dict[str, dict]) -> None:
        """Write the records of one iteration (``{loss path: dict(slot_counts, weights)}``)
        through every backend of ``visualizer`` (see the module docstring)."""
        scalars, full = {}, {}
        for name, rec in records.items():
            record = self._full_record(name, rec['slot_counts'], rec['weights'])
            for key, value in self.summary(record['counts'], record['weights']).items():
                scalars[f'{KEY_PREFIX}/{name}/{key}'] = value
            full[f'{KEY_PREFIX}/{name}'] = record
        for backend in _vis_backends(visualizer):
            if isinstance(backend, LocalVisBackend):
                backend.add_scalars(dict(scalars, **full), step=step, file_path=RECORDS_FILE)
                continue
            if isinstance(backend, TensorboardVisBackend):
                for name, record in full.items():
                    self._tensorboard_histograms(backend.experiment, name, record, step)
            backend.add_scalars(scalars, step=step)

    @staticmethod
    def _tensorboard_histograms(writer, name: str, record: dict, step: int) -> None:
        """Two histograms of one record: the gradient norms g of the valid elements, in the
        density's own bins (``<name>/gradient_norm``), and the harmonized weight each of those
        elements gets (``<name>/harmonized_weight``: one bucket per distinct weight)."""
        counts, weights = record['counts'], record['weights']
        if sum(counts) == 0:
            return  # TensorBoard rejects an empty histogram
        # GHM-R's last edge is 1e3 (everything above 0.9): g < 1 always, so 1 bounds the display.
        edges = [min(e, 1.0) for e in record['edges']]
        centers = [(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])]
        nonempty = [i for i, c in enumerate(counts) if c]
        _add_histogram(writer, f'{name}/gradient_norm', step, edges[nonempty[0]],
                       edges[1:], counts, centers)
        # A TensorBoard bucket holds the values up to its limit: one bucket at each weight.
        per_weight: Dict[float, int] = {}
        for i in nonempty:
            per_weight[weights[i]] = per_weight.get(weights[i], 0) + counts[i]
        limits = sorted(per_weight)
        _add_histogram(writer, f'{name}/harmonized_weight', step, limits[0], limits,
                       [per_weight[w] for w in limits], limits)

    def after_train(self, runner) -> None:
        if self._recording:  # a training that stopped inside a recorded iteration
            for density in self._densities.values():
                density.stop_recording()
            self._recording = False
