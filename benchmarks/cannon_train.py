"""Training time of the Cannon emulator (quadratic model, per-pixel intrinsic scatter).

Sizes: (a) the bundled MILES sample, 434 stars x 4300 px, 3 labels; (b) APOGEE-like spectra from the
published Kurucz network (``benchmarks/_apogee_nn.py``, needs ``../shared/data``), 1,000 and 5,000 stars x
7,214 px, 4 labels, S/N 20-200. Per size: the first call (compilation included) and the best warm call,
the median fitted intrinsic scatter s, and the training log-likelihood ln L = -1/2 Σ [r²/(σ²+s²) + ln(σ²+s²)]
summed over good pixels (an independent check that a faster solver reaches the same optimum: compare runs).

    python benchmarks/cannon_train.py                 # all sizes
    python benchmarks/cannon_train.py --quick         # MILES + 1,000 stars only
    PYTHONPATH=/path/to/other/checkout python benchmarks/cannon_train.py --name cannon_train_ref
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _machine import machine_info, machine_markdown, write_results

import slamjax as sj

jax.config.update("jax_enable_x64", True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return out, time.perf_counter() - t0


def log_likelihood(em, ds) -> float:
    model = em.predict(ds.labels)
    good = (ds.ivar > 0) & np.isfinite(np.asarray(em.pixel_variance))[None, :]
    var = 1.0 / np.where(good, ds.ivar, 1.0) + np.where(good, np.asarray(em.pixel_variance)[None, :], 0.0)
    r2 = (ds.flux - model) ** 2
    return float(-0.5 * np.sum(np.where(good, r2 / var + np.log(var), 0.0)))


def run(name, ds, repeats):
    em, first = timed(lambda: sj.CannonEmulator.train(ds))
    warm = min(timed(lambda: sj.CannonEmulator.train(ds))[1] for _ in range(repeats))
    s = np.sqrt(np.asarray(em.pixel_variance))
    row = {
        "data": name,
        "stars": ds.n_spectra,
        "pixels": ds.n_pixels,
        "labels": len(em.label_names),
        "first_call_s": first,
        "warm_s": warm,
        "median_s": float(np.median(s[np.isfinite(s)])),
        "ln_l": log_likelihood(em, ds),
    }
    print(f"{name}: {ds.n_spectra} x {ds.n_pixels}: first {first:.2f} s, warm {warm:.2f} s, ln L {row['ln_l']:.6e}")
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default=None, help="results file name (default cannon_train[_quick])")
    args = ap.parse_args(argv)
    rows = [run("MILES sample", sj.data.load_sample(), repeats=2)]
    from _apogee_nn import available, generate

    if available():
        for n in (1000,) if args.quick else (1000, 5000):
            wave, flux, ivar, _, labels, names = generate(n, seed=1)
            ds = sj.SpectrumSet(wave, flux.astype(np.float64), ivar.astype(np.float64), labels, names)
            rows.append(run("APOGEE-like (Kurucz NN)", ds, repeats=1 if n > 1000 else 2))
    else:
        print("APOGEE-like sizes skipped: ../shared/data/apogee_kurucz_nn/raw not found")
    info = machine_info()
    md = [
        "# Cannon emulator: training time",
        "",
        "Quadratic model, intrinsic scatter fitted (6 alternations of θ and s²). ln L: training "
        "log-likelihood at the fitted model (the same optimum gives the same value).",
        "",
        "| data | stars | pixels | labels | first call s | warm s | median s | ln L |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['data']} | {r['stars']} | {r['pixels']} | {r['labels']} | {r['first_call_s']:.2f} | "
            f"{r['warm_s']:.2f} | {r['median_s']:.3g} | {r['ln_l']:.8e} |"
        )
    md += ["", "## Machine", "", machine_markdown(info)]
    name = args.name or ("cannon_train_quick" if args.quick else "cannon_train")
    paths = write_results(name, {"rows": rows, "machine": info}, "\n".join(md))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
