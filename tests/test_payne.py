"""PayneEmulator (dense and per-pixel), from_arrays, and the ContinuumNormalized wrapper."""

import logging

import equinox as eqx
import jax
import numpy as np
import pytest

import slamjax as sj
from slamjax.emulators import ContinuumNormalized, PayneEmulator

from .conftest import shared_file

NAMES = ("teff", "logg", "fe_h")
LO, HI = np.array([4000.0, 1.0, -2.0]), np.array([7000.0, 5.0, 0.5])


def _clean(labels, n_pix=48):
    """A smooth, non-polynomial flux(labels): sigmoidal line depths plus a Gaussian bump."""
    p = np.arange(n_pix)
    a, b, c = np.sin(p), np.cos(1.3 * p), np.sin(0.7 * p + 1)
    t = ((labels[:, 0] - 5500) / 1500)[:, None]
    g = ((labels[:, 1] - 3) / 2)[:, None]
    f = ((labels[:, 2] + 0.75) / 1.25)[:, None]
    return 1 - 0.3 / (1 + np.exp(-(a * t + b * g + c * f))) - 0.05 * np.exp(-((t - a) ** 2))


def _problem(n=400, snr=1000.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(LO, HI, size=(n, 3))
    clean = _clean(labels)
    flux = clean + rng.normal(size=clean.shape) / snr
    wave = np.linspace(5000.0, 5100.0, clean.shape[1])
    return sj.SpectrumSet(wave, flux, np.full(flux.shape, snr**2), labels=labels, label_names=NAMES)


def _held_out(n=200, seed=9):
    labels = np.random.default_rng(seed).uniform(LO + 0.1 * (HI - LO), HI - 0.1 * (HI - LO), size=(n, 3))
    return labels, _clean(labels)


@pytest.fixture(scope="module")
def dense():
    return PayneEmulator.train(_problem(), hidden=(32, 32), key=0, max_epochs=300, batch_size=64, learning_rate=3e-3)


@pytest.fixture(scope="module")
def per_pixel():
    return PayneEmulator.train(
        _problem(), architecture="per_pixel", key=0, max_epochs=300, batch_size=64, learning_rate=1e-2
    )


def _random_arrays(n_pix=20, n_hid=5, n_lab=4, seed=3):
    rng = np.random.default_rng(seed)
    return dict(
        w_array_0=rng.normal(size=(n_pix, n_hid, n_lab)).astype(np.float32),
        b_array_0=rng.normal(size=(n_pix, n_hid)).astype(np.float32),
        w_array_1=0.1 * rng.normal(size=(n_pix, n_hid)).astype(np.float32),
        b_array_1=(1.0 + 0.01 * rng.normal(size=n_pix)).astype(np.float32),
        x_min=np.array([3500.0, 0.0, -1.0, -0.5]),
        x_max=np.array([7000.0, 5.0, 0.5, 1.0]),
    )


def _numpy_eval(arrays, labels):
    s = (labels - arrays["x_min"]) / (arrays["x_max"] - arrays["x_min"]) - 0.5
    a = np.einsum("phl,nl->nph", arrays["w_array_0"].astype(np.float64), s) + arrays["b_array_0"]
    h = 1.0 / (1.0 + np.exp(-a))
    return np.einsum("ph,nph->np", arrays["w_array_1"].astype(np.float64), h) + arrays["b_array_1"]


def _jacobian_matches(em, labels):
    x = jax.numpy.asarray(labels)
    flux, jac = eqx.filter_jit(lambda e, z: e.flux_and_jacobian(z))(em, x)
    np.testing.assert_allclose(np.asarray(flux), np.asarray(em(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jac), np.asarray(jax.jacfwd(em)(x)), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- training
def test_dense_accuracy(dense):
    labels, clean = _held_out()
    err = np.abs(dense.predict(labels) - clean)
    # Depth range of the problem is ~0.35, noise 1e-3; measured median 7.2e-4, p95 2.1e-3.
    assert np.median(err) < 2e-3
    assert np.percentile(err, 95) < 6e-3
    assert dense.architecture == "dense" and dense.hidden == (32, 32)
    assert np.all(np.asarray(dense.pixel_variance) >= 0)
    _jacobian_matches(dense, labels[0])


def test_per_pixel_accuracy(per_pixel):
    labels, clean = _held_out()
    err = np.abs(per_pixel.predict(labels) - clean)
    # Five sigmoid units per pixel fit less well; measured median 2.3e-3, p95 7.8e-3.
    assert np.median(err) < 4e-3
    assert np.percentile(err, 95) < 1.5e-2
    assert per_pixel.to_arrays()["w_array_0"].shape == (48, 5, 3)
    _jacobian_matches(per_pixel, labels[0])


def test_deterministic_for_a_key():
    ds = _problem(n=120)
    kw = dict(hidden=(8, 8), max_epochs=3, batch_size=32, systematics=False)  # weights only: no validation fit
    a = PayneEmulator.train(ds, key=5, **kw)
    b = PayneEmulator.train(ds, key=5, **kw)
    c = PayneEmulator.train(ds, key=6, **kw)
    for wa, wb in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    assert not np.array_equal(np.asarray(a.weights[0]), np.asarray(c.weights[0]))


def test_pixel_without_validation_data_gets_zero_weight(caplog):
    """A pixel good in training spectra only has no measured model error: it gets s² = inf (zero
    weight in fits), not the s² = 0 (perfect model) an empty validation sum gave; nor does a pixel
    with only two good validation spectra get the s² their two residuals happen to give."""
    ds = _problem(n=120)
    ivar = ds.ivar.copy()
    ivar[1:, 0] = 0.0  # pixel 0: good in star 0 only (in the training split for key 5)
    ivar[:, 1] = 0.0  # pixel 1: good nowhere
    # pixel 2: good in every training star and in two of the 12 validation stars (key 5's split)
    k_split = jax.random.split(jax.random.key(5), 3)[0]
    i_val = np.sort(np.asarray(jax.random.permutation(k_split, 120))[:12])
    ivar[i_val[2:], 2] = 0.0
    ds = sj.SpectrumSet(ds.wave, ds.flux, ivar, labels=ds.labels, label_names=NAMES)
    with caplog.at_level(logging.WARNING, logger="slamjax.emulators._payne"):
        em = PayneEmulator.train(ds, hidden=(8, 8), max_epochs=3, batch_size=32, systematics=False, key=5)
    pv = np.asarray(em.pixel_variance)
    assert np.all(np.isinf(pv[:3])) and np.all(np.isfinite(pv[3:]))
    assert "2 pixels have fewer than 3 good validation spectra" in caplog.text
    assert "1 pixels have no good training data" in caplog.text
    # with a third good validation spectrum pixel 2 has a model variance
    ivar[i_val[2], 2] = ds.ivar[0, 3]
    ds3 = sj.SpectrumSet(ds.wave, ds.flux, ivar, labels=ds.labels, label_names=NAMES)
    em3 = PayneEmulator.train(ds3, hidden=(8, 8), max_epochs=3, batch_size=32, systematics=False, key=5)
    assert np.isfinite(np.asarray(em3.pixel_variance)[2])


def test_nan_loss_and_bad_input_raise():
    ds = _problem(n=60)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        PayneEmulator.train(ds, hidden=(4,), max_epochs=2, learning_rate=float("nan"))
    with pytest.raises(ValueError, match="architecture"):
        PayneEmulator.train(ds, architecture="conv")
    with pytest.raises(ValueError, match="activation"):
        PayneEmulator.train(ds, activation="relu6")
    labels = ds.labels.copy()
    labels[3, 1] = np.nan
    bad = sj.SpectrumSet(ds.wave, ds.flux, ds.ivar, labels=labels, label_names=NAMES)
    with pytest.raises(ValueError, match="non-finite labels"):
        PayneEmulator.train(bad, hidden=(4,), max_epochs=1)
    em = PayneEmulator.train(ds, hidden=(4,), max_epochs=1)
    for wrong in (np.asarray(ds.labels[:2]), np.asarray(ds.labels[0])[:-1]):
        with pytest.raises(ValueError, match="ONE spectrum"):
            em(wrong)
        with pytest.raises(ValueError, match="ONE spectrum"):
            em.flux_and_jacobian(wrong)


def test_fit_labels_with_dense_payne(dense):
    # Simulate from the trained emulator itself: an exact model, so pulls must be unit normal.
    rng = np.random.default_rng(11)
    truth = rng.uniform(LO + 0.2 * (HI - LO), HI - 0.2 * (HI - LO), size=(120, 3))
    snr = 200.0
    flux = dense.predict(truth) + rng.normal(size=(120, dense.n_pixels)) / snr
    exact = eqx.tree_at(lambda e: e.pixel_variance, dense, jax.numpy.zeros(dense.n_pixels)).with_systematics(None)
    res = sj.fit_labels(exact, flux, np.full(flux.shape, snr**2))
    assert np.all(res.status == 0)
    pull = (res.labels - truth) / res.labels_err
    assert np.all((pull.std(axis=0) > 0.8) & (pull.std(axis=0) < 1.25)), pull.std(axis=0)


def test_train_attaches_systematics_from_the_validation_split(dense):
    """The validation-split estimate agrees with one from 200 separate noise-free held-out spectra."""
    sys_val = dense.space.systematics
    assert sys_val is not None and sys_val.points.shape == (40, 3)  # 10 % of 400
    labels, clean = _held_out()
    held = sj.SpectrumSet(dense.wave, clean, np.full(clean.shape, 1e12), labels=labels, label_names=NAMES)
    sys_held = sj.validate.label_systematics(dense, held, snr=1000.0)
    ratio = np.sqrt(np.diag(sys_val.global_cov()) / np.diag(sys_held.global_cov()))
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    plain = PayneEmulator.train(_problem(n=60), hidden=(4,), max_epochs=2, systematics=False)
    assert plain.space.systematics is None


# ---------------------------------------------------------------------- from_arrays, files
def test_from_arrays_matches_numpy_formula():
    arrays = _random_arrays()
    em = PayneEmulator.from_arrays(**arrays, wave=np.linspace(15000, 15100, 20))
    labels = np.random.default_rng(0).uniform(arrays["x_min"], arrays["x_max"], size=(7, 4))
    np.testing.assert_allclose(em.predict(labels), _numpy_eval(arrays, labels), rtol=1e-12, atol=1e-12)
    assert em.label_names == ("teff", "logg", "fe_h", "alpha_fe")
    assert em.space.train.shape == (256, 4)
    np.testing.assert_array_equal(np.asarray(em.space.lo), arrays["x_min"])
    _jacobian_matches(em, labels[0])
    with pytest.warns(UserWarning, match="wavelength grid"):
        PayneEmulator.from_arrays(**arrays)
    with pytest.raises(ValueError, match="b_array_1"):
        PayneEmulator.from_arrays(**(arrays | {"b_array_1": np.zeros(3)}), wave=np.arange(20.0))
    wave = np.arange(20.0)
    for bad, match in (
        ({"pixel_variance": np.full(20, -1e-4)}, "pixel_variance must be >= 0"),  # weights > ivar, χ² < 0
        ({"pixel_variance": np.full(20, np.nan)}, "pixel_variance must be >= 0"),
        ({"x_max": np.full(4, np.inf)}, "finite"),
        ({"train_labels": np.full((3, 4), np.nan)}, "train_labels contains non-finite"),
        ({"train_labels": np.zeros((0, 4))}, "K >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            PayneEmulator.from_arrays(**(arrays | bad), wave=wave)
    inf_ok = PayneEmulator.from_arrays(**arrays, wave=wave, pixel_variance=np.r_[np.inf, np.zeros(19)])
    assert np.isinf(np.asarray(inf_ok.pixel_variance)[0])


@pytest.mark.parametrize("which", ["dense", "per_pixel", "from_arrays", "wrapped"])
def test_save_load_round_trip(which, dense, per_pixel, tmp_path):
    if which == "dense":
        em = dense
    elif which == "per_pixel":
        em = per_pixel
    else:
        wave = np.concatenate([np.linspace(15000, 15050, 10), np.linspace(15200, 15250, 10)])
        em = PayneEmulator.from_arrays(**_random_arrays(), wave=wave, label_names=("a", "b", "c", "d"))
        if which == "wrapped":
            em = ContinuumNormalized.from_mask(em, np.arange(20) % 3 == 0, degree=1)
            assert em.segments == ((0, 10), (10, 20))
    path = em.save(tmp_path / "payne")
    back = sj.load_emulator(path)
    assert type(back) is type(em)
    assert back.label_names == em.label_names
    labels = np.asarray(em.space.train)[:5]
    np.testing.assert_array_equal(back.predict(labels), em.predict(labels))
    np.testing.assert_array_equal(np.asarray(back.pixel_variance), np.asarray(em.pixel_variance))


def test_wrapper_jacobian_and_errors():
    wave = np.concatenate([np.linspace(15000, 15050, 10), np.linspace(15200, 15250, 10)])
    inner = PayneEmulator.from_arrays(**_random_arrays(), wave=wave)
    em = ContinuumNormalized.from_mask(inner, np.arange(20) % 2 == 0, degree=2)
    _jacobian_matches(em, np.array([5000.0, 3.0, -0.2, 0.1]))
    # The continuum of a spectrum that IS a polynomial on each segment is itself.
    poly = np.where(np.arange(20) < 10, 1 + 1e-3 * (wave - 15000), 2 - 1e-6 * (wave - 15200) ** 2)
    np.testing.assert_allclose(np.asarray(em.continuum(jax.numpy.asarray(poly))), poly, rtol=1e-10)
    with pytest.raises(ValueError, match="continuum pixels"):
        ContinuumNormalized.from_mask(inner, np.arange(20) == 0, degree=2)


def test_wrapper_leaves_out_unusable_pixels_and_splits_at_dead_runs():
    """A gapless grid (like apStar's) whose middle 40 pixels the inner model cannot predict (inf
    variance): those pixels give no continuum, and the default segments split inside them."""
    wave = np.linspace(15000.0, 15400.0, 200)
    s2 = np.zeros(200)
    s2[80:120] = np.inf
    inner = PayneEmulator.from_arrays(**_random_arrays(n_pix=200), wave=wave, pixel_variance=s2)
    mask = np.arange(200) % 2 == 0
    em = ContinuumNormalized.from_mask(inner, mask, degree=1)
    assert em.segments == ((0, 100), (100, 200))
    ref = ContinuumNormalized.from_mask(inner, mask & np.isfinite(s2), degree=1, segments=em.segments)
    labels = np.array([5000.0, 3.0, -0.2, 0.1])
    np.testing.assert_array_equal(np.asarray(em.fit), np.asarray(ref.fit))
    np.testing.assert_allclose(em.predict(labels[None])[0], ref.predict(labels[None])[0], rtol=1e-12)
    assert np.all(np.asarray(em.fit)[:, 80:120] == 0.0)
    assert np.all(np.isinf(np.asarray(em.pixel_variance)[80:120]))


# ---------------------------------------------------------------------- the shipped network
def _shipped():
    raw = shared_file("apogee_kurucz_nn", "raw")
    nn = PayneEmulator.from_arrays(
        **np.load(raw / "NN_unnormalized_spectra.npz"), wave=np.load(raw / "apogee_wavelength.npz")["wavelength"]
    )
    em = ContinuumNormalized.from_mask(nn, np.load(raw / "cannon_cont_pixels_apogee.npz")["pixels_cannon"])
    return em, np.load(shared_file("apogee_kurucz_nn", "apogee_kurucz_nn.npz"))


def test_wrapper_reproduces_flux_true():
    em, data = _shipped()
    assert em.segments == ((0, 2920), (2920, 5320), (5320, 7214))
    good = data["ivar"] > 0
    dev = np.abs(em.predict(data["labels"]) - data["flux_true"])[good]
    assert dev.max() < 1e-5  # measured 6.0e-8 (float32 rounding of flux_true)


def test_shipped_stars_pulls():
    em, data = _shipped()
    res = sj.fit_labels(em, data["flux"], data["ivar"])
    assert np.all(res.status == 0)
    pull = (res.labels - data["labels"]) / res.labels_err
    std = pull.std(axis=0)  # measured [1.06, 0.92, 1.04, 1.06]
    assert np.all((std > 0.9) & (std < 1.1)), std
    assert np.all(np.abs(pull.mean(axis=0)) < 0.3), pull.mean(axis=0)


def test_pixel_variance_is_not_decided_by_huge_errors():
    """Half the stars carry σ = 10 (flagged pixels given a huge error instead of ivar = 0). The model
    variance is the maximum-likelihood value over the validation residuals with each star's own noise:
    on the scale of the trained model's errors at the precise stars. The moment estimate mean(r² − σ²)
    was decided by the noisy stars' r² − σ² (±~30 per pixel: 0 or ~10⁴ times too large)."""
    ds = _problem(n=200, seed=3)
    ivar = ds.ivar.copy()
    flux = ds.flux.copy()
    rng = np.random.default_rng(4)
    noisy = np.arange(200) % 2 == 1
    ivar[noisy] = 0.01
    flux[noisy] = _clean(ds.labels[noisy]) + 10.0 * rng.normal(size=flux[noisy].shape)
    kw = dict(hidden=(16,), max_epochs=40, batch_size=32, systematics=False, key=1)
    em = PayneEmulator.train(sj.SpectrumSet(ds.wave, flux, ivar, labels=ds.labels, label_names=NAMES), **kw)
    pv = np.asarray(em.pixel_variance)
    # the model error at the precise stars, measured directly on noise-free held-out spectra
    lab, clean = _held_out(100)
    err2 = np.mean((np.asarray(em.predict(lab)) - clean) ** 2, axis=0)
    assert np.all(pv < 20 * err2 + 1e-6) and np.median(pv / err2) > 0.1


def test_real_apogee_velocities_from_the_shipped_network():
    """Real APOGEE files fitted for labels, rv and a per-chip continuum with the published Kurucz network:
    apVisit spectra (observed frame) should come back at the pipeline's Doppler shift VRAD, apStar
    spectra (shifted to the rest frame by the pipeline) at 0. Measured: fit − expected = −2.09, −1.41,
    −1.60, −1.31 km/s (a common ~−1.6 km/s template zero point; formal errors 0.01-0.11 km/s)."""
    from slamjax import preprocess as pp

    em, _ = _shipped()
    raw = shared_file("apogee_kurucz_nn", "raw")
    cpix = np.load(raw / "cannon_cont_pixels_apogee.npz")["pixels_cannon"]
    wave = np.asarray(em.wave)
    names = (
        "apVisit-r13-5095-55844-128.fits",
        "apVisit-r13-9518-57729-104.fits",
        "apStar-dr17-2M17335483-2753043.fits",
        "apStar-dr17-2M19485057+5005279.fits",
    )
    flux, ivar, expected = [], [], []
    for name in names:
        s = sj.io.read_spectrum(shared_file("survey_files", name))
        f, iv = pp.resample(s.wave, s.flux, s.ivar, wave, segments=s.meta["segments"])
        f, iv, _ = pp.normalize_chebyshev(wave, f, iv, cpix, segments=em.segments)
        flux.append(f)
        ivar.append(iv)
        expected.append(s.meta["doppler_shift"])
    res = sj.fit_labels(em, np.stack(flux), np.stack(ivar), rv=True, continuum=2)
    assert np.all(res.status == sj.Status.CONVERGED)
    d = res.rv - np.asarray(expected)
    assert np.all(np.abs(d) < 3.0) and np.ptp(d) < 1.5
    assert res.continuum.shape == (4, 3, 3) and np.all(np.isfinite(res.continuum))
