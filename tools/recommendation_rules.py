#!/usr/bin/env python
"""The evidence for the recommendation's default rule: what each rule chooses in every committed comparison.

    python tools/recommendation_rules.py            # writes nbs/results/rules/rules.md (about a minute, no training)

For each committed folder under nbs/results/ whose runs saved their validation predictions, under the old rule (the
best validation mean, tuned variants scored in sample) and each rule of `fastai_bmx.app.plan.validate.RULES` (tuned
variants scored out of fold): the setting chosen (on validation only), its test score paired against the reference
(instance sampling), and its cost against the test-best setting, each with its 95% interval (seeds and resampled test
items). The test-best is itself the best of many test scores, so it flatters itself:
the cost against it is an upper bound on what choosing on validation lost.
"""
from pathlib import Path
import numpy as np, pandas as pd
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.report.results import pick_reference
from fastai_bmx.app.plan.validate import RULES
from fastai_bmx.app.decide.recommend import fit_folder, recommend
from fastai_bmx.app.plan.methods import method_order
from fastai_bmx.app.report.tables import to_markdown

root = Path(__file__).resolve().parent.parent
RESULTS, OUT = root/'nbs'/'results', root/'nbs'/'results'/'rules'/'rules.md'
SIX = ('frontier/retinamnist', 'pretrained/retinamnist_64', 'pretrained/ham10000_128', 'frontier/dermamnist',
       'h100/retinamnist', 'h100/dermamnist')


def ci(d:dict, same:str) -> str:
    "A paired interval in points, or `same` where the two settings are one"
    if d.get('verdict') == 'the same setting': return same
    return f"{100*d['diff']:+.2f} [{100*d['lo']:+.2f}, {100*d['hi']:+.2f}]"


def folders() -> list:
    "The committed comparisons of one class per image whose runs saved their validation predictions"
    out = []
    for s in sorted(RESULTS.rglob('settings.json')):
        f = RunFolder(s.parent)
        if f.record.multi_label or not len(f.results()): continue  # findings: their recommendation is another one
        if f.preds(f.results().run.iloc[0], 'valid') is not None: out.append(f)
    return out

OLD = 'best, in sample (old)'  # the rule before tuned variants were scored out of fold
RUN_AS = {OLD: dict(rule='best', out_of_fold=False), **{rule: dict(rule=rule) for rule in RULES}}


def rows() -> pd.DataFrame:
    out = []
    for f in folders():
        main = f.read_json('settings.json')['monitor']
        fits = fit_folder(f, main)
        reference = pick_reference(sorted(f.results()['method'].unique(), key=method_order), None)
        for rule, how in RUN_AS.items():
            r = recommend(f, main, reference, fits, **how)
            where = str(f.path.relative_to(RESULTS))
            out.append(dict(folder=where, metric=main, valid_items=r.valid_items, runs=r.runs, rule=rule,
                            chosen=r.setting, vs_reference=ci(r.vs_reference, 'it is instance'),
                            worse=r.vs_reference['hi'] < 0, cost=ci(r.cost, '0: it tested best'),
                            cost_points=100*r.cost['diff'], test_best=r.test_best,
                            methods=f.results()['method'].nunique()))
    return pd.DataFrame(out)


def markdown() -> str:
    "rules.md: the summary per rule, then every folder's choice under each rule"
    df = rows()
    kept = lambda c: int((c == 'instance').sum())
    several = lambda c: c[df.loc[c.index, 'methods'] > 1].mean()
    summary = df.groupby('rule', sort=False).agg(folders=('folder', 'size'), mean_cost=('cost_points', 'mean'),
                                                 worse_than_reference=('worse', 'sum'), reference_kept=('chosen', kept),
                                                 mean_cost_several_methods=('cost_points', several))
    six = df[df.folder.isin(SIX)].groupby('rule', sort=False)['cost_points'].mean()  # the folders its issue named
    summary.insert(2, 'mean_cost_six', six)
    summary.insert(3, 'mean_cost_several_methods', summary.pop('mean_cost_several_methods'))
    for c in ('mean_cost', 'mean_cost_six', 'mean_cost_several_methods'):
        summary[c] = summary[c].map(lambda v: f'{v:+.2f}')
    names = {'vs_reference': 'test Δ vs instance [95%]', 'cost': 'cost vs test-best [95%]'}
    table = df.drop(columns=['cost_points', 'worse']).rename(columns=names)
    return ("# The recommendation's rules on the committed comparisons\n\n"
            "Written by `python tools/recommendation_rules.py`.\n\n"
            f"{to_markdown(summary)}\n\n{to_markdown(table.set_index('folder'))}\n")


if __name__ == '__main__':
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(markdown())
    print(OUT.read_text())
