"Tests of fastai_bmx.app.report.results: the fold summary (the table itself is tested through bmx-compare in test_compare.py)"
import numpy as np, pandas as pd
import fastcore.test as fct
from fastai_bmx.app.report.results import fold_summary


def test_fold_summary():
    rng = np.random.default_rng(0)
    res = pd.DataFrame(dict(method=np.repeat(['CE', 'BMX'], 5), fold=np.tile(range(5), 2),
                            mcc=rng.random(10), kappa=rng.random(10)))
    fs = fold_summary(res)
    fct.test_eq(list(fs.columns), ['mcc', 'kappa'])
    for m in ['CE', 'BMX']:
        v = 100 * res.loc[res.method == m, 'kappa'].values
        fct.test_eq(fs.loc[m, 'kappa'], f'{v.min():.2f} ← {np.median(v):.2f} → {v.max():.2f}')
    num = fold_summary(res, metrics=['mcc'], fmt=False, scale=1)
    fct.test_close(num.loc['BMX', ('mcc', 'median')], np.median(res.loc[res.method == 'BMX', 'mcc']))
    fct.test_fail(lambda: fold_summary(res, by='x'), contains="no column 'x'")



def test_a_report_reads_each_predictions_file_once_and_writes_the_committed_text(tmp_path, monkeypatch):
    "write_report on a copy of a committed comparison: results.md byte for byte, each run's predictions file opened once"
    import shutil
    from pathlib import Path
    from fastai_bmx.app.report.results import write_report, posthoc_results
    from fastai_bmx.app.decide.recommend import fit_folder
    from fastai_bmx.app.run.store import RunFolder
    src = Path(__file__).resolve().parents[2]/'nbs/results/pretrained/ham10000_128'
    out = shutil.copytree(src, tmp_path/'h128')
    opened, load = [], np.load
    monkeypatch.setattr(np, 'load', lambda f, *a, **kw: opened.append(Path(f).name) or load(f, *a, **kw))
    write_report(out)
    fct.test_eq(sorted(opened), sorted(p.name for p in (src/'preds').glob('*.npz')))
    fct.test_eq((out/'results.md').read_bytes(), (src/'results.md').read_bytes())
    folder = RunFolder(out, keep_preds=True)
    pd.testing.assert_frame_equal(posthoc_results(folder, 'mcc', fits=fit_folder(folder, 'mcc')), posthoc_results(folder, 'mcc'))
