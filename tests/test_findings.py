"Multi-label image tables: both kinds of table read to one record, every refusal in one line, RFMiD, and the loaders"
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
from PIL import Image
from fastai_bmx.findings import FindingsTable, findings_table, findings_dls
from fastai_bmx.splits import findings_valid_mask
from fastai_bmx.sampling import get_targets, finding_item_probs

FINDINGS = ['Effusion|Mass', 'Effusion', 'No Finding', 'Mass|Nodule', 'Effusion|Hernia', '', ' Effusion ', 'Nodule']
SPLITS = ['train'] * 16 + ['valid'] * 4 + ['test'] * 4


def pngs(folder:Path, names, px:int=12):
    "Random RGB PNGs at `folder/name`"
    g = np.random.default_rng(0)
    for n in names:
        (folder/n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(folder/n)


@pytest.fixture
def nih(tmp_path):
    "24 images, findings joined by '|' in a `Finding Labels` column (NIH ChestX-ray14's names), one only in test"
    df = pd.DataFrame({'Image Index': [f'{i:03d}.png' for i in range(24)], 'Finding Labels': FINDINGS * 3,
                       'split': SPLITS})
    df.loc[22, 'Finding Labels'] = 'Pneumonia'
    pngs(tmp_path, df['Image Index'])
    return df


def wide_of(nih:pd.DataFrame) -> pd.DataFrame:
    "The same findings as one 0/1 column each, CheXpert's way: `Path`, a `No Finding` column, and a `Sex` column"
    names = ['Effusion', 'Mass', 'Nodule', 'Hernia', 'Pneumonia']
    held = [{t.strip().lower() for t in str(c).split('|')} for c in nih['Finding Labels']]
    cols = pd.DataFrame([{n: int(n.lower() in h) for n in names} for h in held])
    return pd.concat([nih[['Image Index']].rename(columns={'Image Index': 'Path'}), pd.DataFrame({'Sex': ['F', 'M'] * 12}),
                      cols.assign(**{'No Finding': (cols.sum(axis=1) == 0).astype(int)}), nih[['split']]], axis=1)


def one_line(f, contains):
    "`f()` fails with a ValueError of one line that holds `contains`"
    with pytest.raises(ValueError) as e: f()
    assert '\n' not in str(e.value) and contains in str(e.value), str(e.value)


# --- a label column -------------------------------------------------------------------------------------------------

def test_a_label_column_gives_each_image_its_findings(nih, tmp_path):
    nih.to_csv(tmp_path/'Data_Entry.csv', index=False)
    t = findings_table(tmp_path/'Data_Entry.csv')  # no flag: the columns are found by their names
    assert isinstance(t, FindingsTable) and t.folder == tmp_path
    fct.test_eq(t.findings, ['Effusion', 'Mass', 'Nodule', 'Hernia'])  # most training positives first (8, 4, 4, 2)
    fct.test_eq(t.df.findings[:8].tolist(), [['Effusion', 'Mass'], ['Effusion'], [], ['Mass', 'Nodule'],
                                            ['Effusion', 'Hernia'], [], ['Effusion'], ['Nodule']])
    fct.test_eq(t.left_out, {'Pneumonia': {'test': 1}})  # in the test split only: no model can learn it
    fct.test_eq(list(t.df.columns), ['fname', 'findings', 'split'])
    fct.test_eq(t.positives().loc['Effusion'].tolist(), [8, 2, 1])
    fct.test_eq(t.targets()[:2].tolist(), [[1, 1, 0, 0], [1, 0, 0, 0]])


def test_vocabulary_most_training_positives_first_ties_by_name(tmp_path):
    df = pd.DataFrame({'fname': ['1.png', '2.png', '3.png', '4.png'], 'labels': ['b|a', 'c|b', 'z', 'q'],
                       'split': ['train', 'train', 'train', 'valid']})
    pngs(tmp_path, df.fname)
    t = findings_table(df, tmp_path)
    fct.test_eq((t.findings, t.left_out), (['b', 'a', 'c', 'z'], {'q': {'valid': 1}}))
    fct.test_eq(t.df.findings.tolist(), [['b', 'a'], ['b', 'c'], ['z'], []])


def test_other_delimiter_and_no_finding_value(nih, tmp_path):
    semi = nih.assign(**{'Finding Labels': nih['Finding Labels'].str.replace('|', ';').replace('No Finding', 'NORMAL')})
    fct.test_eq(findings_table(semi, tmp_path, label_delim=';', no_finding=['normal']).df, findings_table(nih, tmp_path).df)
    t = findings_table(nih.drop(columns='split'), tmp_path)  # no split given: every image trains
    assert t.df.split.isna().all() and 'Pneumonia' in t.findings and not [f for f, w in t.left_out.items() if w == {}]


# --- one 0/1 column per finding -------------------------------------------------------------------------------------

def test_01_columns_give_the_same_table(nih, tmp_path):
    label = findings_table(nih, tmp_path)
    wide = findings_table(wide_of(nih), tmp_path, drop_cols=['Sex'])
    fct.test_eq((wide.df, wide.findings, wide.left_out), (label.df, label.findings, label.left_out))
    assert any("'No Finding' left out" in n for n in wide.notes)  # no finding isn't a finding


def test_an_any_finding_column_is_kept_and_flagged(nih, tmp_path):
    w = wide_of(nih).drop(columns=['Sex', 'No Finding'])
    w.insert(1, 'Disease_Risk', w[['Effusion', 'Mass', 'Nodule', 'Hernia', 'Pneumonia']].max(axis=1))
    t = findings_table(w, tmp_path)
    assert 'Disease_Risk' in t.findings and any("drop_cols=['Disease_Risk']" in n for n in t.describe())
    assert 'Disease_Risk' not in findings_table(w, tmp_path, drop_cols=['Disease_Risk']).findings


def test_uncertain_and_blank_need_a_policy(nih, tmp_path):
    w = wide_of(nih).drop(columns='Sex').astype({'Mass': float})
    w.loc[[1, 2], 'Mass'] = [-1, np.nan]  # row 1 holds Effusion, row 2 nothing
    one_line(lambda: findings_table(w, tmp_path), "Column 'Mass' holds -1 (uncertain) in 1 rows: choose uncertain=")
    one_line(lambda: findings_table(w.replace(-1, 0), tmp_path), "Column 'Mass' holds blanks in 1 rows")
    ones, zeros = (findings_table(w, tmp_path, uncertain=u) for u in ('positive', 'negative'))
    fct.test_eq(ones.df.findings[1:3].tolist(), [['Effusion', 'Mass'], []])  # U-Ones; a blank is negative
    fct.test_eq(zeros.df.findings[1:3].tolist(), [['Effusion'], []])  # U-Zeros
    assert '1 uncertain (-1) values counted as positive, 1 blanks as negative' in ones.notes[-1]


def test_one_csv_per_split_whose_ids_name_the_files(nih, tmp_path):
    "RFMiD's way: a CSV per split (with a byte-order mark), an ID column, a folder per split, some images absent"
    w = wide_of(nih).drop(columns=['Path', 'Sex']).assign(ID=range(24))
    csvs = {}
    for name, split in (('Training', 'train'), ('Validation', 'valid'), ('Test', 'test')):
        part = w[w.split == split].drop(columns='split')
        pngs(tmp_path, [f'{name}/{i}.png' for i in part.ID if i % 8 != 7])
        part.to_csv(csvs.setdefault(name, tmp_path/f'{name}.csv'), index=False, encoding='utf-8-sig')
    one_line(lambda: findings_table(csvs, id_pattern='{split}/{}.png'), '3 of 24 image files are missing')
    t = findings_table(csvs, id_pattern='{split}/{}.png', drop_missing=True)
    fct.test_eq(t.missing, ('Training/7.png', 'Training/15.png', 'Test/23.png'))
    fct.test_eq(t.df.split.value_counts().to_dict(), {'train': 14, 'valid': 4, 'test': 3})
    assert t.df.fname[0] == 'Training/0.png' and 'ID' not in t.findings
    fct.test_eq(t.describe()[:5], [
        '21 images: 14 train, 4 valid, 3 test',
        'Findings learned (4), most training positives first: Effusion (8), Mass (4), Hernia (2), Nodule (2)',
        'Left out, as no training image holds them (1): Pneumonia (test 1)',
        'Images holding none of the findings learned: 7',
        'Rows left out, as their image file is missing: 3 (e.g. Training/7.png, Training/15.png, Test/23.png)'])


# --- refusals: one line each ----------------------------------------------------------------------------------------

REFUSALS = [
    (lambda n: dict(src=wide_of(n)), "Columns Sex hold values other than 0/1"),
    (lambda n: dict(src=n, drop_cols=['Age']), "drop_cols names columns the table lacks"),
    (lambda n: dict(src=n.assign(split='later')), "Split names ['later']"),
    (lambda n: dict(src=n.assign(split=['train'] * 23 + [None])), "1 rows have no split"),
    (lambda n: dict(src=n.iloc[[0, 0]]), "give one row per image"),
    (lambda n: dict(src=n, uncertain='maybe'), "uncertain='maybe'"),
    (lambda n: dict(src=n.assign(split='test')), "No row is for training"),
    (lambda n: dict(src=n.assign(**{'Finding Labels': ''})), "No training image holds a finding"),
    (lambda n: dict(src=n.iloc[:0]), "no rows"),
    (lambda n: dict(src=n.rename(columns={'Image Index': 'img'})), "name it with fn_col="),
    (lambda n: dict(src=n, fn_col='img'), "no column 'img'"),
    (lambda n: dict(src=n.assign(**{'Image Index': 'x' + n['Image Index']})), "24 of 24 image files are missing"),
    (lambda n: dict(src=n.assign(**{'Image Index': 'x' + n['Image Index']}), drop_missing=True), "None of the 24"),
    (lambda n: dict(src=n.assign(**{'Image Index': None})), "24 rows have no file name"),
    (lambda n: dict(src=n.drop(columns='split'), id_pattern='{split}/{}'), "names the split, but the table gives none"),
    (lambda n: dict(src=n, id_pattern='{id}.png'), "can't be filled"),
    (lambda n: dict(src={'train': n.drop(columns='split'), 'test': n.drop(columns=['split', 'Finding Labels'])}),
     "The tables have different columns"),
]

@pytest.mark.parametrize('kw,contains', REFUSALS, ids=[c for _, c in REFUSALS])
def test_each_refusal_is_one_line(nih, tmp_path, kw, contains):
    one_line(lambda: findings_table(folder=tmp_path, **kw(nih)), contains)


# --- the real set: RFMiD ----------------------------------------------------------------------------------------------

def test_rfmid_labels_csv_and_official_csvs_give_the_same_table(real_data):
    folder = real_data('rfmid_64/labels.csv').parent
    joined = findings_table(folder/'labels.csv')
    csvs = {s: real_data(f'rfmid_64/RFMiD_{n}_Labels.csv') for s, n in
            (('train', 'Training'), ('valid', 'Validation'), ('test', 'Testing'))}
    one_line(lambda: findings_table(csvs, id_pattern='{split}/{}.png', drop_cols=['Disease_Risk']), 'drop_missing=True')
    official = findings_table(csvs, id_pattern='{split}/{}.png', drop_cols=['Disease_Risk'], drop_missing=True)
    by_name = lambda t: t.df.sort_values('fname').reset_index(drop=True)
    fct.test_eq(by_name(official), by_name(joined))
    fct.test_eq(official.findings, joined.findings)
    fct.test_eq(len(joined.df), 1540)
    fct.test_eq(len(official.missing), 3200 - 1540)
    where = {f: w for f, w in official.left_out.items() if w}
    fct.test_eq(where, joined.left_out)
    fct.test_eq(sorted(tuple(w) for w in where.values()), [('test',)] * 4 + [('valid',)])  # 4 only in test, 1 in valid
    fct.test_eq(len(official.left_out) - len(where), 8)  # 8 of the 45 columns: no image here holds them
    fct.test_eq(joined.findings[:4], ['DR', 'MH', 'ODC', 'TSLN'])
    kept = findings_table(csvs, id_pattern='{split}/{}.png', drop_missing=True)  # Disease_Risk kept, and flagged
    assert kept.findings[0] == 'Disease_Risk' and "drop_cols=['Disease_Risk']" in kept.describe()[-1]


# --- the loaders ----------------------------------------------------------------------------------------------------

def test_loaders_from_memory_and_from_disk_serve_the_same(nih, tmp_path):
    t = findings_table(nih, tmp_path)
    mem, disk = (findings_dls(t, bs=4, size=8, seed=0, batch_tfms=[], in_memory=m, num_workers=0) for m in (True, False))
    for d in (mem, disk):
        fct.test_eq([len(dl.dataset) for dl in d.loaders], [16, 4, 4])
        fct.test_eq((d.vocab, d.c), (t.findings, 4))
        fct.test_eq(get_targets(d.train), t.targets()[:16].astype(bool))
        fct.test_eq(get_targets(d.test), t.targets()[20:].astype(bool))
    for a, b in zip(mem.valid, disk.valid):  # square images: the very same pixels and targets
        fct.test_close(a[0], b[0]); fct.test_eq(a[1], b[1])


def test_targets_are_read_without_the_images_and_resampled_by_finding(nih, tmp_path):
    dls = findings_dls(findings_table(nih, tmp_path), bs=4, size=8, in_memory=False, num_workers=0)
    for p in tmp_path.glob('*.png'): p.unlink()  # no image can be read any more
    y = get_targets(dls.train)
    fct.test_eq(y.shape, (16, 4))
    np.testing.assert_allclose(dls.resampled(0.).train.wgts, finding_item_probs(y, 0.))


def test_without_a_valid_split_one_is_drawn_stratified_and_folds_pool_train_and_valid(nih, tmp_path):
    t = findings_table(nih.drop(columns='split'), tmp_path)
    d = findings_dls(t, size=8, in_memory=True, valid_pct=0.3, split_seed=7)
    want = findings_valid_mask(t.targets()[(t.df.split != 'test').values], None, None, 5, 7, 0.3)
    fct.test_eq(len(d.valid.dataset), int(want.sum()))
    folds = [findings_dls(t, size=8, in_memory=True, fold=f, k=3) for f in range(3)]
    fct.test_eq(sum(len(f.valid.dataset) for f in folds), 24)  # each pool image validates in one fold
    one_line(lambda: findings_dls(t, valid_pct=0), 'valid_pct=0')


def test_one_epoch_with_balanced_mixup(nih, tmp_path):
    from torch import nn
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    from fastai.losses import BCEWithLogitsLossFlat
    from fastai.torch_core import set_seed
    from fastai_bmx.mixup import BalancedMixUp
    set_seed(0)
    dls = findings_dls(findings_table(nih, tmp_path), bs=4, size=16, seed=0, device='cpu')
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, dls.c))
    seen = []
    class Targets(Callback):
        order = 99  # after Balanced-MixUp blended the batch
        def after_batch(self):
            if self.training: seen.append((self.learn.balanced_mix_up.multi_label, self.learn.yb[0].clone()))
    learn = Learner(dls, net, loss_func=BCEWithLogitsLossFlat(), cbs=[BalancedMixUp(0.2), Targets()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert all(m for m, _ in seen) and any(((y > 0) & (y < 1)).any() for _, y in seen)  # findings blended as such
    assert np.isfinite([float(l) for l in learn.recorder.losses]).all() and len(learn.recorder.losses) == 4
    probs, targs = learn.get_preds(dl=dls.test)
    fct.test_eq((probs.shape, targs.shape), ((4, 4), (4, 4)))
