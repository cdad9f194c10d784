"""The scripts in examples/ run and print what they promise (subprocesses, in a temporary directory)."""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script, *args, cwd):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_quickstart(tmp_path):
    out = _run("quickstart.py", cwd=tmp_path)
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    # the Cannon on half of the bundled MILES sample: CV-like scatters of the other half
    assert 120 < float(lines["teff"][4]) < 350
    assert 0.3 < float(lines["logg"][4]) < 0.9
    assert 0.12 < float(lines["fe_h"][4]) < 0.4
    assert (tmp_path / "quickstart_catalog.fits").is_file()


@pytest.mark.skipif(not (SHARED / "survey_files").is_dir(), reason="needs ../shared/data/survey_files")
def test_lamost_lrs(tmp_path):
    files = sorted((SHARED / "survey_files").glob("spec-*.fits*"))
    out = _run("lamost_lrs.py", *files, cwd=tmp_path)
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(rows) == len(files) == 2
    for row in rows:
        assert row[-1] == "CONVERGED"
        teff, logg = float(row[3]), float(row[6])
        assert 5000 < teff < 7000 and 3.5 < logg < 5.0  # F5 and G3 stars (LAMOST classes)
