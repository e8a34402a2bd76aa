#!/usr/bin/env python
"""Which recommendation rule costs least, on simulated comparisons whose truth is known (issue 42): the report.

    python tools/rule_simulation_report.py                 # writes nbs/results/rules/simulation.md and simulation.png
    python tools/rule_simulation_report.py --reps 200      # fewer replicates per cell: faster, larger Monte-Carlo error
    python tools/rule_simulation_report.py --no-folders    # the simulation only, without the 18 committed folders
    python tools/rule_simulation_report.py --grid g.csv    # keep the grid's costs in g.csv, or read them from it

The simulated comparisons and the rules are `tools/rule_simulation.py` (its docstring gives the setup). Here
`run_grid` runs every cell of `GRID` (seeds S, settings K, validation items n, the reference's strength μ, the
spread τ) and reports each rule's mean cost over `--reps` replicates with its Monte-Carlo standard error, and its
excess over the cell's best fixed rule, paired; `noise_table` how noisy a validation lead is; `plot` and `markdown`
the figure and the page. Then `folder_table` applies `shrink` and `shrink-own` to the committed comparisons that
`tools/recommendation_rules.py` reads (`folder_choices`: the tool's own paired validation leads and se's, the tool
unchanged), beside the tool's rules' costs from that script's `rows`. About 10 minutes on two shared cores: the grid
4–8 (1,000 replicates a cell), the folders 4; `--seed` makes it reproducible.
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, pandas as pd
from rule_simulation import (FIXED, PREVALENCE, REF_MCC, RHO_ITEM, RHO_SETTING, RULES, SIGMA_SEED, shrink_factors,
                             shrunk_leads, simulate_cell, simulate_runs, top_or_reference, valid_view)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT/'nbs'/'results'/'rules'
GRID = dict(S=(1, 3), K=(2, 4, 14, 40), n=(50, 100, 200, 500, 1000, 2000), mu=(-3., 0., 3.), tau=(1., 3., 5.))


def grid_cells(grid:dict=GRID) -> list:
    "Every combination of the grid's values, one dict per cell"
    keys = list(grid)
    return [dict(zip(keys, v)) for v in np.array(np.meshgrid(*grid.values(), indexing='ij'), dtype=object)
            .reshape(len(keys), -1).T]


def run_grid(reps:int=1000, seed:int=0, grid:dict=GRID, progress:bool=False) -> pd.DataFrame:
    "One row per cell and rule: mean cost, its Monte-Carlo se, and the excess over the cell's best fixed rule (paired)"
    rows, cells = [], grid_cells(grid)
    for i, cell in enumerate(cells):
        cell = dict(S=int(cell['S']), K=int(cell['K']), n=int(cell['n']), mu=float(cell['mu']), tau=float(cell['tau']))
        costs, kept = simulate_cell(np.random.default_rng([seed, i]), reps=reps, **cell)
        ref = min(FIXED, key=lambda r: costs[r].mean())  # the best fixed rule in this cell
        for r, c in costs.items():
            x = c - costs[ref]
            rows.append(dict(cell, rule=r, cost=c.mean(), se=c.std(ddof=1)/np.sqrt(reps), kept=kept[r],
                             best_fixed=ref, excess=x.mean(), excess_se=x.std(ddof=1)/np.sqrt(reps)))
        if progress and i % 36 == 35: print(f'{i + 1}/{len(cells)} cells', file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def noise_table(reps:int=200, seed:int=0, ns=GRID['n']) -> pd.DataFrame:
    "Per validation size and seeds: the actual sd of a validation lead, and the tool's se of it (rms), in points"
    rows = []
    for S in GRID['S']:
        for n in ns:
            rng = np.random.default_rng([seed, 999, S, n])
            theta = REF_MCC + np.concatenate([np.zeros((reps, 1)), 3*rng.standard_normal((reps, 5))], 1)/100
            view = valid_view(*simulate_runs(rng, theta, S, n))
            err = view['diff'][:, 1:] - (theta[:, 1:] - theta[:, :1])
            rows.append(dict(seeds=S, valid_items=n, lead_sd=100*err.std(),
                             tool_se=100*np.sqrt((view['se'][:, 1:]**2).mean()),
                             coverage_95=(np.abs(err) < view['diff'][:, 1:] - view['lo'][:, 1:]).mean()))
    return pd.DataFrame(rows)


def verdicts(df:pd.DataFrame, z:float=2.) -> pd.DataFrame:
    "Per rule: cells where it is within `z` Monte-Carlo se of the best fixed rule, its mean and its largest excess"
    df = df.assign(ok=df.excess <= z*df.excess_se)
    worst = df.loc[df.groupby('rule', sort=False).excess.idxmax()].set_index('rule')
    out = df.groupby('rule', sort=False).agg(cells=('ok', 'size'), within_error=('ok', 'sum'),
                                            mean_cost=('cost', 'mean'), mean_excess=('excess', 'mean'),
                                            max_excess=('excess', 'max'))
    out['worst_cell'] = [f"S={w.S} K={w.K} n={w.n} μ={w.mu:+g} τ={w.tau:g}" for w in worst.loc[out.index].itertuples()]
    return out


def folder_choices() -> pd.DataFrame:
    "Per committed folder: what `shrink` and `shrink-own` choose, with the tool's paired validation leads, and the cost"
    from recommendation_rules import folders, RESULTS
    from fastai_bmx.app.report.results import pick_reference
    from fastai_bmx.app.plan.methods import method_order
    from fastai_bmx.app.decide.recommend import (fit_folder, recommend, valid_decisions, candidate_scores,
                                                 Candidates)
    out = []
    for f in folders():
        main = f.read_json('settings.json')['monitor']
        fits = fit_folder(f, main)
        reference = pick_reference(sorted(f.results()['method'].unique(), key=method_order), None)
        rec = recommend(f, main, reference, fits)  # the rule `best`: its test-best, and the runs it left out
        decisions = valid_decisions(f, main, fits)
        rows = candidate_scores(f, main, fits, decisions)
        rows = rows[~rows.run.isin(rec.left_out)]  # the ranked runs, as `recommend` ranks them
        cands = Candidates(f, main, fits, decisions, f.record.counts, rows)
        means = rows.groupby('setting', sort=False).valid.mean()
        ivs = {s: cands.on_valid(s, reference) for s in means.index if s != reference}
        settings = [reference] + [s for s, v in ivs.items() if v is not None]
        d = np.array([[0.] + [ivs[s]['diff'] for s in settings[1:]]])
        se = np.array([[0.] + [ivs[s]['se'] for s in settings[1:]]])
        mean = means.loc[settings].values[None]
        m, tau2, _ = shrink_factors(d[:, 1:], se[:, 1:]**2)
        row = dict(folder=str(f.path.relative_to(RESULTS)), valid_items=rec.valid_items, settings=len(settings),
                   tau_hat=100*float(np.sqrt(tau2[0, 0])) if np.isfinite(tau2[0, 0]) else np.nan,
                   mean_lead=100*float(m[0, 0]), test_best=rec.test_best)
        for name, s2 in (('shrink', se**2), ('shrink-own', se**2/2)):
            x = np.concatenate([d[:, :1], shrunk_leads(d[:, 1:], s2[:, 1:])], 1)
            chosen = settings[int(top_or_reference(x, mean)[0])]
            cost = 0. if chosen == rec.test_best else -100*cands.on_test(chosen, rec.test_best)['diff']
            row.update({f'{name}_chosen': chosen, f'{name}_cost': cost})
        out.append(row)
    return pd.DataFrame(out)


def plot(df:pd.DataFrame, path:Path, S:int=3, tau:float=3., Ks=(4, 14, 40)):
    "Cost against validation items (log x), one line per rule; a panel per number of settings and reference strength"
    from matplotlib.figure import Figure
    mus = sorted(df.mu.unique())
    fig = Figure(figsize=(4*len(mus), 3*len(Ks)), layout='constrained')
    axs = fig.subplots(len(Ks), len(mus), sharex=True, squeeze=False)
    strength = {-3.: 'reference strong', 0.: 'reference typical', 3.: 'reference weak'}
    for i, K in enumerate(Ks):
        for j, mu in enumerate(mus):
            ax, d = axs[i, j], df[(df.S == S) & (df.tau == tau) & (df.K == K) & (df.mu == mu)]
            for r, g in d.groupby('rule', sort=False):
                g = g.sort_values('n')
                style = dict(color='gray', ls='--') if r == 'oracle' else dict(marker='o', ms=3)
                ax.errorbar(g.n, g.cost, yerr=2*g.se, label=r, capsize=2, lw=1.2, **style)
            ax.set_xscale('log')
            ax.set_title(f'K = {K} settings, μ = {mu:+g} ({strength.get(mu, "")})', fontsize=9)
            if j == 0: ax.set_ylabel('cost (points of MCC)')
            if i == len(Ks) - 1: ax.set_xlabel('validation items')
    axs[0, -1].legend(fontsize=7)
    fig.suptitle(f'Expected cost of each rule against the truly best setting ({S} seeds, spread τ = {tau:g} points; '
                 'bars: ±2 Monte-Carlo se)', fontsize=10)
    fig.savefig(path, dpi=110)


def _md(df:pd.DataFrame) -> str:
    "`to_markdown`, a MultiIndex spread over columns of its own"
    from fastai_bmx.app.report.tables import to_markdown
    if df.index.nlevels > 1: df = df.reset_index().set_index(df.index.names[0])
    df = df.astype(object)
    for c, f in (('mu', '{:+g}'), ('tau', '{:g}')):
        if c in df.columns: df[c] = df[c].map(f.format)
    return to_markdown(df)


def _cell_table(df:pd.DataFrame, index:list, rules) -> pd.DataFrame:
    "Cost ± Monte-Carlo se per `index`, one column per rule"
    cell = df.assign(v=[f'{c:.2f} ± {s:.2f}' for c, s in zip(df.cost, df.se)])
    return cell.pivot_table(index=index, columns='rule', values='v', aggfunc='first')[list(rules)]


def markdown(df:pd.DataFrame, noise:pd.DataFrame, folders:pd.DataFrame|None, reps:int, seed:int,
             secs:float|None) -> str:
    "simulation.md: the setup, the noise, the headline tables, which rule is never worse, and the committed folders"
    rules = [r for r in (*RULES, 'oracle') if r in set(df.rule)]
    head = df[(df.S == 3) & (df.tau == 3.) & df.K.isin([4, 14])]
    avg = df.groupby(['S', 'K', 'n', 'rule'], sort=False).cost.mean().unstack('rule')[rules].map('{:.2f}'.format)
    ver = verdicts(df[df.rule != 'oracle'])
    for c in ('mean_cost', 'mean_excess', 'max_excess'): ver[c] = ver[c].map(lambda v: f'{v:+.2f}')
    by_n = (df[df.rule != 'oracle'].assign(ok=lambda d: d.excess <= 2*d.excess_se)
            .pivot_table(index='rule', columns='n', values='ok', aggfunc='mean', sort=False).map(lambda v: f'{v:.0%}'))
    by_k = (df[df.rule != 'oracle'].assign(ok=lambda d: d.excess <= 2*d.excess_se)
            .pivot_table(index='rule', columns='K', values='ok', aggfunc='mean', sort=False).map(lambda v: f'{v:.0%}'))
    cells = len(df[['S', 'K', 'n', 'mu', 'tau']].drop_duplicates())
    txt = [
        "# The recommendation's rules on simulated comparisons with known truth",
        f"Written by `python tools/rule_simulation_report.py --reps {reps} --seed {seed}`"
        + (f" (the simulation {secs/60:.1f} minutes on two shared cores)" if secs else '') + ": "
        f"{cells} cells ({', '.join(f'{k} in {list(v)}' for k, v in GRID.items())}), {reps} replicates each. "
        "The setup and the rules are in the docstring of `tools/rule_simulation.py`. Costs are points of MCC lost "
        "against the truly best setting (true scores, not a test set), mean ± Monte-Carlo se. `oracle` is not a rule: "
        "it knows μ, τ and the training noise, and shows how much any rule could gain.",
        "## How noisy a validation lead is",
        f"A setting's validation lead over the reference (true MCC {REF_MCC:.2f}, {PREVALENCE:.0%} positives; latent "
        f"correlation of two runs on an item {RHO_ITEM} between settings, {RHO_SETTING} between seeds; σ_seed = "
        f"{SIGMA_SEED} points): its actual sd, the rms of the se the tool's paired interval reports, and how often "
        "that 95% interval covers the true lead (one seed: the tool counts no training noise).",
        _md(noise.round(2).set_index(['seeds', 'valid_items'])),
        "## Mean cost per rule: 3 seeds, spread τ = 3 points, K = 4 and 14 settings",
        "μ is the mean true lead of the other settings over the reference: −3 a strong reference, +3 a weak one.",
        _md(_cell_table(head, ['K', 'mu', 'n'], rules)),
        "## Averaged over μ (−3, 0, +3) and τ (1, 3, 5)",
        _md(avg),
        "## Is one rule never worse than the best fixed rule?",
        f"In each of the {cells} cells the best fixed rule is whichever of {', '.join(FIXED)} cost least there; a rule "
        "is *within error* where its mean excess over that rule, paired replicate by replicate, is at most 2 "
        "Monte-Carlo se (the best fixed rule is chosen on the same replicates, which flatters it a little).",
        _md(ver),
        "Cells within error, by validation items:", _md(by_n),
        "and by number of settings:", _md(by_k),
        "Mean cost by the reference's strength (over all seeds, settings, sizes and spreads):",
        _md(df.pivot_table(index='mu', columns='rule', values='cost')[rules].map('{:.2f}'.format)),
        *_summary_lines(df)]
    if folders is not None:
        txt += ["## The committed comparisons: each rule's cost against the test-best setting",
                "Points of the main metric lost against the setting that tested best (positive: lost; paired on the "
                "test set; the test-best flatters itself, so each is an upper bound). `best`, `one-se` and `evidence` "
                "are the tool's, as in rules.md (`tools/recommendation_rules.py`); `shrink` and `shrink-own` apply the "
                "James–Stein rule to the tool's own paired validation leads and se's, the tool unchanged. τ̂: the "
                "spread among the settings' leads beyond their noise (points); m: their mean lead.",
                _md(folders.set_index('folder'))]
    txt += ["<details><summary>Every cell</summary>",
            _md(_cell_table(df, ['S', 'K', 'n', 'mu', 'tau'], rules)), "</details>"]
    return '\n\n'.join(txt) + '\n'


def _summary_lines(df:pd.DataFrame) -> list:
    "Sentences with the numbers: which rule is best or within error in what fraction of cells"
    real = df[df.rule != 'oracle'].assign(ok=lambda d: d.excess <= 2*d.excess_se)
    share = real.groupby('rule', sort=False).ok.mean()
    lowest = real.loc[real.groupby(['S', 'K', 'n', 'mu', 'tau']).cost.idxmin()].rule.value_counts(normalize=True)
    line = ', '.join(f'{r} {share[r]:.0%}' for r in share.index)
    wins = ', '.join(f'{r} {v:.0%}' for r, v in lowest.items())
    never = [r for r in share.index if share[r] == 1]
    avg = real.groupby(['S', 'K', 'n', 'rule']).cost.mean().unstack('rule')
    low = avg.idxmin(axis=1).value_counts()
    behind = (avg['best'] - avg.min(axis=1)).max()
    return [f"**Within error of the best fixed rule**, share of cells: {line}. **Lowest mean cost** in a cell: {wins}.",
            (f"Never worse beyond error: {', '.join(never)}." if never else
             "**No rule is within error of the best fixed rule in every cell.**"),
            f"Averaged over μ and τ (the table above), the lowest mean cost of the {len(avg)} rows (seeds × settings "
            f"× validation items) is {', '.join(f'{r} in {v}' for r, v in low.items())}; `best` is at most "
            f"{behind:.2f} points behind the lowest in any row."]


def folder_table() -> pd.DataFrame:
    "The committed folders: the tool's rules' costs (from `recommendation_rules.rows`) beside `shrink`'s"
    from recommendation_rules import rows as rule_rows
    tool = rule_rows()
    tool = tool[tool.rule.isin(FIXED)].pivot_table(index='folder', columns='rule', values='cost_points', sort=False)
    ours = folder_choices().set_index('folder')
    out = pd.concat([ours[['valid_items', 'settings']], -tool[list(FIXED)].reindex(ours.index),
                     ours[['shrink_cost', 'shrink-own_cost', 'tau_hat', 'mean_lead', 'shrink_chosen', 'test_best']]],
                    axis=1)
    out = out.rename(columns={'shrink_cost': 'shrink', 'shrink-own_cost': 'shrink-own', 'tau_hat': 'τ̂',
                              'mean_lead': 'm'})
    mean = out[[*FIXED, 'shrink', 'shrink-own']].mean().to_frame('mean of all').T
    out = pd.concat([out, mean])
    for c in (*FIXED, 'shrink', 'shrink-own', 'τ̂', 'm'):
        out[c] = out[c].map(lambda v: '' if pd.isna(v) else f'{v + 0.:.2f}')  # + 0.: no -0.00
    for c in ('valid_items', 'settings'): out[c] = out[c].map(lambda v: '' if pd.isna(v) else f'{v:.0f}')
    return out.reset_index(names='folder').astype(object).fillna('')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=1000, help='replicates per cell')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--no-folders', action='store_true', help='skip the committed folders (about 4 minutes)')
    ap.add_argument('--grid', type=Path, help="a CSV of the grid's costs: read if it exists, else written")
    args = ap.parse_args()
    import warnings; warnings.filterwarnings('ignore', category=RuntimeWarning)
    t = time.time()
    if args.grid and args.grid.exists(): df, secs = pd.read_csv(args.grid), None
    else: df, secs = run_grid(args.reps, args.seed, progress=True), time.time() - t
    if args.grid and not args.grid.exists(): df.to_csv(args.grid, index=False)
    noise = noise_table(seed=args.seed)
    folders = None if args.no_folders else folder_table()
    OUT.mkdir(exist_ok=True)
    plot(df, OUT/'simulation.png')
    (OUT/'simulation.md').write_text(markdown(df, noise, folders, args.reps, args.seed, secs))
    print(f'all {time.time() - t:.0f} s; wrote {OUT/"simulation.md"} and simulation.png')
