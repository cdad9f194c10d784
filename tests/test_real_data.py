"""Real observed spectra: the bundled MILES FGK sample (always) and the shared data (if present)."""

import numpy as np
import pytest

import slamjax as sj
from slamjax import Status

from .conftest import shared_file


@pytest.fixture(scope="module")
def miles_cv(sample):
    return sj.validate.cross_validate(sample, emulator="cannon", k=5, seed=0)


def test_miles_cannon_5fold_cv(miles_cv):
    """5-fold CV of the Cannon on 434 real MILES FGK stars (numbers quoted in the README).

    Measured (seed 0): scatter 217 K / 0.57 dex / 0.25 dex, bias +45 K / +0.08 / +0.02.
    The bounds are ~20 % above that, to catch regressions, not to flatter.
    """
    st = miles_cv.stats()
    assert st["teff"]["scatter"] < 260.0
    assert st["logg"]["scatter"] < 0.70
    assert st["fe_h"]["scatter"] < 0.30
    for name in ("teff", "logg", "fe_h"):
        assert abs(st[name]["bias"]) < 0.3 * st[name]["scatter"]
        assert st[name]["n_bad"] == 0
    res = miles_cv.result
    assert np.sum(res.status == Status.BAD_INPUT) == 0
    assert np.mean((res.status == Status.CONVERGED) | (res.status == Status.HIT_BOUND)) > 0.97


def test_miles_formal_errors_are_too_small(miles_cv):
    """MILES has no error spectra (nominal S/N 100) and literature labels have their own errors:
    formal errors alone underestimate the CV scatter by an order of magnitude. This test pins
    that fact so that nobody reads the formal errors on MILES as calibrated."""
    res = miles_cv.result
    ok = res.status == Status.CONVERGED
    pull = (res.labels[ok] - miles_cv.true[ok]) / res.labels_err[ok]
    assert np.all(np.std(pull, axis=0) > 3.0)


def test_bundled_sample_is_the_shared_miles_fgk_subset(sample):
    full = sj.load_npz(shared_file("miles", "miles.npz"))
    teff = full.label("teff")
    sel = (teff > 4000) & (teff < 7000)
    assert sel.sum() == sample.n_spectra
    np.testing.assert_array_equal(full.ids[sel], sample.ids)
    np.testing.assert_array_equal(full.flux[sel], sample.flux)
    np.testing.assert_array_equal(full.labels[sel], sample.labels)
