#!/usr/bin/env python
"""The simulated comparisons, whose truth is known, and the recommendation's rules applied to them (issue 42).

Pure functions, no output; the report on them is `tools/rule_simulation_report.py`, which writes
nbs/results/rules/simulation.md and simulation.png:

    python tools/rule_simulation_report.py             # the grid, the tables, the plot and the committed folders
    python tools/rule_simulation_report.py --reps 200  # fewer replicates per cell: faster, larger Monte-Carlo error

A comparison (`simulate_cell`): K candidate settings (index 0 is the reference, instance sampling) whose true
MCC on a binary task with 30% positives is known: the reference's 0.50, each other's the reference's plus a lead drawn
N(μ, τ²) in points. Each setting is trained S times (seeds); a seed's true score is its setting's plus N(0, σ_seed²).
Every run predicts the same n_valid validation items: an item is decided right when a latent normal falls below the
run's skill, and the latent shares an item's difficulty between all runs (correlation ρ_item) and a setting's own
view of the item between its seeds (ρ_setting), so two runs' errors correlate as two real models' do, and every
lead over the reference carries the reference's own validation luck. The runs' MCC on validation, and the paired
validation interval of each setting against the reference, are what the tool sees. That interval is
`paired_interval`'s (seed variance / S plus item variance, Welch–Satterthwaite t), with the item variance of the
stratified paired bootstrap replaced by its delta-method value (the MCC linearised in each item's right or wrong, its
variance within each class): the same quantity (within 1–3% of the bootstrap's se, a test checks it), without 1,000
resamples per cell.

Rules (`rule_choices`): `best` (the best validation mean), `one-se` and `evidence` (as `_choose` in
`fastai_bmx.app.decide.recommend`: the first setting in validation order whose paired lead over the reference
exceeds one standard error, or whose 95% interval lies above 0; else the reference), `shrink` (empirical Bayes,
James–Stein: each lead d_k shrunk toward the leads' mean m by B_k = s_k²/(s_k² + τ̂²), s_k the paired se and
τ̂² = max(0, var(d) − mean(s²)) the spread among the settings beyond noise; the reference, lead 0, is kept unless a
shrunk lead is above 0; of leads shrunk to one value, the best validated), `shrink-own` (the same with s_k²/2, a
lead's own noise without the reference's share, which every lead has in common and so adds nothing to their spread)
and `lcb` (the largest lead minus one se, the reference at 0). `oracle` is no rule but a bound: it knows μ, τ and the
training noise, and shrinks each lead toward the true μ. The cost of a choice is the true score of the truly best
setting minus the chosen one's, in points.
"""
import numpy as np
from scipy import stats
from scipy.special import ndtr

RULES = ('best', 'one-se', 'evidence', 'shrink', 'shrink-own', 'lcb')  # and 'oracle', a bound, not a rule
FIXED = ('best', 'one-se', 'evidence')  # the tool's rules now
PREVALENCE, HARDER = 0.3, 0.5  # positives are 30% of the items, and harder: sensitivity < specificity
REF_MCC = 0.5  # the reference's true MCC
RHO_ITEM, RHO_SETTING = 0.8, 0.92  # latent correlation of two runs on one item: any two; two seeds of one setting
SIGMA_SEED = 1.5  # points of MCC between seeds of one setting


def mcc(tp, fn, fp, tn):
    "MCC of confusion counts (arrays), 0 where it is 0/0"
    den = np.sqrt((tp + fp)*(tp + fn)*(tn + fp)*(tn + fn))
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(den > 0, (tp*tn - fp*fn)/np.where(den > 0, den, 1), 0.)


_SKILL = np.linspace(-2., 5., 4001)  # a run's skill: its latent threshold, sensitivity Φ(a − HARDER)
_SE, _SP = ndtr(_SKILL - HARDER), ndtr(_SKILL + HARDER)
_MCC = mcc(PREVALENCE*_SE, PREVALENCE*(1 - _SE), (1 - PREVALENCE)*(1 - _SP), (1 - PREVALENCE)*_SP)
assert (np.diff(_MCC) > 0).all()


def skill(score):
    "The latent threshold of a run whose true (population) MCC is `score`"
    return np.interp(score, _MCC, _SKILL)


def true_mcc(a):
    "The population MCC of a run of skill `a`"
    return np.interp(a, _SKILL, _MCC)


def simulate_items(rng:np.random.Generator, theta:np.ndarray, S:int, n:int, sigma_seed:float=SIGMA_SEED) -> tuple:
    "Whether each run `(R, K, S)` decided each validation item right: positives `(R, K, S, P)`, negatives `(…, N)`"
    R, K = theta.shape
    P = int(round(PREVALENCE*n))
    a = skill(theta[:, :, None] + sigma_seed/100*rng.standard_normal((R, K, S)))  # each seed's own true score
    lat = rng.standard_normal((R, K, S, n), dtype=np.float32)
    lat *= np.float32(np.sqrt(1 - RHO_SETTING))
    lat += np.float32(np.sqrt(RHO_SETTING - RHO_ITEM))*rng.standard_normal((R, K, 1, n), dtype=np.float32)
    lat += np.float32(np.sqrt(RHO_ITEM))*rng.standard_normal((R, 1, 1, n), dtype=np.float32)
    below = lambda x: x.astype(np.float32)[..., None]
    return lat[..., :P] < below(a - HARDER), lat[..., P:] < below(a + HARDER)


def score_runs(right_pos:np.ndarray, right_neg:np.ndarray) -> tuple:
    "Validation MCC `(R, K, S)` of every run, and each setting's paired item variance against setting 0 `(R, K)`"
    P, N, S = right_pos.shape[-1], right_neg.shape[-1], right_pos.shape[2]
    tp, tn = right_pos.sum(-1).astype(float), right_neg.sum(-1).astype(float)
    fn, fp = P - tp, N - tn
    eps = 1e-3  # the MCC's change per item turned right, by class: its linearisation
    g_pos = (mcc(tp + eps, fn - eps, fp, tn) - mcc(tp - eps, fn + eps, fp, tn))/(2*eps)
    g_neg = (mcc(tp, fn, fp - eps, tn + eps) - mcc(tp, fn, fp + eps, tn - eps))/(2*eps)
    v_items = 0.
    for right, g, m in ((right_pos, g_pos, P), (right_neg, g_neg, N)):
        if not m: continue
        u = np.einsum('rks,rksn->rkn', (g/S).astype(np.float32), right.astype(np.float32))  # each item's influence
        v_items = v_items + m*(u - u[:, :1]).astype(float).var(-1)  # as the bootstrap, stratified by class
    return mcc(tp, fn, fp, tn), v_items


def simulate_runs(rng:np.random.Generator, theta:np.ndarray, S:int, n:int, sigma_seed:float=SIGMA_SEED) -> tuple:
    "Validation MCC `(R, K, S)` of every run, and each setting's paired delta-method item variance against setting 0"
    return score_runs(*simulate_items(rng, theta, S, n, sigma_seed))


def valid_view(scores:np.ndarray, v_items:np.ndarray) -> dict:
    "What the tool sees: validation means, and each setting's paired lead over setting 0 with se and 95% lower bound"
    S = scores.shape[-1]
    d = scores - scores[:, :1]
    diff = d.mean(-1)
    v_seeds = d.var(-1, ddof=1)/S if S > 1 else np.zeros_like(diff)
    se = np.sqrt(v_items + v_seeds)
    with np.errstate(invalid='ignore', divide='ignore'):
        dof = np.where(v_seeds > 0, se**4*(S - 1)/np.where(v_seeds > 0, v_seeds, 1)**2, np.inf)
    q = np.where(np.isinf(dof), stats.norm.ppf(0.975), stats.t.ppf(0.975, np.where(np.isinf(dof), 1, dof)))
    return dict(mean=scores.mean(-1), diff=diff, se=se, lo=diff - q*se, v_items=v_items, v_seeds=v_seeds)


def shrink_factors(d:np.ndarray, s2:np.ndarray) -> tuple:
    "James–Stein on the leads `d` (…, k) with noise variances `s2`: their mean m, τ̂² = max(0, var(d) − mean(s²)), B"
    m = d.mean(-1, keepdims=True)
    if d.shape[-1] < 2: return m, np.full(m.shape, np.inf), np.zeros_like(d)  # one lead: nothing to shrink toward
    tau2 = np.maximum(0., d.var(-1, ddof=1, keepdims=True) - s2.mean(-1, keepdims=True))
    with np.errstate(invalid='ignore'): B = np.where(s2 + tau2 > 0, s2/np.where(s2 + tau2 > 0, s2 + tau2, 1), 0.)
    return m, tau2, B


def shrunk_leads(d:np.ndarray, s2:np.ndarray) -> np.ndarray:
    "Each lead shrunk toward the leads' mean by its own noise and the spread among them: m + (1 − B)(d − m)"
    m, _, B = shrink_factors(d, s2)
    return m + (1 - B)*(d - m)


def top_or_reference(x:np.ndarray, mean:np.ndarray) -> np.ndarray:
    "The index of the largest of `x` (R, K), the reference's (column 0) taken as 0; of equal ones, the best validated"
    x = np.concatenate([np.zeros((len(x), 1)), x[:, 1:]], 1)
    return np.where(x >= x.max(1, keepdims=True) - 1e-12, mean, -np.inf).argmax(1)


def rule_choices(view:dict, truth:dict|None=None) -> dict:
    "`{rule: chosen index (R,)}` for each of `RULES` (and `oracle`, given `truth`: μ, τ, S, σ_seed); 0: the reference"
    mean, diff, se, lo = view['mean'], view['diff'], view['se'], view['lo']
    def first_beating(beats):  # the first setting in validation order that beats the reference, else the reference
        beats = beats.copy(); beats[:, 0] = False
        return np.where(beats.any(1), np.where(beats, mean, -np.inf).argmax(1), 0)
    shrunk = lambda s2: np.concatenate([diff[:, :1], shrunk_leads(diff[:, 1:], s2[:, 1:])], 1)
    out = {'best': mean.argmax(1), 'one-se': first_beating(diff > se), 'evidence': first_beating(lo > 0),
           'shrink': top_or_reference(shrunk(se**2), mean),
           'shrink-own': top_or_reference(shrunk(se**2/2), mean),  # a lead's own noise: half its paired variance
           'lcb': top_or_reference(diff - se, mean)}
    if truth is not None:  # each lead shrunk toward the true μ by the true spread τ and its own noise
        mu, tau2 = truth['mu']/100, (truth['tau']/100)**2
        own = (view['v_items'] + 2*(truth['sigma_seed']/100)**2/truth['S'])/2
        out['oracle'] = top_or_reference(mu + tau2/(tau2 + own)*(diff - mu), mean)
    return out


def simulate_cell(rng:np.random.Generator, S:int, K:int, n:int, mu:float, tau:float, reps:int,
                  sigma_seed:float=SIGMA_SEED, chunk:float=1.2e7) -> tuple:
    "`{rule: cost (reps,)}` in points for one cell, and `{rule: how often it kept the reference}`"
    per, costs, kept = max(1, int(chunk//(K*S*n))), {}, {}
    truth = dict(mu=mu, tau=tau, S=S, sigma_seed=sigma_seed)
    for start in range(0, reps, per):
        R = min(per, reps - start)
        theta = REF_MCC + np.concatenate([np.zeros((R, 1)), mu + tau*rng.standard_normal((R, K - 1))], 1)/100
        view = valid_view(*simulate_runs(rng, theta, S, n, sigma_seed))
        for r, c in rule_choices(view, truth).items():
            costs.setdefault(r, []).append(100*(theta.max(1) - theta[np.arange(R), c]))
            kept.setdefault(r, []).append(c == 0)
    return {r: np.concatenate(c) for r, c in costs.items()}, {r: np.concatenate(k).mean() for r, k in kept.items()}

