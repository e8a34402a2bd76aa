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
