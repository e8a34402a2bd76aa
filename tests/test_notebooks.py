"Saved notebook outputs are what the docs show: they must hold no errors and nothing of the machine they ran on"
import json, re
from pathlib import Path
import pytest

NBS_DIR = Path(__file__).resolve().parents[1]/'nbs'
# nbs/*.ipynb and the recipes in nbs/recipes/, not checkpoints or build folders (names starting with '.' or '_')
NBS = sorted(p for p in NBS_DIR.rglob('*.ipynb') if not any(s.startswith(('.', '_')) for s in p.relative_to(NBS_DIR).parts))
_LOCAL = re.compile(r'(/work/|/root/|/home/|/tmp/|site-packages|\.venv)')

def _outputs(nb_path):
    for i, cell in enumerate(json.loads(nb_path.read_text())['cells']):
        for out in cell.get('outputs', []): yield i, out

def test_notebooks_found():
    assert len(NBS) >= 2
    assert len([p for p in NBS if p.parent.name == 'recipes']) >= 4, 'the recipes in nbs/recipes/ are not checked'

@pytest.mark.parametrize('nb', NBS, ids=[p.relative_to(NBS_DIR).as_posix() for p in NBS])
def test_saved_outputs_clean(nb):
    for i, out in _outputs(nb):
        assert out['output_type'] != 'error', f"{nb.relative_to(NBS_DIR)} cell {i} saved an error: {out.get('ename')}"
        text = ''.join(out.get('text', [])) + ''.join(''.join(v) for k, v in out.get('data', {}).items() if k.startswith('text/'))
        assert not re.search(r'Traceback|Error:', text), f"{nb.relative_to(NBS_DIR)} cell {i} shows an error in its output"
        m = _LOCAL.search(text)
        assert m is None, f"{nb.relative_to(NBS_DIR)} cell {i} output shows a local path ({m and m.group(0)}); rerun without warnings"
