import json

import numpy as np
import pytest

import slamjax as sj
from slamjax.emulators import read_header

from .conftest import interior_labels, make_cannon, shared_file, simulate


def _training_set(em, n=400, snr=100.0, seed=3):
    labels = interior_labels(em, n, seed=seed, margin=0.0)
    flux, ivar, _ = simulate(em, labels, snr, seed=seed)
    return sj.SpectrumSet(np.asarray(em.wave), flux, ivar, labels=labels, label_names=em.label_names)


def test_features_are_all_monomials(cannon):
    assert cannon.term_names[:4] == ["1", "teff", "logg", "fe_h"]
    assert len(cannon.term_names) == 10 and "teff*logg" in cannon.term_names and "fe_h*fe_h" in cannon.term_names
    z = np.array([0.5, -1.0, 2.0])
    v = np.asarray(cannon.features(z))
    np.testing.assert_allclose(v, [1, 0.5, -1, 2, 0.25, -0.5, 1.0, 1.0, -2.0, 4.0])


def test_train_recovers_known_model():
    truth = make_cannon(n_pixels=120, seed=5)
    ds = _training_set(truth)
    em = sj.CannonEmulator.train(ds)
    # Predictions at new labels match the generating model to well below the noise (0.01).
    test = interior_labels(truth, 200, seed=9)
    err = em.predict(test) - truth.predict(test)
    assert np.median(np.abs(err)) < 0.0015
    # No intrinsic scatter was injected: fitted s is far below the noise.
    assert np.median(np.sqrt(np.asarray(em.pixel_variance))) < 0.002


def test_train_recovers_intrinsic_scatter():
    truth = make_cannon(n_pixels=100, seed=6, scatter=0.02)
    ds = _training_set(truth, n=600)
    em = sj.CannonEmulator.train(ds)
    s = np.sqrt(np.asarray(em.pixel_variance))
    # 600 stars: the ML scatter per pixel has ~3 % relative error; median within 5 %.
    assert 0.019 < np.median(s) < 0.021
    no_scatter = sj.CannonEmulator.train(ds, fit_scatter=False)
    assert np.all(np.asarray(no_scatter.pixel_variance) == 0)


def test_bad_training_pixels_get_zero_weight_and_unusable_pixels_are_flagged():
    truth = make_cannon(n_pixels=60, seed=7)
    ds = _training_set(truth, n=200)
    flux, ivar = ds.flux.copy(), ds.ivar.copy()
    flux[:100, 5] = 50.0  # garbage, but masked
    ivar[:100, 5] = 0.0
    ivar[:, 9] = 0.0  # no good pixel at all
    ivar[:195, 11] = 0.0  # 5 good pixels < 10 coefficients
    bad = sj.SpectrumSet(ds.wave, flux, ivar, labels=ds.labels, label_names=ds.label_names)
    em = sj.CannonEmulator.train(bad)
    ref = sj.CannonEmulator.train(ds)
    np.testing.assert_allclose(np.asarray(em.design)[5], np.asarray(ref.design)[5], atol=0.01)
    pv = np.asarray(em.pixel_variance)
    assert np.isinf(pv[9]) and np.isinf(pv[11]) and np.isfinite(pv[5])
    assert np.all(np.isfinite(np.asarray(em.design)))


def test_train_errors(cannon):
    ds = _training_set(cannon, n=30)
    no_labels = sj.SpectrumSet(ds.wave, ds.flux, ds.ivar)
    with pytest.raises(ValueError, match="no labels"):
        sj.CannonEmulator.train(no_labels)
    labels = ds.labels.copy()
    labels[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite labels"):
        sj.CannonEmulator.train(sj.SpectrumSet(ds.wave, ds.flux, ds.ivar, labels=labels, label_names=ds.label_names))
    with pytest.raises(ValueError, match="need more stars"):
        sj.CannonEmulator.train(ds[:10])
    labels = ds.labels.copy()
    labels[:, 2] = 0.1
    with pytest.raises(ValueError, match="constant"):
        sj.CannonEmulator.train(sj.SpectrumSet(ds.wave, ds.flux, ds.ivar, labels=labels, label_names=ds.label_names))
    with pytest.raises(TypeError):
        sj.CannonEmulator.train(ds.flux)
    for order in (0, 1.5, True):
        with pytest.raises(ValueError, match="order must be an integer"):
            sj.CannonEmulator.train(ds, order=order)


def test_numpy_integer_order_trains_and_saves(cannon, tmp_path):
    """order=np.int64(1) (e.g. from a numpy config array) is a plain int in the model and its file."""
    em = sj.CannonEmulator.train(_training_set(cannon, n=30), order=np.int64(1))
    assert type(em.order) is int
    assert sj.load_emulator(em.save(tmp_path / "linear")).order == 1


def test_call_is_one_spectrum(cannon):
    flux = cannon(np.array([5500.0, 3.0, -0.5]))
    assert flux.shape == (cannon.n_pixels,)
    np.testing.assert_allclose(cannon.predict([[5500.0, 3.0, -0.5]])[0], flux)
    with pytest.raises(ValueError, match="labels must be"):
        cannon.predict(np.zeros((2, 4)))
    # a batch or a wrong number of labels is a clear error, not a broadcasting failure
    for bad in (np.zeros((2, 3)), np.zeros(2), np.zeros(4), 5500.0):
        with pytest.raises(ValueError, match=r"ONE spectrum, shape \(3,\)"):
            cannon(bad)
        with pytest.raises(ValueError, match="ONE spectrum"):
            cannon.flux_and_jacobian(bad)


def test_save_load_round_trip(tmp_path, cannon):
    path = cannon.save(tmp_path / "model")
    assert path.name == "model.npz"
    back = sj.load_emulator(path)
    assert type(back) is sj.CannonEmulator
    assert back.label_names == cannon.label_names and back.terms == cannon.terms and back.order == 2
    labels = interior_labels(cannon, 5)
    np.testing.assert_array_equal(back.predict(labels), cannon.predict(labels))
    np.testing.assert_array_equal(np.asarray(back.pixel_variance), np.asarray(cannon.pixel_variance))
    np.testing.assert_array_equal(np.asarray(back.space.train), np.asarray(cannon.space.train))
    header = read_header(path)
    assert "meta" not in header
    # provenance in the header: round trip, and clear errors for what JSON cannot hold
    meta = {"normalization": "spline", "training_data": "train.npz", "n_stars": 400}
    assert read_header(cannon.save(tmp_path / "with_meta", meta=meta))["meta"] == meta
    np.testing.assert_array_equal(sj.load_emulator(tmp_path / "with_meta.npz").predict(labels), cannon.predict(labels))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        cannon.save(tmp_path / "bad", meta={"x": object()})
    with pytest.raises(TypeError, match="meta must be a dict"):
        cannon.save(tmp_path / "bad", meta=[("normalization", "spline")])
    assert header["format"] == "slamjax-emulator" and header["format_version"] == 1
    assert header["slamjax_version"] == sj.__version__
    assert header["label_names"] == ["teff", "logg", "fe_h"]
    assert header["wave"]["n_pixels"] == cannon.n_pixels
    np.testing.assert_allclose(header["label_scaling"]["mean"], np.asarray(cannon.space.mean))
    # no pickle anywhere: the archive loads with allow_pickle=False
    with np.load(path, allow_pickle=False) as data:
        assert "__header__" in data.files


def test_load_emulator_errors(tmp_path, cannon):
    with pytest.raises(FileNotFoundError):
        sj.load_emulator(tmp_path / "none.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a slamjax model file"):
        sj.load_emulator(tmp_path / "plain.npz")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ValueError, match="not a slamjax model file"):
        sj.load_emulator(tmp_path / "t.txt")
    path = cannon.save(tmp_path / "m.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays.pop("__header__")))
    header["format_version"] = 99
    np.savez(tmp_path / "future.npz", __header__=np.array(json.dumps(header)), **arrays)
    with pytest.raises(ValueError, match="newer"):
        sj.load_emulator(tmp_path / "future.npz")


def test_annieslasso_toy_real_apogee():
    """403 real APOGEE giants, 100 pixels: the trained model reproduces the training fluxes
    to the level of the noise plus the fitted intrinsic scatter."""
    ds = sj.load_npz(shared_file("apogee_annieslasso_toy", "apogee_annieslasso_toy.npz"))
    em = sj.CannonEmulator.train(ds)
    model = em.predict(ds.labels)
    good = ds.ivar > 0
    r = (ds.flux - model)[good]
    sigma = 1.0 / np.sqrt(ds.ivar[good])
    s2 = np.broadcast_to(np.asarray(em.pixel_variance), ds.flux.shape)[good]
    pull = r / np.sqrt(sigma**2 + s2)
    # Measured: median |r| = 0.0068, median sigma = 0.0058, median s = 0.011, std(pull) = 1.005.
    assert np.median(np.abs(r)) < 1.5 * np.median(sigma)
    assert 0.95 < np.std(pull) < 1.05
    # Heavy tails (real outliers) push the median |pull| below the Gaussian 0.674.
    assert 0.45 < np.median(np.abs(pull)) < 0.72
    assert np.all(np.isfinite(np.asarray(em.design)))


def test_scatter_solver_finds_the_likelihood_maximum():
    """The per-pixel s² solver against a brute-force scan of ln L over a fine ln s² grid:
    heteroscedastic noise, true s² from 0 to above the noise, masked stars, a pixel with
    residuals below the noise (maximum at s -> 0) and a pixel with no good star."""
    import jax.numpy as jnp

    from slamjax.emulators._cannon import _LN_S2_MAX, _LN_S2_MIN, _max_likelihood_ln_s2

    rng = np.random.default_rng(3)
    n_pix, n = 40, 300
    sig2 = rng.uniform(0.3, 3.0, (n_pix, n)) * 1e-4
    s2_true = np.concatenate([[0.0, 0.0], np.geomspace(1e-6, 1e-2, n_pix - 2)])
    r2 = rng.normal(size=(n_pix, n)) ** 2 * (sig2 + s2_true[:, None])
    r2[0] *= 0.5  # residuals below the noise: maximum at the lower end
    good = rng.uniform(size=(n_pix, n)) > 0.1
    good[1] = False  # no usable star
    u = np.asarray(_max_likelihood_ln_s2(jnp.asarray(r2), jnp.asarray(sig2), jnp.asarray(good), jnp.full(n_pix, -50.0)))

    def scan(grid):  # ln L on a grid [P, G] per pixel
        var = sig2[:, None, :] + np.exp(grid)[:, :, None]
        return 0.5 * np.sum(np.where(good[:, None, :], r2[:, None, :] / var + np.log(var), 0.0), axis=2)

    coarse = np.broadcast_to(np.linspace(_LN_S2_MIN, _LN_S2_MAX, 1001), (n_pix, 1001))
    step = coarse[0, 1] - coarse[0, 0]
    centre = coarse[0, np.argmin(scan(coarse), axis=1)]  # the global basin, then a 100× finer scan across it
    grid = np.clip(centre[:, None] + np.linspace(-2 * step, 2 * step, 401)[None, :], _LN_S2_MIN, _LN_S2_MAX)
    nll = scan(grid)
    best = grid[np.arange(n_pix), np.argmin(nll, axis=1)]
    at = 0.5 * np.sum(np.where(good, r2 / (sig2 + np.exp(u)[:, None]) + np.log(sig2 + np.exp(u)[:, None]), 0.0), axis=1)
    assert np.all(at <= nll.min(axis=1) + 1e-9), at - nll.min(axis=1)  # at least as good as the scan
    inner = (best > _LN_S2_MIN + 0.1) & (best < _LN_S2_MAX - 0.1)
    np.testing.assert_allclose(u[inner], best[inner], atol=2e-3)  # fine grid step < 2e-3
    assert u[0] == _LN_S2_MIN and u[1] == _LN_S2_MIN
    # warm start from the answer: unchanged
    u2 = np.asarray(_max_likelihood_ln_s2(jnp.asarray(r2), jnp.asarray(sig2), jnp.asarray(good), jnp.asarray(u)))
    np.testing.assert_allclose(u2, u, atol=1e-8)
