import logging

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

import slamjax as sj
from slamjax import Status
from slamjax.emulators import AbstractEmulator, LabelSpace

from .conftest import interior_labels, make_cannon, simulate


class Wrapped(AbstractEmulator):
    """Any emulator seen through the generic interface (forces the P-sized LM path)."""

    inner: sj.CannonEmulator
    space: LabelSpace
    wave: jnp.ndarray
    pixel_variance: jnp.ndarray

    def __call__(self, labels):
        return self.inner(labels)


def assert_close_scaled(a, b, em, tol):
    """|a - b| <= tol in units of each label's training standard deviation."""
    d = np.abs(np.asarray(a) - np.asarray(b)) / np.asarray(em.space.scale)
    assert np.all(d <= tol), d.max()


def wrap(em):
    return Wrapped(inner=em, space=em.space, wave=em.wave, pixel_variance=em.pixel_variance)


@pytest.mark.parametrize("snr", [20, 50, 200])
def test_pulls_are_unit_normal(snr):
    em = make_cannon(n_pixels=400, scatter=0.005)
    truth = interior_labels(em, 2000, seed=snr)
    flux, ivar, _ = simulate(em, truth, snr, seed=snr + 1)
    res = sj.fit_labels(em, flux, ivar)
    assert np.mean(res.status == Status.CONVERGED) > 0.99
    pull = (res.labels - truth) / res.labels_err
    assert np.all(np.abs(pull.mean(axis=0)) < 0.1), pull.mean(axis=0)
    std = pull.std(axis=0)
    assert np.all((std > 0.9) & (std < 1.1)), std
    # χ² per degree of freedom is ~1 for a correct noise model
    assert 0.97 < np.median(res.rchi2) < 1.03


def _scipy_fit(em, flux, ivar, x0, prior=None):
    s2 = np.asarray(em.pixel_variance)
    w = np.where(ivar > 0, ivar / (1 + ivar * s2), 0.0)
    sw = np.sqrt(w)

    def resid(x):
        r = sw * (flux - np.asarray(em(jnp.asarray(x))))
        if prior is not None:
            r = np.concatenate([r, (x - prior[0]) / prior[1]])
        return r

    sol = least_squares(resid, x0, x_scale=np.asarray(em.space.scale), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    chi2 = float(np.sum((sw * (flux - np.asarray(em(jnp.asarray(sol.x))))) ** 2))
    return sol.x, chi2


@pytest.mark.parametrize("generic", [False, True])
def test_same_minimum_as_scipy(generic):
    em = make_cannon(n_pixels=300, scatter=0.003)
    truth = interior_labels(em, 5, seed=11)
    flux, ivar, _ = simulate(em, truth, 30, seed=12)
    ivar[:, :20] = 0.0
    res = sj.fit_labels(wrap(em) if generic else em, flux, ivar)
    for i in range(5):
        x, chi2 = _scipy_fit(em, flux[i], ivar[i], truth[i] * 1.02)
        assert res.status[i] == Status.CONVERGED
        assert abs(res.chi2[i] / chi2 - 1) < 1e-6
        assert_close_scaled(res.labels[i], x, em, 1e-4)


def test_map_with_prior_matches_scipy():
    em = make_cannon(n_pixels=300)
    truth = interior_labels(em, 3, seed=21)
    flux, ivar, _ = simulate(em, truth, 10, seed=22)
    mean = np.array([5200.0, 3.0, -0.5])
    sigma = np.array([100.0, 0.2, np.inf])
    res = sj.fit_labels(em, flux, ivar, prior=(mean, sigma))
    big = np.where(np.isfinite(sigma), sigma, 1e12)
    for i in range(3):
        x, _ = _scipy_fit(em, flux[i], ivar[i], truth[i], prior=(mean, big))
        assert_close_scaled(res.labels[i], x, em, 1e-4)
    # the prior shrinks the covariance below the likelihood-only one
    free = sj.fit_labels(em, flux, ivar)
    assert np.all(res.labels_err[:, 0] < free.labels_err[:, 0])
    # a mapping prior by label name is the same prior
    res2 = sj.fit_labels(em, flux, ivar, prior={"teff": (5200.0, 100.0), "logg": (3.0, 0.2)})
    np.testing.assert_allclose(res2.labels, res.labels, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown label"):
        sj.fit_labels(em, flux, ivar, prior={"vsini": (1.0, 1.0)})
    with pytest.raises(ValueError, match="sigmas must be > 0"):
        sj.fit_labels(em, flux, ivar, prior=(mean, np.zeros(3)))
    # malformed priors get errors that say what a prior is
    with pytest.raises(ValueError, match=r"a pair \(mean, sigma\) of arrays broadcastable to \[N, L\] = \[3, 3\]"):
        sj.fit_labels(em, flux, ivar, prior=np.zeros(7))
    with pytest.raises(ValueError, match=r"broadcastable to \[N, L\] = \[3, 3\]; got shapes \(7,\) and \(3,\)"):
        sj.fit_labels(em, flux, ivar, prior=(np.zeros(7), sigma))
    with pytest.raises(ValueError, match=r"prior\['teff'\] must be a pair"):
        sj.fit_labels(em, flux, ivar, prior={"teff": 5200.0})
    # a pair of a vector and a scalar is a valid (ragged) pair
    res3 = sj.fit_labels(em, flux, ivar, prior=(mean, 1e12))
    np.testing.assert_allclose(res3.labels, free.labels, rtol=1e-6)


def test_generic_and_quadratic_paths_agree():
    em = make_cannon(n_pixels=250, scatter=0.004)
    truth = interior_labels(em, 40, seed=31)
    flux, ivar, _ = simulate(em, truth, 40, seed=32)
    a = sj.fit_labels(em, flux, ivar)
    b = sj.fit_labels(wrap(em), flux, ivar)
    assert_close_scaled(a.labels, b.labels, em, 1e-6)
    np.testing.assert_allclose(a.chi2, b.chi2, rtol=1e-8)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-6)
    np.testing.assert_allclose(a.model_flux, b.model_flux, rtol=0, atol=1e-6)


def test_float32_matches_float64():
    em = make_cannon(n_pixels=400, scatter=0.005)
    truth = interior_labels(em, 300, seed=41)
    flux, ivar, _ = simulate(em, truth, 50, seed=42)
    r64 = sj.fit_labels(em, flux, ivar)
    r32 = sj.fit_labels(em, flux.astype(np.float32), ivar.astype(np.float32))
    assert r32.model_flux.dtype == np.float32
    assert np.mean(r32.status == Status.CONVERGED) > 0.99
    d = (r32.labels - r64.labels) / r64.labels_err
    assert np.max(np.abs(d)) < 0.05
    np.testing.assert_allclose(r32.labels_err, r64.labels_err, rtol=1e-3)


def test_bad_spectra_get_status_and_do_not_affect_others(cannon, caplog):
    truth = interior_labels(cannon, 6, seed=51)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=52)
    alone = sj.fit_labels(cannon, flux[[0, 3, 5]], ivar[[0, 3, 5]])
    flux, ivar = flux.copy(), ivar.copy()
    ivar[1] = 0.0  # all masked
    ivar[2, 3:] = 0.0  # 3 good pixels < L + 1
    flux[4, :] = np.nan  # all NaN flux with ivar > 0
    flux[5, :10] = 1e160  # χ² overflows: NON_FINITE (the fit stopped at finite, meaningless labels)
    with caplog.at_level(logging.WARNING, logger="slamjax"):
        res = sj.fit_labels(cannon, flux, ivar)
    assert "non-finite flux" in caplog.text
    assert list(res.status[[1, 2, 4]]) == [Status.BAD_INPUT] * 3 and res.status[5] == Status.NON_FINITE
    assert np.all(np.isnan(res.labels[[1, 2, 4, 5]])) and np.all(np.isnan(res.cov[[1, 2, 4, 5]]))
    assert np.all(np.isnan(res.model_flux[[1, 2, 4, 5]])) and np.isinf(res.chi2[5])
    for s2 in (-1e-4, np.nan):  # a model variance that would weight pixels above their ivar, or NaN
        broken = eqx.tree_at(lambda e: e.pixel_variance, cannon, jnp.full(cannon.n_pixels, s2))
        with pytest.raises(ValueError, match="pixel_variance has negative or NaN"):
            sj.fit_labels(broken, flux, ivar)
    assert list(res.n_pixels[[1, 2, 4]]) == [0, 3, 0]
    np.testing.assert_allclose(res.labels[[0, 3]], alone.labels[:2], rtol=1e-12)
    assert np.all(res.status[[0, 3]] == Status.CONVERGED)


def test_partially_masked_spectrum_ignores_masked_pixels(cannon):
    truth = interior_labels(cannon, 1, seed=61)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=62)
    ref = sj.fit_labels(cannon, flux, ivar)
    flux2, ivar2 = flux.copy(), ivar.copy()
    flux2[0, :50] = 1e6
    ivar2[0, :50] = 0.0
    flux[0, :50] = np.nan
    a = sj.fit_labels(cannon, flux2, ivar2)
    b = sj.fit_labels(cannon, np.where(np.isnan(flux), np.nan, flux), ivar2)
    np.testing.assert_allclose(a.labels, b.labels, rtol=1e-12)
    assert a.n_pixels[0] == cannon.n_pixels - 50
    assert abs(a.labels[0, 0] - ref.labels[0, 0]) < 5 * ref.labels_err[0, 0]


def test_labels_outside_training_box_hit_bound(cannon):
    lo, hi = np.asarray(cannon.space.lo), np.asarray(cannon.space.hi)
    outside = np.array([[hi[0] + 0.4 * (hi[0] - lo[0]), 3.0, -0.5]])
    flux, ivar, _ = simulate(cannon, outside, 100, seed=71)
    res = sj.fit_labels(cannon, flux, ivar, box_margin=0.05)
    assert res.status[0] == Status.HIT_BOUND
    assert res.labels[0, 0] == pytest.approx(hi[0] + 0.05 * (hi[0] - lo[0]), rel=1e-9)
    wide = sj.fit_labels(cannon, flux, ivar, box_margin=1.0)
    assert wide.status[0] == Status.CONVERGED
    assert abs(wide.labels[0, 0] - outside[0, 0]) < 5 * wide.labels_err[0, 0]


def mirror_cannon():
    """One label; flux depends on z² + 0.3 z in most pixels (mirror solutions) and weakly on z in
    a few: a start on the wrong side converges to a worse local minimum. Returns (em, mean, scale)."""
    em0 = make_cannon(n_pixels=60, names=("x",), seed=3)
    theta = np.zeros((60, 3))
    theta[:, 0] = 1.0
    theta[:50, 1] = 0.03
    theta[:50, 2] = 0.1
    theta[50:, 1] = 0.02
    em = eqx.tree_at(lambda e: e.design, em0, jnp.asarray(theta))
    return em, float(em.space.mean[0]), float(em.space.scale[0])


def test_multistart_finds_global_minimum():
    em, mean, scale = mirror_cannon()
    z_true = 1.2
    truth = np.array([[mean + z_true * scale]])
    flux, ivar, _ = simulate(em, truth, 1000, seed=81)
    wrong = np.array([mean - 1.5 * scale])
    single = sj.fit_labels(em, flux, ivar, init=wrong)
    multi = sj.fit_labels(em, flux, ivar, init="training", n_starts=3)
    assert single.chi2[0] > multi.chi2[0] + 100
    assert abs((multi.labels[0, 0] - truth[0, 0]) / multi.labels_err[0, 0]) < 5
    assert single.labels[0, 0] < mean  # stuck on the wrong side


class CheckedByOneStep(Wrapped):
    """As ``Wrapped``, with the kernel emulator's treatment of the extra starts (each checked by one
    LM step; the best-ranked one fitted alone)."""

    @property
    def _check_starts_by_one_step(self):
        return True


def test_checked_start_that_lands_below_the_minimum_is_fitted_too():
    """Mirror solutions (as above) with the best-ranked template on the wrong side: fitted alone it
    ends in the worse minimum; the check of the other starts finds one whose first step lands below
    that minimum, fits it too and keeps the lower minimum (both fits' steps count). The two-step
    screening of every start finds the same minimum."""
    em0, mean, scale = mirror_cannon()
    # templates: two near the mirror minimum (z = -1.5), one on the true side
    space = eqx.tree_at(lambda s: s.train, em0.space, jnp.asarray(mean + scale * np.array([[-1.5], [-1.45], [1.5]])))
    parts = dict(inner=em0, space=space, wave=em0.wave, pixel_variance=em0.pixel_variance)
    checked_em, screened_em = CheckedByOneStep(**parts), Wrapped(**parts)
    truth = np.array([[mean + 1.2 * scale]])
    flux, ivar, _ = simulate(em0, truth, 100, seed=82)
    alone = sj.fit_labels(checked_em, flux, ivar, n_starts=1)
    checked = sj.fit_labels(checked_em, flux, ivar, n_starts=3)
    screened = sj.fit_labels(screened_em, flux, ivar, n_starts=3)
    assert alone.labels[0, 0] < mean  # the best-ranked start alone: the wrong side
    assert alone.chi2[0] > checked.chi2[0] + 100
    assert abs((checked.labels[0, 0] - truth[0, 0]) / checked.labels_err[0, 0]) < 5
    assert checked.n_steps[0] > alone.n_steps[0]
    assert checked.status[0] == Status.CONVERGED
    assert checked.chi2[0] == pytest.approx(screened.chi2[0], rel=1e-8)
    assert abs(checked.labels[0, 0] - screened.labels[0, 0]) < 0.01 * checked.labels_err[0, 0]

    # A batch whose refits fall into chunks fitted concurrently by two workers: the same as serially.
    from slamjax import _chunking

    truths = mean + scale * np.array([[1.2], [-1.2], [1.1], [-1.0], [1.3], [-1.3], [1.0], [1.25]])
    flux8, ivar8, _ = simulate(em0, truths, 100, seed=83)
    serial = sj.fit_labels(checked_em, flux8, ivar8, n_starts=3, workers=1, chunk_size=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_chunking, "_MIN_WORKER_CHUNK", 2)
        par = sj.fit_labels(checked_em, flux8, ivar8, n_starts=3, workers=2, chunk_size=4)
    np.testing.assert_allclose(par.labels, serial.labels, rtol=1e-12)
    np.testing.assert_array_equal(par.n_steps, serial.n_steps)
    assert np.all(np.sign(par.labels[:, 0] - mean) == np.sign(truths[:, 0] - mean))  # every one on its side


def test_init_arrays_and_chunking(cannon):
    truth = interior_labels(cannon, 9, seed=91)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=92)
    ref = sj.fit_labels(cannon, flux, ivar)
    for init in (truth, truth[0], np.stack([truth, truth * 1.01], axis=1)):
        res = sj.fit_labels(cannon, flux, ivar, init=init)
        # same minimum to within the convergence tolerance (1e-5 σ)
        assert np.all(np.abs(res.labels - ref.labels) / ref.labels_err < 1e-3)
    small = sj.fit_labels(cannon, flux, ivar, chunk_size=4)
    np.testing.assert_allclose(small.labels, ref.labels, rtol=1e-10)
    lean = sj.fit_labels(cannon, flux, ivar, return_model=False)
    assert lean.model_flux is None
    np.testing.assert_array_equal(lean.labels, ref.labels)
    np.testing.assert_array_equal(lean.chi2, ref.chi2)
    with pytest.raises(ValueError, match="init array"):
        sj.fit_labels(cannon, flux, ivar, init=np.zeros((9, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        sj.fit_labels(cannon, flux, ivar, init=np.full(3, np.nan))
    with pytest.raises(ValueError, match="unknown init"):
        sj.fit_labels(cannon, flux, ivar, init="random")


def test_fit_layout_and_template_spectra_are_cached_per_emulator(cannon):
    """The second fit with one emulator reuses its prepared layout and template spectra and gives
    the same result; the cache entry goes when the emulator does."""
    import gc

    from slamjax import _fit_prepared

    em = wrap(cannon)  # the generic path: template spectra are cached too
    truth = interior_labels(cannon, 6, seed=93)
    flux, ivar, _ = simulate(cannon, truth, 80, seed=94)
    first = sj.fit_labels(em, flux, ivar)
    key = (id(em), np.dtype(np.float64).str)
    entry = _fit_prepared._prepared_cache[key][1]
    assert "templates" in entry
    second = sj.fit_labels(em, flux, ivar)
    assert _fit_prepared._prepared_cache[key][1] is entry
    np.testing.assert_array_equal(second.labels, first.labels)
    np.testing.assert_array_equal(second.cov, first.cov)
    del em, entry
    gc.collect()
    assert key not in _fit_prepared._prepared_cache
    limit = _fit_prepared._PREPARED_CACHE_MAX_BYTES
    try:  # layouts above the size limit are rebuilt per call, never kept
        _fit_prepared._PREPARED_CACHE_MAX_BYTES = 0
        em = wrap(cannon)
        third = sj.fit_labels(em, flux, ivar)
        assert (id(em), np.dtype(np.float64).str) not in _fit_prepared._prepared_cache
        np.testing.assert_array_equal(third.labels, first.labels)
    finally:
        _fit_prepared._PREPARED_CACHE_MAX_BYTES = limit


def test_prepared_cache_is_bounded_in_bytes(cannon, monkeypatch):
    """Kept layouts and templates of several emulators stay under _PREPARED_CACHE_TOTAL_BYTES: the
    oldest go first, the one in use stays (and still gives the same fit)."""
    from slamjax import _fit_prepared

    truth = interior_labels(cannon, 6, seed=97)
    flux, ivar, _ = simulate(cannon, truth, 80, seed=98)
    ems = [wrap(cannon) for _ in range(3)]
    first = sj.fit_labels(ems[0], flux, ivar)
    one = _fit_prepared._entry_bytes(_fit_prepared._prepared_cache[(id(ems[0]), np.dtype(np.float64).str)][1])
    monkeypatch.setattr(_fit_prepared, "_PREPARED_CACHE_TOTAL_BYTES", int(1.5 * one))
    for em in ems[1:]:
        res = sj.fit_labels(em, flux, ivar)
        np.testing.assert_array_equal(res.labels, first.labels)
    kept = [k[0] for k in _fit_prepared._prepared_cache]
    assert id(ems[2]) in kept and id(ems[0]) not in kept and id(ems[1]) not in kept
    total = sum(_fit_prepared._entry_bytes(e) for _, e in _fit_prepared._prepared_cache.values())
    assert total <= 1.5 * one


def test_prepared_cache_evicts_the_least_recently_used(cannon, monkeypatch):
    """An emulator fitted again moves to the end of the eviction order: with room for two, fitting
    A, B, A, C keeps A and C (insertion order would have dropped A)."""
    from slamjax import _fit_prepared

    truth = interior_labels(cannon, 4, seed=99)
    flux, ivar, _ = simulate(cannon, truth, 80, seed=100)
    a, b, c = (wrap(cannon) for _ in range(3))
    sj.fit_labels(a, flux, ivar)
    one = _fit_prepared._entry_bytes(_fit_prepared._prepared_cache[(id(a), np.dtype(np.float64).str)][1])
    monkeypatch.setattr(_fit_prepared, "_PREPARED_CACHE_TOTAL_BYTES", int(2.5 * one))
    for em in (b, a, c):
        sj.fit_labels(em, flux, ivar)
    kept = [k[0] for k in _fit_prepared._prepared_cache]
    assert id(a) in kept and id(c) in kept and id(b) not in kept


def test_cached_template_jacobians_give_the_same_fits(cannon, monkeypatch):
    """The screening's starting normals from the templates' cached Jacobians (generic path) equal
    those of a model evaluation at the start; and a box that excludes templates (negative margin)
    falls back to evaluating."""
    from slamjax import _fit_prepared

    em = wrap(cannon)
    truth = interior_labels(cannon, 40, seed=95)
    flux, ivar, _ = simulate(cannon, truth, 60, seed=96)
    cached = sj.fit_labels(em, flux, ivar)
    assert _fit_prepared._prepared_cache[(id(em), np.dtype(np.float64).str)][1]["templates"][2] is not None
    monkeypatch.setattr(_fit_prepared, "_TEMPLATE_JAC_MAX_BYTES", 0)
    fresh = sj.fit_labels(wrap(cannon), flux, ivar)
    assert_close_scaled(cached.labels, fresh.labels, cannon, 1e-6)
    np.testing.assert_allclose(cached.chi2, fresh.chi2, rtol=1e-8)
    monkeypatch.undo()
    shrunk = sj.fit_labels(wrap(cannon), flux, ivar, box_margin=-0.01)
    assert np.all(np.isfinite(shrunk.labels))


def test_input_validation(cannon):
    flux = np.ones((3, cannon.n_pixels))
    ivar = np.ones_like(flux)
    with pytest.raises(ValueError, match="flux must be"):
        sj.fit_labels(cannon, flux[:, :-1], ivar[:, :-1])
    with pytest.raises(ValueError, match="ivar shape"):
        sj.fit_labels(cannon, flux, ivar[:2])
    with pytest.raises(ValueError, match="negative"):
        sj.fit_labels(cannon, flux, -ivar)
    with pytest.raises(ValueError, match="NaN"):
        sj.fit_labels(cannon, flux, ivar * np.nan)
    with pytest.raises(ValueError, match="ivar is required"):
        sj.fit_labels(cannon, flux)
    with pytest.raises(TypeError, match="emulator"):
        sj.fit_labels("cannon", flux, ivar)
    other = sj.SpectrumSet(np.asarray(cannon.wave) + 1.0, flux, ivar)
    with pytest.raises(ValueError, match="different wavelength grid"):
        sj.fit_labels(cannon, other)
    with pytest.raises(ValueError, match="dtype"):
        sj.fit_labels(cannon, flux, ivar, dtype=np.float16)
    bad_ivar = ivar.copy()
    bad_ivar[1, 5] = np.inf  # a noiseless pixel would dominate χ² (and gave finite labels with status 4)
    with pytest.raises(ValueError, match="inf"):
        sj.fit_labels(cannon, flux, bad_ivar)
    with pytest.raises(ValueError, match="real"):
        sj.fit_labels(cannon, flux.astype(complex), ivar)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_steps"):
            sj.fit_labels(cannon, flux, ivar, max_steps=steps)
    for margin in (-0.6, np.nan, np.inf, "0.1"):
        with pytest.raises(ValueError, match="box_margin"):
            sj.fit_labels(cannon, flux, ivar, box_margin=margin)
    with pytest.raises(ValueError, match="continuum"):
        sj.fit_labels(cannon, flux, ivar, continuum=True)
    # an init of the wrong length says what an init is (was numpy's broadcasting error)
    for init in ([5000.0, 4.0], np.zeros((3, 2)), np.zeros((2, 3)), np.zeros((3, 2, 2))):
        with pytest.raises(ValueError, match="init array must be"):
            sj.fit_labels(cannon, flux, ivar, init=init)


def test_rows_that_are_not_fitted_have_no_model_flux(cannon):
    truth = interior_labels(cannon, 3, seed=103)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=104)
    ivar[1] = 0.0
    res = sj.fit_labels(cannon, flux, ivar)
    assert res.status[1] == Status.BAD_INPUT
    assert np.all(np.isnan(res.model_flux[1])) and np.all(np.isnan(res.labels[1]))
    assert np.all(np.isfinite(res.model_flux[[0, 2]]))
    np.testing.assert_allclose(res.model_flux[[0, 2]], np.asarray(cannon.predict(res.labels[[0, 2]])), atol=1e-10)


def test_spectrum_set_input_carries_ids(cannon):
    truth = interior_labels(cannon, 3, seed=101)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=102)
    ds = sj.SpectrumSet(np.asarray(cannon.wave), flux, ivar, ids=["a", "b", "c"])
    res = sj.fit_labels(cannon, ds)
    assert list(res.ids) == ["a", "b", "c"]
    np.testing.assert_allclose(res.snr, ds.snr)


def test_chunk_shape_pads_little_and_keeps_few_shapes():
    """Equal chunks on a quarter-octave grid: at most ~25 % padding and as few chunks as chunk_size allows."""
    from slamjax._chunking import _chunk_shape

    shapes = set()
    for n in list(range(1, 300)) + [300, 513, 1000, 3000, 10_000, 123_457]:
        for chunk_size in (16, 137, 256, 2750):
            c = _chunk_shape(n, chunk_size)
            n_chunks = -(-n // c)
            assert n_chunks <= -(-n // chunk_size), (n, chunk_size, c)
            assert n_chunks * c >= n
            if n >= 9:
                assert n_chunks * c <= 1.25 * (n + n_chunks), (n, chunk_size, c)
            shapes.add(c)
    assert _chunk_shape(300, 2750) == 320  # was padded to 512
    assert len(shapes) < 40


def test_diverse_starts_skip_neighbours_of_taken_starts():
    """Starting templates: the best first, then the best among the candidates at least the separation
    away from every start taken; without such candidates, the next best in objective order."""
    from slamjax._fit_core import diverse_starts

    templates = jnp.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2], [1.0, 0.0], [1.05, 0.0], [-1.0, 1.0]])
    obj = jnp.array(
        [
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # a cluster of 3 near the best, then two far groups
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # best is the far corner, then 4 (and 3 next to it)
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        ]
    )
    idx = np.asarray(diverse_starts(obj, templates, 3, n_candidates=6, separation=0.5))
    np.testing.assert_array_equal(idx[0], [0, 3, 5])
    np.testing.assert_array_equal(idx[1], [5, 4, 2])
    # all candidates within the separation: plain objective order
    close = jnp.zeros_like(templates).at[:, 0].set(jnp.arange(6) * 0.01)
    np.testing.assert_array_equal(np.asarray(diverse_starts(obj[:1], close, 3, n_candidates=6)), [[0, 1, 2]])
    # only the best n_candidates compete: with 2, the far templates are never seen
    np.testing.assert_array_equal(np.asarray(diverse_starts(obj[:1], templates, 2, n_candidates=2)), [[0, 1]])
    np.testing.assert_array_equal(np.asarray(diverse_starts(obj[:1], templates, 1)), [[0]])


def test_workers_fit_chunks_concurrently_with_the_same_results(cannon, monkeypatch):
    """Chunks fitted by a thread pool come back in order and equal the serial fits; a worker's error
    reaches the caller and leaves the pool usable; the pool's threads are kept between calls;
    ``workers`` is validated."""
    import threading

    from slamjax import _chunking

    em = wrap(cannon)  # the generic path (its default uses workers)
    truth = interior_labels(cannon, 100, seed=93)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=94)
    ivar[37] = 0.0  # a bad spectrum inside the second chunk keeps its place
    serial = sj.fit_labels(em, flux, ivar, workers=1, chunk_size=32)
    threads = set()
    orig = _chunking._fit_chunk

    def spy(*args, **kw):
        threads.add(threading.current_thread().name)
        return orig(*args, **kw)

    monkeypatch.setattr(_chunking, "_fit_chunk", spy)
    par = sj.fit_labels(em, flux, ivar, workers=3, chunk_size=32)
    assert all(name.startswith("slamjax-fit") for name in threads) and len(threads) >= 2, threads
    np.testing.assert_array_equal(par.status, serial.status)
    assert par.status[37] == Status.BAD_INPUT and np.sum(par.status == Status.BAD_INPUT) == 1
    ok = par.status != Status.BAD_INPUT
    np.testing.assert_allclose(par.labels[ok], serial.labels[ok], rtol=1e-12)
    np.testing.assert_allclose(par.model_flux[ok], serial.model_flux[ok], rtol=1e-12)
    np.testing.assert_allclose(par.snr, serial.snr)
    assert np.all(np.abs(par.labels[ok] - truth[ok]) / par.labels_err[ok] < 5)

    # A batch below 2 × _MIN_WORKER_CHUNK spectra is not split for workers; a larger one is.
    monkeypatch.setattr(_chunking, "_MIN_WORKER_CHUNK", 32)
    shapes = []

    def shape_spy(em_, args, **kw):
        shapes.append(args["flux"].shape[0])
        return orig(em_, args, **kw)

    monkeypatch.setattr(_chunking, "_fit_chunk", shape_spy)
    sj.fit_labels(em, flux[:50], ivar[:50], workers=2)
    assert len(shapes) == 1 and shapes[0] >= 50, shapes
    shapes.clear()
    sj.fit_labels(em, flux, ivar, workers=2)
    assert len(shapes) >= 2 and min(shapes) >= 32, shapes

    def failing(em_, args, **kw):
        if np.all(args["ivar"][0] == 0):  # the first chunk (its first spectrum is bad), in a worker
            raise RuntimeError("chunk failed")
        return orig(em_, args, **kw)

    monkeypatch.setattr(_chunking, "_fit_chunk", failing)
    flux2, ivar2 = flux[32:], ivar[32:].copy()
    ivar2[0] = 0.0
    with pytest.raises(RuntimeError, match="chunk failed"):
        sj.fit_labels(em, flux2, ivar2, workers=2, chunk_size=32)

    # The pool outlives the failed call: the same threads fit the next batch, and the same.
    monkeypatch.setattr(_chunking, "_fit_chunk", spy)
    threads.clear()
    again = sj.fit_labels(em, flux, ivar, workers=3, chunk_size=32)
    np.testing.assert_array_equal(again.labels[ok], par.labels[ok])
    assert _chunking._worker_pool(3) is _chunking._worker_pool(3)
    kept = {t.name for t in threading.enumerate() if t.name.startswith("slamjax-fit3")}
    assert threads and threads <= kept, (threads, kept)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers"):
            sj.fit_labels(cannon, flux, ivar, workers=bad)


@pytest.mark.parametrize("generic", [False, True])
def test_default_tolerance_is_within_a_hundredth_of_sigma_of_the_tight_minimum(generic):
    # The float64 default tol (1e-6 on the Gauss-Newton decrement) stops within ~0.001 σ of the
    # minimum; model scatter and low S/N (residual curvature, slower convergence) are the hard case.
    em = make_cannon(n_pixels=300, scatter=0.01)
    truth = interior_labels(em, 60, seed=51)
    flux, ivar, _ = simulate(em, truth, 10, seed=52)
    model = wrap(em) if generic else em
    from slamjax._fit_core import _fit_chunk

    default = sj.fit_labels(model, flux, ivar)
    programs = _fit_chunk._cache_size()
    loose = sj.fit_labels(model, flux, ivar, tol=1e-2, max_steps=10)  # max_steps <= 10: no second phase
    assert _fit_chunk._cache_size() == programs  # tol and max_steps are data: the same compiled fit
    assert np.mean(loose.n_steps) < np.mean(default.n_steps)
    tight = sj.fit_labels(model, flux, ivar, tol=1e-14, max_steps=200)
    assert np.all(default.status == Status.CONVERGED) and np.all(tight.status == Status.CONVERGED)
    d = np.abs(default.labels - tight.labels) / tight.labels_err
    assert d.max() < 0.01, d.max()
    assert np.all(default.chi2 - tight.chi2 >= -1e-9 * tight.chi2)
    assert np.all(default.chi2 - tight.chi2 < 1e-4)
    assert np.mean(default.n_steps) < np.mean(tight.n_steps)


def test_fits_that_need_more_than_the_first_step_budget_continue(cannon, monkeypatch):
    """Fits not converged after the first budget of steps continue in a second call (also for
    emulators without checked starts, where an earlier version crashed)."""
    from slamjax import _fit

    truth = interior_labels(cannon, 6, seed=105)
    flux, ivar, _ = simulate(cannon, truth, 100, seed=106)
    ref = sj.fit_labels(cannon, flux, ivar)
    assert np.all(ref.n_steps >= 2)
    far = sj.fit_labels(cannon, flux, ivar, init=np.asarray(cannon.space.lo), n_starts=1)
    capped = sj.fit_labels(cannon, flux, ivar, max_steps=2)  # (the screening takes 2 steps even at budget 1)
    monkeypatch.setattr(_fit, "_FIRST_BUDGET", 1)  # a budget (data, not compiled in) every fit outruns
    short = sj.fit_labels(cannon, flux, ivar)
    assert np.any(capped.status == Status.MAX_STEPS)  # these need a continuation ...
    assert np.all(short.n_steps[capped.status == Status.MAX_STEPS] > 2)  # ... and got one
    for res in (far, short):
        assert np.all(res.status == Status.CONVERGED)
        assert_close_scaled(res.labels, ref.labels, cannon, 1e-3)
