"Tests of fastai_bmx.app.report: the fold summary (the table itself is tested through bmx-compare in test_compare.py)"
import numpy as np, pandas as pd
import fastcore.test as fct
from fastai_bmx.app.report import fold_summary


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

