"""Labels when the training flux and the fitted flux are normalised differently, or at different resolutions (MILES).

Run: python benchmarks/normalisation_mix.py   (needs ../shared/data/miles; ~3-5 min on 2 cores)

The 434 FGK stars of the bundled sample in 5-fold CV (the same folds for every row): each fold's
model is trained on one version of the flux and fits the held-out stars in another version.
Versions: ``shipped`` (the bundled, upstream-normalised ``flux``), ``ours`` (``normalize_spline`` on
``flux_unnorm`` of ``../shared/data/miles``, with the ivar of ``tests/test_normalisation_labels.py``),
``renorm`` (``normalize_spline`` applied to the shipped ``flux``), and ``common`` (the shipped flux
degraded from MILES's FWHM 2.50 Å to the common resolution with LAMOST LRS, FWHM(λ) =
max(2.50 Å, λ / 1800)). Reported: bias and scatter of fitted − literature labels. The fits use the
nominal ivar 1e4 on good pixels (MILES has no error spectra). Results: ``results/normalisation_mix.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _machine import machine_info, machine_markdown, write_results  # noqa: E402

import slamjax as sj  # noqa: E402
import slamjax.preprocess as pp  # noqa: E402

jax.config.update("jax_enable_x64", True)

FWHM_MILES, R_LAMOST = 2.50, 1800.0
ROWS = (
    ("shipped", "shipped"),
    ("shipped", "ours"),
    ("renorm", "ours"),
    ("ours", "ours"),
    ("shipped", "common"),
    ("common", "common"),
)


def versions(ds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The flux versions [N, P] (with ivar) of the sample's stars."""
    path = _HERE.parent.parent / "shared" / "data" / "miles" / "miles.npz"
    with np.load(path, allow_pickle=False) as m:
        row = {str(i): k for k, i in enumerate(m["ids"])}
        rows = np.array([row[str(i)] for i in ds.ids])
        raw = m["flux_unnorm"][rows].astype(np.float64)
    w = ds.wave
    good = ds.ivar > 0
    cont = np.where(good, raw / np.where(good, ds.flux, 1), 1)
    ours = pp.normalize_spline(w, raw, np.where(good, ds.ivar / cont**2, 0))[:2]
    renorm = pp.normalize_spline(w, ds.flux, ds.ivar)[:2]
    fwhm = np.maximum(FWHM_MILES, w / R_LAMOST)
    common = pp.degrade_resolution(w, ds.flux, ds.ivar, w / FWHM_MILES, w / fwhm)
    return {"shipped": (ds.flux, ds.ivar), "ours": ours, "renorm": renorm, "common": common}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    ds = sj.data.load_sample()
    info = machine_info()
    t0 = time.perf_counter()
    flux = versions(ds)
    w = ds.wave
    band = (w > 4000) & (w < 5000)
    shift = {k: round(float(np.mean((flux["shipped"][0] - v[0])[:, band])), 4) for k, v in flux.items()}
    fold = np.random.default_rng(0).permutation(ds.n_spectra) % 5
    results = []
    for emu in ("kernel", "cannon"):
        cls = sj.KernelEmulator if emu == "kernel" else sj.CannonEmulator
        for train_v, fit_v in ROWS:
            tf, ti = flux[train_v]
            train = sj.SpectrumSet(w, tf, ti, labels=ds.labels, label_names=ds.label_names)
            ff, fi = flux[fit_v]
            pred = np.full(ds.labels.shape, np.nan)
            for k in range(5):
                tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                em = cls.train(train[tr])
                pred[te] = sj.fit_labels(em, ff[te], np.where(fi[te] > 0, 1e4, 0.0), systematics=False).labels
            d = pred - ds.labels
            row = {
                "emulator": emu,
                "train": train_v,
                "fit": fit_v,
                "bias": np.nanmean(d, 0).tolist(),
                "scatter": np.nanstd(d, 0).tolist(),
                "n": int(np.isfinite(d).all(axis=1).sum()),
            }
            results.append(row)
            print(emu, train_v, fit_v, np.round(row["bias"], 3), np.round(row["scatter"], 3), flush=True)
    seconds = time.perf_counter() - t0
    lines = [
        "# Mixed normalisations and resolutions on MILES (`python benchmarks/normalisation_mix.py`)",
        "",
        __doc__.split("\n", 2)[2].strip(),
        "",
        "Mean (shipped − version) of the normalised flux in 4000–5000 Å: "
        + ", ".join(f"{k} {v:+.4f}" for k, v in shift.items()),
        "",
        "| emulator | train | fit | n | Teff bias / scatter (K) | log g (dex) | [Fe/H] (dex) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [f"{b:+.3g} / {s:.3g}" for b, s in zip(r["bias"], r["scatter"])]
        lines.append(f"| {r['emulator']} | {r['train']} | {r['fit']} | {r['n']} | " + " | ".join(cells) + " |")
    lines += ["", f"Run time {seconds:.0f} s.", "", machine_markdown(info)]
    if not a.no_write:
        data = {"rows": results, "mean_shift_4000_5000": shift, "seconds": seconds, "machine": info}
        write_results("normalisation_mix", data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
