"""Throughput of the preprocessing chain: read + RV shift + resample + continuum normalisation.

Acceptance target: >= 1,000 spectra/s for the numerical part (shift + resample + spline
normalisation) of N = 10,000 LAMOST-LRS-like spectra (3,909 pixels, log-λ grid from 3690 Å,
Δlog10 λ = 1e-4) on 2 CPU cores.

The spectra are synthesised in memory (fixed seed): a smooth random continuum × 300
Gaussian absorption lines, observed at random radial velocities in ±300 km/s, with Gaussian
noise at S/N 10-100, float32. "read" writes them to an uncompressed npz in a temporary
folder and times ``sj.load_npz`` (reported, not part of the numerical total). Each stage is
warmed up first (JAX compilation), timed ``--repeats`` times (best and median), and the
output is sanity-checked (continuum accuracy against the true continuum).

    python benchmarks/preprocess.py            # N = 10,000
    python benchmarks/preprocess.py --quick    # N = 1,000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _machine import cpu_times, cpu_usage, machine_info, machine_markdown, write_results  # noqa: E402

import slamjax as sj  # noqa: E402
from slamjax import preprocess as pp  # noqa: E402

TARGET = 1000.0  # spectra/s, numerical part, 2 CPU cores
N_PIX = 3909


def synthesise(n, seed=0):
    """LAMOST-like observed spectra: (wave [P], flux [N, P], ivar [N, P], rv [N], true continuum [N, P])."""
    rng = np.random.default_rng(seed)
    wave = 3690.0 * 10 ** (1e-4 * np.arange(N_PIX))
    rv = rng.uniform(-300.0, 300.0, n)
    centers = rng.uniform(3700.0, 9100.0, 300)
    depth = rng.uniform(0.05, 0.8, 300)
    width = rng.uniform(1.0, 3.0, 300)
    x = (wave - 6000.0) / 3000.0
    flux = np.empty((n, N_PIX), np.float32)
    ivar = np.empty((n, N_PIX), np.float32)
    cont_all = np.empty((n, N_PIX), np.float32)
    for i0 in range(0, n, 500):
        rest = pp.to_rest_frame(wave, rv[i0 : i0 + 500])
        m = rest.shape[0]
        tau = np.zeros_like(rest)
        for c, d, w in zip(centers, depth, width, strict=True):
            near = np.abs(rest - c) < 6 * w
            tau += np.where(near, d * np.exp(-0.5 * ((rest - c) / w) ** 2), 0.0)
        cont = (1 + rng.normal(0, 0.3, (m, 1)) * x[None, :] + rng.normal(0, 0.1, (m, 1)) * x[None, :] ** 2) * 100.0
        sig = cont / rng.uniform(10.0, 100.0, (m, 1))
        flux[i0 : i0 + m] = cont * np.exp(-tau) + rng.normal(size=cont.shape) * sig
        ivar[i0 : i0 + m] = 1.0 / sig**2
        cont_all[i0 : i0 + m] = cont
    return wave, flux, ivar, rv, cont_all


def timed(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="N = 1,000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    n = 1000 if args.quick else args.n
    info = machine_info()
    wave, flux, ivar, rv, cont_true = synthesise(n)
    grid = pp.log_lambda_grid(3700.0, 9050.0, 1e-4)  # common rest-frame grid inside every shifted range

    # warm-up (JAX compilation of resample for these shapes)
    rest0 = pp.to_rest_frame(wave, rv)
    t0 = time.perf_counter()
    pp.resample(rest0, flux, ivar, grid)
    first_resample = time.perf_counter() - t0

    before = cpu_times()
    stages = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spectra.npz"
        np.savez(path, wave=wave, flux=flux, ivar=ivar)
        _, stages["read (load_npz)"] = timed(lambda: sj.load_npz(path), args.repeats)
    rest, stages["rv shift"] = timed(lambda: pp.to_rest_frame(wave, rv), args.repeats)
    (f_rs, iv_rs), stages["resample"] = timed(lambda: pp.resample(rest, flux, ivar, grid), args.repeats)
    (f_n, iv_n, cont), stages["normalise (spline)"] = timed(
        lambda: pp.normalize_spline(grid, f_rs, iv_rs), args.repeats
    )

    def chain():
        r = pp.to_rest_frame(wave, rv)
        fr, ir = pp.resample(r, flux, ivar, grid)
        return pp.normalize_spline(grid, fr, ir)

    _, stages["total numerical (shift+resample+normalise)"] = timed(chain, args.repeats)
    usage = cpu_usage(before, cpu_times())

    # sanity: recovered continuum vs the true one resampled onto the grid
    true_rs, _ = pp.resample(rest, cont_true, np.ones_like(cont_true), grid)
    inner = (grid > 3800) & (grid < 8900)
    cont_err = float(np.median(np.abs(cont[:, inner] / true_rs[:, inner] - 1)))
    bad_frac = float(np.mean(iv_n[:, inner] == 0))

    rows = []
    for name, ts in stages.items():
        best, med = min(ts), statistics.median(ts)
        rows.append({"stage": name, "best_s": best, "median_s": med, "spectra_per_s": n / best})
    total = rows[-1]["spectra_per_s"]
    data = {
        "n_spectra": n,
        "n_pixels_in": N_PIX,
        "n_pixels_out": int(grid.size),
        "dtype": "float32",
        "repeats": args.repeats,
        "first_resample_call_s": first_resample,
        "stages": rows,
        "target_spectra_per_s": TARGET,
        "meets_target": total >= TARGET,
        "median_continuum_rel_error": cont_err,
        "masked_fraction_inner": bad_frac,
        "cpu_usage": usage,
        "machine": info,
    }
    lines = [
        "# Preprocessing throughput",
        "",
        f"N = {n} LAMOST-like spectra, {N_PIX} → {grid.size} pixels (log-λ, Δlog10 λ = 1e-4), float32, "
        f"best of {args.repeats}; target ≥ {TARGET:.0f} spectra/s for the numerical part.",
        "",
        "| stage | best [s] | median [s] | spectra/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['stage']} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['spectra_per_s']:,.0f} |" for r in rows]
    lines += [
        "",
        f"- First resample call (compile + run): {first_resample:.2f} s",
        f"- Median |continuum / true − 1| (3800–8900 Å): {cont_err:.4f}; masked pixel fraction {bad_frac:.4f}",
        f"- Meets target: {total >= TARGET} ({total:,.0f} spectra/s)",
        f"- CPU usage during the run: {usage}",
        "",
        "## Machine",
        machine_markdown(info),
    ]
    md = "\n".join(lines)
    print(md)  # noqa: T201 (a script's report)
    if not args.no_write:
        name = "preprocess_quick" if args.quick else "preprocess"
        write_results(name, data, md)


if __name__ == "__main__":
    main()
