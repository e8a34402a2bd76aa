"README.md is generated from the docs' index notebook (tools/make_readme.py), never edited by hand"
import importlib.util, json
from pathlib import Path
import nbformat
import fastcore.test as fct

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('make_readme', ROOT/'tools'/'make_readme.py')
make_readme = importlib.util.module_from_spec(spec); spec.loader.exec_module(make_readme)


def test_readme_is_what_the_index_gives():
    assert (ROOT/'README.md').read_text() == make_readme.make_readme(), \
        "README.md differs from nbs/index.ipynb: edit the index, then run `python tools/make_readme.py`"


def test_a_newcomer_reads_the_readme_in_five_minutes():
    n = len((ROOT/'README.md').read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines: keep it to 250, with the full tables on the Results page and one line per comparison"


def test_the_conversion_drops_hidden_cells_and_directives_and_fixes_links(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell('# pkg\n> what it is'),
                nbformat.v4.new_code_cell("#| hide\nimport secret_setup"),
                nbformat.v4.new_markdown_cell('See [the report](results/a/results.md), [a page](01_x.ipynb), [web](https://x.org) and [up](#top).'),
                nbformat.v4.new_code_cell("#| slow\nx = 1\nx")]
    nb.cells[-1].outputs = [nbformat.v4.new_output('execute_result', {'text/plain': '1', 'text/html': '<b>1</b>'}, execution_count=1)]
    nbformat.write(nb, tmp_path/'index.ipynb')
    text = make_readme.make_readme(tmp_path/'index.ipynb')
    assert 'secret_setup' not in text and '#|' not in text
    assert '# pkg\n\n> what it is' in text
    assert '](nbs/results/a/results.md)' in text and '](nbs/01_x.ipynb)' in text and '](https://x.org)' in text and '](#top)' in text
    assert '```python\nx = 1\nx\n```' in text and '<b>' not in text and '    1' in text  # the plain text of the output
