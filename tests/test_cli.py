"""The ``slamjax`` command line (``slamjax.cli.main``): commands, outputs and error reporting."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

import slamjax as sj
from slamjax import plot
from slamjax.cli import UsageError, main, parse_selection

from .conftest import shared_file

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slamjax: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def sample_file():
    with resources.as_file(sj.data.sample_path()) as path:
        yield path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """60 stars of the bundled sample spread over its label range, as an npz file."""
    ds = sj.data.load_sample()
    path = tmp_path_factory.mktemp("data") / "small.npz"
    ds[np.linspace(0, ds.n_spectra - 1, 60).astype(int)].save_npz(path)
    return path


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """A model trained through the CLI (default emulator: kernel) on ``small_data``, and the captured stdout."""
    model = tmp_path_factory.mktemp("model") / "model.npz"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # capsys is function-scoped
        rc = main(["train", str(small_data), "--out", str(model), "--order", "2"])
    return rc, model, out.getvalue()


def test_version(capsys):
    assert main(["--version"]) == 0
    assert sj.__version__ in capsys.readouterr().out


def test_info_sample(sample_file, capsys):
    assert main(["info", str(sample_file)]) == 0
    out = capsys.readouterr().out
    assert "434" in out and "4300" in out
    for name in ("teff", "logg", "fe_h"):
        assert name in out


def test_train_cannon_option(small_data, tmp_path, capsys):
    model = tmp_path / "cannon.npz"
    assert main(["train", str(small_data), "--out", str(model), "--emulator", "cannon"]) == 0
    assert "CannonEmulator" in capsys.readouterr().out
    assert sj.emulators.read_header(model)["emulator"] == "CannonEmulator"


def test_train_systematics_option(small_data, tmp_path, capsys):
    """--systematics K stores k-fold systematics in the model file; fit adds them to the errors."""
    model = tmp_path / "cannon_sys.npz"
    args = ["train", str(small_data), "--out", str(model), "--emulator", "cannon", "--order", "1"]
    assert main(args + ["--systematics", "3"]) == 0
    out = capsys.readouterr().out
    assert "3-fold CV, rms teff" in out
    em = sj.load_emulator(model)
    assert em.space.systematics is not None and em.space.systematics.points.shape[1] == 3
    assert main(["info", str(model)]) == 0
    info = capsys.readouterr().out
    form = "smooth form" if em.space.systematics.log_var is not None else "mean excess of the"
    assert f"systematics {form}" in info and f"{em.space.systematics.k} " in info
    ds = sj.load_npz(small_data)
    with_sys = sj.fit_labels(em, ds[:10])
    formal = sj.fit_labels(em, ds[:10], systematics=False)
    np.testing.assert_allclose(with_sys.labels, formal.labels)
    assert np.all(with_sys.labels_err > formal.labels_err)
    assert main(args + ["--systematics", "1"]) == 2
    assert "--systematics: must be >= 2" in capsys.readouterr().err


def test_train_info_fit(trained, small_data, tmp_path, capsys):
    rc, model, train_out = trained
    assert rc == 0
    assert model.exists()
    assert "60" in train_out and "teff, logg, fe_h" in train_out
    assert sj.emulators.read_header(model)["emulator"] == "KernelEmulator"  # the default

    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "KernelEmulator" in out and "teff" in out and "4300" in out
    assert "systematics none" in out  # trained without --systematics

    cat = tmp_path / "cat.fits"
    assert main(["fit", str(model), str(small_data), "--out", str(cat), "--n-starts", "2"]) == 0
    out = capsys.readouterr().out
    assert "CONVERGED" in out and "scatter" in out  # the data file has labels: bias/scatter printed
    tab = Table.read(cat)
    assert len(tab) == 60
    assert {"teff", "teff_err", "logg", "fe_h", "status", "chi2"} <= set(tab.colnames)
    assert np.isfinite(np.asarray(tab["teff"])).all()
    cat1 = tmp_path / "cat_one_worker.fits"
    assert main(["fit", str(model), str(small_data), "--out", str(cat1), "--n-starts", "2", "--workers", "1"]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(np.asarray(Table.read(cat1)["teff"]), np.asarray(tab["teff"]), rtol=1e-9)
    assert main(["fit", str(model), str(small_data), "--out", str(cat1), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err

    # no silent overwrite; --overwrite replaces (float32 path too)
    assert main(["fit", str(model), str(small_data), "--out", str(cat)]) == 1
    assert "--overwrite" in _one_error_line(capsys)
    assert main(["fit", str(model), str(small_data), "--out", str(cat), "--overwrite", "--float32"]) == 0
    assert len(Table.read(cat)) == 60

    assert main(["info", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "60" in out and "status" in out and "CONVERGED" in out


def test_fit_rejects_non_ascii_ids_before_fitting(trained, small_data, tmp_path, capsys, monkeypatch):
    _, model, _ = trained
    ds = sj.load_npz(small_data)
    ids = np.array([f"star{i}" for i in range(ds.n_spectra - 1)] + ["\u00e9toile"])
    data = tmp_path / "named.npz"
    sj.SpectrumSet(ds.wave, ds.flux, ds.ivar, labels=ds.labels, label_names=ds.label_names, ids=ids).save_npz(data)

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the ids were checked")

    monkeypatch.setattr(sj, "fit_labels", no_fit)
    cat = tmp_path / "c.fits"
    assert main(["fit", str(model), str(data), "--out", str(cat)]) == 1
    assert "not ASCII" in _one_error_line(capsys) and not cat.exists()


def test_train_select_and_labels(small_data, tmp_path, capsys):
    model = tmp_path / "m.npz"
    args = ["train", str(small_data), "--out", str(model), "--order", "1", "--labels", "teff,logg"]
    assert main([*args, "--select", "teff>4500, teff<=6500"]) == 0
    out = capsys.readouterr().out
    ds = sj.load_npz(small_data)
    n_sel = int(((ds.label("teff") > 4500) & (ds.label("teff") <= 6500)).sum())
    assert f"selected {n_sel} of 60" in out
    header = sj.emulators.read_header(model)
    assert header["label_names"] == ["teff", "logg"]
    assert header["label_scaling"]["train_min"][0] > 4500

    # the model file exists now: a second training refuses to replace it, before any work
    before = model.read_bytes()
    assert main([*args, "--select", "teff>4000"]) == 1
    assert "exists; use --overwrite" in _one_error_line(capsys)
    assert model.read_bytes() == before
    assert main([*args, "--select", "teff>4000", "--overwrite"]) == 0
    assert sj.emulators.read_header(model)["label_scaling"]["train_min"][0] <= 4500
    capsys.readouterr()
    # -o is --out; the .npz suffix is added as em.save adds it, and the check sees that name
    assert main(["train", str(small_data), "-o", str(tmp_path / "m"), "--order", "1", "--emulator", "cannon"]) == 1
    assert "m.npz exists" in _one_error_line(capsys)
    args = [*args, "--overwrite"]
    assert main([*args, "--select", "teff>9000"]) == 1  # selects nothing
    assert "keeps none" in _one_error_line(capsys)
    assert main([*args, "--select", "teff=5000"]) == 2  # bad syntax: a usage error
    _one_error_line(capsys)


def test_normalization_recorded_and_checked(small_data, tmp_path, capsys, caplog):
    """train --normalize records the training flux's normalisation in the model; fit refuses data that
    say they were normalised otherwise (README: mixed normalisations bias [Fe/H] by ~0.2 dex on MILES)."""
    model = tmp_path / "m.npz"
    args = ["train", str(small_data), "-o", str(model), "--emulator", "cannon", "--order", "1"]
    assert main([*args, "--normalize", "spline"]) == 0
    assert "normalisation  spline (--normalize)" in capsys.readouterr().out
    assert sj.emulators.read_header(model)["meta"] == {"training_data": "small.npz", "normalization": "spline"}
    assert main(["info", str(model)]) == 0
    assert "normalisation spline (of the training flux)" in capsys.readouterr().out
    with np.load(small_data) as f:
        arrays = dict(f)
    data = {}
    for norm in ("spline", "median"):
        data[norm] = tmp_path / f"data_{norm}.npz"
        np.savez(data[norm], **arrays, normalization=np.array(norm))
    assert main(["fit", str(model), str(data["spline"]), "-o", str(tmp_path / "a.fits")]) == 0
    capsys.readouterr()
    out = tmp_path / "b.fits"
    assert main(["fit", str(model), str(data["median"]), "-o", str(out)]) == 1
    assert "normalised by 'spline'" in (err := _one_error_line(capsys)) and "by 'median'" in err
    assert not out.exists()
    assert main(["fit", str(model), str(data["median"]), "-o", str(out), "--allow-normalization-mismatch"]) == 0
    # the training npz's own record is kept; a model without one only gets a warning
    recorded = tmp_path / "recorded.npz"
    assert main(["train", str(data["median"]), "-o", str(recorded), "--emulator", "cannon", "--order", "1"]) == 0
    assert "normalisation  median (data_median.npz says so" in capsys.readouterr().out
    plain = tmp_path / "plain.npz"
    assert main(["train", str(small_data), "-o", str(plain), "--emulator", "cannon", "--order", "1"]) == 0
    assert "normalisation  not recorded" in capsys.readouterr().out
    assert "normalization" not in sj.emulators.read_header(plain)["meta"]
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):
        assert main(["fit", str(plain), str(data["median"]), "-o", str(tmp_path / "c.fits")]) == 0
    assert "does not record its training spectra's normalization (median in the spectra)" in caplog.text


def test_wavelength_medium_recorded_and_checked(small_data, tmp_path, capsys):
    """train --air records the medium; fit refuses spectra that 'slamjax prep' wrote in vacuum (no override:
    air and vacuum wavelengths differ by ~1.4 Å at 5000 Å)."""
    model = tmp_path / "m.npz"
    assert main(["train", str(small_data), "-o", str(model), "--emulator", "cannon", "--order", "1", "--air"]) == 0
    assert "wavelengths    air" in capsys.readouterr().out
    assert main(["info", str(model)]) == 0
    assert "medium     air wavelengths" in capsys.readouterr().out
    assert sj.emulators.read_header(model)["meta"] == {"training_data": "small.npz", "medium": "air"}
    with np.load(small_data) as f:
        arrays = dict(f)
    for medium, rc in (("air", 0), ("vacuum", 1)):
        path = tmp_path / f"{medium}.npz"
        np.savez(path, **arrays, medium=np.array(medium))
        assert main(["fit", str(model), str(path), "-o", str(tmp_path / f"{medium}.fits")]) == rc
    assert "holds vacuum wavelengths" in (err := _one_error_line(capsys)) and "slamjax prep --air" in err
    assert not (tmp_path / "vacuum.fits").exists()
    # the training npz's own record is used when --air/--vacuum is not given
    recorded = tmp_path / "recorded.npz"
    assert main(["train", str(tmp_path / "vacuum.npz"), "-o", str(recorded), "--emulator", "cannon"]) == 0
    assert sj.emulators.read_header(recorded)["meta"]["medium"] == "vacuum"


def test_parse_selection():
    assert parse_selection("teff>4000,teff<7000") == [("teff", ">", 4000.0), ("teff", "<", 7000.0)]
    assert parse_selection(" fe_h >= -1.5e0 , logg<=4") == [("fe_h", ">=", -1.5), ("logg", "<=", 4.0)]
    for bad in ("teff", "teff==3", "teff>x", ",", "4000<teff"):
        with pytest.raises(UsageError):
            parse_selection(bad)


def test_demo_quick(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    cat = out_dir / "demo_catalog.fits"
    assert cat.exists()
    tab = Table.read(cat)
    n = len(range(0, 434, 3))
    assert len(tab) == n
    assert {"teff", "teff_true", "logg_true", "fe_h_true", "fold", "status"} <= set(tab.colnames)
    assert set(np.unique(tab["fold"])) == {0, 1, 2}
    for word in ("bias", "scatter", "MAE", "CONVERGED", "spectra/s", str(cat)):
        assert word in out
    png = out_dir / "demo_one_to_one.png"
    if HAVE_MPL:
        assert png.exists() and png.stat().st_size > 0
        assert str(png) in out
    else:
        assert not png.exists()
        assert "plot skipped" in out and 'pip install -e ".[plot]"' in out


def test_one_to_one(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    true = np.column_stack([rng.uniform(4000, 7000, 30), rng.uniform(0, 5, 30), rng.uniform(-2, 0.5, 30)])
    pred = true + rng.normal(0, [80, 0.2, 0.1], true.shape)
    pred[0] = np.nan  # a failed fit is skipped, not plotted
    status = np.zeros(30, int)
    status[1:3] = 2
    path = plot.one_to_one(
        pred, true, ["teff", "logg", "fe_h"], tmp_path / "p.png", err=np.abs(pred) * 0.01, status=status
    )
    assert path == tmp_path / "p.png" and path.stat().st_size > 0
    with pytest.raises(ValueError):
        plot.one_to_one(pred, true[:, :2], ["teff", "logg"], tmp_path / "q.png")


def test_one_to_one_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match="pip install"):
        plot.one_to_one(np.zeros((2, 1)), np.zeros((2, 1)), ["teff"], tmp_path / "p.png")


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert main(["info", str(missing)]) == 1
    assert "nope.npz" in _one_error_line(capsys)
    assert main(["fit", str(missing), str(missing), "--out", str(tmp_path / "c.fits")]) == 1
    _one_error_line(capsys)
    assert main(["train", str(missing), "--out", str(tmp_path / "m.npz")]) == 1
    _one_error_line(capsys)


def test_unknown_file_type(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a spectrum\n")
    assert main(["info", str(text)]) == 1
    assert "unrecognised file type" in _one_error_line(capsys)
    assert main(["train", str(text), "--out", str(tmp_path / "m.npz")]) == 1
    _one_error_line(capsys)
    assert main(["info", str(tmp_path)]) == 1  # a directory
    _one_error_line(capsys)


def test_wrong_kind_of_npz(trained, small_data, tmp_path, capsys):
    _, model, _ = trained
    assert main(["train", str(model), "--out", str(tmp_path / "m.npz")]) == 1  # a model is not spectra
    assert "model file" in _one_error_line(capsys)
    assert main(["fit", str(small_data), str(small_data), "--out", str(tmp_path / "c.fits")]) == 1
    assert "not a slamjax model file" in _one_error_line(capsys)
    assert main(["fit", str(model), str(small_data), "--out", str(tmp_path / "c.csv")]) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["info"], ["demo", "--k", "1"], ["train", "x.npz"], ["fit", "m.npz", "d.npz", "--n-starts", "0"]],
)
def test_usage_errors(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "slamjax" in err and "error:" in err


# ---------------------------------------------------------------------- prep
LRS_FILES = ("spec-57287-KP193637N444141V03_sp10-161.fits.gz", "spec-58397-EG014118N254444M01_sp03-031.fits")


def test_prep_lamost_lrs(tmp_path, capsys):
    files = [str(shared_file("survey_files", name)) for name in LRS_FILES]
    out = tmp_path / "lrs.npz"
    assert main(["prep", *files, "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "prepared 2 spectra from 2 files" in summary and "flagged" in summary and str(out) in summary

    ds = sj.load_npz(out)
    assert ds.n_spectra == 2 and ds.n_pixels == 3909
    assert np.all(np.isfinite(ds.flux)) and np.all(ds.ivar >= 0)
    good = ds.ivar > 0
    for row, ok in zip(ds.flux, good):
        assert 0.8 < np.median(row[ok]) < 1.1
    with np.load(out) as data:
        for key in ("wave", "flux", "ivar", "ids", "rv", "snr", "ok"):
            assert key in data.files, key
        assert data["ok"].dtype == bool and data["ok"].shape == (2,)
        assert np.all(np.isfinite(data["rv"])) and np.all(data["snr"] > 10)
        assert np.all(np.isfinite(data["doppler_shift"]))  # LAMOST LRS gives the velocity: both shifted
        n_flagged = int((~data["ok"]).sum())
    assert f"{n_flagged} flagged with more than 50 bad pixels" in summary
    assert list(ds.ids) == ["359910161", "677503031"]

    # an explicit grid, air wavelengths, no normalisation, no shift; the output exists: needs --overwrite
    argv = ["prep", *files, "--out", str(out), "--grid", "4000,8000,1e-4", "--air", "--no-rest-frame"]
    assert main([*argv, "--normalize", "none"]) == 1
    assert "--overwrite" in _one_error_line(capsys)
    assert main([*argv, "--normalize", "none", "--overwrite", "--max-bad", "100000"]) == 0
    capsys.readouterr()
    ds = sj.load_npz(out)
    np.testing.assert_allclose(ds.wave, sj.preprocess.log_lambda_grid(4000.0, 8000.0, 1e-4))
    assert np.all(ds.meta["ok"]) and np.all(np.isnan(ds.meta["doppler_shift"]))
    assert np.median(ds.flux[ds.ivar > 0]) > 10  # LAMOST fluxes are not normalised


def test_prep_grid_from_npz(sample_file, tmp_path, capsys):
    lrs = str(shared_file("survey_files", LRS_FILES[1]))
    out = tmp_path / "on_sample_grid.npz"
    assert main(["prep", lrs, "--out", str(out), "--grid-from", str(sample_file), "--air"]) == 0
    capsys.readouterr()
    ds, sample = sj.load_npz(out), sj.load_npz(sample_file)
    np.testing.assert_array_equal(ds.wave, sample.wave)
    assert ds.n_spectra == 1


def test_prep_unknown_layout(tmp_path, capsys):
    from astropy.io import fits

    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 5), np.float32)).writeto(path)
    assert main(["prep", str(path), "--out", str(tmp_path / "set.npz")]) == 1
    assert "unknown spectrum file layout" in _one_error_line(capsys)
    assert not (tmp_path / "set.npz").exists()
    assert main(["prep", str(tmp_path / "missing.fits"), "--out", str(tmp_path / "set.npz")]) == 1
    assert "no such file" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "grid",
    ["4000,8000", "8000,4000,1e-4", "4000,8000,0", "4000,8000,2", "a,b,c", "4000,8000,1e-12", "-1,8000,1e-4"],
)
def test_prep_bad_grid(grid, tmp_path, capsys):
    assert main(["prep", "x.fits", "--out", str(tmp_path / "set.npz"), "--grid", grid]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "--grid" in err


def test_prep_usage_errors(tmp_path, capsys):
    out = str(tmp_path / "set.npz")
    assert main(["prep", "--out", out]) == 2  # no files
    capsys.readouterr()
    assert main(["prep", "x.fits", "--out", out, "--grid", "4000,8000,1e-4", "--grid-from", "w.npz"]) == 2
    capsys.readouterr()
    assert main(["prep", "x.fits", "--out", out, "--air", "--vacuum"]) == 2
    capsys.readouterr()
    assert main(["prep", "x.fits", "--out", out, "--normalize", "chebyshev"]) == 2
    capsys.readouterr()
    assert main(["prep", "x.fits", "--out", str(tmp_path / "set.fits")]) == 2
    _one_error_line(capsys)


def test_train_payne_option(tmp_path, capsys):
    # 40 stars x 400 pixels: the option's wiring is tested here, the network's accuracy in test_payne
    ds = sj.data.load_sample()
    data = tmp_path / "tiny.npz"
    ds, px = ds[np.linspace(0, ds.n_spectra - 1, 40).astype(int)], slice(1500, 1900)
    tiny = sj.SpectrumSet(ds.wave[px], ds.flux[:, px], ds.ivar[:, px], labels=ds.labels, label_names=ds.label_names)
    tiny.save_npz(data)
    model = tmp_path / "payne.npz"
    assert main(["train", str(data), "--out", str(model), "--emulator", "payne", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "PayneEmulator" in out and "validation residuals" in out
    em = sj.load_emulator(model)
    assert isinstance(em, sj.PayneEmulator) and em.label_names == ("teff", "logg", "fe_h")


# ---------------------------------------------------------------------- records, checks before work
@pytest.fixture(scope="module")
def rec_data(tmp_path_factory):
    """40 stars x 200 pixels as 'slamjax prep' would record them (normalization spline, medium air), plus a
    second flux array 'flux_unnorm' (the flux x 1000: unnormalised) that the normalisation record does not
    describe."""
    ds = sj.data.load_sample()
    ds, px = ds[np.linspace(0, ds.n_spectra - 1, 40).astype(int)], slice(1500, 1700)
    path = tmp_path_factory.mktemp("rec") / "rec.npz"
    np.savez(
        path,
        wave=ds.wave[px],
        flux=ds.flux[:, px],
        flux_unnorm=ds.flux[:, px] * 1000.0,
        ivar=ds.ivar[:, px],
        labels=ds.labels,
        label_names=np.array(ds.label_names),
        ids=ds.ids,
        normalization=np.array("spline"),
        medium=np.array("air"),
    )
    return path


def test_train_flux_key_ignores_the_flux_normalization_record(rec_data, tmp_path, capsys):
    """The npz's 'normalization' describes its 'flux': training on --flux-key flux_unnorm records none
    (the medium describes the wavelengths and is kept)."""
    model = tmp_path / "m.npz"
    args = ["train", str(rec_data), "-o", str(model), "--emulator", "cannon", "--order", "1"]
    assert main([*args, "--flux-key", "flux_unnorm"]) == 0
    out = capsys.readouterr().out
    assert "normalisation  not recorded (the npz's record describes its 'flux', not 'flux_unnorm'" in out
    assert sj.emulators.read_header(model)["meta"] == {"training_data": "rec.npz", "medium": "air"}
    # --normalize still records what it did; the default key keeps the npz's record
    assert main([*args, "--flux-key", "flux_unnorm", "--normalize", "median", "--overwrite"]) == 0
    assert sj.emulators.read_header(model)["meta"]["normalization"] == "median"
    assert main([*args, "--overwrite"]) == 0
    assert "normalisation  spline (rec.npz says so" in capsys.readouterr().out
    assert sj.emulators.read_header(model)["meta"]["normalization"] == "spline"


def test_fit_flux_key_data_are_unrecorded(rec_data, tmp_path, capsys, caplog):
    """fit --flux-key X: the npz's normalisation record (of 'flux') does not describe X, so a model normalised
    otherwise is not refused for it, only warned about; with the default key the mismatch is refused."""
    model = tmp_path / "m.npz"
    argv = ["train", str(rec_data), "-o", str(model), "--emulator", "cannon", "--order", "1", "--normalize", "median"]
    assert main(argv) == 0
    capsys.readouterr()
    fit = ["fit", str(model), str(rec_data), "--n-starts", "1"]
    assert main([*fit, "-o", str(tmp_path / "a.fits")]) == 1
    assert "normalised by 'median'" in (err := _one_error_line(capsys)) and "by 'spline'" in err
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):
        assert main([*fit, "-o", str(tmp_path / "b.fits"), "--flux-key", "flux_unnorm"]) == 0
    assert "does not record the normalization (median in the model) of its spectra" in caplog.text
    assert "flux read from 'flux_unnorm'" in caplog.text
    assert len(Table.read(tmp_path / "b.fits")) == 40


def test_fit_warns_when_only_the_model_records_and_on_unnormalised_flux(rec_data, tmp_path, capsys, caplog):
    """The provenance warning is symmetric (model records, data do not), and a model trained on normalised
    flux warns loudly about spectra whose median flux is far from 1."""
    model = tmp_path / "m.npz"
    assert main(["train", str(rec_data), "-o", str(model), "--emulator", "cannon", "--order", "1"]) == 0
    capsys.readouterr()
    ds = sj.load_npz(rec_data)
    plain, unnorm = tmp_path / "plain.npz", tmp_path / "unnorm.npz"
    sj.SpectrumSet(ds.wave, ds.flux, ds.ivar).save_npz(plain)  # no records
    sj.SpectrumSet(ds.wave, ds.flux * 1000.0, ds.ivar * 1e-6).save_npz(unnorm)
    fit = ["fit", str(model), "--n-starts", "1"]
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):
        assert main([*fit, str(plain), "-o", str(tmp_path / "a.fits")]) == 0
    assert "does not record the normalization (spline in the model) or medium (air in the model)" in caplog.text
    assert "UNNORMALISED" not in caplog.text  # median flux ~1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):
        assert main([*fit, str(unnorm), "-o", str(tmp_path / "b.fits")]) == 0
    assert "40 of 40 spectra (checked)" in caplog.text and "UNNORMALISED" in caplog.text
    assert "normalised by 'spline'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):  # the recorded data: nothing to warn about
        assert main([*fit, str(rec_data), "-o", str(tmp_path / "c.fits")]) == 0
    assert not [r for r in caplog.records if r.name == "slamjax.cli"]


def test_train_checks_before_training(rec_data, tmp_path, capsys, monkeypatch):
    """A missing output directory, --systematics K above the number of (selected) stars, an output that
    is the input, and NaN labels are refused before any training (no training is run at all here)."""

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the checks")

    monkeypatch.setattr(sj.CannonEmulator, "train", no_training)
    args = ["train", str(rec_data), "--emulator", "cannon"]
    assert main([*args, "-o", str(tmp_path / "nodir" / "m.npz")]) == 1
    assert f"output directory {tmp_path / 'nodir'} does not exist" in _one_error_line(capsys)
    assert main([*args, "-o", str(tmp_path / "m.npz"), "--systematics", "41"]) == 2
    assert "--systematics K must be at most the number of training stars (40), got 41" in _one_error_line(capsys)
    assert main([*args, "-o", str(tmp_path / "m.npz"), "--systematics", "30", "--select", "teff>6000"]) == 2
    assert "stars (" in (err := _one_error_line(capsys)) and "selected), got 30" in err
    assert not (tmp_path / "m.npz").exists()
    # the output is the input: refused even with --overwrite
    copy = tmp_path / "copy.npz"
    copy.write_bytes(rec_data.read_bytes())
    assert main(["train", str(copy), "-o", str(copy), "--overwrite", "--emulator", "cannon"]) == 1
    assert "is the input file" in _one_error_line(capsys)
    assert copy.read_bytes() == rec_data.read_bytes()
    # non-finite labels: plain ids in the message, no numpy reprs
    with np.load(rec_data) as f:
        arrays = dict(f)
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][3, 1] = np.nan
    nan_data = tmp_path / "nan.npz"
    np.savez(nan_data, **arrays)
    assert main(["train", str(nan_data), "-o", str(tmp_path / "m.npz"), "--emulator", "cannon"]) == 1
    err = _one_error_line(capsys)
    assert f"1 of 40 training stars have non-finite labels (first ids: {arrays['ids'][3]})" in err
    assert "np." not in err


def test_rate_significant_digits():
    from slamjax._cli_common import _rate

    assert _rate(3, 9.0) == "0.333 spectra/s"  # was "0 spectra/s"
    assert _rate(434, 10.0) == "43.4 spectra/s"
    assert _rate(6000, 1.0) == "6000 spectra/s"
    assert _rate(5, 0.0) == "n/a"


def test_fit_workers_help_and_readme_synopsis(capsys):
    """--workers' help states the Cannon's default of 1 (fit_labels' default for linear emulators); the
    README's demo synopsis lists the payne emulator and --quick, which the command accepts."""
    assert main(["fit", "-h"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: 1 for the Cannon" in help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    demo = next(line for line in readme.splitlines() if line.startswith("slamjax demo "))
    assert "--emulator kernel|cannon|payne" in demo and "--quick" in demo
    assert main(["demo", "--emulator", "payne", "--quick", "-h"]) == 0
    capsys.readouterr()


def test_fit_carries_the_prep_quality_flags_into_the_catalog(rec_data, tmp_path, capsys):
    """slamjax prep's per-spectrum 'ok' and 'n_bad' become catalog columns prep_ok, prep_n_bad (fit used to
    drop them: a flagged spectrum's fit looked like any other)."""
    model = tmp_path / "m.npz"
    assert main(["train", str(rec_data), "-o", str(model), "--emulator", "cannon", "--order", "1"]) == 0
    with np.load(rec_data) as z:
        arrays = {k: z[k] for k in z.files}
    n = arrays["flux"].shape[0]
    ok = np.arange(n) % 7 != 3
    data = tmp_path / "flagged.npz"
    np.savez(data, **arrays, ok=ok, n_bad=np.arange(n))
    capsys.readouterr()
    assert main(["fit", str(model), str(data), "-o", str(tmp_path / "c.fits"), "--n-starts", "1"]) == 0
    assert f"{int((~ok).sum())} of {n} spectra were flagged by slamjax prep" in capsys.readouterr().out
    tab = Table.read(tmp_path / "c.fits")
    assert list(tab["id"]) == [str(i) for i in arrays["ids"]]
    assert tab.meta["MODEL"] == "m.npz" and tab.meta["DATA"] == "flagged.npz" and tab.meta["ERRSYS"] is False
    np.testing.assert_array_equal(np.asarray(tab["prep_ok"]), ok)
    np.testing.assert_array_equal(np.asarray(tab["prep_n_bad"]), np.arange(n))
    assert sj.FitResult.read(tmp_path / "c.fits").labels.shape == (n, 3)
    # spectra without prep's entries: no such columns
    assert main(["fit", str(model), str(rec_data), "-o", str(tmp_path / "d.fits"), "--n-starts", "1"]) == 0
    assert "prep_ok" not in Table.read(tmp_path / "d.fits").colnames
