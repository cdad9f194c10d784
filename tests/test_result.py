import numpy as np
import pytest
from astropy.table import Table

import slamjax as sj
from slamjax import FitResult, Status

from .conftest import interior_labels, simulate


@pytest.fixture(scope="module")
def result(cannon):
    truth = interior_labels(cannon, 8, seed=5)
    flux, ivar, _ = simulate(cannon, truth, 50, seed=6)
    ivar[2] = 0.0
    return sj.fit_labels(cannon, flux, ivar, ids=[f"star{i}" for i in range(8)])


def test_table_columns_and_units(result):
    tab = result.to_table()
    for col in ("id", "teff", "teff_err", "logg", "logg_err", "fe_h", "fe_h_err", "cov", "chi2", "rchi2"):
        assert col in tab.colnames
    assert {"n_pixels", "n_steps", "snr", "status"} <= set(tab.colnames)
    assert len(tab) == 8 and tab["cov"].shape == (8, 3, 3)
    np.testing.assert_allclose(tab["teff"], result.labels[:, 0])  # Teff in K
    assert str(tab["teff"].unit) == "K" and str(tab["teff_err"].unit) == "K" and tab["logg"].unit is None
    assert np.all(tab["teff"][tab["status"] == 0] > 3000)
    np.testing.assert_allclose(tab["teff_err"] ** 2, result.cov[:, 0, 0])
    assert tab["status"][2] == Status.BAD_INPUT and np.isnan(tab["teff"][2])
    assert tab.meta["STATUS3"] == "BAD_INPUT" and tab.meta["LABELS"] == "teff,logg,fe_h"
    assert list(tab["id"][:2]) == ["star0", "star1"]
    dof = result.n_pixels - 3
    np.testing.assert_allclose(tab["rchi2"][0], result.chi2[0] / dof[0])
    with pytest.raises(ValueError, match="shape"):
        result.to_table(ids=["a"])


def test_fits_round_trip(tmp_path, result):
    path = result.write(tmp_path / "cat.fits")
    back = FitResult.read(path)
    assert back.label_names == result.label_names
    for name in ("labels", "cov", "chi2", "n_pixels", "n_steps", "status", "snr"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert list(back.ids) == list(result.ids) and back.model_flux is None
    tab = Table.read(path)
    assert len(tab) == 8
    with pytest.raises(OSError):
        result.write(path)  # no silent overwrite
    result.write(path, overwrite=True, model_flux=True)
    np.testing.assert_array_equal(FitResult.read(path).model_flux, result.model_flux)


def test_fits_ids_non_ascii_raise_and_trailing_spaces_warn(tmp_path, result, caplog):
    ids = [f"star{i}" for i in range(8)]
    with pytest.raises(ValueError, match="not ASCII"):
        sj.FitResult(**{**vars(result), "ids": np.array(ids[:7] + ["\u00e9toile"])}).write(tmp_path / "a.fits")
    assert not (tmp_path / "a.fits").exists()
    spaced = sj.FitResult(**{**vars(result), "ids": np.array(ids[:7] + ["star7  "])})
    with caplog.at_level("WARNING", logger="slamjax"):
        back = FitResult.read(spaced.write(tmp_path / "b.fits"))
    assert "1 ids end in spaces (e.g. 'star7  ')" in caplog.text
    assert back.ids[7] == "star7" and back.ids[0] == "star0"
    caplog.clear()
    spaced.write(tmp_path / "b.ecsv")  # other formats keep them: no warning
    assert "end in spaces" not in caplog.text


def test_read_rejects_foreign_table(tmp_path):
    Table({"a": [1, 2]}).write(tmp_path / "x.fits")
    with pytest.raises(ValueError, match="not a slamjax catalog"):
        FitResult.read(tmp_path / "x.fits")


def test_summary_counts(result):
    s = result.summary()
    assert s["BAD_INPUT"] == 1 and sum(s.values()) == 8


def test_label_names_that_would_overwrite_catalog_columns_are_refused(cannon, sample):
    """A label named like a catalog column (``snr``, ``rv``, ...) overwrote that column silently."""
    from slamjax._result import check_label_names

    for names in (("teff", "snr"), ("rv", "logg"), ("teff", "teff_err"), ("a,b", "c"), ("teff", "teff"), ("",)):
        with pytest.raises(ValueError, match="label names"):
            check_label_names(names)
    check_label_names(("teff", "logg", "fe_h", "alpha_m"))
    # at training time already (and a single string is not a list of names)
    ds = sample[:40]
    with pytest.raises(ValueError, match="duplicate label names"):
        sj.CannonEmulator.train(ds, label_names=["teff", "logg", "teff"])
    with pytest.raises(ValueError, match="no labels"):
        sj.CannonEmulator.train(ds, label_names=[])
    with pytest.raises(TypeError, match="sequence of names"):
        sj.CannonEmulator.train(ds, label_names="teff")
    # and when writing a catalog of a result made by hand
    res = FitResult(
        labels=np.zeros((1, 2)), cov=np.eye(2)[None], chi2=np.zeros(1), n_pixels=np.ones(1, int),
        n_steps=np.ones(1, int), status=np.zeros(1, int), snr=np.full(1, 7.0), model_flux=None,
        ids=np.array(["a"]), label_names=("teff", "snr"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="catalog columns"):
        res.to_table()
