#!/usr/bin/env python
"""Preview the docs site's pages without Quarto: a standalone HTML page and a full-page screenshot per notebook.

Run it in the project's environment (paths are taken relative to the repository, so from any folder):

    pip install -e ".[dev]"                          # nbdev, nbconvert
    apt-get install -y chromium                      # Debian's headless browser, /usr/bin/chromium
    python tools/preview_docs.py                     # every page in nbs/sidebar.yml, into _preview/
    python tools/preview_docs.py index 01_mixup recipes/own_images --out /tmp/preview

It runs `nbdev-proc-nbs` (nbdev's doc processing into `_proc/`: front matter, `show_doc`, execution of the cells
`show_doc` needs), converts each processed notebook to HTML with nbconvert, keeping the saved outputs and plots
(embedded as images), then saves a screenshot `<page>.png` of each `<page>.html` with headless Chromium. Quarto
renders the real site (`nbdev-docs`); this is a close look at the same content where Quarto isn't available.

It exits 1 and lists the problems if `nbdev-proc-nbs` fails on a notebook, a sidebar entry has no notebook, or a
page shows an error output (a traceback, an `...Error:` line) or links to a local image that doesn't exist. A notebook nbdev can't process is still previewed, as
saved in `nbs/`, with the error on top of its page.
"""
import argparse, re, shutil, subprocess, sys, tempfile
from html.parser import HTMLParser
from pathlib import Path

import nbformat, yaml
from nbconvert import HTMLExporter
from traitlets.config import Config

root = Path(__file__).resolve().parent.parent
nbs_path, proc_path = root/'nbs', root/'_proc'
chrome_flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync', '--hide-scrollbars']

def sidebar_pages(fn=nbs_path/'sidebar.yml'):
    "Notebooks listed in the site's sidebar, in order, as paths relative to `nbs/`"
    def _walk(items):
        for o in items:
            if isinstance(o, str): yield o
            elif 'contents' in o: yield from _walk(o['contents'])
            elif 'href' in o: yield o['href']
    return [o for o in _walk(yaml.safe_load(fn.read_text())['website']['sidebar']['contents']) if o.endswith('.ipynb')]

def _exc_msg(err, n=6):
    "The last exception in the stderr `err` of a failed run: where, the cell's start, and the error"
    i = err.rfind('\nException: ')
    if i<0: return '\n'.join(err.strip().splitlines()[-n:])
    lines = err[i+1:].strip().splitlines()
    return '\n'.join(lines if len(lines)<=n+1 else lines[:n] + ['...', lines[-1]])

def _proc_run(*args):
    "Run `nbdev-proc-nbs` with `args` in the repository (stdin closed: it may try `sudo` to install Quarto)"
    exe = Path(sys.executable).parent/'nbdev-proc-nbs'
    return subprocess.run([str(exe) if exe.exists() else 'nbdev-proc-nbs', *args], cwd=root,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)

def _stale(page):
    "Is the processed copy of `page` missing or older than its notebook?"
    src,dst = nbs_path/page, proc_path/page
    return not dst.exists() or src.stat().st_mtime > dst.stat().st_mtime

def proc_nbs(pages, n_workers=1):
    "Run `nbdev-proc-nbs`; if it fails, re-run it on each stale page to find which fail. Returns {page: error}"
    res = _proc_run('--n-workers', str(n_workers))
    if res.returncode==0: return {}
    errs = {}
    for p in filter(_stale, pages):
        r = _proc_run('--n-workers', '1', '--file-glob', Path(p).name)
        if r.returncode: errs[p] = _exc_msg(r.stderr)
    return errs or {'nbdev-proc-nbs': _exc_msg(res.stderr)}

def _split_opts(src):
    "Split the leading `#| key: value` cell options off `src`"
    opts,lines = {},src.splitlines()
    while lines and lines[0].startswith('#|'):
        k,_,v = lines.pop(0)[2:].partition(':')
        opts[k.strip()] = v.strip().lower()
    return opts,'\n'.join(lines)

def prep_nb(nb):
    "Apply the front matter and Quarto cell options of processed notebook `nb` the way Quarto would; returns the title"
    title,cells = '',[]
    for c in nb.cells:
        c.metadata.pop('execution', None)  # nbdev's run timings, which nbformat's schema rejects
        if c.cell_type=='raw' and c.source.startswith('---'):
            fm = yaml.safe_load(c.source.strip().strip('-')) or {}
            title = fm.get('title', '')
            md = f"# {title}\n\n" + (f"*{fm['description']}*" if fm.get('description') else '')
            cells.append(nbformat.v4.new_markdown_cell(md))
            continue
        if c.cell_type!='code':
            cells.append(c)
            continue
        opts,c.source = _split_opts(c.source)
        if opts.get('include')=='false' or 'hide' in opts: continue
        tags = c.metadata.setdefault('tags', [])
        if opts.get('echo')=='false' or not c.source.strip(): tags.append('rm_input')
        if opts.get('output')=='false': tags.append('rm_output')
        cells.append(c)
    nb.cells = cells
    return title

def to_html(page, dest, src=proc_path, note=''):
    "Convert notebook `src/page` to standalone HTML `dest`, images embedded, with `note` on top if given"
    nb = nbformat.read(src/page, as_version=4)
    title = prep_nb(nb)
    if note: nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        f'**Preview problem** (so shown as saved in `nbs/`, unprocessed):\n\n```\n{note}\n```'))
    cfg = Config({'TagRemovePreprocessor': dict(enabled=True, remove_input_tags={'rm_input'},
                                                remove_all_outputs_tags={'rm_output'})})
    exp = HTMLExporter(config=cfg, template_name='lab', embed_images=True, exclude_input_prompt=True,
                       exclude_output_prompt=True)
    body,_ = exp.from_notebook_node(nb, resources={'metadata': {'name': title or Path(page).stem}})
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body, encoding='utf-8')

class _Outputs(HTMLParser):
    "Collect the text of each cell output area (`div.jp-OutputArea-output`) of an nbconvert page"
    def __init__(self):
        super().__init__()
        self.outs,self.depth = [],0
    def handle_starttag(self, tag, attrs):
        if tag!='div': return
        if self.depth: self.depth += 1
        elif 'jp-OutputArea-output' in (dict(attrs).get('class') or '').split():
            self.depth = 1
            self.outs.append('')
    def handle_endtag(self, tag):
        if tag=='div' and self.depth: self.depth -= 1
    def handle_data(self, data):
        if self.depth: self.outs[-1] += data

_err_re = re.compile(r'Traceback \(most recent call last\)|\b\w*Error\b:|\bename\b')

def page_errors(fn):
    "Lines of `fn`'s cell outputs that look like errors"
    p = _Outputs()
    p.feed(fn.read_text(encoding='utf-8'))
    return [l.strip() for o in p.outs for l in o.splitlines() if _err_re.search(l)]

_img_re = re.compile(r'<img[^>]*\bsrc="([^"]+)"')

def missing_images(fn):
    "Local images that page `fn` links to but that don't exist (embedded `data:` images and web links aren't checked)"
    srcs = [s for s in _img_re.findall(fn.read_text(encoding='utf-8')) if not s.startswith(('data:', 'http:', 'https:'))]
    return [s for s in srcs if not (fn.parent/s).exists()]

def copy_assets(src, dst):
    "Copy the files that pages link to (images, result tables) from `src` to `dst`, so relative links resolve as on the site"
    for f in src.rglob('*'):
        rel = f.relative_to(src)
        if f.is_file() and f.suffix != '.ipynb' and not any(o.startswith(('_', '.')) for o in rel.parts):
            (dst/rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst/rel)

def _chrome(chrome, url, *args, timeout=120):
    "Run headless `chrome` on `url` with a fresh profile"
    with tempfile.TemporaryDirectory() as prof:
        return subprocess.run([chrome, *chrome_flags, f'--user-data-dir={prof}', *args, url],
                              capture_output=True, text=True, timeout=timeout)

_measure = '<script>addEventListener("load", () => document.body.dataset.pageHeight = document.documentElement.scrollHeight)</script>'

def page_height(chrome, fn, width, default=16000):
    "Height of page `fn` at `width`, measured in Chromium (`default` if that fails)"
    tmp = fn.with_name(f'.{fn.stem}-measure.html')
    tmp.write_text(fn.read_text(encoding='utf-8').replace('</head>', _measure+'</head>', 1), encoding='utf-8')
    try: dom = _chrome(chrome, tmp.resolve().as_uri(), f'--window-size={width},800', '--dump-dom').stdout
    finally: tmp.unlink()
    m = re.search(r'data-page-height="(\d+)"', dom)
    return int(m.group(1)) if m else default

def screenshot(chrome, fn, width=1280, max_height=30000):
    "Save a full-page screenshot of HTML page `fn` next to it, as a `.png`"
    png = fn.with_suffix('.png')
    h = min(page_height(chrome, fn, width), max_height)
    res = _chrome(chrome, fn.resolve().as_uri(), f'--window-size={width},{h}', f'--screenshot={png}')
    if not png.exists(): raise RuntimeError(f'Chromium made no screenshot of {fn}:\n{res.stderr[-2000:]}')
    return png,h

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('pages', nargs='*', help='pages to preview, as in nbs/sidebar.yml, .ipynb optional (default: all)')
    ap.add_argument('--out', type=Path, default=root/'_preview', help='folder for the HTML pages and screenshots')
    ap.add_argument('--width', type=int, default=1280, help='browser window width in pixels')
    ap.add_argument('--n_workers', type=int, default=1, help='workers for nbdev-proc-nbs')
    ap.add_argument('--no_proc', action='store_true', help='use _proc/ as it is, without running nbdev-proc-nbs')
    ap.add_argument('--chromium', default='chromium', help='the Chromium executable')
    args = ap.parse_args()

    chrome = shutil.which(args.chromium)
    if not chrome: sys.exit(f'{args.chromium} not found: apt-get install -y chromium (or pass --chromium)')
    errs = {}
    listed = sidebar_pages()
    for p in listed:
        if not (nbs_path/p).exists(): errs[p] = 'listed in nbs/sidebar.yml, but there is no such notebook'
    unlisted = sorted(str(f.relative_to(nbs_path)) for f in nbs_path.rglob('*.ipynb')
                      if not any(o.startswith(('_','.')) for o in f.relative_to(nbs_path).parts))
    for p in sorted(set(unlisted)-set(listed)): print(f'note: {p} is not in nbs/sidebar.yml, so not on the site')
    pages = [p if p.endswith('.ipynb') else p+'.ipynb' for p in args.pages] or listed
    for p in pages:
        if not (nbs_path/p).exists(): errs.setdefault(p, 'no such notebook in nbs/')
    pages = [p for p in pages if p not in errs]

    if not args.no_proc:
        print('nbdev-proc-nbs ...', flush=True)
        errs.update(proc_nbs(pages, args.n_workers))
    copy_assets(nbs_path, args.out)
    for p in pages:
        if p not in errs and not (proc_path/p).exists(): errs[p] = 'not in _proc/: run nbdev-proc-nbs'
        html = args.out/Path(p).with_suffix('.html')
        # a page nbdev could not process is still shown, from its saved outputs, with the error on top
        if p in errs: to_html(p, html, nbs_path, note=errs[p])
        else: to_html(p, html)
        png,h = screenshot(chrome, html, args.width)
        print(f'{p}: {png.relative_to(args.out)} ({args.width}x{h})', flush=True)
        if e := page_errors(html): errs[p] = errs.get(p, '') + '\nerror output in the page:\n' + '\n'.join(e[:20])
        if m := missing_images(html): errs[p] = errs.get(p, '') + '\nimages the page links to but that are missing:\n' + '\n'.join(m)
    if errs:
        print(f'\n{len(errs)} problem(s):', file=sys.stderr)
        for k,v in errs.items(): print(f'\n== {k}\n{v}', file=sys.stderr)
        sys.exit(1)
    print(f'all {len(pages)} pages fine, in {args.out}')

if __name__=='__main__': main()
