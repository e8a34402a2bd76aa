"bmx-compare on several findings per image: a CSV of `A|B` labels runs end to end, its report rebuilds, bad input is refused"
import json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
import fastcore.test as fct
from PIL import Image

EXE = Path(sys.executable).parent
FAST = ['--epochs', '1', '--arch', 'resnet10t', '--bs', '8', '--size', '16', '--quiet', '--threads', '1']

def run(tool, *args, timeout=900):
    return subprocess.run([str(EXE/tool), *map(str, args)], capture_output=True, text=True, timeout=timeout)

def refused(r, *contains):
    "Exit status 2 and one line on stderr, without a traceback, holding each of `contains`"
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    for c in contains: assert c in lines[0], (c, lines[0])

def findings_csv(root:Path, sep:str='|', extra:list=()) -> Path:
    "16-px PNGs with findings 'big' (most), 'mid' and 'tiny' (a few), often together; splits train/valid/test"
    g, rows = np.random.default_rng(0), []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(60):
        labels = ['big'] * (i % 3 != 0) + ['mid'] * (i % 4 == 0) + ['tiny'] * (i % 10 in (0, 9))
        Image.fromarray(g.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root/f'{i}.png')
        rows.append((f'{i}.png', sep.join(labels), 'test' if i % 5 == 4 else 'valid' if i % 5 == 3 else 'train'))
    rows += list(extra)
    pd.DataFrame(rows, columns=['fname', 'labels', 'split']).to_csv(root/'labels.csv', index=False)
    return root/'labels.csv'

@pytest.fixture(scope='module')
def compared(tmp_path_factory):
    "One comparison of instance, Balanced-MixUp, the asymmetric loss and DRW, two seeds, on the constructed findings"
    root = tmp_path_factory.mktemp('findings')
    out = root/'out'
    r = run('bmx-compare', '--data', findings_csv(root/'imgs'), '--out', out, '--methods', 'instance', 'bmx-0.2',
            'asl', 'drw', '--seeds', '0', '1', '--export', *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout

def test_findings_run_end_to_end(compared):
    out, stdout = compared
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(sorted(res['method'].unique()), ['asl', 'bmx-0.2', 'drw', 'instance'])
    assert {'macro_ap', 'micro_ap', 'macro_auroc', 'macro_f1', 'head_ap', 'medium_ap', 'tail_ap'} <= set(res.columns)
    assert res['macro_ap'].between(0, 1).all() and res['n_scored'].eq(3).all()
    md = (out/'results.md').read_text()
    for part in ('Several findings per image: 3 findings learned', '## Paired against instance',
                 '## Head, medium and tail findings', '## Each finding', '## Calibration', 'Recommended: '):
        assert part in md, part
    assert all((out/f).exists() for f in ('finding_ap.png', 'finding_counts.png', 'beta_densities.png'))
    record = json.loads((out/'record.json').read_text())
    assert record['multi_label'] and record['classes'] == ['big', 'mid', 'tiny']
    assert 'Findings learned (3)' in stdout and 'Paired against instance' in stdout

def test_findings_export_predicts_findings_at_their_thresholds(compared):
    "The recommended run, exported: `learn.predict` on an image file gives the findings over their own thresholds"
    from fastai.learner import load_learner
    out, stdout = compared
    info = json.loads((out/'recommended.json').read_text())
    learn = load_learner(out/'recommended.pkl')
    img = out.parent/'imgs'/'0.png'
    found, mask, probs = learn.predict(img)
    th = np.array(info['finding_thresholds'])
    fct.test_eq(len(th), 3)
    fct.test_eq(mask.numpy(), probs.numpy() >= th)
    fct.test_eq(list(found), [f for f, m in zip(['big', 'mid', 'tiny'], mask) if m])
    assert 'Exported' in stdout and info['flip_tta'] and info['variant'] == 'thresholds'

def test_findings_report_rebuilds_byte_for_byte(compared):
    out, _ = compared
    before = (out/'results.md').read_bytes()
    r = run('bmx-report', out)
    assert r.returncode == 0, r.stderr[-2000:]
    fct.test_eq((out/'results.md').read_bytes(), before)

def test_methods_that_dont_apply_are_refused(tmp_path):
    csv = findings_csv(tmp_path/'imgs')
    refused(run('bmx-compare', '--data', csv, '--out', tmp_path/'o1', '--methods', 'la', *FAST),
            "Method 'la-1' doesn't apply to several findings per image", 'use asl or db')
    refused(run('bmx-compare', '--data', csv, '--out', tmp_path/'o2', '--frontier', '--frontier-x', 'macro_f1', *FAST),
            "frontier_x='macro_f1': with several findings per image, use tail_ap or medium_ap")
    refused(run('bmx-compare', '--out', tmp_path/'o4', '--methods', 'asl', *FAST),
            "Method 'asl' doesn't apply to one class per image")
    assert not any((tmp_path/f'o{i}').exists() for i in (1, 2, 4))

def test_bad_findings_tables_are_refused_in_one_line(tmp_path):
    missing = findings_csv(tmp_path/'a', extra=[('gone.png', 'big', 'train')])
    refused(run('bmx-compare', '--data', missing, '--out', tmp_path/'o', *FAST), '1 of 61 image files are missing',
            'gone.png', 'drop_missing')
    semi = findings_csv(tmp_path/'b', sep=';')
    refused(run('bmx-compare', '--data', semi, '--out', tmp_path/'o', '--label-delim', ';', '--methods', 'la', *FAST),
            "Method 'la-1' doesn't apply to several findings")  # read as findings with the delimiter given
    single = tmp_path/'c'/'labels.csv'
    single.parent.mkdir()
    pd.DataFrame({'fname': ['x.png'], 'label': ['a'], 'split': ['train']}).to_csv(single, index=False)
    refused(run('bmx-compare', '--data', single, '--out', tmp_path/'o', '--uncertain', 'positive', *FAST),
            'holds one class per image', "the options of findings don't apply")
    chex = tmp_path/'d'
    chex.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(chex/'0.png')
    pd.DataFrame({'fname': ['0.png'], 'Edema': [-1], 'Effusion': [1], 'split': ['train']}).to_csv(chex/'t.csv',
                                                                                                  index=False)
    refused(run('bmx-compare', '--data', chex/'t.csv', '--out', tmp_path/'o', *FAST), 'Edema', '-1')
    assert not (tmp_path/'o').exists()

def test_rfmid_labels_csv_plans_with_its_findings(real_data):
    "The real RFMiD table: 32 findings learned, 5 seen only in valid or test left out and named, no training needed"
    from fastai_bmx.app.compare import plan_compare
    csv = real_data('rfmid_64/labels.csv')
    plan = plan_compare(csv, out=Path(csv).parent/'__never_written__', methods=['instance', 'bmx-0.2', 'asl'],
                        arch='resnet10t', size=16, bs=32, seeds=[0])
    fct.test_eq((plan.rec.multi_label, len(plan.rec.classes), plan.rec.n_items), (True, 32, 949))
    fct.test_eq(plan.settings['left_out'], ['CB', 'CL', 'ODE', 'PRH', 'TD'])
    fct.test_eq((plan.settings['monitor'], plan.names), ('macro_ap', ['instance', 'bmx-0.2', 'asl']))
    assert not (Path(csv).parent/'__never_written__').exists()
    # the official files: one CSV per split, images named by ID, the 'any disease' column left out, absent images too
    d = Path(csv).parent
    how = dict(drop_cols=('Disease_Risk',), drop_missing=True, valid_csv=str(d/'RFMiD_Validation_Labels.csv'),
               test_csv=str(d/'RFMiD_Testing_Labels.csv'), id_pattern='{split}/{}.png')
    official = plan_compare(d/'RFMiD_Training_Labels.csv', out=d/'__never_written__', methods=['instance'],
                            arch='resnet10t', size=16, bs=32, seeds=[0], findings=how)
    fct.test_eq((official.rec.classes, official.rec.counts, official.rec.n_items),
                (plan.rec.classes, plan.rec.counts, plan.rec.n_items))
    fct.test_eq(official.settings['left_out'][:2], ['CB', 'CF'])  # and the findings no image here holds at all

def test_findings_frontier_puts_macro_ap_against_tail_ap(tmp_path):
    "`--frontier` on findings: resampling over q and Balanced-MixUp over α, macro mAP against the tail findings' mAP"
    out = tmp_path/'out'
    r = run('bmx-compare', '--data', findings_csv(tmp_path/'imgs'), '--out', out, '--frontier', '--qs', '1', '0',
            '--alphas', '0.2', '--seeds', '0', '1', *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    fct.test_eq(sorted(pd.read_csv(out/'results.csv')['method'].unique()), ['bmx-0.2', 'class', 'instance'])
    md = (out/'frontier.md').read_text()
    assert 'Test macro_ap against test tail_ap' in md and 'no la or post-hoc family' in md, md[:600]
    assert '## At matched tail_ap' in md and 'Δ tail_ap [95%]' in md, md
    assert (out/'frontier.png').stat().st_size > 10_000 and 'How the fronts lie' in r.stdout

def test_findings_frontier_without_a_scored_tail_is_refused_before_training(tmp_path):
    "No tail finding ('mid' and 'tiny') with a test positive: the tail's mAP can't be measured, said before any run"
    csv = findings_csv(tmp_path/'imgs')
    df = pd.read_csv(csv)
    no_tiny = lambda cell: '|'.join(f for f in str(cell).split('|') if f not in ('mid', 'tiny')) if isinstance(cell, str) else cell
    df.loc[df.split == 'test', 'labels'] = df.loc[df.split == 'test', 'labels'].map(no_tiny)
    df.to_csv(csv, index=False)
    refused(run('bmx-compare', '--data', csv, '--out', tmp_path/'o', '--frontier', *FAST),
            '--frontier-x tail_ap: no tail finding has a test positive', 'use --frontier-x medium_ap')
    assert not (tmp_path/'o').exists()

def test_findings_folds_choose_on_pooled_folds_and_rank_thresholds(tmp_path):
    "--folds: a seed's folds pooled (train+valid, 48 images) pair the choice, so --rule applies; macro F1 ranks thresholds"
    out = tmp_path/'out'
    r = run('bmx-compare', '--data', findings_csv(tmp_path/'imgs'), '--out', out, '--methods', 'instance', 'bmx-0.2',
            '--folds', '2', '--seeds', '0', '--rule', 'evidence', '--select', 'macro_f1', '--export', *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (out/'results.md').read_text()
    rec = md.split('## Recommendation')[1].split('##')[0]
    assert '(48 validation items, 2 runs' in rec and 'validation macro_f1' in rec, rec
    assert '## Per-finding thresholds' in md
    info = json.loads((out/'recommended.json').read_text())
    tuned = info['variant'] == 'thresholds'
    assert (' + thresholds' in rec.split('Recommended: ')[1].split('(')[0]) == tuned, rec
    assert tuned or info['finding_thresholds'] == [0.5] * 3, info
