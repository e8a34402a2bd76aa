"The Results page shows what the committed reports hold: each table's saved output is what its cell renders from them now"
import json, re
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

_INTERVAL = re.compile(r'([+−-]?\d+\.\d+) \[([+−-]?\d+\.\d+), ([+−-]?\d+\.\d+)\]')  # "+5.73 [+1.64, +9.82]"

def _intervals(text:str, digits:int|None=None) -> set:
    "The paired differences with their intervals in a text, as (diff, lo, hi), rounded to `digits` if given"
    num = lambda x: float(x.replace('−', '-'))
    return {tuple(round(num(v), digits) if digits is not None else num(v) for v in m.groups()) for m in _INTERVAL.finditer(text)}

def test_every_interval_the_home_page_quotes_is_one_the_results_page_computes():
    "The home page's one line per comparison (and so the README's) quotes, rounded, intervals that the Results page's cells compute from the reports"
    quoted = _intervals(next(''.join(c['source']) for c in json.loads((NBS/'index.ipynb').read_text())['cells']
                             if ''.join(c['source']).startswith('## What it found')))
    computed = set()
    for cell in json.loads((NBS/'results.ipynb').read_text())['cells']:
        for o in cell.get('outputs', []):
            for text in list(o.get('data', {}).values()) + [o.get('text', '')]:
                computed |= _intervals(''.join(text) if isinstance(text, list) else str(text), digits=1)
    assert len(quoted) >= 9, quoted  # both fine-tuned comparisons, the H100 ones and the frontier's
    missing = quoted - computed
    assert not missing, (f"index.ipynb quotes {sorted(missing)}, which no output of results.ipynb shows: quote the page's "
                         "numbers, then run tools/make_readme.py")


def test_the_rules_table_is_what_the_tool_computes_from_the_committed_folders():
    "nbs/results/rules/rules.md, which the Results page shows, is what tools/recommendation_rules.py gives from the committed predictions now"
    import importlib.util
    spec = importlib.util.spec_from_file_location('recommendation_rules', NBS.parent/'tools'/'recommendation_rules.py')
    tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
    assert (NBS/'results'/'rules'/'rules.md').read_text() == tool.markdown(), \
        "rules.md differs from what the rules give now: run python tools/recommendation_rules.py, then execute the Results page's cell again"
