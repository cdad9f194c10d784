"""fit_labels(init=direct_model): the direct prediction as the starting point of the generative fit."""

import numpy as np
import pytest

import slamjax as sj

from .conftest import interior_labels, make_cannon, simulate


@pytest.fixture(scope="module")
def setup():
    em = make_cannon(n_pixels=200, seed=8, scatter=0.002)
    train_labels = interior_labels(em, 600, seed=1, margin=0.0)
    flux, ivar, _ = simulate(em, train_labels, 100, seed=2)
    ds = sj.SpectrumSet(np.asarray(em.wave), flux, ivar, labels=train_labels, label_names=em.label_names)
    direct = sj.direct.ResidualMLP.train(ds, key=0, max_epochs=60)
    truth = interior_labels(em, 400, seed=3)
    tflux, tivar, _ = simulate(em, truth, 30, seed=4)
    return em, direct, tflux, tivar, truth


def test_direct_start_needs_fewer_steps_and_reaches_the_same_minimum(setup):
    em, direct, flux, ivar, truth = setup
    ref = sj.fit_labels(em, flux, ivar)  # 3 training-label starts
    res = sj.fit_labels(em, flux, ivar, init=direct, n_starts=1)
    pred = direct.predict(flux, ivar)
    # the direct model is a useful but imperfect guess: the fit improves on it
    assert np.median(np.abs(res.labels - truth)[:, 0]) < np.median(np.abs(pred - truth)[:, 0])
    assert res.n_steps.mean() < ref.n_steps.mean()
    ok = res.chi2 <= ref.chi2 * (1 + 1e-8) + 1e-8
    assert ok.mean() >= 0.99, (ok.mean(), res.n_steps.mean(), ref.n_steps.mean())
    assert np.mean(res.status == sj.Status.CONVERGED) >= 0.99


def test_direct_start_with_training_starts_and_bad_models(setup):
    em, direct, flux, ivar, _ = setup
    both = sj.fit_labels(em, flux[:50], ivar[:50], init=direct, n_starts=3)
    ref = sj.fit_labels(em, flux[:50], ivar[:50])
    np.testing.assert_allclose(both.chi2, ref.chi2, rtol=1e-6)

    class WrongLabels:
        label_names = ("teff", "logg")

        def predict(self, flux, ivar):
            return np.zeros((len(flux), 2))

    with pytest.raises(ValueError, match="labels"):
        sj.fit_labels(em, flux[:5], ivar[:5], init=WrongLabels())

    class OtherGrid:  # trained on a grid shifted by 3 pixels: same pixel count, other wavelengths
        label_names = em.label_names
        wave = np.asarray(em.wave) + 3 * float(np.diff(np.asarray(em.wave))[0])

        def predict(self, flux, ivar):
            return np.tile(np.asarray(em.space.mean), (len(flux), 1))

    with pytest.raises(ValueError, match="wavelength grid"):
        sj.fit_labels(em, flux[:5], ivar[:5], init=OtherGrid())
