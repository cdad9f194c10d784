"""Radial velocity and continuum fitted with the labels (fit_labels(rv=..., continuum=...)).

The truth is built from an analytic line list, evaluated at the Doppler-shifted
wavelengths directly (no interpolation), so the test checks the shift model end to end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax._nuisance import C_KMS, Shifter, chebyshev_basis, pixel_velocity, segments_of
from slamjax.emulators import LabelSpace
from slamjax.emulators._cannon import _monomials

LO = np.array([4000.0, 1.0, -2.0])
HI = np.array([7000.0, 5.0, 0.5])


class LineModel:
    """A quadratic-in-labels model whose coefficient spectra are sums of Gaussian lines."""

    def __init__(self, seed=3, n_lines=120):
        rng = np.random.default_rng(seed)
        self.space = LabelSpace.from_labels(rng.uniform(LO, HI, (300, 3)), ("teff", "logg", "fe_h"))
        self.terms = _monomials(3, 2)
        # APOGEE-like: log-uniform steps of 6e-6 dex, two segments with a gap between them
        w = np.exp(np.log(15100.0) + np.arange(2400) * 6e-6 * np.log(10.0))
        self.wave = np.concatenate([w[:1200], w[1200:] * 1.01])
        self.centre = rng.uniform(self.wave[0], self.wave[-1], n_lines)
        self.width = self.centre * 2.5e-5 * np.log(10.0)  # ~1.8 pixels
        amp = np.zeros((n_lines, len(self.terms)))
        amp[:, 0] = rng.uniform(0.05, 0.4, n_lines)
        for t, term in enumerate(self.terms[1:], start=1):
            amp[:, t] = rng.normal(0.0, 0.15 if len(term) == 1 else 0.03, n_lines) * amp[:, 0]
        self.amp = amp

    def design(self, lam):
        g = np.exp(-0.5 * ((lam[:, None] - self.centre[None]) / self.width[None]) ** 2)
        d = -(g @ self.amp)
        d[:, 0] += 1.0
        return d

    def emulator(self):
        return sj.CannonEmulator(
            space=self.space,
            wave=jnp.asarray(self.wave),
            design=jnp.asarray(self.design(self.wave)),
            pixel_variance=jnp.zeros(self.wave.size),
            terms=self.terms,
            order=2,
        )

    def spectra(self, labels, v):
        em = self.emulator()
        z = (labels - np.asarray(self.space.mean)) / np.asarray(self.space.scale)
        feats = np.asarray(jax.vmap(em.features)(jnp.asarray(z)))
        beta = np.asarray(v) / C_KMS
        dop = np.sqrt((1 - beta) / (1 + beta))
        return np.stack([self.design(self.wave * d) @ f for d, f in zip(dop, feats)])


@pytest.fixture(scope="module")
def problem():
    model = LineModel()
    rng = np.random.default_rng(11)
    n = 120
    labels = rng.uniform(LO + 0.1 * (HI - LO), HI - 0.1 * (HI - LO), (n, 3))
    v = rng.uniform(-200.0, 200.0, n)
    snr = 60.0
    noise = rng.normal(0.0, 1.0 / snr, (n, model.wave.size))
    return model, labels, v, snr, noise


def test_segments_and_basis():
    model = LineModel()
    assert segments_of(model.wave) == ((0, 1200), (1200, 2400))
    basis = chebyshev_basis(model.wave, segments_of(model.wave), 2)
    assert basis.shape == (2400, 6)
    np.testing.assert_allclose(basis[:1200, 3:], 0.0)
    np.testing.assert_allclose(basis[:1200, 0], 1.0)
    np.testing.assert_allclose(basis[[0, 1199], 1], [-1.0, 1.0])


def test_rv_pulls_and_unbiased_labels(problem):
    model, labels, v, snr, noise = problem
    flux = model.spectra(labels, v) + noise
    ivar = np.full_like(flux, snr**2)
    res = sj.fit_labels(model.emulator(), flux, ivar, rv=True)
    assert np.all(res.status == sj.Status.CONVERGED)
    pull = (res.rv - v) / res.rv_err
    assert 0.9 <= pull.std() <= 1.1
    assert abs(pull.mean()) < 0.25
    lpull = (res.labels - labels) / res.labels_err
    assert np.all(np.abs(lpull.mean(axis=0)) < 0.25)
    assert np.all((lpull.std(axis=0) > 0.85) & (lpull.std(axis=0) < 1.2))
    # marginal label errors are at least the fixed-rv ones; the catalog carries the new columns
    assert res.cov_full.shape == (len(v), 4, 4)
    np.testing.assert_allclose(res.cov, res.cov_full[:, :3, :3])
    tab = res.to_table()
    assert {"rv", "rv_err", "cov_full"} <= set(tab.colnames)
    # two chunks of 60: fitted one after the other or by two worker threads, the same fits
    one, two = (sj.fit_labels(model.emulator(), flux, ivar, rv=True, workers=w) for w in (1, 2))
    np.testing.assert_allclose(two.rv, one.rv, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(two.labels, one.labels, rtol=1e-12)
    np.testing.assert_allclose(two.cov_full, one.cov_full, rtol=1e-9, atol=1e-15)


def test_continuum_matches_unmultiplied_fit(problem):
    model, labels, _, snr, noise = problem
    em = model.emulator()
    flux = model.spectra(labels, np.zeros(len(labels))) + noise
    ivar = np.full_like(flux, snr**2)
    x = np.linspace(-1.0, 1.0, model.wave.size)
    k = np.arange(len(labels))[:, None]
    poly = 0.7 + 0.2 * np.cos(k) * x[None] + 0.1 * np.sin(k) * x[None] ** 2  # smooth, far from 1
    plain = sj.fit_labels(em, flux, ivar)
    cont = sj.fit_labels(em, flux * poly, ivar / poly**2, continuum=2)
    assert np.all(cont.status == sj.Status.CONVERGED)
    d = (cont.labels - plain.labels) / plain.labels_err
    # The continuum's extra freedom moves labels by noise only: no shift, typically < 0.3σ
    assert np.all(np.abs(d.mean(axis=0)) < 0.1)
    assert np.all(np.median(np.abs(d), axis=0) < 0.3)
    # the fitted continuum reproduces the applied one (each segment's polynomial is quadratic in x)
    basis = chebyshev_basis(model.wave, segments_of(model.wave), 2)
    fitted = cont.continuum.reshape(len(labels), -1) @ basis.T
    assert np.median(np.abs(fitted / poly - 1.0)) < 2e-3


def test_rv_and_continuum_together_float32(problem):
    model, labels, v, snr, noise = problem
    x = np.linspace(-1.0, 1.0, model.wave.size)
    poly = 1.1 + 0.1 * x
    flux = ((model.spectra(labels, v) + noise) * poly).astype(np.float32)
    ivar = np.broadcast_to(snr**2 / poly**2, flux.shape).astype(np.float32)
    res = sj.fit_labels(model.emulator(), flux, ivar, rv=(-300.0, 300.0), continuum=1)
    assert np.mean(res.status == sj.Status.CONVERGED) > 0.95
    pull = (res.rv - v) / res.rv_err
    assert 0.85 <= pull.std() <= 1.2
    assert res.continuum.shape == (len(v), 2, 2)


def test_bad_nuisance_arguments(problem):
    model, labels, v, snr, noise = problem
    flux = model.spectra(labels[:2], v[:2])
    ivar = np.ones_like(flux)
    em = model.emulator()
    with pytest.raises(ValueError, match="rv"):
        sj.fit_labels(em, flux, ivar, rv=(100.0, -100.0))
    with pytest.raises(ValueError, match="continuum"):
        sj.fit_labels(em, flux, ivar, continuum=-1)


def test_unusable_run_on_a_gapless_grid_splits_segments_and_blocks_interpolation(problem):
    """A common grid without wavelength gaps (like apStar's) whose chip gap is a run of unusable
    model pixels: the continuum gets one polynomial per side, and no data pixel interpolates the
    model through the run (its values there are meaningless: here 5)."""
    _, labels, v, snr, noise = problem
    n = 60
    model = LineModel()  # the fixture's model, which other tests share, is left as it is
    model.wave = np.exp(np.log(15100.0) + np.arange(2400) * 6e-6 * np.log(10.0))  # gapless
    dead = slice(1140, 1260)
    design = model.design(model.wave)
    design[dead] = 0.0
    design[dead, 0] = 5.0
    s2 = np.zeros(model.wave.size)
    s2[dead] = np.inf
    em = sj.CannonEmulator(
        space=model.space,
        wave=jnp.asarray(model.wave),
        design=jnp.asarray(design),
        pixel_variance=jnp.asarray(s2),
        terms=model.terms,
        order=2,
    )
    usable = np.isfinite(s2)
    assert segments_of(model.wave) == ((0, 2400),)
    assert segments_of(model.wave, usable) == ((0, 1200), (1200, 2400))
    x = np.linspace(-1.0, 1.0, 1200)
    cont = np.concatenate([np.ones(1200), 0.6 + 0.05 * x])  # a step between the two sides
    flux = (model.spectra(labels[:n], v[:n]) + noise[:n]) * cont
    ivar = np.broadcast_to(snr**2 / cont**2, flux.shape).copy()
    ivar[:, dead] = 0.0
    res = sj.fit_labels(em, flux, ivar, rv=True, continuum=1)
    assert np.mean(res.status == sj.Status.CONVERGED) > 0.95
    pull = (res.rv - v[:n]) / res.rv_err
    assert 0.8 <= pull.std() <= 1.25 and abs(pull.mean()) < 0.4
    lpull = (res.labels - labels[:n]) / res.labels_err
    assert np.all(np.abs(lpull.mean(axis=0)) < 0.4)
    assert np.all((lpull.std(axis=0) > 0.8) & (lpull.std(axis=0) < 1.25))
    # fewer pixels than outside the run: the stencils that would reach into it are left out
    assert np.all(res.n_pixels <= 2400 - 120 - 2 * 8)


def test_dead_run_splits_keep_data_on_both_sides():
    wave = LineModel().wave  # a wavelength gap at pixel 1200; min_run = max(20, 2400 // 100) = 24
    usable = np.ones(2400, bool)
    usable[1170:1200] = False  # at the gap: no second cut (it made a segment without data)
    assert segments_of(wave, usable) == ((0, 1200), (1200, 2400))
    usable[300:400] = usable[410:510] = False  # two runs 10 usable pixels apart: one cut
    assert segments_of(wave, usable) == ((0, 350), (350, 1200), (1200, 2400))
    short = np.ones(2400, bool)
    short[1500:1523] = False  # 23 < 24 pixels: no cut; 24: a cut
    assert segments_of(wave, short) == ((0, 1200), (1200, 2400))
    short[1523] = False
    assert segments_of(wave, short) == ((0, 1200), (1200, 1512), (1512, 2400))


def test_valid_pixels_are_those_whose_stencil_touches_no_unusable_pixel():
    """Brute force over the cubic stencils of the velocity window: exactly the pixels that would
    interpolate an unusable model value lose weight, whatever the velocity."""
    wave = 10 ** (4.179 + 6e-6 * np.arange(3000))
    usable = np.random.default_rng(0).uniform(size=3000) > 0.01
    segs = ((0, 1400), (1400, 3000))
    sh = Shifter.of(Shifter.arrays(wave, segs, usable))
    seg_of = np.repeat(np.arange(2), [1400, 1600])
    v_pix = pixel_velocity(wave)
    for v0 in (0.0, -150.0, 400.0):
        lo, hi = v0 - 8 * v_pix, v0 + 8 * v_pix
        t1, t2 = np.asarray(sh.index(lo)), np.asarray(sh.index(hi))
        a = np.floor(np.minimum(t1, t2)).astype(int) - 1
        b = np.floor(np.maximum(t1, t2)).astype(int) + 2
        inside = (a >= 0) & (b < 3000)
        a, b = np.clip(a, 0, 2999), np.clip(b, 0, 2999)
        same = (seg_of[a] == seg_of) & (seg_of[b] == seg_of)
        clean = np.array([usable[a[i] : b[i] + 1].all() for i in range(3000)])
        expect = inside & same & clean
        got = np.asarray(sh.valid(lo, hi))
        np.testing.assert_array_equal(got, expect)
        assert 0.7 < got.mean() < 0.9  # ~20 pixels per unusable one, not a velocity-dependent stretch


def test_spectrum_with_a_dead_segment_is_fitted_with_its_continuum_held(problem, tmp_path):
    """A spectrum whose whole second segment is bad (a dead chip): its continuum there is undetermined,
    reported NaN, and held at 1 by a prior; the labels and rv come from the other segment (the
    singular normal matrix gave NaN labels, status NON_FINITE)."""
    model, labels, v, snr, noise = problem
    n = 8
    flux = model.spectra(labels[:n], v[:n]) + noise[:n]
    ivar = np.full(flux.shape, snr**2)
    ivar[0, 1200:] = 0.0
    res = sj.fit_labels(model.emulator(), flux, ivar, rv=True, continuum=1)
    assert np.all(res.status == sj.Status.CONVERGED)
    assert np.all(np.isnan(res.continuum[0, 1])) and np.all(np.isnan(res.continuum_err[0, 1]))
    assert np.all(np.isfinite(res.continuum[0, 0])) and np.all(np.isfinite(res.continuum[1:]))
    assert np.all(np.isnan(res.cov_full[0, 6:, :])) and np.all(np.isfinite(res.cov_full[0, :6, :6]))  # L, v, c_0
    assert np.all(np.abs((res.labels[0] - labels[0]) / res.labels_err[0]) < 4)
    assert abs(res.rv[0] - v[0]) < 4 * res.rv_err[0]
    assert res.continuum_segments == ((0, 1200), (1200, 2400))
    # one good pixel in that segment: still held (degree 1 has 2 coefficients), and given no weight (a
    # continuum through it would fit it exactly): it counts neither as a used pixel nor in rchi2
    ivar[0, 1500] = snr**2
    two = sj.fit_labels(model.emulator(), flux, ivar, rv=True, continuum=1)
    assert two.status[0] == sj.Status.CONVERGED and np.all(np.isnan(two.continuum[0, 1]))
    assert two.n_pixels[0] == res.n_pixels[0]
    np.testing.assert_allclose(two.labels[0], res.labels[0], rtol=1e-6)
    assert two.rchi2[0] == pytest.approx(two.chi2[0] / (two.n_pixels[0] - 6))  # 3 labels, rv, 2 coefficients
    back = sj.FitResult.read(res.write(tmp_path / "cat.fits"))
    assert back.continuum_segments == res.continuum_segments
    np.testing.assert_array_equal(back.continuum, res.continuum)
