"""Systematic label errors of emulators: LabelSystematics, label_systematics, fit_labels(systematics=...)."""

import json
import types

import numpy as np
import pytest

import slamjax as sj
from slamjax._systematics import estimate as estimate_systematics
from slamjax.emulators import LabelSystematics

NAMES = ("teff", "logg", "fe_h")
LO, HI = np.array([4500.0, 1.5, -1.5]), np.array([6500.0, 4.5, 0.0])


def _truth(labels, p=60):
    """Smooth, strongly non-quadratic pixel responses (a quadratic model errs coherently)."""
    t = (labels[:, 0] - 5500) / 1000
    g = (labels[:, 1] - 3) / 1.5
    f = (labels[:, 2] + 0.75) / 0.75
    cols = []
    for j in range(p):
        a, b, c = np.sin(j), np.cos(1.3 * j), np.sin(0.7 * j + 1)
        cols.append(1 - 0.4 / (1 + np.exp(-3 * (a * t + b * g + c * f))) - 0.1 * np.exp(-4 * (t - a) ** 2))
    return np.stack(cols, axis=1)


def _set(n, seed, snr=None):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(LO, HI, size=(n, 3))
    flux = _truth(labels)
    ivar = np.full_like(flux, 1e10 if snr is None else snr**2)
    if snr is not None:
        flux = flux + rng.normal(size=flux.shape) / snr
    return sj.SpectrumSet(np.linspace(5000, 5100, flux.shape[1]), flux, ivar, labels=labels, label_names=NAMES)


@pytest.fixture(scope="module")
def cannon():
    return sj.CannonEmulator.train(_set(600, 0, snr=400))


def test_label_systematics_calibrates_pulls_of_a_biased_emulator(cannon):
    """A quadratic model of non-quadratic spectra: formal pulls are too large at high S/N;
    the systematics measured on separate noise-free held-out spectra bring them to ~1."""
    sys_err = sj.validate.label_systematics(cannon, _set(400, 1), snr=100)
    assert isinstance(sys_err, LabelSystematics) and sys_err.points.shape[1] == 3
    em = cannon.with_systematics(sys_err)
    test = _set(600, 2, snr=200)
    res = sj.fit_labels(em, test)
    formal = sj.fit_labels(em, test, systematics=False)
    ok = (res.status == 0) & (formal.status == 0)
    assert ok.mean() > 0.9
    truth = test.labels[ok]
    pull_formal = ((formal.labels[ok] - truth) / formal.labels_err[ok]).std(axis=0)
    pull = ((res.labels[ok] - truth) / res.labels_err[ok]).std(axis=0)
    assert np.all(pull_formal > 1.5), pull_formal  # the model error dominates the noise here
    assert np.all((pull > 0.8) & (pull < 1.25)), pull
    # the same labels; only the covariance grows, by the systematic covariance at the fitted labels
    np.testing.assert_allclose(res.labels, formal.labels)
    np.testing.assert_allclose(res.cov - formal.cov, sys_err.cov(res.labels), rtol=1e-9, atol=1e-12)


def test_noisy_held_out_spectra_subtract_the_formal_covariance(cannon):
    """Noisy held-out spectra (snr=None) estimate about the same systematics as noise-free ones."""
    clean = sj.validate.label_systematics(cannon, _set(500, 3), snr=100).global_cov()
    noisy = sj.validate.label_systematics(cannon, _set(500, 3, snr=300)).global_cov()
    ratio = np.sqrt(np.diag(noisy) / np.diag(clean))
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio


def test_local_systematics_follow_the_labels():
    """k nearest held-out spectra: a region with large errors gets large systematics."""
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    exc = np.concatenate([np.tile(np.eye(2) * 1.0, (50, 1, 1)), np.tile(np.eye(2) * 9.0, (50, 1, 1))])
    s = LabelSystematics(points=pts, excess=exc, scale=np.ones(2), k=20)
    cov = s.cov(np.array([[0.0, 0.0], [5.0, 5.0], [np.nan, 0.0]]))
    np.testing.assert_allclose(cov[0], np.eye(2), rtol=1e-12)
    np.testing.assert_allclose(cov[1], 9 * np.eye(2), rtol=1e-12)
    assert np.all(np.isnan(cov[2]))
    np.testing.assert_allclose(s.cov(np.array([5.0, 5.0])), cov[1:2])  # one star as [L]
    with pytest.raises(ValueError, match=r"labels must be \[N, 2\]"):
        s.cov(np.array([[0.0], [5.0]]))  # [N, 1] was broadcast over both labels
    np.testing.assert_allclose(s.global_cov(), 5 * np.eye(2), rtol=1e-12)
    # a negative excess (formal errors larger than the scatter) is clipped to zero
    neg = LabelSystematics(points=pts, excess=-exc, scale=np.ones(2), k=100)
    np.testing.assert_allclose(neg.global_cov(), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        LabelSystematics(points=pts, excess=exc, scale=np.ones(2), k=101)
    with pytest.raises(ValueError, match="do not match"):
        LabelSystematics(points=pts, excess=exc[:, :1], scale=np.ones(2), k=5)


def test_model_file_round_trip_and_older_files(cannon, tmp_path):
    sys_err = sj.validate.label_systematics(cannon, _set(100, 4), snr=100, k=10)
    em = cannon.with_systematics(sys_err)
    back = sj.load_emulator(em.save(tmp_path / "m.npz"))
    assert back.space.systematics.k == 10
    np.testing.assert_allclose(np.asarray(back.space.systematics.excess), np.asarray(sys_err.excess))
    np.testing.assert_allclose(np.asarray(back.space.systematics.points), np.asarray(sys_err.points))
    # no systematics: saved as null, loaded as None
    plain = sj.load_emulator(cannon.save(tmp_path / "p.npz"))
    assert plain.space.systematics is None
    # a file written before the field existed (no entry at all) loads with the default
    with np.load(tmp_path / "p.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays.pop("__header__")))
    del header["static"]["space.systematics"]
    np.savez(tmp_path / "old.npz", __header__=np.array(json.dumps(header)), **arrays)
    assert sj.load_emulator(tmp_path / "old.npz").space.systematics is None
    # removing and type checks
    assert em.with_systematics(None).space.systematics is None
    with pytest.raises(TypeError, match="LabelSystematics"):
        cannon.with_systematics(np.eye(3))


def test_systematics_of_another_label_order_are_refused(cannon, tmp_path):
    """Systematics measured with labels (teff, logg, fe_h) attached to an emulator of (fe_h, logg, teff)
    gave σ([Fe/H]) of hundreds of dex: the names travel with them (and through model files)."""
    sys_err = sj.validate.label_systematics(cannon, _set(100, 4), snr=100, k=10)
    assert sys_err.label_names == NAMES
    other = sj.CannonEmulator.train(_set(300, 5, snr=400), label_names=["fe_h", "logg", "teff"])
    with pytest.raises(ValueError, match="measured for the labels"):
        other.with_systematics(sys_err)
    back = sj.load_emulator(cannon.with_systematics(sys_err).save(tmp_path / "m.npz"))
    assert back.space.systematics.label_names == NAMES
    with pytest.raises(ValueError, match="measured for the labels"):
        other.with_systematics(back.space.systematics)
    with pytest.raises(ValueError, match="label names"):
        LabelSystematics(
            points=sys_err.points, excess=sys_err.excess, scale=sys_err.scale, k=10, label_names=("a", "b")
        )


def _heteroscedastic(n, seed, sd):
    """Held-out label errors d ~ N(0, C + s²(x)) with formal variances C and a known s(x) [n, L]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 2))
    c = np.full((n, 2), 1e-4) * rng.uniform(0.5, 1.5, size=(n, 1))
    s = sd(x)
    d = rng.normal(size=(n, 2)) * np.sqrt(c + s**2)
    res = types.SimpleNamespace(labels=x + d, cov=c[:, :, None] * np.eye(2), status=np.zeros(n, dtype=int))
    return x, res, s


def test_smooth_form_recovers_systematics_that_grow_towards_the_edges():
    """Errors that grow steeply towards the edge of label space (log-variance quadratic in the
    labels): the held-out likelihood prefers the smooth form, which recovers s(x) and calibrates
    the pulls of new errors drawn from the same law, at the edges and in the middle."""
    sd = lambda x: 0.01 * np.exp(1.5 * (x[:, :1] ** 2 + x[:, 1:] ** 2)) * np.array([1.0, 2.0])  # noqa: E731
    x, res, _ = _heteroscedastic(1000, 0, sd)
    auto = estimate_systematics(res, x, True, np.ones(2), "test")
    assert auto.log_var is not None and auto.log_var.shape == (2, 6) and auto.k == 30
    knn = estimate_systematics(res, x, True, np.ones(2), "test", model="neighbours")
    assert knn.log_var is None and knn.k == 30
    # a given k is the neighbour count of either form (the smooth form's correlations)
    given = estimate_systematics(res, x, True, np.ones(2), "test", k=10)
    assert given.k == 10 and given.log_var is not None
    q = np.array([[0.0, 0.0], [0.5, -0.5], [0.8, 0.8]])
    ratio = np.sqrt(np.diagonal(auto.cov(q), axis1=1, axis2=2)) / sd(q)
    assert np.all(np.abs(ratio - 1) < 0.35), ratio
    x2, res2, _ = _heteroscedastic(4000, 1, sd)
    tot = np.diagonal(res2.cov, axis1=1, axis2=2) + np.diagonal(auto.cov(res2.labels), axis1=1, axis2=2)
    pull = (res2.labels - x2) / np.sqrt(tot)
    mid = np.all(np.abs(res2.labels) < 0.5, axis=1)
    assert np.all((pull.std(axis=0) > 0.9) & (pull.std(axis=0) < 1.1)), pull.std(axis=0)
    # in the middle, where the errors are 5-10x smaller than at the corners (measured 0.86-0.90
    # over seeds: the ridge on the polynomial and the spread of the fitted labels flatten it)
    assert np.all((pull[mid].std(axis=0) > 0.8) & (pull[mid].std(axis=0) < 1.1)), pull[mid].std(axis=0)
    # correlations from the neighbours, variances from the smooth form: positive semi-definite
    assert np.all(np.linalg.eigvalsh(auto.cov(x2)) > -1e-12)


def test_auto_picks_neighbours_for_a_local_bump():
    """Errors confined to three small regions (which no quadratic log-variance can follow): the
    held-out likelihood prefers the neighbours form, which resolves them."""
    centres = np.array([[0.5, 0.5], [-0.5, 0.5], [0.0, -0.6]])

    def sd(x):
        r2 = np.sum((x[:, None, :] - centres[None]) ** 2, axis=2)
        return (0.005 + 0.1 * np.exp(-r2 / (2 * 0.15**2)).sum(axis=1, keepdims=True)) * np.ones(2)

    x, res, _ = _heteroscedastic(800, 2, sd)
    auto = estimate_systematics(res, x, True, np.ones(2), "test")
    assert auto.log_var is None and auto.k in (15, 30)
    got = np.sqrt(np.diagonal(auto.cov(np.vstack([centres, [[0.0, 0.0]]])), axis1=1, axis2=2))
    assert np.all(got[:3] > 0.05) and np.all(got[3] < 0.03), got


def test_smooth_form_is_unit_free_and_round_trips(tmp_path, cannon):
    sd = lambda x: 0.05 * np.exp(x[:, :1] + x[:, 1:]) * np.ones(2)  # noqa: E731
    x, res, _ = _heteroscedastic(300, 3, sd)
    a = estimate_systematics(res, x, True, np.ones(2), "test", model="smooth")
    # the same errors in other units (label 0 × 1000): the covariance scales accordingly
    u = np.array([1000.0, 1.0])
    res_u = types.SimpleNamespace(labels=res.labels * u, cov=res.cov * np.outer(u, u), status=res.status)
    b = estimate_systematics(res_u, x * u, True, u, "test", model="smooth")
    q = np.array([[0.1, -0.3], [0.7, 0.2]])
    np.testing.assert_allclose(b.cov(q * u), a.cov(q) * np.outer(u, u), rtol=1e-6)
    # saved with an emulator (3 labels): log_var and degree survive the model file
    sys3 = sj.validate.label_systematics(cannon, _set(200, 9), snr=100, model="smooth")
    back = sj.load_emulator(cannon.with_systematics(sys3).save(tmp_path / "s.npz")).space.systematics
    assert back.degree == 2 and back.log_var is not None
    np.testing.assert_allclose(np.asarray(back.log_var), np.asarray(sys3.log_var))
    q3 = np.asarray(sys3.points)[:5]
    np.testing.assert_allclose(back.cov(q3), sys3.cov(q3), rtol=1e-12)


def test_systematics_model_bad_input():
    x, res, _ = _heteroscedastic(40, 4, lambda x: 0.1 * np.ones((len(x), 2)))
    with pytest.raises(ValueError, match="model must be"):
        estimate_systematics(res, x, True, np.ones(2), "test", model="spline")
    with pytest.raises(ValueError, match="at least"):
        estimate_systematics(res, x, True, np.ones(2), "test", model="smooth")
    with pytest.raises(ValueError, match="k must be"):
        estimate_systematics(res, x, True, np.ones(2), "test", k=0)
    with pytest.raises(ValueError, match="log_var must be"):
        LabelSystematics(points=x, excess=np.zeros((40, 2, 2)), scale=np.ones(2), k=5, log_var=np.zeros((2, 3)))
    # too few fits for the smooth form: auto falls back to the neighbours form
    assert estimate_systematics(res, x, True, np.ones(2), "test").log_var is None


def test_label_systematics_bad_input(cannon):
    unlabelled = sj.SpectrumSet(np.linspace(5000, 5100, 60), np.ones((3, 60)), np.ones((3, 60)))
    with pytest.raises(ValueError, match="known labels"):
        sj.validate.label_systematics(cannon, unlabelled)
    with pytest.raises(ValueError, match="snr must be"):
        sj.validate.label_systematics(cannon, _set(10, 5), snr=0)
    held = _set(10, 5)
    shifted = sj.SpectrumSet(held.wave + 40.0, held.flux, held.ivar, labels=held.labels, label_names=NAMES)
    for snr in (None, 100.0):  # the same pixel count on another grid: refused, not fitted
        with pytest.raises(ValueError, match="different wavelength grid"):
            sj.validate.label_systematics(cannon, shifted, snr=snr)


def test_cv_systematics_from_the_training_set_alone():
    """k-fold CV on the training set (no separate held-out set) calibrates the Cannon's pulls on
    non-quadratic spectra at S/N 50 and 200; the formal pulls are far too large there."""
    train = _set(400, 4, snr=100)
    em = sj.CannonEmulator.train(train)
    sys_err, cv = sj.validate.cv_systematics(train, "cannon", k=5)
    assert cv.result.labels.shape == (400, 3) and np.all(cv.result.status <= 2)
    assert sys_err.points.shape == (400, 3) and sys_err.k in (15, 30, 60)
    # placed at the fitted labels (what a catalogue star is looked up by), not the true ones
    np.testing.assert_allclose(np.asarray(sys_err.points), cv.result.labels)
    em = em.with_systematics(sys_err)
    for seed, snr in ((5, 50), (6, 200)):
        test = _set(500, seed, snr=snr)
        res = sj.fit_labels(em, test)
        formal = sj.fit_labels(em, test, systematics=False)
        pull = ((res.labels - test.labels) / res.labels_err).std(axis=0)
        pull_formal = ((formal.labels - test.labels) / formal.labels_err).std(axis=0)
        assert np.all(pull_formal > 1.5), (snr, pull_formal)
        assert np.all((pull > 0.8) & (pull < 1.25)), (snr, pull)


def test_cv_systematics_bad_input():
    with pytest.raises(ValueError, match="unknown emulator"):
        sj.validate.cv_systematics(_set(50, 7, snr=100), "nope")
    unlabelled = sj.SpectrumSet(np.linspace(5000, 5100, 60), np.ones((20, 60)), np.ones((20, 60)))
    with pytest.raises(ValueError, match="labelled"):
        sj.validate.cv_systematics(unlabelled, "cannon")


def test_nested_cross_validation_with_inner_systematics():
    """cross_validate(systematics_k=...) and snr_ladder(systematics_k=...): each fold model carries
    systematics from its own training stars; the held-out pulls are then calibrated."""
    ds = _set(450, 8, snr=150)
    plain = sj.validate.cross_validate(ds, "cannon", k=3)
    nested = sj.validate.cross_validate(ds, "cannon", k=3, systematics_k=3)
    assert nested.info["systematics_k"] == 3
    np.testing.assert_allclose(nested.result.labels, plain.result.labels)
    pull_plain = ((plain.result.labels - ds.labels) / plain.result.labels_err).std(axis=0)
    pull = ((nested.result.labels - ds.labels) / nested.result.labels_err).std(axis=0)
    assert np.all(pull_plain > 1.5), pull_plain
    assert np.all((pull > 0.8) & (pull < 1.25)), pull
    # the whole set, not a subset: its folds then share the compiled fits and trainings above
    ladder = sj.validate.snr_ladder(ds, "cannon", snrs=(30, 100), k=3, systematics_k=3)
    st = ladder.stats()
    assert [s["snr"] for s in st] == [30.0, 100.0]
    assert all(0.7 < st[1][n]["pull_std"] < 1.4 for n in NAMES), st[1]
    with pytest.raises(ValueError, match="systematics_k"):
        sj.validate.cross_validate(ds, "cannon", k=3, systematics_k=1)


def test_systematics_k_is_clipped_to_the_usable_fits():
    """k larger than the number of usable fits (failed fits dropped) is clipped, not an error;
    the points are the fitted labels of the usable fits."""
    rng = np.random.default_rng(1)
    true = rng.normal(size=(10, 2))
    labels = true + 0.1 * rng.normal(size=(10, 2))
    labels[:4] = np.nan  # four failed fits
    res = types.SimpleNamespace(labels=labels, cov=np.tile(np.eye(2) * 1e-4, (10, 1, 1)), status=np.zeros(10, int))
    s = estimate_systematics(res, true, True, np.ones(2), "test", k=30)
    assert s.k == 6 and s.points.shape == (6, 2) and s.log_var is None
    np.testing.assert_allclose(np.asarray(s.points), labels[4:])
