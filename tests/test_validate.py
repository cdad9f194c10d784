import numpy as np
import pytest

import slamjax as sj

from .conftest import interior_labels, make_cannon, simulate


def _labelled_set(n=200, seed=0):
    em = make_cannon(n_pixels=150, seed=seed, scatter=0.003)
    labels = interior_labels(em, n, seed=seed + 1, margin=0.0)
    flux, ivar, _ = simulate(em, labels, 50, seed=seed + 2)
    return sj.SpectrumSet(np.asarray(em.wave), flux, ivar, labels=labels, label_names=em.label_names)


def test_kfold_indices():
    fold = sj.validate.kfold_indices(103, 5, seed=1)
    assert np.bincount(fold).tolist() == [21, 21, 21, 20, 20]
    np.testing.assert_array_equal(fold, sj.validate.kfold_indices(103, 5, seed=1))
    with pytest.raises(ValueError):
        sj.validate.kfold_indices(3, 5)


def test_cross_validate_keeps_order_and_never_trains_on_the_test_star():
    ds = _labelled_set()
    cv = sj.validate.cross_validate(ds, emulator="cannon", k=4)
    assert list(cv.result.ids) == list(ds.ids)
    np.testing.assert_array_equal(cv.true, ds.labels)
    st = cv.stats()
    assert st["teff"]["n"] == ds.n_spectra
    pull = (cv.result.labels - cv.true) / cv.result.labels_err
    assert np.all(np.abs(np.std(pull, axis=0) - 1) < 0.2)
    with pytest.raises(ValueError, match="unknown emulator"):
        sj.validate.cross_validate(ds, emulator="nope")


def test_cross_validate_with_unequal_folds_equals_fold_by_fold_fits():
    """Folds of 51 and 50 stars are fitted as equal batches (for one compilation); the padding
    fits are dropped and every star's result is its own fold model's fit."""
    ds = _labelled_set(n=203)
    cv = sj.validate.cross_validate(ds, emulator="cannon", k=4, seed=2)
    assert sorted(set(np.bincount(cv.fold))) == [50, 51]
    for i in range(4):
        sel = cv.fold == i
        em = sj.CannonEmulator.train(ds[~sel])
        res = sj.fit_labels(em, ds[sel])
        np.testing.assert_allclose(cv.result.labels[sel], res.labels, rtol=1e-9)
        np.testing.assert_allclose(cv.result.cov[sel], res.cov, rtol=1e-7)
        np.testing.assert_array_equal(cv.result.status[sel], res.status)
        np.testing.assert_array_equal(cv.result.ids[sel], ds.ids[sel])


def test_cross_validate_keeps_the_nuisance_outputs():
    """With fit_kwargs continuum=... (or rv=...) the merged result keeps the continuum coefficients,
    their errors and the full covariance of every star, in the input order."""
    ds = _labelled_set(n=60)
    cv = sj.validate.cross_validate(ds, emulator="cannon", k=3, seed=1, continuum=0)
    assert cv.result.continuum.shape == cv.result.continuum_err.shape == (60, 1, 1)
    assert cv.result.cov_full.shape == (60, 4, 4) and cv.result.rv is None
    assert cv.result.continuum_segments == ((0, ds.n_pixels),)
    sel = cv.fold == 0
    res = sj.fit_labels(sj.CannonEmulator.train(ds[~sel]), ds[sel], continuum=0)
    np.testing.assert_allclose(cv.result.continuum[sel], res.continuum, rtol=1e-9)
    np.testing.assert_allclose(cv.result.cov_full[sel], res.cov_full, rtol=1e-7)


def test_cross_validate_cuts_per_star_priors_and_starts_to_each_fold():
    """A per-star prior (e.g. photometric Teff) and per-star starts, given for all stars of the set,
    reach each held-out star's own fit (they failed with a shape error in the first fold)."""
    ds = _labelled_set(n=60)
    teff = ds.label("teff") + 30.0
    prior = {"teff": (teff, np.full(60, 5.0))}  # tight: the fit follows the prior
    init = ds.labels * 1.001
    cv = sj.validate.cross_validate(ds, emulator="cannon", k=3, seed=1, prior=prior, init=init)
    assert np.all(np.abs(cv.result.labels[:, 0] - teff) < 5.0)
    sel = cv.fold == 2
    em = sj.CannonEmulator.train(ds[~sel])
    ref = sj.fit_labels(em, ds[sel], prior={"teff": (teff[sel], 5.0)}, init=init[sel])
    np.testing.assert_allclose(cv.result.labels[sel], ref.labels, rtol=1e-9)
    mean = np.column_stack([teff, np.zeros((60, 2))])
    sigma = np.column_stack([np.full(60, 5.0), np.full((60, 2), np.inf)])  # [N, L] arrays, no prior on log g, [Fe/H]
    pair = (mean, sigma)
    cv2 = sj.validate.cross_validate(ds, emulator="cannon", k=3, seed=1, prior=pair, init=init)
    np.testing.assert_allclose(cv2.result.labels, cv.result.labels, rtol=1e-9)


def test_reject_outliers_finds_planted_bad_labels():
    ds = _labelled_set(n=250, seed=3)
    labels = ds.labels.copy()
    planted = np.array([5, 40, 77, 150, 201])
    labels[planted, 0] += 1200.0  # Teff wrong by ~8 σ of the CV scatter at S/N 50
    labels[planted[:2], 2] -= 0.8
    bad = sj.SpectrumSet(ds.wave, ds.flux, ds.ivar, labels=labels, label_names=ds.label_names, ids=ds.ids)
    out = sj.validate.reject_outliers(bad, emulator="cannon", k=10, nsigma=4.0)
    assert set(planted) <= set(out.dropped_index.tolist())
    assert out.dropped_index.size <= planted.size + 3  # few false positives
    assert out.clean.n_spectra == ds.n_spectra - out.dropped_index.size
    assert set(out.dropped_ids) == set(ds.ids[out.dropped_index])


def _high_snr_set(n=300, seed=4):
    em = make_cannon(n_pixels=150, seed=seed)
    labels = interior_labels(em, n, seed=seed + 1, margin=0.0)
    flux, ivar, _ = simulate(em, labels, 1000, seed=seed + 2)
    return sj.SpectrumSet(np.asarray(em.wave), flux, ivar, labels=labels, label_names=em.label_names)


def test_degrade_reaches_the_target_noise():
    ds = _high_snr_set(n=50)
    noisy = sj.validate.degrade(ds, 20.0, seed=1)
    level = np.median(ds.flux, axis=1)
    np.testing.assert_allclose(1.0 / np.sqrt(noisy.ivar), (level / 20.0)[:, None] * np.ones((1, ds.n_pixels)))
    # added noise: residual std equals sqrt(σ_target² − σ_original²) within sampling error
    resid = (noisy.flux - ds.flux) / np.sqrt((level / 20.0)[:, None] ** 2 - 1.0 / ds.ivar)
    assert abs(resid.std() - 1.0) < 0.01
    np.testing.assert_array_equal(noisy.labels, ds.labels)
    assert noisy.meta["n_noisier_than_target"] == 0
    with pytest.raises(ValueError, match="snr"):
        sj.validate.degrade(ds, 0.0)


def test_snr_ladder_pulls_and_error_model():
    ds = _high_snr_set()
    lad = sj.validate.snr_ladder(ds, "cannon", snrs=(10, 20, 40, 80), k=3)
    st = lad.stats()
    scat = np.array([[s[n]["scatter"] for n in lad.label_names] for s in st])
    assert np.all(np.diff(scat, axis=0) < 0)  # more S/N, less scatter
    for s in st:
        # at low S/N, stars at the edge of the training box end on the widened box (HIT_BOUND)
        assert s["n_converged"] >= (0.8 if s["snr"] < 40 else 1.0) * ds.n_spectra
        for n in lad.label_names:
            assert 0.85 <= s[n]["pull_std"] <= 1.2, (s["snr"], n, s[n]["pull_std"])
    model = lad.error_model()
    np.testing.assert_allclose(model(np.array(lad.snrs)), scat, rtol=0.25)


def test_fit_error_model_recovers_coefficients_and_label_distance():
    snr = np.array([5.0, 10, 20, 40, 80, 160])
    truth = {"teff": (300.0, 0.05, 50.0), "logg": (0.5, 0.03, 0.05)}
    scatter = np.stack([a * np.exp(-b * snr) + c for a, b, c in truth.values()], axis=1)
    model = sj.diagnostics.fit_error_model(snr, scatter, ("teff", "logg"))
    for name, coef in truth.items():
        np.testing.assert_allclose(model.coef[name], coef, rtol=1e-4)
    with pytest.raises(ValueError, match=">= 3"):
        sj.diagnostics.fit_error_model(snr[:2], scatter[:2], ("teff", "logg"))
    # a transposed [L, K] scatter was reshaped into [K, L] and fitted silently
    with pytest.raises(ValueError, match="scatter must be"):
        sj.diagnostics.fit_error_model(snr[:3], scatter[:3].T, ("teff", "logg"))
    with pytest.raises(ValueError, match="scatter must be"):
        sj.diagnostics.fit_error_model(snr, scatter.T, ("teff", "logg"))
    d = sj.diagnostics.label_distance([[5000.0, 4.0], [5100.0, 4.2]], [[5100.0, 4.0], [5100.0, 4.0]], [100.0, 0.1])
    np.testing.assert_allclose(d, [1.0, 2.0])


def test_training_spread_shapes_and_pulls():
    ds = _labelled_set(n=300, seed=6)
    sp = sj.validate.training_spread(ds, "cannon", k=3, k_inner=3)
    assert sp.mean.shape == (300, 3) and np.all(sp.spread > 0) and np.all(sp.combined >= sp.formal)
    pulls = sp.pulls()
    for name in ds.label_names:
        # models trained on ~130 stars: formal errors slightly small; the spread moves pulls toward 1
        assert pulls[name]["combined"] < pulls[name]["formal"]
        assert 0.85 <= pulls[name]["combined"] <= 1.1
    # formal errors only: the fold models' systematics would count the model error twice in combined
    with pytest.raises(ValueError, match="formal errors"):
        sj.validate.training_spread(ds, "cannon", k=3, k_inner=3, systematics=True)


def test_label_stats_counts_pulls_and_refuses_zero_errors():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(400, 2))
    err = np.full_like(true, 0.5)
    pred = true + rng.normal(size=true.shape) * err
    pred[0, 0] = np.nan  # a failed fit: excluded and counted
    err[1, 1] = np.nan  # no error: its pull is excluded
    st = sj.diagnostics.label_stats(pred, true, label_names=["a", "b"], err=err)
    assert st["a"]["n"] == 399 and st["a"]["n_bad"] == 1 and st["a"]["n_pull"] == 399
    assert st["b"]["n"] == 400 and st["b"]["n_pull"] == 399
    for name in "ab":
        assert 0.9 < st[name]["pull_std"] < 1.1 and abs(st[name]["pull_mean"]) < 0.15
    err[2, 0] = 0.0  # an infinite pull used to vanish from the statistics
    with pytest.raises(ValueError, match="err must be > 0"):
        sj.diagnostics.label_stats(pred, true, err=err)
