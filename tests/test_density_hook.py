"""GHMDensityHook: what it records (the losses' own counts, the weights against the EMA state), when
(only on logged iterations), where (local JSON records, TensorBoard event files read back with
tensorboard's own reader, summary scalars), and a few real iterations of the embedded config
producing records and TensorBoard events, which ``mmdet_ghm.plot`` draws."""
import json
import os.path as osp
import uuid
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend
from torch import nn

from mmdet.registry import HOOKS
from mmdet_ghm import GHMC, GHMR, GradientDensity
from mmdet_ghm.diagnostics.density_hook import RECORDS_FILE, GHMDensityHook, find_densities

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHAPES_GHM = osp.join(REPO, 'configs', 'retinanet_r18-tiny_fpn_ghm_shapes.py')


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.loss_cls = GHMC(bins=30, momentum=0.75)
        self.loss_bbox = GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.bbox_head = _Head()


def _read_events(directory):
    """Everything TensorBoard itself reads from the event files of a directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(directory), size_guidance={'histograms': 0, 'scalars': 0})
    events.Reload()
    histograms = {tag: events.Histograms(tag) for tag in events.Tags()['histograms']}
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()['scalars']}
    return histograms, scalars


def _runner(model, tmp_path, backends, max_iters=100):
    visualizer = SimpleNamespace(_vis_backends={type(b).__name__: b for b in backends})
    return SimpleNamespace(model=model, iter=0, max_iters=max_iters, visualizer=visualizer,
                           logger=MMLogger.get_current_instance())


def _losses_step(model, num_anchors=500, num_classes=5):
    """One 'iteration' of the two losses on random inputs; returns the valid GHM-C g's and the
    valid GHM-R g's as the losses define them."""
    head = model.bbox_head
    logits = torch.randn(num_anchors, num_classes) * 3
    labels = torch.randint(0, num_classes + 1, (num_anchors,))  # num_classes = background
    label_weight = (torch.rand(num_anchors) > 0.1).float()
    head.loss_cls(logits, labels, label_weight)
    target = torch.zeros(num_anchors, num_classes)
    fg = labels < num_classes
    target[fg, labels[fg]] = 1
    g_cls = (logits.sigmoid() - target).abs()[(label_weight > 0)[:, None].expand(-1, num_classes)]

    pred, box_target = torch.randn(num_anchors, 4) * 0.05, torch.randn(num_anchors, 4) * 0.05
    box_weight = fg[:, None].float().expand(-1, 4).contiguous()
    head.loss_bbox(pred, box_target, box_weight)
    d = pred - box_target
    g_reg = (d.abs() / (d * d + 0.02 ** 2).sqrt())[box_weight > 0]
    return g_cls, g_reg


def _read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_registered_and_arguments_checked():
    assert HOOKS.get('GHMDensityHook') is GHMDensityHook
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match='interval'):
            GHMDensityHook(interval=bad)


def test_find_densities_names_the_losses():
    model = _Detector()
    found = find_densities(model)
    assert list(found) == ['bbox_head.loss_cls', 'bbox_head.loss_bbox']
    assert found['bbox_head.loss_cls'] is model.bbox_head.loss_cls.density


def test_records_only_logged_iterations_with_the_losses_own_counts(tmp_path, monkeypatch):
    started = []
    original = GradientDensity.start_recording
    monkeypatch.setattr(GradientDensity, 'start_recording',
                        lambda self: (started.append(self), original(self))[1])
    model = _Detector()
    local = LocalVisBackend(save_dir=str(tmp_path / 'vis_data'))
    tensorboard = TensorboardVisBackend(save_dir=str(tmp_path / 'tb'))
    runner = _runner(model, tmp_path, [local, tensorboard], max_iters=10)
    hook = GHMDensityHook(interval=4)  # logs iterations 1 (first), 4, 8 and 10 (last)
    hook.before_train(runner)

    expected = {}
    for it in range(10):
        runner.iter = it
        hook.before_train_iter(runner, it)
        g_cls, g_reg = _losses_step(model)
        hook.after_train_iter(runner, it)
        expected[it + 1] = (g_cls, g_reg)
    assert len(started) == 2 * 4  # two losses, four logged iterations: nothing in between

    records = _read_records(tmp_path / 'vis_data' / RECORDS_FILE)
    assert [r['step'] for r in records] == [1, 4, 8, 10]
    for line in records:
        g_cls, g_reg = expected[line['step']]
        for name, g, density in (('bbox_head.loss_cls', g_cls, model.bbox_head.loss_cls.density),
                                 ('bbox_head.loss_bbox', g_reg,
                                  model.bbox_head.loss_bbox.density)):
            record = line[f'ghm/{name}']
            edges = density.edges
            # the reference binning, edges[i] <= g < edges[i + 1]
            bins = torch.bucketize(g.float(), edges, right=True) - 1
            assert record['counts'] == torch.bincount(bins, minlength=density.bins).tolist()
            assert record['edges'] == edges.tolist() and record['bins'] == density.bins
            assert line[f'ghm/{name}/valid'] == g.numel()
            assert line[f'ghm/{name}/frac_lowest_bin'] == pytest.approx(
                (bins == 0).float().mean().item())
        assert line['ghm/bbox_head.loss_cls']['loss'] == 'GHMC'
        assert line['ghm/bbox_head.loss_bbox']['loss'] == 'GHMR'
        assert line['ghm/bbox_head.loss_bbox']['mu'] == 0.02
        assert line['ghm/bbox_head.loss_bbox']['loss_weight'] == 10.0
    # The last record's weights are those of its counts against the final EMA state.
    for name, loss in (('bbox_head.loss_cls', model.bbox_head.loss_cls),
                       ('bbox_head.loss_bbox', model.bbox_head.loss_bbox)):
        record = records[-1][f'ghm/{name}']
        counts = torch.tensor([record['invalid']] + record['counts'] + [record['nan']])
        assert torch.equal(torch.tensor(record['weights'], dtype=torch.float32),
                           loss.density.slot_weights(counts))

    # TensorBoard, read back with its own reader: per loss and record a histogram of g bucketed
    # like the density, one of the harmonized weights, and the summary scalars.
    tensorboard.close()
    histograms, scalars = _read_events(tmp_path / 'tb')
    assert set(histograms) == {f'ghm/bbox_head.loss_{k}/{h}' for k in ('cls', 'bbox')
                               for h in ('gradient_norm', 'harmonized_weight')}
    assert set(scalars) == {f'ghm/bbox_head.loss_{k}/{s}' for k in ('cls', 'bbox')
                            for s in ('valid', 'frac_lowest_bin', 'frac_highest_bin',
                                      'weight_lowest_bin', 'weight_highest_bin')}
    for name in ('bbox_head.loss_cls', 'bbox_head.loss_bbox'):
        g_events = histograms[f'ghm/{name}/gradient_norm']
        w_events = histograms[f'ghm/{name}/harmonized_weight']
        assert [e.step for e in g_events] == [e.step for e in w_events] == [1, 4, 8, 10]
        for g_event, w_event, line in zip(g_events, w_events, records):
            record = line[f'ghm/{name}']
            g_hist, w_hist = g_event.histogram_value, w_event.histogram_value
            assert list(g_hist.bucket) == record['counts']
            edges = [min(e, 1.0) for e in record['edges'][1:]]  # GHM-R's 1e3 shown as 1
            assert list(g_hist.bucket_limit) == pytest.approx(edges)
            assert g_hist.num == w_hist.num == sum(record['counts'])
            # every valid element at the weight of its bin
            expected = {}
            for count, weight in zip(record['counts'], record['weights']):
                if count:
                    expected[weight] = expected.get(weight, 0) + count
            assert list(w_hist.bucket_limit) == pytest.approx(sorted(expected))
            assert list(w_hist.bucket) == [expected[w] for w in sorted(expected)]
            assert w_hist.sum == pytest.approx(sum(w * c for w, c in expected.items()))
        valid = scalars[f'ghm/{name}/valid']
        assert [(e.step, e.value) for e in valid] == [
            (line['step'], line[f'ghm/{name}/valid']) for line in records]


def test_model_without_ghm_records_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    runner = _runner(model, tmp_path, [LocalVisBackend(save_dir=str(tmp_path / 'vis_data'))])
    hook = GHMDensityHook(interval=1)
    warnings = []
    runner.logger = SimpleNamespace(warning=warnings.append)
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    hook.after_train_iter(runner, 0)
    assert len(warnings) == 1 and 'no GHM loss' in warnings[0]
    assert not (tmp_path / 'vis_data' / RECORDS_FILE).exists()


def test_embedded_config_few_iterations_then_plot(tmp_path, monkeypatch):
    """4 real iterations of the embedded GHM config with the hook and MMEngine's TensorBoard
    backend: records of iterations 1, 2, 4, every element of every FPN level counted once, the
    same in TensorBoard's event files; then the plot command draws them."""
    from mmengine.runner import Runner

    from mmdet_ghm.diagnostics.plot import main as plot_main

    monkeypatch.chdir(tmp_path)  # the config's relative data_root: the tiny split lands here
    cfg = Config.fromfile(SHAPES_GHM)
    cfg.merge_from_dict({
        'train_dataloader.dataset.num_images': 8, 'train_dataloader.batch_size': 2,
        # the val split is generated when train() builds the val loop, even if it never runs
        'val_dataloader.dataset.num_images': 2, 'test_dataloader.dataset.num_images': 2,
        'train_cfg.max_epochs': 1, 'default_hooks.logger.interval': 2,
        'default_hooks.checkpoint.interval': 100, 'default_hooks.checkpoint.save_last': False})
    cfg.custom_hooks.append(dict(type='GHMDensityHook', interval=2))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'density_hook_{uuid.uuid4().hex}'
    # MMEngine reuses a visualizer instance of the same name made by an earlier runner in this
    # process (its files then go to that run's directory): give this run its own
    cfg.visualizer.name = f'visualizer_{uuid.uuid4().hex}'
    cfg.visualizer.vis_backends.append(dict(type='TensorboardVisBackend'))
    runner = Runner.from_cfg(cfg)
    runner.train()

    records_file = osp.join(runner.log_dir, 'vis_data', RECORDS_FILE)
    records = _read_records(records_file)
    assert [r['step'] for r in records] == [1, 2, 4]
    model = runner.model
    head = model.bbox_head
    with torch.no_grad():  # elements a loss sees per image: anchors over all levels x channels
        feats = model.extract_feat(torch.zeros(1, 3, 160, 160))
    anchors = sum(f.shape[-2] * f.shape[-1] for f in feats) * head.num_base_priors
    for line in records:
        cls, box = line['ghm/bbox_head.loss_cls'], line['ghm/bbox_head.loss_bbox']
        assert sum(cls['counts']) + cls['invalid'] + cls['nan'] == 2 * anchors * head.num_classes
        assert sum(box['counts']) + box['invalid'] + box['nan'] == 2 * anchors * 4
        assert cls['nan'] == 0 and box['nan'] == 0
        assert sum(box['counts']) % 4 == 0 and sum(box['counts']) > 0  # 4 deltas a positive
        assert len(cls['weights']) == 30 and len(box['weights']) == 10

    # TensorBoard got the same records, beside MMEngine's own training scalars.
    histograms, scalars = _read_events(osp.join(runner.log_dir, 'vis_data'))
    for name in ('bbox_head.loss_cls', 'bbox_head.loss_bbox'):
        for kind in ('gradient_norm', 'harmonized_weight'):
            assert [e.step for e in histograms[f'ghm/{name}/{kind}']] == [1, 2, 4]
        assert [list(e.histogram_value.bucket) for e in histograms[f'ghm/{name}/gradient_norm']
                ] == [line[f'ghm/{name}']['counts'] for line in records]
        assert [e.value for e in scalars[f'ghm/{name}/frac_lowest_bin']] == pytest.approx(
            [line[f'ghm/{name}/frac_lowest_bin'] for line in records])
    assert {'loss', 'loss_cls', 'loss_bbox', 'lr'} <= set(scalars)
    assert [e.step for e in scalars['loss']] == [2, 4]

    out_dir = tmp_path / 'plots'
    assert plot_main([cfg.work_dir, '--out-dir', str(out_dir)]) == 0
    import matplotlib.image
    for figure in ('gradient_norm_distribution', 'reweighted_gradient_norm'):
        for loss in ('loss_cls', 'loss_bbox'):
            image = matplotlib.image.imread(out_dir / f'{figure}_bbox_head.{loss}.png')
            assert image.shape[0] > 400 and image.shape[1] > 600
            assert image[..., :3].std() > 0.05  # not blank
