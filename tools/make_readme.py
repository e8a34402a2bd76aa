#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb, the docs' home page, so that the two never drift.

nbdev makes the README with `nbdev-readme`, which needs Quarto; Quarto can't be installed on this project's machines.
This is the same conversion with nbconvert's Markdown exporter:

    python tools/make_readme.py           # write README.md
    python tools/make_readme.py --check   # exit 1, saying so, unless README.md is what it would write (CI runs this)

Cells marked `#| hide` are left out and the other `#| ` directives are dropped, as on the docs site. A table that a
code cell shows (a DataFrame) becomes its plain-text form in a code block, for GitHub shows no styled HTML. Links
relative to `nbs/` (`results/...`, `01_mixup.ipynb`) are made relative to the repository's root.
"""
import argparse, re, sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parent.parent
INDEX, README = root/'nbs'/'index.ipynb', root/'README.md'
_LINK = re.compile(r'\]\((?!https?:|mailto:|#|/)([^)\s]+)\)')
_NOTICE = '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, then run the tool. -->\n\n'


def _directives(src:str) -> list:
    "The `#| ` directive lines at the top of a cell"
    return [l for l in src.splitlines() if l.startswith('#|')]


def readme_cells(nb) -> list:
    "The index's cells as the README shows them: no hidden cells, no directives, DataFrames as plain text"
    cells = []
    for c in nb.cells:
        if c.cell_type == 'code' and any(d.split()[1:2] == ['hide'] for d in _directives(c.source)): continue
        c = nbformat.from_dict(dict(c))
        if c.cell_type == 'code':
            c.source = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
            for o in c.get('outputs', []):
                if 'data' in o and 'text/html' in o.data and 'text/plain' in o.data: o.data = {'text/plain': o.data['text/plain']}
        cells.append(c)
    return cells


def make_readme(index:Path=INDEX) -> str:
    "The README's text, from the index notebook"
    nb = nbformat.read(index, as_version=4)
    nb.cells = readme_cells(nb)
    nb.metadata['language_info'] = {'name': 'python'}  # code blocks fenced as python
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = _LINK.sub(lambda m: f'](nbs/{m.group(1)})', body)
    body = re.sub(r'^(# .+)\n> ', r'\1\n\n> ', body, count=1)  # the title, then the description as a quote of its own
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    return _NOTICE + body


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--check', action='store_true', help="don't write: exit 1 unless README.md is up to date")
    args = p.parse_args()
    text = make_readme()
    if not args.check:
        README.write_text(text)
        print(f"Wrote {README.relative_to(root)} from {INDEX.relative_to(root)} ({len(text.splitlines())} lines).")
    elif README.read_text() != text:
        print("README.md is not what nbs/index.ipynb gives: edit the index, then run `python tools/make_readme.py`.", file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__': main()
