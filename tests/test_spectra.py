import logging

import numpy as np
import pytest

import slamjax as sj

from .conftest import shared_file


def _arrays(n=4, p=50, n_lab=2):
    rng = np.random.default_rng(0)
    wave = np.linspace(4000, 5000, p)
    flux = 1 + 0.01 * rng.normal(size=(n, p))
    ivar = np.full((n, p), 1e4)
    labels = rng.normal(size=(n, n_lab))
    return wave, flux, ivar, labels


def test_valid_set_and_accessors():
    wave, flux, ivar, labels = _arrays()
    ds = sj.SpectrumSet(wave, flux, ivar, labels=labels, label_names=["a", "b"], ids=list("wxyz"))
    assert (ds.n_spectra, ds.n_pixels, ds.n_labels, len(ds)) == (4, 50, 2, 4)
    np.testing.assert_allclose(ds.snr, np.median(np.abs(flux) * 100.0, axis=1))
    np.testing.assert_array_equal(ds.label("b"), labels[:, 1])
    sub = ds[np.array([True, False, True, False])]
    assert list(sub.ids) == ["w", "y"] and sub.flux.shape == (2, 50)
    assert ds[1].n_spectra == 1
    with pytest.raises(ValueError, match="unknown label"):
        ds.label("c")
    with pytest.raises(ValueError, match="empty"):
        ds[np.zeros(4, bool)]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(wave=np.linspace(4000, 5000, 49)), "wave has 49 pixels"),
        (dict(ivar=np.ones((4, 49))), "ivar shape"),
        (dict(wave=np.linspace(5000, 4000, 50)), "strictly increasing"),
        (dict(ivar=-np.ones((4, 50))), "negative"),
        (dict(ivar=np.full((4, 50), np.nan)), "NaN"),
        (dict(labels=np.zeros((3, 2))), "labels must be"),
        (dict(label_names=["a", "a"]), "duplicate label names"),
        (dict(label_names=["a", "b", "c"]), "3 label names for 2"),
        (dict(flux=np.ones((0, 50)), ivar=np.ones((0, 50)), labels=None, label_names=None), "empty"),
        (dict(ids=["a"]), "ids must have shape"),
    ],
)
def test_bad_input_raises(change, match):
    wave, flux, ivar, labels = _arrays()
    kw = dict(wave=wave, flux=flux, ivar=ivar, labels=labels, label_names=["a", "b"])
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        sj.SpectrumSet(**kw)


def test_labels_without_names_raise():
    wave, flux, ivar, labels = _arrays()
    with pytest.raises(ValueError, match="label_names are required"):
        sj.SpectrumSet(wave, flux, ivar, labels=labels)


def test_nonfinite_flux_becomes_bad_pixel_and_is_reported(caplog):
    wave, flux, ivar, _ = _arrays()
    flux[1, 3] = np.nan
    flux[2, 7] = np.inf
    flux_in, ivar_in = flux.copy(), ivar.copy()
    with caplog.at_level(logging.WARNING, logger="slamjax"):
        ds = sj.SpectrumSet(wave, flux, ivar)
    assert ds.meta["n_nonfinite_flux"] == 2
    assert "2 non-finite flux values" in caplog.text
    assert ds.ivar[1, 3] == 0 and ds.ivar[2, 7] == 0 and np.all(np.isfinite(ds.flux))
    assert int((ds.ivar == 0).sum()) == 2
    # the caller's arrays are untouched
    np.testing.assert_array_equal(flux, flux_in)
    np.testing.assert_array_equal(ivar, ivar_in)


def test_npz_round_trip(tmp_path):
    wave, flux, ivar, labels = _arrays()
    ds = sj.SpectrumSet(wave, flux, ivar, labels=labels, label_names=["a", "b"], ids=list("wxyz"))
    ds.save_npz(tmp_path / "s.npz")
    back = sj.load_npz(tmp_path / "s.npz")
    for k in ("wave", "flux", "ivar", "labels"):
        np.testing.assert_array_equal(getattr(back, k), getattr(ds, k))
    assert back.label_names == ("a", "b") and list(back.ids) == list("wxyz")
    only_b = sj.load_npz(tmp_path / "s.npz", label_names=["b"])
    np.testing.assert_array_equal(only_b.labels[:, 0], labels[:, 1])


def test_load_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        sj.load_npz(tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable npz"):
        sj.load_npz(tmp_path / "x.txt")
    np.savez(tmp_path / "nokeys.npz", foo=np.ones(3))
    with pytest.raises(ValueError, match="lacks required keys"):
        sj.load_npz(tmp_path / "nokeys.npz")


def test_bundled_sample(sample):
    assert sample.n_spectra == 434 and sample.n_pixels == 4300
    assert sample.label_names == ("teff", "logg", "fe_h")
    teff = sample.label("teff")
    assert teff.min() > 4000 and teff.max() < 7000
    assert "names" in sample.meta and sample.meta["names"].shape == (434,)


@pytest.mark.parametrize(
    "parts, n_pix, names",
    [
        (("miles", "miles.npz"), 4300, ("teff", "logg", "fe_h")),
        (("apogee_annieslasso_toy", "apogee_annieslasso_toy.npz"), 100, ("teff", "logg", "m_h")),
        (("apogee_kurucz_nn", "apogee_kurucz_nn.npz"), 7214, ("teff", "logg", "fe_h", "alpha_fe")),
    ],
)
def test_load_shared_npz(parts, n_pix, names):
    ds = sj.load_npz(shared_file(*parts))
    assert ds.n_pixels == n_pix and ds.label_names == names
    assert ds.meta["n_nonfinite_flux"] == 0
    assert "snr" in ds.meta


def test_subsets_take_the_per_spectrum_meta_rows(sample):
    """load_npz keeps per-star arrays (names, spectral types, snr, flux_true ...) in meta; a subset used to
    keep them in the original order (ds[1::2].meta['names'][0] was the first star's name)."""
    assert "names" in sample.meta and sample.meta["names"].shape == (sample.n_spectra,)
    idx = np.array([5, 7, 2])
    sub = sample[idx]
    np.testing.assert_array_equal(sub.meta["names"], sample.meta["names"][idx])
    np.testing.assert_array_equal(sub.ids, sample.ids[idx])
    odd = sample[1::2]
    assert odd.meta["names"][0] == sample.meta["names"][1] and len(odd.meta["names"]) == odd.n_spectra
    mask = sample.labels[:, 0] > 6000
    np.testing.assert_array_equal(sample[mask].meta["names"], sample.meta["names"][mask])
    assert sub.meta["source"] == sample.meta["source"]  # scalars unchanged
