"""``slamjax diagnose`` (``slamjax._diagnose.diagnose``) and ``plot.scatter_vs_snr``: files, numbers, errors."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import OptimizeWarning

import slamjax as sj
from slamjax import plot
from slamjax._diagnose import diagnose
from slamjax.cli import main
from slamjax.diagnostics import label_stats
from slamjax.validate import cross_validate, snr_ladder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K = 2  # every new kernel model costs a JIT compilation of the fit (its γ groups are static): keep folds few
SNR = (20.0, 40.0, 80.0)  # three rungs: the least that fixes the error model's a, b, c
LABELS = ("teff", "logg", "fe_h")


def _small_sample() -> sj.SpectrumSet:
    """60 stars spread over the bundled sample's label range, 500 pixels (4890-5340 Å)."""
    ds = sj.data.load_sample()
    ds = ds[np.linspace(0, ds.n_spectra - 1, 60).astype(int)]
    px = slice(1500, 2000)
    return sj.SpectrumSet(
        ds.wave[px], ds.flux[:, px], ds.ivar[:, px], labels=ds.labels, label_names=ds.label_names, ids=ds.ids
    )


@pytest.fixture(scope="module")
def small():
    return _small_sample()


@pytest.fixture(scope="module")
def small_file(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.npz"
    small.save_npz(path)
    return path


@pytest.fixture(scope="module")
def diagnosed(small, tmp_path_factory):
    """One full run (kernel and Cannon, CV, ladder, CV MSE, COD) on the small sample."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("diag")
    path = diagnose(small, out, emulators=("kernel", "cannon"), k=K, snr=SNR, seed=0)
    return out, path, path.read_text(encoding="utf-8")


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_MAGIC


def _table_after(text: str, *headings: str) -> list[dict]:
    """Rows (as dicts) of the first markdown table after the given headings, found in order."""
    lines = text.splitlines()
    i = 0
    for heading in headings:
        i = next(j for j in range(i, len(lines)) if lines[j].strip() == heading) + 1
    while not lines[i].startswith("|"):
        assert not lines[i].startswith("#"), f"no table under {headings}"
        i += 1
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
        i += 1
    header, body = rows[0], rows[2:]  # rows[1] is the |---| line
    return [dict(zip(header, r)) for r in body]


def _matches(cell: str, value: float, decimals: int) -> bool:
    """``cell`` is ``value`` printed with ``decimals`` decimals."""
    return abs(float(cell) - value) <= 0.51 * 10.0**-decimals


def _dec(name: str) -> int:
    return 0 if name == "teff" else 3


# ---------------------------------------------------------------------- plot
def test_scatter_vs_snr_plot(tmp_path):
    pytest.importorskip("matplotlib")
    snr = np.array([10.0, 20.0, 40.0, 80.0])
    scatter = {"kernel": np.array([[300, 0.8], [200, 0.5], [150, 0.4], [140, 0.38]])}
    scatter["cannon"] = scatter["kernel"] * 1.1
    bias = {key: 0.1 * v for key, v in scatter.items()}
    models = {key: sj.diagnostics.fit_error_model(snr, v, ["teff", "logg"]) for key, v in scatter.items()}
    path = plot.scatter_vs_snr(snr, scatter, ["teff", "logg"], tmp_path / "s.png", bias=bias, models=models)
    assert path == tmp_path / "s.png" and _is_png(path)
    assert _is_png(
        plot.scatter_vs_snr(snr[:1], {"kernel": scatter["kernel"][:1]}, ["teff", "logg"], tmp_path / "1.png")
    )
    with pytest.raises(ValueError, match="K=4, L=2"):
        plot.scatter_vs_snr(snr, {"kernel": scatter["kernel"][:, :1]}, ["teff", "logg"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="> 0"):
        plot.scatter_vs_snr([0.0, 10.0], {"kernel": np.ones((2, 1))}, ["teff"], tmp_path / "x.png")


# ---------------------------------------------------------------------- the library function
def test_diagnose_files(diagnosed, small):
    out, path, text = diagnosed
    assert path == out / "summary.md"
    pngs = ["one_to_one_kernel.png", "one_to_one_cannon.png", "scatter_vs_snr.png", "cv_mse_spectra.png"]
    pngs.append("cod_spectra.png")
    for name in pngs:
        assert _is_png(out / name), name
        assert f"]({name})" in text, name  # linked from the summary
    for link in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (out / link).exists(), link
    assert "- stars: 60" in text and "- pixels: 500" in text
    assert "- labels: teff [K], logg [dex], fe_h [dex]" in text
    assert f"{K}-fold CV, seed 0" in text and "S/N ladder 20, 40, 80" in text
    timing = _table_after(text, "## Timing")
    assert {r["step"] for r in timing} >= {f"{K}-fold cross-validation, kernel", "S/N ladder (20, 40, 80), cannon"}
    assert all(float(r["seconds"]) >= 0 for r in timing)
    versions = {r["package"]: r["version"] for r in _table_after(text, "## Versions")}
    assert versions["slamjax"] == sj.__version__ and versions["jax"] == __import__("jax").__version__


@pytest.mark.parametrize("emulator", ["kernel", "cannon"])
def test_diagnose_cv_table_matches_cross_validate(diagnosed, small, emulator):
    _, _, text = diagnosed
    # the same folds and fit settings as diagnose: seed 0, 3 starts, float32 (the sample's dtype) for the
    # Cannon and float64 for the kernel (its float32 fits lose accuracy: diagnose fitted it in float32)
    dtype = np.float64 if emulator == "kernel" else np.float32
    assert f"{emulator} {np.dtype(dtype).name}" in text
    cv = cross_validate(small, emulator=emulator, k=K, seed=0, dtype=dtype, n_starts=3)
    stats = label_stats(cv.result.labels, cv.true, label_names=cv.label_names, err=cv.result.labels_err)
    assert stats["teff"]["scatter"] == pytest.approx(cv.stats()["teff"]["scatter"])
    rows = {r["label"]: r for r in _table_after(text, f"## Cross-validation ({K}-fold)", f"### {emulator}")}
    assert set(rows) == set(LABELS)
    for name in LABELS:
        row, st = rows[name], stats[name]
        assert row["unit"] == plot.label_unit(name)
        assert row["bias"].startswith(("+", "-"))
        for col, key in (("bias", "bias"), ("scatter", "scatter"), ("MAE", "mae")):
            assert _matches(row[col], st[key], _dec(name)), (name, col, row[col], st[key])
        assert _matches(row["pull std"], st["pull_std"], 2), (name, row["pull std"], st["pull_std"])
        assert int(row["n"]) == st["n"] and int(row["n_bad"]) == st["n_bad"]
    assert st["scatter"] > 0 and np.isfinite(st["pull_std"])
    summary = cv.result.summary()
    status = ", ".join(f"{k} {v}" for k, v in summary.items() if v)
    assert f"Status: {status}." in text


def test_diagnose_ladder_and_error_model_match(diagnosed, small):
    _, _, text = diagnosed
    ladder = snr_ladder(small, emulator="cannon", snrs=SNR, k=K, seed=0, dtype=np.float32, n_starts=3)
    rows = _table_after(text, "## Label precision versus S/N", "### cannon")
    assert len(rows) == len(LABELS) * len(SNR)
    table = {(r["label"], float(r["S/N"])): r for r in rows}
    for st in ladder.stats():
        for name in LABELS:
            row = table[(name, st["snr"])]
            assert int(row["converged"]) == st["n_converged"]
            assert _matches(row["bias"], st[name]["bias"], _dec(name))
            assert _matches(row["scatter"], st[name]["scatter"], _dec(name))
            assert _matches(row["pull std"], st[name]["pull_std"], 2)
    with warnings.catch_warnings():  # 3 rungs for 3 parameters: curve_fit cannot estimate their covariance
        warnings.simplefilter("ignore", OptimizeWarning)
        coef = ladder.error_model().coef
    em_rows = _table_after(text, "### Error model σ(S/N) = a·exp(−b·S/N) + c")
    assert {(r["emulator"], r["label"]) for r in em_rows} == {(e, n) for e in ("kernel", "cannon") for n in LABELS}
    for r in em_rows:
        if r["emulator"] == "cannon":
            got = [float(r[c]) for c in ("a", "b", "c")]
            assert got == pytest.approx(coef[r["label"]], rel=1e-3, abs=1e-9)


def test_diagnose_pixel_tables(diagnosed):
    _, _, text = diagnosed
    mse = {
        r["emulator"]: float(r["median CV MSE"])
        for r in _table_after(text, "## Per-pixel model error (leave-one-out CV MSE)")
    }
    assert set(mse) == {"kernel", "cannon"} and all(0 < v < 1.5 for v in mse.values())
    cod = {r["COD"]: r for r in _table_after(text, "## Coefficients of dependence")}
    assert set(cod) == {"full", *LABELS}
    assert float(cod["full"]["median"]) == pytest.approx(1 - mse["kernel"], abs=0.2)  # full COD = 1 − CV MSE
    for name in LABELS:
        assert 0 <= float(cod[name]["median"]) <= float(cod["full"]["max"]) <= 1


# ---------------------------------------------------------------------- errors
def test_diagnose_input_errors(small, tmp_path):
    out = tmp_path / "d"
    with pytest.raises(ValueError, match="unknown emulator"):
        diagnose(small, out, emulators=("kernel", "svm"))
    unlabelled = sj.SpectrumSet(small.wave, small.flux, small.ivar)
    with pytest.raises(ValueError, match="labels"):
        diagnose(unlabelled, out)
    with pytest.raises(ValueError, match="at least 5 stars"):
        diagnose(small[:4], out, k=5)
    nan_labels = small.labels.copy()
    nan_labels[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN labels"):
        diagnose(sj.SpectrumSet(small.wave, small.flux, small.ivar, nan_labels, small.label_names), out)
    with pytest.raises(ValueError, match="S/N"):
        diagnose(small, out, snr=(10, 0))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        diagnose(small, tmp_path / "file")
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        diagnose(small, out)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # nothing done before the checks


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slamjax: error: ") and "Traceback" not in err
    return lines[0]


def test_cli_diagnose_overwrite(small_file, tmp_path, capsys):
    """--overwrite removes the outputs of an earlier run (here a kernel run's plots) before writing, keeps
    other files, and reports only the files this run wrote."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "diag"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "keep.png").write_bytes(PNG_MAGIC)
    stale = ("one_to_one_kernel.png", "scatter_vs_snr.png", "cv_mse_spectra.png")
    for name in stale:
        (out / name).write_bytes(b"stale")
    argv = ["diagnose", str(small_file), "--out", str(out), "--emulators", "cannon", "--k", str(K), "--snr", ""]
    assert main(argv) == 1
    assert "--overwrite" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == sorted(["keep.txt", "keep.png", *stale])

    assert main([*argv, "--overwrite"]) == 0
    stdout = capsys.readouterr().out
    assert "60 stars, 500 pixels" in stdout and str(out / "summary.md") in stdout
    wrote = next(line for line in stdout.splitlines() if line.startswith("wrote "))
    plots = "one_to_one_cannon.png, cod_spectra.png, cv_mse_spectra.png"
    assert wrote.startswith(f"wrote {out / 'summary.md'} and {plots} in")
    assert "keep.png" not in wrote and "one_to_one_kernel.png" not in wrote
    assert (out / "keep.txt").read_text() == "mine" and (out / "keep.png").read_bytes() == PNG_MAGIC
    for name in ("one_to_one_cannon.png", "cv_mse_spectra.png", "cod_spectra.png"):
        assert _is_png(out / name), name
    assert not (out / "scatter_vs_snr.png").exists() and not (out / "one_to_one_kernel.png").exists()
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "Skipped: no S/N values given." in text
    assert "cannon emulator, leave-one-label-out" in text  # COD falls back to the Cannon without the kernel
    assert {r["label"] for r in _table_after(text, f"## Cross-validation ({K}-fold)", "### cannon")} == set(LABELS)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--emulators", "kernel,svm"], "unknown emulator"),
        (["--emulators", ","], "no emulator"),
        (["--snr", "10,-5"], "S/N"),
        (["--k", "1"], "--k"),
        (["--k", "61"], "between 2 and the number of stars (60)"),
    ],
)
def test_cli_diagnose_usage_errors(small_file, tmp_path, capsys, extra, message):
    assert main(["diagnose", str(small_file), "--out", str(tmp_path / "d"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cli_diagnose_data_errors(small, tmp_path, capsys):
    unlabelled = tmp_path / "u.npz"
    sj.SpectrumSet(small.wave, small.flux, small.ivar).save_npz(unlabelled)
    assert main(["diagnose", str(unlabelled), "--out", str(tmp_path / "d")]) == 1
    assert "no labels" in _one_error_line(capsys)
    assert main(["diagnose", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "d")]) == 1
    assert "no such file" in _one_error_line(capsys)
    # without DATA the bundled sample (434 stars) is used
    assert main(["diagnose", "--out", str(tmp_path / "d"), "--k", "1000"]) == 2
    assert "(434)" in capsys.readouterr().err


def test_cli_diagnose_without_matplotlib(small_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    out = tmp_path / "d"
    assert main(["diagnose", str(small_file), "--out", str(out)]) == 1
    line = _one_error_line(capsys)
    assert "matplotlib" in line and "pip install" in line
    assert not out.exists()
    small = sj.load_npz(small_file)
    with pytest.raises(ImportError, match="pip install"):
        diagnose(small, out, k=K)
