"The trade-off frontier: Pareto fronts and their relations (properties), the runs --frontier plans, and its two files"
import numpy as np, pandas as pd, pytest
from hypothesis import given, settings, strategies as st
import fastcore.test as fct
from PIL import Image
from fastai_bmx.app.report.frontier import pareto_mask, front_relation, frontier_families, write_frontier, front_table, knob_label
from fastai_bmx.app.compare import plan_compare
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.plan.sources import RunRecord

points = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(points)
def test_pareto_mask_keeps_exactly_the_unbeaten_points(pts):
    p = np.array(pts, float)
    beaten = [any((q >= r).all() and (q > r).any() for q in p) for r in p]
    fct.test_eq(list(pareto_mask(p[:, 0], p[:, 1])), [not b for b in beaten])
    assert pareto_mask(p[:, 0], p[:, 1]).any()  # a finite set always has a front


@settings(max_examples=200, deadline=None)
@given(points, points)
def test_front_relations_are_consistent(a, b):
    r, back = front_relation(a, b), front_relation(b, a)
    fct.test_eq(back, {'dominates': 'lies inside', 'lies inside': 'dominates', 'crosses': 'crosses', 'matches': 'matches'}[r])
    if r == 'dominates':  # every point of b is matched or beaten by one of a
        A = np.array(a, float)
        assert all(((A >= q).all(1)).any() for q in np.array(b, float))


def test_shifted_fronts():
    curve = [(0.4, 0.6), (0.5, 0.55), (0.6, 0.45)]
    fct.test_eq(front_relation([(x + .01, y) for x, y in curve], curve), 'dominates')
    fct.test_eq(front_relation(curve, [(x, y + .01) for x, y in curve]), 'lies inside')
    fct.test_eq(front_relation(curve, curve), 'matches')


def test_frontier_plans_each_family_and_shares_the_paper_runs(tmp_path):
    plan = plan_compare('digits', tmp_path/'out', frontier=True, seeds=[0], epochs=1, arch='resnet10t')
    fams = plan.frontier['families']
    fct.test_eq(fams['resampling'], ['instance', 'sample-0.75', 'sqrt', 'sample-0.25', 'class'])
    fct.test_eq(fams['bmx'], ['bmx-0.1', 'bmx-0.2', 'bmx-0.3', 'bmx-0.5', 'bmx-1', 'bmx-2'])
    fct.test_eq(fams['la'], ['la-0.5', 'la-1', 'la-2'])
    fct.test_eq(len(plan.names), 14)
    fct.test_eq(plan.frontier['taus'], [0.5, 1., 2.])
    plan = plan_compare('digits', tmp_path/'out', frontier=True, methods=['focal'], alphas=[0.2], qs=[1, 0], taus=[1], seeds=[0])
    fct.test_eq(plan.names, ['instance', 'class', 'bmx-0.2', 'la-1', 'focal'])
    assert not (tmp_path/'out').exists()  # planning writes nothing
    with pytest.raises(ValueError, match='frontier_x'): plan_compare('digits', tmp_path/'out', frontier=True, frontier_x='accuracy')
    with pytest.raises(ValueError, match=r'not a number in \[0, 1\]'): plan_compare('digits', tmp_path/'out', frontier=True, qs=[1.5])


def test_write_frontier_from_a_folder(tmp_path):
    "Made-up runs where the answer is known: bmx trades like resampling but with fewer errors, so its front dominates"
    rng = np.random.default_rng(0)
    t = rng.choice(3, 600, p=[.8, .15, .05])
    def probs(bias, skill, seed):
        r = np.random.default_rng(seed)
        hit = r.random(len(t)) < skill * np.where(t == 0, 1 - bias, 0.3 + bias)
        return np.eye(3)[np.where(hit, t, np.where(t == 0, r.integers(1, 3, len(t)), 0))] * .9 + .05
    folder = RunFolder(tmp_path)
    folder.save_settings(dict(data='toy.npz', arch='toy', epochs=1, monitor='accuracy'))
    folder.save_record(RunRecord('toy', ('a', 'b', 'c'), (800, 150, 50), ordinal=False, flip=False))
    knobs = {'instance': (0, .8), 'sqrt': (.3, .8), 'class': (.6, .8), 'bmx-0.1': (.05, .97), 'bmx-0.3': (.3, .97), 'bmx-1': (.6, .97)}
    for i, (m, (bias, skill)) in enumerate(knobs.items()):
        for s in range(3): folder.add_run(dict(run=f'{m}_seed{s}', seed=s, fold=None, method=m), probs(bias, skill, 10*s + i), t)
    fams = frontier_families(alphas=[0.1, 0.3, 1], qs=[1, 0.5, 0], taus=[1])
    pts = write_frontier(tmp_path, fams, taus=[1])
    fct.test_eq(sorted(pts.family.unique()), ['bmx', 'post hoc', 'resampling'])  # no la runs: no la points
    fct.test_eq(front_table(pts).loc['bmx', 'resampling'], 'dominates')
    assert Image.open(tmp_path/'frontier.png').size[0] > 500
    md = (tmp_path/'frontier.md').read_text()
    assert '| bmx | bmx-0.3 |' in md and '## At matched balanced_accuracy' in md and 'better' in md
    fct.test_eq([knob_label(s) for s in ('sqrt', 'sample-0.75', 'bmx-0.2', 'la-1', 'instance, post hoc τ=2')], ['q=0.5', 'q=0.75', 'α=0.2', 'τ=1', 'τ=2'])
