"""tools/regimes_table.py applies docs/regimes.md's decision rule to the comparisons' JSON."""
import importlib.util
import json
import math
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('regimes_table',
                                               osp.join(REPO, 'tools', 'regimes_table.py'))
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)


def _report(path, cells, map75_shift=None):
    shift = map75_shift or {}
    runs = [dict(stem='retinanet_r18-tiny_fpn_' + stem, label=stem, seed=seed,
                 metrics={'coco/bbox_mAP': m, 'coco/bbox_mAP_75': m - shift.get(stem, 0.1)})
            for stem, maps in cells.items() for seed, m in enumerate(maps)]
    path.write_text(json.dumps(dict(runs=runs)))
    return str(path)


def test_rule_and_noise_sign(tmp_path):
    cells = table.load_cells([_report(tmp_path / 'a.json', {
        'ghmc_shapes': [0.60, 0.62, 0.64], 'ghmc-batch_shapes': [0.70, 0.71, 0.72],
        'focal_shapes': [0.70, 0.71, 0.72], 'focal_shapes-drop30': [0.50, 0.51, 0.52],
        'ghmc_shapes-drop30': [0.59, 0.61, 0.63], 'ghmc-bins10_shapes': [0.58]})])
    delta, se, reading = table.compare(cells, 'diff', ('ghmc-batch_shapes', 'ghmc_shapes'), 0.01)
    assert math.isclose(delta, 0.09) and math.isclose(se, math.sqrt((0.02 ** 2 + 0.01 ** 2) / 3))
    assert reading == 'above'
    assert table.compare(cells, 'diff', ('ghmc-batch_shapes', 'focal_shapes'), 0.01)[2] == \
        'no measurable difference'
    assert table.compare(cells, 'diff', ('ghmc_shapes', 'focal_shapes'), 0.01)[2] == 'below'
    # loss to noise: focal loses 0.20, GHM-C 0.01 -> +0.19, above the 0.04 threshold
    delta, se, reading = table.compare(
        cells, 'noise', ('focal_shapes', 'focal_shapes-drop30', 'ghmc_shapes',
                         'ghmc_shapes-drop30'), 0.04)
    assert math.isclose(delta, 0.19) and reading == 'above'
    assert table.compare(cells, 'diff', ('ce_shapes', 'ghmc_shapes'), 0.01)[2].startswith(
        'missing: ce_shapes (0 seeds)')
    text = table.render(cells)
    assert '| `ghmc-bins10_shapes` | `ghmc_shapes` | -0.020 | screened out |' in text
    assert '| `focal-gamma1_shapes` | `focal_shapes` | n/a | not run yet |' in text


def test_fewer_than_three_seeds_is_not_decided(tmp_path):
    cells = table.load_cells([_report(tmp_path / 'a.json', {
        'ghmc_shapes': [0.60, 0.62, 0.64], 'ghmc-batch_shapes': [0.70]})])
    delta, se, reading = table.compare(cells, 'diff', ('ghmc-batch_shapes', 'ghmc_shapes'), 0.01)
    assert math.isclose(delta, 0.08) and se is None
    assert reading == 'not decided: ghmc-batch_shapes has 1 seed(s)'


def test_map75_reading(tmp_path):
    """E2's second condition reads mAP@0.75: here GHM-R is above in bbox mAP, below at 0.75."""
    cells = table.load_cells([_report(tmp_path / 'a.json', {
        'focal-ghmr_shapes-jitter20': [0.70, 0.71, 0.72],
        'focal_shapes-jitter20': [0.60, 0.61, 0.62]},
        map75_shift={'focal-ghmr_shapes-jitter20': 0.3})])
    stems = ('focal-ghmr_shapes-jitter20', 'focal_shapes-jitter20')
    assert table.compare(cells, 'diff', stems, 0.01)[2] == 'above'
    delta, _, reading = table.compare(cells, 'diff', stems, 0.01, 'map75')
    assert math.isclose(delta, -0.1) and reading == 'below'
    assert '| E2 | GHM-R vs smooth L1 under jitter, in mAP@0.75 | -0.100 |' in table.render(cells)
