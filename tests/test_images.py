"Medical images as hospitals store them: DICOM, 16-bit PNG, grey kept grey, spreadsheet CSVs; and each planned once"
import json, pickle, shutil, subprocess, sys, zlib
from collections import Counter
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
import pydicom
from pydicom.data import get_testdata_file
from PIL import Image
from fastai_bmx.images import read_pixels, read_dicom, window_uint8, bits_uint8, is_dicom, image_problems
from fastai_bmx.files import decode_images, frame_dls, csv_dls, folder_table, fits_in_memory, MedicalImage
from fastai_bmx.sampling import get_labels
from helpers import png_table

EXE = str(Path(sys.executable).parent/'bmx-compare')
FAST = ['--epochs', '1', '--arch', 'resnet10t', '--bs', '8', '--seeds', '0', '--quiet', '--threads', '1', '--methods', 'instance']


def cli(*args, timeout=600):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _hu(ds) -> np.ndarray:
    "Hounsfield units computed by hand from the stored values, the slope and the intercept (not through pydicom's LUT code)"
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# --- DICOM: real scanners' files --------------------------------------------------------------------------------

def test_real_ct_rescaled_and_seen_through_the_first_window(real_data):
    "Both makers' slices (Siemens 12-bit unsigned, GE 16-bit signed; one or two window values): rescale, then the first window"
    table = pd.read_csv(real_data('dicom/ct_contrast/labels.csv'))
    folder = real_data('dicom/ct_contrast')
    makers, two_valued = set(), 0
    for f in table.fname:
        ds = pydicom.dcmread(folder/f)
        makers.add(str(ds.Manufacturer))
        wc, ww = ds.WindowCenter, ds.WindowWidth
        two_valued += isinstance(wc, pydicom.multival.MultiValue)
        first = lambda v: float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
        x = read_dicom(folder/f)
        fct.test_eq((x.dtype, x.shape), (np.uint8, (512, 512)))
        want = np.clip(np.rint((_hu(ds) - (first(wc) - first(ww) / 2)) * 255 / first(ww)), 0, 255)
        assert np.abs(x.astype(int) - want).max() <= 1, f  # float32 against float64 rounding at .5 only
        assert (read_dicom(folder/f, window=(40, 400))[_hu(ds) <= -160] == 0).all()  # air and padding black in a soft-tissue window
    fct.test_eq(makers, {'SIEMENS', 'GE MEDICAL SYSTEMS'})
    assert 0 < two_valued < len(table)  # both kinds of window tags occur


def test_real_monochrome1_radiograph_without_meta_header(real_data):
    "An old CR file: no preamble or meta header (pydicom needs force=True), MONOCHROME1 inverted so that the lungs are dark"
    f = real_data('dicom/CR-MONO1-10-chest.dcm')
    with pytest.raises(pydicom.errors.InvalidDicomError): pydicom.dcmread(f)
    ds = pydicom.dcmread(f, force=True)
    fct.test_eq((str(ds.PhotometricInterpretation), ds.file_meta.get('TransferSyntaxUID')), ('MONOCHROME1', None))
    x = read_dicom(f)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # what read_dicom assumes, from how the data set is encoded
    fct.test_eq(x, 255 - window_uint8(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth)))  # no rescale tags: stored values
    h, w = x.shape
    rows = slice(int(.3 * h), int(.6 * h))
    lungs = np.r_[x[rows, int(.2 * w):int(.38 * w)].ravel(), x[rows, int(.62 * w):int(.8 * w)].ravel()].mean()
    spine = x[rows, int(.45 * w):int(.55 * w)].mean()
    assert lungs < spine - 40, (lungs, spine)  # air dark, bone bright: as every other X-ray looks


def test_real_dicom_csv_through_bmx_compare(real_data, tmp_path):
    "The CT CSV as a user gives it: grey, one channel in memory; a window set with --window is recorded, and another one refused on resume"
    csv = real_data('dicom/ct_contrast/labels.csv')
    dls = csv_dls(csv, size=32, bs=8, seed=0)
    fct.test_eq([len(dl.dataset) for dl in dls.loaders], [60, 15, 25])
    fct.test_eq(np.bincount(get_labels(dls.train)).tolist(), [30, 30])
    fct.test_eq(dls.train.dataset.tls[0].fs[0].images.shape, (100, 1, 32, 32))  # grey: one channel in memory
    fct.test_eq(dls.one_batch()[0].shape, (8, 3, 32, 32))  # three in the batch
    args = ['--data', csv, *FAST, '--size', '32']
    r = cli(*args, '--window', '40', '400', '--out', tmp_path/'ct')
    assert r.returncode == 0, r.stderr[-3000:]
    assert '100 grey images decoded once at 32 px, served from memory: 0 MB' in r.stdout, r.stdout[-2000:]
    fct.test_eq(json.loads((tmp_path/'ct'/'settings.json').read_text())['window'], [40., 400.])
    r = cli(*args, '--out', tmp_path/'ct')
    assert r.returncode == 2 and 'window: [40.0, 400.0] there, None now' in r.stderr, r.stderr[-2000:]


# --- DICOM: pydicom's own test files ------------------------------------------------------------------------------

def test_compressed_dicom_decodes_to_the_uncompressed_pixels():
    mr = read_dicom(get_testdata_file('MR_small.dcm'))
    for name in ('MR_small_RLE.dcm', 'MR_small_jp2klossless.dcm', 'MR_small_bigendian.dcm', 'MR_small_implicit.dcm'):
        fct.test_eq(read_dicom(get_testdata_file(name)), mr)


def test_dicom_that_cant_be_trained_on_is_refused_in_one_line():
    cases = {'test-SR.dcm': 'a DICOM file without pixel data', 'dicomdirtests/DICOMDIR': 'without pixel data (a DICOMDIR)',
             'SC_rgb_rle_2frame.dcm': 'a multi-frame DICOM (2 frames): give one image per file'}
    try: import pylibjpeg  # noqa: F401
    except ImportError:
        cases['MR_small_jpeg_ls_lossless.dcm'] = ('compressed as JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80), '
                                                 'which no installed decoder reads: pip install pylibjpeg')
    for name, msg in cases.items():
        with pytest.raises(ValueError, match=None) as e: read_dicom(get_testdata_file(name))
        assert msg in str(e.value) and '\n' not in str(e.value), (name, str(e.value))


def test_a_folder_of_dicom_files_and_its_bad_ones(tmp_path):
    "A folder of `.dcm` files (no other name) trains like one of PNGs; a report among them is named before training"
    for split, n in (('train', 4), ('valid', 2), ('test', 2)):
        for cls, name in (('ct', 'CT_small.dcm'), ('mr', 'MR_small.dcm')):
            (tmp_path/split/cls).mkdir(parents=True)
            for i in range(n): shutil.copy(get_testdata_file(name), tmp_path/split/cls/f'{i}.dcm')
    ft = folder_table(tmp_path)
    fct.test_eq(ft.split.value_counts().to_dict(), {'train': 8, 'valid': 4, 'test': 4})
    for in_memory in (True, False):
        dls = frame_dls(ft, tmp_path, size=16, bs=4, seed=0, in_memory=in_memory)
        fct.test_eq(dls.one_batch()[0].shape, (4, 3, 16, 16))
    shutil.copy(get_testdata_file('test-SR.dcm'), tmp_path/'train'/'ct'/'report.dcm')
    bad = image_problems([tmp_path/f for f in folder_table(tmp_path).fname])
    fct.test_eq([p.name for p in bad], ['report.dcm'])
    assert 'without pixel data' in bad[tmp_path/'train'/'ct'/'report.dcm']
    r = cli('--data', tmp_path, *FAST, '--out', tmp_path/'out')
    assert r.returncode == 2 and 'report.dcm' in r.stderr and 'without pixel data' in r.stderr, r.stderr[-2000:]


def test_without_pydicom_dicom_is_refused_naming_the_extra(tmp_path, monkeypatch):
    shutil.copy(get_testdata_file('CT_small.dcm'), tmp_path/'a.dcm')
    monkeypatch.setitem(sys.modules, 'pydicom', None)  # as if it weren't installed
    for f in (lambda: read_pixels(tmp_path/'a.dcm'), lambda: decode_images([tmp_path/'a.dcm'], 8), lambda: image_problems([tmp_path/'a.dcm'])):
        with pytest.raises(ImportError, match=r"Reading DICOM files needs pydicom: pip install 'fastai_bmx\[dicom\]'"): f()


def test_dicom_is_found_by_its_preamble_without_a_name():
    cr = get_testdata_file('dicomdirtests/77654033/CR1/6154')
    assert Path(cr).suffix == '' and is_dicom(cr) and not is_dicom(__file__)


# --- 16-bit and grey images ----------------------------------------------------------------------------------------

def test_16bit_png_round_trip_keeps_its_values(tmp_path):
    "Every 16-bit value comes back scaled by the bit depth, to within half an 8-bit step; a window picks a band exactly"
    v = np.random.default_rng(0).integers(0, 65536, (64, 64), dtype=np.uint16)
    Image.fromarray(v).save(tmp_path/'x.png')
    x = read_pixels(tmp_path/'x.png')
    assert x.dtype == np.uint8 and np.abs(x / 255 - v / 65535).max() <= 0.5 / 255 + 1e-9
    fct.test_eq(x, bits_uint8(v, 16))
    band = read_pixels(tmp_path/'x.png', window=(30000, 1000))
    fct.test_eq(band, window_uint8(v, 30000, 1000))
    png = (tmp_path/'x.png').read_bytes()  # with an sBIT chunk saying 12 significant bits, 4095 is white
    Image.fromarray(np.full((4, 4), 4095, np.uint16)).save(tmp_path/'s.png')
    png = (tmp_path/'s.png').read_bytes()
    (tmp_path/'s.png').write_bytes(png[:33] + bytes.fromhex('00000001') + b'sBIT\x0c' + zlib.crc32(b'sBIT\x0c').to_bytes(4, 'big') + png[33:])
    fct.test_eq(read_pixels(tmp_path/'s.png')[0, 0], 255)


def _grey_level_folder(root:Path, levels=(20000, 40000), noise:int=3000):
    "A folder of 16-bit grey PNGs whose class is their grey level, every level above 255"
    g = np.random.default_rng(0)
    for split, n in (('train', 24), ('valid', 8), ('test', 8)):
        for name, level in zip(('dim', 'bright'), levels):
            (root/split/name).mkdir(parents=True)
            for i in range(n):
                px = np.clip(level + g.normal(0, noise, (24, 24)), 0, 65535).astype(np.uint16)
                Image.fromarray(px).save(root/split/name/f'{i}.png')


def test_bmx_compare_learns_classes_that_are_grey_levels_above_255(tmp_path):
    "Two classes told apart only by a 16-bit grey level: fastai's own reader makes them all white; bmx-compare learns them"
    from fastai.vision.core import PILImage
    _grey_level_folder(tmp_path/'data')
    files = sorted((tmp_path/'data'/'test').rglob('*.png'))
    assert {tuple(np.unique(np.asarray(PILImage.create(f)))) for f in files} == {(255,)}  # what training read before: blank
    r = cli('--data', tmp_path/'data', *FAST, '--size', '16', '--epochs', '3', '--lr', '1e-2', '--out', tmp_path/'out')
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_csv(tmp_path/'out'/'results.csv')
    assert res.loc[0, 'balanced_accuracy'] >= 0.9, res.T


def test_grey_in_memory_is_a_third_and_gives_the_same_batches(tmp_path, monkeypatch):
    "The same grey images held in one channel or three: a third of the memory, and the very same batches"
    from fastai.torch_core import set_seed
    import fastai_bmx.files as files
    g = np.random.default_rng(0)
    rows = []
    for i in range(24):
        Image.fromarray(g.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path/f'{i}.png')
        rows.append((f'{i}.png', 'ab'[i % 2], ['train', 'train', 'valid', 'test'][i % 4]))
    df = pd.DataFrame(rows, columns=['fname', 'label', 'split'])
    def loaders():
        set_seed(0)
        d = frame_dls(df, tmp_path, size=12, bs=4, seed=0, in_memory=True)
        return d, [d.one_batch(), *(next(iter(dl)) for dl in d.loaders[1:]), d.resampled(0.).one_batch()]
    grey, bg = loaders()
    decoded = files.kept_pixels
    monkeypatch.setattr(files, 'kept_pixels', lambda *a: np.repeat(decoded(*a)[..., None], 3, -1))  # the same pixels, in RGB
    rgb, br = loaders()
    xg, xr = (d.train.dataset.tls[0].fs[0].images for d in (grey, rgb))
    fct.test_eq((xg.shape[1], xr.shape[1], xr.numel() / xg.numel()), (1, 3, 3.))
    for (a, ya), (b, yb) in zip(bg, br):
        fct.test_eq(ya, yb)
        fct.test_eq(a, b)
    assert fits_in_memory(1000, 64, available=2 * 3 * 1000 * 64 * 64, channels=1)
    assert not fits_in_memory(1000, 64, available=2 * 3 * 1000 * 64 * 64, channels=3)


def test_images_read_every_epoch_are_read_as_in_memory(tmp_path):
    "From the files, a 16-bit PNG gives the same grey levels as decoded once (fastai's `PILImage` gave white)"
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path/'a.png')
    fct.test_eq(np.asarray(MedicalImage.create(tmp_path/'a.png'))[0, 0], [117] * 3)
    fct.test_eq(decode_images([tmp_path/'a.png'], 8)[0, 0, 0], 117)


# --- the CSVs people have ------------------------------------------------------------------------------------------

def _csv_images(root:Path) -> pd.DataFrame:
    return png_table(root, (('Train', 12), ('Validation', 6), ('TEST', 6)), ('naevus', 'mélanome'))


@pytest.mark.parametrize('sep,encoding', [(';', 'utf-8-sig'), ('\t', 'utf-16'), (';', 'latin-1')])
def test_spreadsheet_csvs_through_the_console_script(tmp_path, sep, encoding):
    "Excel's ways of saving a CSV (semicolons, UTF-8 with a BOM, tab-separated UTF-16, Latin-1) and split names in other cases"
    _csv_images(tmp_path).to_csv(tmp_path/'labels.csv', sep=sep, encoding=encoding, index=False)
    r = cli('--data', tmp_path/'labels.csv', *FAST, '--size', '16', '--out', tmp_path/'out')
    assert r.returncode == 0, r.stderr[-3000:]
    fct.test_eq(json.loads((tmp_path/'out'/'classes.json').read_text()), ['mélanome', 'naevus'])
    assert '24 images decoded once' in r.stdout, r.stdout[-2000:]


def test_a_workbook_or_an_unknown_split_is_refused_in_one_line(tmp_path):
    (tmp_path/'book.csv').write_bytes(b'PK\x03\x04 an xlsx renamed')
    r = cli('--data', tmp_path/'book.csv', *FAST, '--out', tmp_path/'out')
    assert r.returncode == 2 and 'is a zip file (an Excel workbook?), not a CSV' in r.stderr, r.stderr[-2000:]
    df = _csv_images(tmp_path)
    df.loc[0, 'split'] = 'holdout'
    df.to_csv(tmp_path/'labels.csv', index=False)
    r = cli('--data', tmp_path/'labels.csv', *FAST, '--out', tmp_path/'out')
    assert r.returncode == 2 and "Column 'split' has values ['holdout']" in r.stderr, r.stderr[-2000:]


def test_an_exported_dicom_model_reads_new_files_through_its_window(tmp_path):
    "bmx-compare's export of a DICOM folder with a window: the exported loaders read .dcm paths as training did, so the test probabilities come back"
    from fastai.learner import load_learner
    from fastai_bmx.app.compare import plan_compare, run_plan
    from fastai_bmx.app.decide.export import export_run
    g = np.random.default_rng(0)
    for split, n in (('train', 8), ('valid', 4), ('test', 4)):
        for cls, name in (('ct', 'CT_small.dcm'), ('mr', 'MR_small.dcm')):
            (tmp_path/'data'/split/cls).mkdir(parents=True)
            for i in range(n):  # each file a little different: its pixels shifted by a random stored value
                ds = pydicom.dcmread(get_testdata_file(name))
                ds.PixelData = (ds.pixel_array + int(g.integers(0, 200))).astype(ds.pixel_array.dtype).tobytes()
                ds.save_as(tmp_path/'data'/split/cls/f'{i}.dcm')
    plan = plan_compare(str(tmp_path/'data'), tmp_path/'out', methods=['instance'], seeds=[0], epochs=1, arch='resnet10t',
                        bs=4, size=16, window=(40, 400), show_bar=False)
    run_plan(plan)
    export_run(plan.folder, 'instance_seed0', 'plain', None, plan.load, plan.train)
    learn = load_learner(tmp_path/'out'/'recommended.pkl')
    tbl = folder_table(tmp_path/'data')
    files = [tmp_path/'data'/f for f in tbl.fname[tbl.split == 'test']]
    probs, _ = learn.get_preds(dl=learn.dls.test_dl(files))
    fct.test_close(probs.numpy(), plan.folder.preds('instance_seed0')[0], eps=1e-5)


# --- planning: a source decided once, each image decoded once --------------------------------------------------------

def _count_reads(monkeypatch) -> Counter:
    "Count the opening of every image file: by the decoding of a set (`decode_files`) and by loaders that read files"
    import fastai_bmx.images as images
    opened, read = Counter(), images.read_image
    def counted(path, window=None): opened[str(path)] += 1; return read(path, window)
    monkeypatch.setattr(images, 'read_image', counted)  # what `decode_files` and `read_pixels` (the loaders') call
    return opened


@pytest.mark.parametrize('from_disk', [False, True])
def test_planning_decodes_each_image_once(tmp_path, monkeypatch, from_disk):
    "bmx-compare's planning of a CSV: the check that every file decodes is the decoding the loaders serve; no run decodes again"
    from fastai_bmx.app.plan.sources import read_source, LoadSettings
    from fastai_bmx.app.plan.validate import check_images, split_counts
    from fastai_bmx.files import serves_from_memory
    png_table(tmp_path, labels=('a', 'b')).to_csv(tmp_path/'labels.csv', index=False)
    opened = _count_reads(monkeypatch)
    src = read_source(tmp_path/'labels.csv')
    settings = LoadSettings(src, bs=4, size=16, in_memory=check_images(src, size=16, in_memory=False if from_disk else None)[0])
    dls, rec = settings.load(seed=0)
    split_counts(dls, rec)  # the labels, for the checks of the classes: no image read
    fct.test_eq((settings.in_memory, serves_from_memory(dls)), (not from_disk,) * 2)
    fct.test_eq(len(opened), len(src.files))  # every file checked
    again = {f for f, n in opened.items() if n > 1}
    if from_disk:  # fastai's `from_df` reads its first training item as it builds the loaders, to learn their types
        assert again <= {str(src.files[0])}, again
        return
    assert not again, again  # each decoded once, for the check and the loaders
    for seed, fold in ((1, None), (0, 2)): settings.load(seed, fold)  # the next runs: from the pixels kept
    fct.test_eq(max(opened.values()), 1)


def test_a_bad_file_is_refused_by_the_one_decoding(tmp_path):
    "The refusal of the planning decode names the bad file, as the check alone did"
    from fastai_bmx.app.plan.validate import check_images
    from fastai_bmx.app.plan.sources import read_source
    png_table(tmp_path, labels=('a', 'b')).to_csv(tmp_path/'labels.csv', index=False)
    (tmp_path/'train_3.png').write_bytes(b'broken')
    for in_memory in (None, False):
        with pytest.raises(ValueError) as e: check_images(read_source(str(tmp_path/'labels.csv')), size=16, in_memory=in_memory)
        assert str(e.value).startswith(f"1 of 24 image files can't be used: {tmp_path/'train_3.png'} (doesn't decode: "), e.value
        assert str(e.value).endswith('. Fix them, or remove their rows from the CSV.'), e.value


def test_a_source_is_absolute_and_pickles(tmp_path, monkeypatch):
    "Ray sends the loading settings to workers that may start in another folder: the paths are absolute from the start"
    from fastai_bmx.app.plan.sources import read_source, LoadSettings
    (tmp_path/'data').mkdir()
    png_table(tmp_path/'data', labels=('a', 'b')).to_csv(tmp_path/'data'/'labels.csv', index=False)
    np.savez(tmp_path/'data'/'arrays.npz', x=np.zeros(1))
    monkeypatch.chdir(tmp_path)
    src = read_source('data/labels.csv')  # relative to this folder
    fct.test_eq(read_source('data/arrays.npz').path, tmp_path/'data'/'arrays.npz')
    monkeypatch.chdir(tmp_path/'data')  # a worker that starts elsewhere
    back = pickle.loads(pickle.dumps(LoadSettings(src, bs=4, size=16, in_memory=False)))
    fct.test_eq((back.source.data, back.source.kind, back.source.folder, back.source.path),
                ('data/labels.csv', 'csv', tmp_path/'data', tmp_path/'data'/'labels.csv'))
    fct.test_eq(back.source.table, src.table)
    assert all(f.is_file() for f in back.source.files)
    dls, rec = back.load(seed=0)
    fct.test_eq((rec.data, [len(dl.dataset) for dl in dls.loaders]), ('data/labels.csv', [12, 6, 6]))  # the record: as given
