"""The APOGEE-like spectrum generator of benchmarks/_apogee_nn.py reproduces the shipped data set."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from .conftest import shared_file

_MODULE = Path(__file__).resolve().parents[1] / "benchmarks" / "_apogee_nn.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("_apogee_nn", _MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduces_shipped_flux_true(gen):
    with np.load(shared_file("apogee_kurucz_nn", "apogee_kurucz_nn.npz")) as d:
        shipped = {k: d[k] for k in ("wave", "flux_true", "labels", "ivar", "snr")}
    idx = np.arange(0, 150, 5)
    wave, flux, ivar, flux_true, labels, names = gen.generate(0, seed=0, labels=shipped["labels"][idx])
    assert names == ("teff", "logg", "fe_h", "alpha_fe")
    np.testing.assert_array_equal(wave, shipped["wave"])
    np.testing.assert_allclose(flux_true, shipped["flux_true"][idx], rtol=0, atol=1e-5)
    bad = shipped["ivar"][0] == 0
    assert bad.sum() == 269
    np.testing.assert_array_equal(ivar == 0, np.broadcast_to(bad, ivar.shape))
    # same noise template: ivar * S/N^2 agrees per pixel with the shipped file's
    ref = shipped["ivar"][idx][:, ~bad] / shipped["snr"][idx, None].astype(np.float64) ** 2
    sim_snr = np.sqrt(np.median(ivar[:, ~bad] / ref, axis=1))
    np.testing.assert_allclose(ivar[:, ~bad] / sim_snr[:, None] ** 2, ref, rtol=1e-4)


def test_generate_statistics(gen):
    shared_file("apogee_kurucz_nn", "raw", "NN_unnormalized_spectra.npz")
    wave, flux, ivar, flux_true, labels, _ = gen.generate(400, seed=3, snr_range=(20, 200))
    assert flux.shape == ivar.shape == flux_true.shape == (400, wave.size) and labels.shape == (400, 4)
    good = ivar[0] > 0
    pull = (flux - flux_true)[:, good] * np.sqrt(ivar[:, good])
    assert 0.98 < pull.std() < 1.02
    assert np.all((labels[:, 0] >= 3800) & (labels[:, 0] <= 6800))
    assert np.all((labels[:, 2] >= -0.9) & (labels[:, 2] <= 0.45))
    _, f0, _, ft0, _, _ = gen.generate(5, seed=3, noiseless=True)
    np.testing.assert_array_equal(f0[:, good], ft0[:, good])
