"The Results page shows what the committed reports hold: each table's saved output is what its cell renders from them now"
import json
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1]/'nbs'

def _run(src:str, env:dict):
    "A cell's value: an expression is evaluated, anything else executed (None)"
    body = src.split('\n', 1)[1]
    try: code = compile(body, 'cell', 'eval')
    except SyntaxError: exec(body, env); return None
    return eval(code, env)

def test_results_page_tables_match_the_committed_reports(monkeypatch):
    pytest.importorskip('IPython')
    monkeypatch.chdir(NBS)  # the page's cells name the folders relative to nbs/, as the docs build runs them
    env, checked = {}, 0
    for i, cell in enumerate(json.loads((NBS/'results.ipynb').read_text())['cells']):
        src = ''.join(cell['source'])
        if cell['cell_type'] != 'code' or not src.startswith(('#| hide', '#| echo: false')): continue
        got = _run(src, env)
        if got is None: continue
        saved = [''.join(o['data']['text/markdown']) for o in cell['outputs'] if 'text/markdown' in o.get('data', {})]
        assert saved == [got.data], (f"results.ipynb cell {i} shows a table that its report no longer holds: execute the page again "
                                     "(jupyter nbconvert --execute --inplace nbs/results.ipynb, then nbdev-clean)")
        checked += 1
    assert checked >= 12, checked  # every comparison's table, HAM10000's included

def _tables(md:str) -> list:
    "The markdown tables in a text, each as its rows of cells (the separator row left out)"
    tables, rows = [], []
    for line in md.splitlines() + ['']:
        if line.startswith('|'): rows.append([c.strip() for c in line.strip().strip('|').split('|')]); continue
        if rows: tables.append([r for r in rows if set(''.join(r)) != {'-'}]); rows = []
    return tables

_INDEX_NAMES = {'kappa': 'quadratic_kappa', 'MCC': 'mcc', 'bal. acc.': 'balanced_accuracy'}  # index column -> page column

def test_index_fine_tuned_tables_are_the_results_page_rows():
    "The home page (and so the README) shows the fine-tuned comparisons' rows exactly as the Results page has them"
    cells = json.loads((NBS/'index.ipynb').read_text())['cells']
    index_md = next(''.join(c['source']) for c in cells if ''.join(c['source']).startswith('### Fine-tuned'))
    shown = _tables(index_md)
    page = {}
    for cell in json.loads((NBS/'results.ipynb').read_text())['cells']:
        src = ''.join(cell['source'])
        for folder in ('retinamnist_64', 'ham10000_128'):
            if cell['cell_type'] == 'code' and 'with_paired' in src and f"results/pretrained/{folder}'" in src:
                page[folder] = _tables(''.join(cell['outputs'][0]['data']['text/markdown']))[0]
    assert len(shown) == 2 and set(page) == {'retinamnist_64', 'ham10000_128'}, (len(shown), set(page))
    for rows, folder in zip(shown, ('retinamnist_64', 'ham10000_128')):
        full = page[folder]
        idx = [full[0].index(_INDEX_NAMES.get(h, h)) for h in rows[0]]
        want = [[r[i] for i in idx] for r in full[1:]]
        assert rows[1:] == want, (f"index.ipynb's {folder} table is not the Results page's: copy the rows again, "
                                  "then run tools/make_readme.py")
