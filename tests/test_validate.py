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
