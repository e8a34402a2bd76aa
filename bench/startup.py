"""Start-up of the console scripts: `bmx-compare --help`, `bmx-report --help` and a refused option, whole processes.

    python bench/startup.py [--runs 10] [--base /path/to/other/checkout]
    python bench/startup.py --run CHECKOUT SCRIPT [ARG ...]   # one call, as its console script makes it (what is timed)

Each command is timed from outside, from the start of a fresh Python process to its exit (`time.perf_counter` around
`subprocess.run`), imports included: that is what a user waits for. With `--base`, the same command also runs in
another checkout of this repository (e.g. `git worktree add /tmp/base HEAD` of an older revision), imported from
there, and the two alternate, A B A B ..., so that a drift of the machine's speed falls on both; the ratio is taken
pair by pair. Each command is called as its console script calls it, from a file (`--run`): the entry point of that
checkout's `pyproject.toml` ([project.scripts]) imported, `sys.argv` set, and the entry point called at the top level
of the script. (Not from `python -c`, nor inside a function: there fastcore's `call_parse` takes the entry point for
a plain function and runs it with its defaults, a whole comparison, instead of reading `sys.argv`.) The script prints the median, min and max of
each, and the median ratio, and checks that each exits as it should (0 for --help, 2 for the refusal).
"""
import argparse, importlib, re, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {'bmx-compare --help': ('bmx-compare', ['--help'], 0), 'bmx-report --help': ('bmx-report', ['--help'], 0),
         'bmx-compare --epochs 0': ('bmx-compare', ['--epochs', '0'], 2)}

def entry_point(root:Path, script:str) -> tuple:
    "(module, function) of `script` in the [project.scripts] of `root`'s pyproject.toml"
    m = re.search(rf'^{re.escape(script)}\s*=\s*"([\w.]+):(\w+)"', (root/'pyproject.toml').read_text(), re.M)
    return m.group(1), m.group(2)

def command(root:Path, script:str, args:list) -> list:
    "A fresh Python that imports `script`'s entry point from `root` and calls it with `args`"
    return [sys.executable, __file__, '--run', str(root), script, *args]

def load(root:Path, script:str):
    "`script`'s entry point, imported from `root`"
    sys.path.insert(0, str(root))
    mod, fn = entry_point(root, script)
    return getattr(importlib.import_module(mod), fn)

def timed(cmd:list, status:int) -> float:
    "Seconds `cmd` took, start to exit; raise unless it exits with `status`"
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != status: raise SystemExit(f"{' '.join(cmd[2:])} exited {r.returncode}, not {status}: {r.stderr[-500:]}")
    return dt

def fmt(ts:list) -> str: return f"median {statistics.median(ts):.3f} s (min {min(ts):.3f}, max {max(ts):.3f})"

if __name__ == '__main__' and sys.argv[1:2] == ['--run']:  # called here, at the top level of a script, `call_parse` reads sys.argv
    entry, sys.argv = load(Path(sys.argv[2]), sys.argv[3]), sys.argv[3:]
    entry()
elif __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--base', type=Path, default=None, help='another checkout to compare with (B)')
    a = ap.parse_args()
    for name, (script, args, status) in CASES.items():
        cmds = [command(ROOT, script, args)] + ([command(a.base.resolve(), script, args)] if a.base else [])
        for c in cmds: timed(c, status)  # warm-up: the files in the page cache, the bytecode compiled
        times = [[timed(c, status) for c in cmds] for _ in range(a.runs)]
        line = f"{name}: this checkout {fmt([t[0] for t in times])}"
        if a.base: line += f"; base {fmt([t[1] for t in times])}; ratio {statistics.median(t[0] / t[1] for t in times):.3f}"
        print(line, flush=True)
