"""``slamjax prep`` on real survey files: chip / arm gaps, grid coverage and the output file name."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits

from slamjax.cli import main

from .conftest import shared_file

MRS = "med-58408-TD230151N343645T01_sp01-015.fits"
LRS = "spec-58397-EG014118N254444M01_sp03-031.fits"
APSTAR = "apStar-dr17-2M17335483-2753043.fits"


def survey(name) -> str:
    return str(shared_file("survey_files", name))


def test_prep_masks_the_gap_between_mrs_arms(tmp_path):
    """The last blue-arm pixel made good (as in a file whose arm edge is not flagged): no pixel of the
    5379-6292 Å gap between the arms may carry weight on a grid spanning both arms."""
    src = tmp_path / "med-edgegood.fits"
    with fits.open(survey(MRS)) as m:
        blue = m["COADD_B"].data
        blue["IVAR"][-1] = np.median(blue["IVAR"][blue["IVAR"] > 0])
        blue["ORMASK"][-1] = 0
        m.writeto(src)
    out = tmp_path / "mrs.npz"
    argv = ["prep", str(src), "-o", str(out), "--grid", "4900,6850,1e-5", "--normalize", "none"]
    assert main(argv) == 0
    with np.load(out) as d:
        wave, flux, ivar = d["wave"], d["flux"][0], d["ivar"][0]
    gap = (wave > 5379.0) & (wave < 6292.0)
    assert gap.sum() > 6000
    assert np.all(ivar[gap] == 0) and np.all(flux[gap] == 1.0)
    arms = ((wave > 4900.0) & (wave < 5378.0)) | ((wave > 6293.0) & (wave < 6849.0))
    assert np.mean(ivar[arms] > 0) > 0.97


def test_prep_warns_about_a_file_off_the_grid(tmp_path, caplog):
    out = tmp_path / "mix.npz"
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):
        assert main(["prep", survey(APSTAR), survey(LRS), "-o", str(out), "--normalize", "none"]) == 0
    warned = [r.getMessage() for r in caplog.records if "of the output grid" in r.getMessage()]
    assert len(warned) == 1 and LRS in warned[0] and "covers none" in warned[0]
    with np.load(out) as d:
        assert np.all(d["ivar"][1] == 0) and np.mean(d["ivar"][0] > 0) > 0.8


def test_prep_warns_about_partial_coverage(tmp_path, caplog):
    out = tmp_path / "part.npz"
    with caplog.at_level(logging.WARNING, logger="slamjax.cli"):
        assert main(["prep", survey(LRS), "-o", str(out), "--grid", "8000,12000,1e-4", "--normalize", "none"]) == 0
    warned = [r.getMessage() for r in caplog.records if "of the output grid" in r.getMessage()]
    # 8000-9099 Å of 8000-12000 Å in log λ: 31.5 %
    assert len(warned) == 1 and LRS in warned[0] and "covers only 31." in warned[0]


def test_prep_fails_when_no_file_overlaps_the_grid(tmp_path, capsys):
    out = tmp_path / "none.npz"
    assert main(["prep", survey(LRS), "-o", str(out), "--grid", "15000,16000,1e-5"]) == 1
    err = capsys.readouterr().err
    assert "no input file overlaps the output grid" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["SET.NPZ", "set.Npz", "set.npz"])
def test_prep_writes_exactly_the_named_file(tmp_path, capsys, name):
    out = tmp_path / name
    assert main(["prep", survey(LRS), "-o", str(out), "--normalize", "none"]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    with np.load(out) as d:
        assert d["flux"].shape == (1, 3909)
    # the existence check looks at the same name
    assert main(["prep", survey(LRS), "-o", str(out)]) == 1
    assert "exists; use --overwrite" in capsys.readouterr().err
    before = out.stat().st_mtime_ns
    assert main(["prep", survey(LRS), "-o", str(out), "--overwrite", "--normalize", "none"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and out.stat().st_mtime_ns >= before
