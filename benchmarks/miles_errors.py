"""MILES FGK: label scatter, bias and calibrated errors versus S/N for every emulator; error-model coefficients.

The bundled sample (434 MILES FGK stars, 4300 px; Sánchez-Blázquez et al. 2006, Falcón-Barroso et al.
2011, labels from Cenarro et al. 2007) is put through ``sj.validate.snr_ladder``: 5-fold, each fold model
fits its held-out stars degraded to S/N 5, 10, 20, 40, 80 and 160 (MILES carries a nominal S/N 100 ivar;
stars keep their own noise on the rungs above it). Per emulator and rung: bias, scatter, MAE and the
pull std (fit − literature)/σ, where σ includes systematic label errors estimated *without the held-out
stars*: Cannon and kernel by an inner 5-fold CV on each fold's training stars
(``systematics_k=5``, ``sj.validate.cv_systematics``), the Payne from its own validation split
(``PayneEmulator.train``). The error model σ(S/N) = a·exp(−b·S/N) + c (SLAM Table 1 form) is fitted
to the scatter of the rungs.

The literature labels have errors of their own (heterogeneous compilation), which the pulls include.

Run: python benchmarks/miles_errors.py [--quick] [--emulators cannon,kernel,payne]
Results: benchmarks/results/miles_errors.{json,md} (miles_errors_quick.* with --quick)
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

import numpy as np  # noqa: E402
from _machine import cpu_times, cpu_usage, machine_info, machine_markdown, own_cpu_seconds, write_results  # noqa: E402

import slamjax as sj  # noqa: E402

SNRS = (5, 10, 20, 40, 80, 160)
UNITS = {"teff": "K", "logg": "dex", "fe_h": "dex"}


def run_one(ds, emulator, snrs, k, quick):
    train_kwargs = {}
    systematics_k = 5 if not quick else 3
    if emulator == "payne":
        systematics_k = None  # its own validation-split estimate (PayneEmulator.train default)
        if quick:
            train_kwargs = {"max_epochs": 20, "hidden": (32, 32)}
    t0 = time.perf_counter()
    ladder = sj.validate.snr_ladder(
        ds, emulator, snrs=snrs, k=k, systematics_k=systematics_k, train_kwargs=train_kwargs
    )
    seconds = time.perf_counter() - t0
    names = ladder.label_names
    rungs = []
    for st in ladder.stats():
        rungs.append(
            {
                "snr": st["snr"],
                "n_converged": st["n_converged"],
                **{n: {key: st[n].get(key) for key in ("bias", "scatter", "mae", "pull_std")} for n in names},
            }
        )
    em = ladder.error_model()
    return {
        "systematics": "inner 5-fold CV" if systematics_k else "Payne validation split",
        "seconds": seconds,
        "rungs": rungs,
        "error_model": {n: list(map(float, em.coef[n])) for n in names},
        "status_counts": np.bincount(ladder.status.ravel(), minlength=5).tolist(),
    }


def markdown(res, info) -> str:
    names = res["label_names"]
    md = [
        "# MILES FGK: scatter, bias and calibrated errors versus S/N",
        "",
        f"{res['stars']} stars × {res['pixels']} px, {res['k']}-fold S/N ladder (fit_labels' default dtype: "
        "float32 for the Cannon and the Payne, whose float32 model flux is exact to < 1e-6; float64 for the "
        "kernel, whose is not). Pull std = std of "
        "(fit − literature)/σ with σ = formal ⊕ systematics estimated without the held-out stars.",
        "",
    ]
    for emu, r in res["emulators"].items():
        md += [
            f"## {emu} (systematics: {r['systematics']}; {r['seconds']:.0f} s)",
            "",
            "| S/N | " + " | ".join(f"{n} bias / scatter / MAE / pull std" for n in names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for rung in r["rungs"]:
            cells = [
                f"{rung[n]['bias']:+.3g} / {rung[n]['scatter']:.3g} / {rung[n]['mae']:.3g} / {rung[n]['pull_std']:.2f}"
                for n in names
            ]
            md.append(f"| {rung['snr']:g} | " + " | ".join(cells) + " |")
        md += ["", "Error model σ(S/N) = a·exp(−b·S/N) + c:", ""]
        for n in names:
            a, b, c = r["error_model"][n]
            md.append(f"- {n}: a = {a:.4g}, b = {b:.4g}, c = {c:.4g} {UNITS.get(n, '')}")
        md += ["", f"Status counts over all rungs: {r['status_counts']}", ""]
    md += ["## Machine", "", machine_markdown(info)]
    return "\n".join(md)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="150 stars, 3 folds, 3 rungs (smoke test)")
    ap.add_argument("--emulators", default="cannon,kernel,payne")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    info = machine_info()
    ds = sj.data.load_sample()
    snrs, k = SNRS, 5
    if args.quick:
        ds = ds[np.random.default_rng(0).permutation(ds.n_spectra)[:150]]
        snrs, k = (10, 40, 160), 3
    res = {
        "stars": ds.n_spectra,
        "pixels": ds.n_pixels,
        "k": k,
        "snrs": list(snrs),
        "label_names": list(ds.label_names),
        "emulators": {},
    }
    c0, own0 = cpu_times(), own_cpu_seconds()
    for emu in [e.strip() for e in args.emulators.split(",") if e.strip()]:
        r = run_one(ds, emu, snrs, k, args.quick)
        res["emulators"][emu] = r
        top = r["rungs"][-1]
        print(
            f"{emu}: {r['seconds']:.0f} s; S/N {top['snr']:g}: "
            + ", ".join(f"{n} scatter {top[n]['scatter']:.3g} pull {top[n]['pull_std']:.2f}" for n in ds.label_names),
            flush=True,
        )
    res["cpu_usage"] = cpu_usage(c0, cpu_times(), None if own0 is None else own_cpu_seconds() - own0)
    res["machine"] = info
    if not args.no_write:
        name = "miles_errors_quick" if args.quick else "miles_errors"
        print("wrote", *write_results(name, res, markdown(res, info)))


if __name__ == "__main__":
    main()
