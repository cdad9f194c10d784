"""Kernel (SLAM) emulator: training time with exact LOO model selection, and fit throughput.

(a) MILES size: the bundled sample (434 stars x 4300 px), 5 gamma x 6 lambda, exact LOO. Target <= 10 s.
(c) fit_labels throughput with a 2000-star, 2000-pixel kernel emulator, 3 labels. Target >= 150 spectra/s.
(b) 17,000 stars x 2,000 px (SLAM's APOGEE->LAMOST job size), 5 gamma x 6 lambda, 2,000 inducing stars,
    8-fold CV (as SLAM) and exact LOO of that model. Target <= 15 min and peak memory <= 16 GB. Run on its own
    (`--part b`) so that the process's peak resident memory (ru_maxrss) is that of this job alone.

Run: python benchmarks/train_kernel.py [--quick]        # parts a and c
     python benchmarks/train_kernel.py --part b [--quick]
Results: benchmarks/results/train_kernel.{json,md}, train_kernel_b.{json,md}
"""

from __future__ import annotations

import argparse
import resource
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

GAMMAS = (0.01, 0.03, 0.1, 0.3, 1.0)
LAMBDAS = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0)


def smooth_problem(m, p, seed=0, snr=100.0):
    """Smooth non-quadratic flux(labels): sigmoids of linear label combinations plus a bump."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([4000.0, 1.0, -2.0]), np.array([7000.0, 5.0, 0.5])
    a, b, c = np.sin(np.arange(p)), np.cos(1.3 * np.arange(p)), np.sin(0.7 * np.arange(p) + 1)

    def clean(lab):
        t = ((lab[:, 0] - 5500) / 800)[:, None]
        g = ((lab[:, 1] - 3) / 1.2)[:, None]
        f = ((lab[:, 2] + 0.75) / 0.7)[:, None]
        depth = 0.3 / (1 + np.exp(-(a * t + b * g + c * f))) + 0.05 * np.exp(-((t - a) ** 2))
        return 1 - depth

    labels = rng.uniform(lo, hi, size=(m, 3))
    flux = clean(labels) + rng.normal(size=(m, p)) / snr
    ds = sj.SpectrumSet(
        np.linspace(5000, 6000, p), flux, np.full((m, p), snr**2), labels=labels, label_names=("teff", "logg", "fe_h")
    )
    return ds, clean


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return out, time.perf_counter() - t0


def part_b(quick):
    m, p, r = (3000, 300, 500) if quick else (17_000, 2_000, 2_000)
    ds, clean = smooth_problem(m, p, seed=3)
    rows = []
    for cv in (8, "loo"):
        em, dt = timed(
            lambda: sj.KernelEmulator.train(ds, gamma_grid=GAMMAS, lam_grid=LAMBDAS, cv=cv, n_inducing=r, seed=0)
        )
        test = np.random.default_rng(9).uniform([4600, 1.6, -1.6], [6400, 4.4, 0.1], size=(500, 3))
        err = em.predict(test) - clean(test)
        rows.append(
            {
                "cv": cv,
                "train_s": dt,
                "median_cv_mse": float(np.median(np.asarray(em.cv_mse))),
                "median_abs_flux_error_test": float(np.median(np.abs(err))),
                "peak_rss_gb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            }
        )
        print(f"(b) {m} x {p}, r={r}, cv={cv}: {dt:.1f} s, peak RSS so far {rows[-1]['peak_rss_gb_so_far']:.2f} GB")
    info = machine_info()
    results = {"stars": m, "pixels": p, "n_inducing": r, "grid": [len(GAMMAS), len(LAMBDAS)], "rows": rows}
    results |= {"targets": {"train_s": 900.0, "peak_gb": 16.0}, "machine": info}
    md = [
        "# Kernel emulator (b): SLAM-size training",
        "",
        f"Synthetic smooth non-quadratic problem (S/N 100), {m} stars x {p} px, 3 labels, 5 γ x 6 λ, "
        f"{r} inducing stars; the whole `KernelEmulator.train` call (first call, compilation included). "
        "Peak memory: ru_maxrss of this process. Targets: <= 900 s, <= 16 GB.",
        "",
        "| CV | train s | peak RSS GB | median CV MSE (std. flux) | median abs flux error, 500 test stars |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        md.append(
            f"| {row['cv']} | {row['train_s']:.1f} | {row['peak_rss_gb_so_far']:.2f} | {row['median_cv_mse']:.4f} | "
            f"{row['median_abs_flux_error_test']:.5f} |"
        )
    md += ["", "## Machine", "", machine_markdown(info)]
    paths = write_results("train_kernel_b_quick" if quick else "train_kernel_b", results, "\n".join(md))
    print("wrote", *paths)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller (c): 800 stars x 800 px, 512 spectra")
    ap.add_argument("--n-fit", type=int, default=2048)
    ap.add_argument("--part", choices=["ac", "b"], default="ac")
    args = ap.parse_args(argv)
    if args.part == "b":
        return part_b(args.quick)
    m_c, p_c, n_fit = (800, 800, 512) if args.quick else (2000, 2000, args.n_fit)

    results = {"targets": {"a_train_s": 10.0, "c_fit_spectra_per_s": 150.0}}
    # (a) MILES-size training
    ds = sj.data.load_sample()
    em, first = timed(lambda: sj.KernelEmulator.train(ds, gamma_grid=GAMMAS, lam_grid=LAMBDAS))
    em, warm = timed(lambda: sj.KernelEmulator.train(ds, gamma_grid=GAMMAS, lam_grid=LAMBDAS))
    results["a"] = {
        "stars": ds.n_spectra,
        "pixels": ds.n_pixels,
        "grid": [len(GAMMAS), len(LAMBDAS)],
        "first_call_s": first,
        "warm_s": warm,
        "median_cv_mse": float(np.median(np.asarray(em.cv_mse))),
    }
    print(f"(a) MILES {ds.n_spectra} x {ds.n_pixels}, 5x6 grid, exact LOO: first {first:.2f} s, warm {warm:.2f} s")

    # (c) fit throughput
    train, clean = smooth_problem(m_c, p_c, seed=0)
    em_c, t_train_c = timed(lambda: sj.KernelEmulator.train(train, gamma_grid=GAMMAS, lam_grid=LAMBDAS))
    rng = np.random.default_rng(1)
    truth = rng.uniform([4600, 1.6, -1.6], [6400, 4.4, 0.1], size=(n_fit, 3))
    flux = clean(truth) + rng.normal(size=(n_fit, p_c)) / 50.0
    ivar = np.full_like(flux, 2500.0)
    rows = []
    for dtype in (np.float32, np.float64):
        for n_starts in (1, 3):
            f, iv = flux.astype(dtype), ivar.astype(dtype)
            kw = dict(n_starts=n_starts, chunk_size=256)
            _, compile_s = timed(lambda: sj.fit_labels(em_c, f[:256], iv[:256], **kw))
            times = []
            for _ in range(3):
                res, dt = timed(lambda: sj.fit_labels(em_c, f, iv, **kw))
                times.append(dt)
            pull = (res.labels - truth) / res.labels_err
            row = {
                "dtype": np.dtype(dtype).name,
                "n_starts": n_starts,
                "first_call_s": compile_s,
                "best_s": min(times),
                "spectra_per_s": n_fit / min(times),
                "mean_steps": float(res.n_steps.mean()),
                "converged": int((res.status == 0).sum()),
                "pull_std": np.std(pull, axis=0).round(3).tolist(),
            }
            rows.append(row)
            print(
                f"(c) {row['dtype']} starts={n_starts}: {row['spectra_per_s']:.0f} spectra/s "
                f"(first call {compile_s:.1f} s), steps {row['mean_steps']:.2f}, converged {row['converged']}/{n_fit}"
            )
    results["c"] = {"stars": m_c, "pixels": p_c, "train_s": t_train_c, "n_fit": n_fit, "rows": rows}
    results["b"] = "run separately: python benchmarks/train_kernel.py --part b (results in train_kernel_b.md)"
    info = machine_info()
    results["machine"] = info

    md = [
        "# Kernel emulator: training and fitting",
        "",
        f"(a) MILES bundled sample, {ds.n_spectra} stars x {ds.n_pixels} px, 5 γ x 6 λ, exact LOO: "
        f"**{warm:.2f} s** warm ({first:.2f} s first call incl. compilation); target <= 10 s. "
        f"Median per-pixel CV MSE {results['a']['median_cv_mse']:.3f} (standardised flux).",
        "",
        f"(c) `fit_labels` with a {m_c}-star, {p_c}-pixel kernel emulator (trained in {t_train_c:.1f} s), "
        f"{n_fit} spectra at S/N 50, chunk 256, best of 3; target >= 150 spectra/s:",
        "",
        "| dtype | starts | spectra/s | first call s | mean LM steps | converged | pull std (teff, logg, fe_h) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['dtype']} | {r['n_starts']} | {r['spectra_per_s']:.0f} | {r['first_call_s']:.1f} | "
            f"{r['mean_steps']:.2f} | {r['converged']}/{n_fit} | {r['pull_std']} |"
        )
    md += ["", f"(b) {results['b']}.", "", "## Machine", "", machine_markdown(info)]
    name = "train_kernel_quick" if args.quick else "train_kernel"
    paths = write_results(name, results, "\n".join(md))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
