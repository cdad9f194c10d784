"""Payne (dense MLP) emulator: training time, emulation accuracy, label recovery and fit throughput.

Training spectra are generated at known labels from the Kurucz-trained per-pixel network shipped with
the ``apogee_kurucz_nn`` data set (Ting et al. 2018; El-Badry et al. 2018a,b), continuum-normalised
exactly as the data set (``ContinuumNormalized``: per chip a degree-2 Chebyshev fit to the Cannon
continuum pixels), with labels sampled as its README describes (55 % giants, 45 % dwarfs). Then:

(a) train ``PayneEmulator`` (dense, hidden 300x300, SiLU, float32) on noise-free spectra; target <= 5 min.
(b) median |flux error| on noiseless held-out spectra; target <= 0.002.
(c) ``fit_labels`` on the 150 shipped noisy stars: pull std per label in [0.85, 1.2], |bias| < 0.2 sigma.
(d) ``fit_labels`` throughput at 7,214 px, 4 labels (float32, default init, warm); target >= 500 spectra/s.

Run: python benchmarks/train_payne.py [--quick]
Results: benchmarks/results/train_payne.{json,md} (train_payne_quick.* with --quick)
Needs ../shared/data/apogee_kurucz_nn (next to the repository).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _machine import cpu_times, cpu_usage, machine_info, machine_markdown, own_cpu_seconds, write_results  # noqa: E402

import slamjax as sj  # noqa: E402
from slamjax.emulators import ContinuumNormalized, PayneEmulator  # noqa: E402

DATA = _HERE.parent.parent / "shared" / "data" / "apogee_kurucz_nn"


def shipped_network():
    raw = DATA / "raw"
    nn = PayneEmulator.from_arrays(
        **np.load(raw / "NN_unnormalized_spectra.npz"), wave=np.load(raw / "apogee_wavelength.npz")["wavelength"]
    )
    return ContinuumNormalized.from_mask(nn, np.load(raw / "cannon_cont_pixels_apogee.npz")["pixels_cannon"])


def sample_labels(n, rng):
    """The label distribution of the data set README (giant branch + dwarfs, flat [Fe/H], [α/Fe])."""
    giant = rng.random(n) < 0.55
    teff = np.where(giant, rng.uniform(3800, 5200, n), rng.uniform(4200, 6800, n))
    logg_g = np.clip(0.6 + 2.9 * (teff - 3800) / 1400 + rng.normal(0, 0.2, n), 0.5, 3.8)
    logg_d = np.clip(4.6 - 0.5 * (teff - 4200) / 2600 + rng.normal(0, 0.15, n), 3.6, 5.0)
    logg = np.where(giant, logg_g, logg_d)
    return np.stack([teff, logg, rng.uniform(-0.9, 0.45, n), rng.uniform(-0.15, 0.45, n)], axis=1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return out, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 spectra, hidden 64x64, 5 epochs, 256 fits")
    ap.add_argument("--n-train", type=int, default=2000, help="training spectra (10%% of them validate)")
    ap.add_argument("--n-test", type=int, default=500, help="noiseless held-out spectra for (b)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[300, 300])
    ap.add_argument("--epochs", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-fit", type=int, default=2048, help="spectra for the throughput test (d)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.hidden, args.epochs, args.n_fit = 300, 100, [64, 64], 5, 256
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)

    truth_em = shipped_network()
    rng = np.random.default_rng(args.seed)
    labels = sample_labels(args.n_train + args.n_test, rng)
    clean, gen_s = timed(lambda: truth_em.predict(labels))
    n_pix = clean.shape[1]
    # Noise-free training set: ivar large but finite (SpectrumSet requires finite ivar).
    train = sj.SpectrumSet(
        np.asarray(truth_em.wave),
        clean[: args.n_train],
        np.full((args.n_train, n_pix), 1e8),
        labels=labels[: args.n_train],
        label_names=truth_em.label_names,
    )
    before, own0 = cpu_times(), own_cpu_seconds()
    results = {
        "targets": {"a_train_s": 300.0, "b_median_abs_err": 0.002, "c_pull_std": [0.85, 1.2], "c_abs_bias_sigma": 0.2},
        "targets_d_spectra_per_s": 500.0,
        "setup": vars(args) | {"n_pixels": n_pix, "generate_s": gen_s},
    }

    # (a) training
    hidden = tuple(args.hidden)
    kw = dict(hidden=hidden, key=args.seed, max_epochs=args.epochs, batch_size=args.batch_size)
    em, train_s = timed(lambda: PayneEmulator.train(train, learning_rate=args.lr, patience=args.epochs, **kw))
    results["a"] = {"train_s": train_s, "hidden": list(hidden), "epochs": args.epochs}
    print(f"(a) trained {args.n_train} x {n_pix} px, hidden {hidden}, {args.epochs} epochs: {train_s:.1f} s")

    # (b) held-out accuracy
    err = np.abs(em.predict(labels[args.n_train :]) - clean[args.n_train :])
    results["b"] = {
        "median_abs_err": float(np.median(err)),
        "p95_abs_err": float(np.percentile(err, 95)),
        "max_abs_err": float(err.max()),
        "median_pixel_sigma_model": float(np.median(np.sqrt(np.asarray(em.pixel_variance)))),
    }
    b = results["b"]
    print(f"(b) held-out noiseless: median |err| {b['median_abs_err']:.2e}, p95 {b['p95_abs_err']:.2e}")

    # (c) the 150 shipped noisy stars
    d = np.load(DATA / "apogee_kurucz_nn.npz")
    res, fit_s = timed(lambda: sj.fit_labels(em, d["flux"], d["ivar"]))
    sigma = res.labels_err
    pull = (res.labels - d["labels"]) / sigma
    ok = res.status == 0
    snr_bins = ((30, 60), (60, 120), (120, 300))
    in_bin = [(d["snr"] >= a) & (d["snr"] < b) for a, b in snr_bins]
    formal = sj.fit_labels(em, d["flux"], d["ivar"], systematics=False)
    pull_formal = (formal.labels - d["labels"]) / formal.labels_err
    sys_rms = np.sqrt(np.diag(em.space.systematics.global_cov())) if em.space.systematics is not None else None
    results["c"] = {
        "n": int(len(pull)),
        "pull_std_formal_only": pull_formal.std(axis=0).tolist(),
        "systematics_rms": None if sys_rms is None else sys_rms.tolist(),
        "converged": int(ok.sum()),
        "status_counts": np.bincount(res.status).tolist(),
        "pull_std": pull.std(axis=0).tolist(),
        "bias_over_sigma": pull.mean(axis=0).tolist(),
        "pull_std_by_snr": {f"{a}-{b}": pull[m].std(axis=0).tolist() for (a, b), m in zip(snr_bins, in_bin)},
        "median_sigma": np.median(sigma, axis=0).tolist(),
        "fit_s_incl_compile": fit_s,
    }
    print(
        f"(c) 150 stars: converged {ok.sum()}, pull std {np.round(results['c']['pull_std'], 3)}, "
        f"bias/σ {np.round(results['c']['bias_over_sigma'], 3)}"
    )

    # (d) throughput: noisy spectra from the truth network at the data set's S/N distribution, float32
    lab_d = sample_labels(args.n_fit, np.random.default_rng(args.seed + 1))
    snr = np.exp(np.random.default_rng(args.seed + 2).uniform(np.log(30), np.log(300), args.n_fit))[:, None]
    bad = d["ivar"][0] == 0
    flux_d = truth_em.predict(lab_d) + np.random.default_rng(args.seed + 3).normal(size=(args.n_fit, n_pix)) / snr
    ivar_d = np.where(bad[None, :], 0.0, snr**2 * np.ones((1, n_pix)))
    flux_d, ivar_d = flux_d.astype(np.float32), ivar_d.astype(np.float32)
    results["d"] = {}
    for n_starts in (1, 3):
        kw_fit = dict(n_starts=n_starts, return_model=False)
        _, compile_s = timed(lambda: sj.fit_labels(em, flux_d[:256], ivar_d[:256], **kw_fit))
        times = []
        for _ in range(3):
            res_d, dt = timed(lambda: sj.fit_labels(em, flux_d, ivar_d, **kw_fit))
            times.append(dt)
        pull_d = (res_d.labels - lab_d) / res_d.labels_err
        results["d"][n_starts] = {
            "n_fit": args.n_fit,
            "dtype": "float32",
            "n_starts": n_starts,
            "first_call_s": compile_s,
            "best_s": min(times),
            "median_s": float(np.median(times)),
            "spectra_per_s": args.n_fit / min(times),
            "converged": int((res_d.status == 0).sum()),
            "mean_steps": float(res_d.n_steps.mean()),
            "pull_std": pull_d.std(axis=0).tolist(),
            "median_chi2": float(np.median(res_d.chi2)),
        }
        dn = results["d"][n_starts]
        print(
            f"(d) fit_labels float32, n_starts={n_starts}: {dn['spectra_per_s']:.0f} spectra/s "
            f"(first call {compile_s:.1f} s), median chi2 {dn['median_chi2']:.1f}"
        )

    results["cpu_usage"] = cpu_usage(before, cpu_times(), own_cpu_seconds() - own0)
    info = machine_info()
    results["machine"] = info
    names = truth_em.label_names
    c, dd = results["c"], results["d"]
    md = [
        "# Payne emulator (dense MLP): training, accuracy, label recovery, throughput",
        "",
        f"Training set: {args.n_train} noise-free spectra x {n_pix} px from the shipped Kurucz network "
        f"(`apogee_kurucz_nn/raw/NN_unnormalized_spectra.npz`), continuum-normalised like the data set; "
        f"labels sampled as in its README (seed {args.seed}); 10 % validation.",
        "",
        "| quantity | value | target |",
        "|---|---|---|",
        f"| (a) training time, hidden {hidden}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g} "
        f"| **{train_s:.1f} s** | <= 300 s |",
        f"| (b) median abs flux error, {args.n_test} noiseless held-out spectra | **{b['median_abs_err']:.2e}** "
        f"(p95 {b['p95_abs_err']:.2e}, max {b['max_abs_err']:.2e}) | <= 0.002 |",
        f"| (c) 150 shipped stars: converged | {c['converged']}/150 | |",
        f"| (c) pull std ({', '.join(names)}) | **{np.round(c['pull_std'], 3).tolist()}** | [0.85, 1.2] |",
        f"| (c) bias / σ | **{np.round(c['bias_over_sigma'], 3).tolist()}** | \\|·\\| < 0.2 |",
        f"| (c) pull std, formal errors only (`systematics=False`) "
        f"| {np.round(c['pull_std_formal_only'], 3).tolist()} | |",
        f"| (c) systematic label errors from the validation split (rms) | "
        f"{None if c['systematics_rms'] is None else np.round(c['systematics_rms'], 4).tolist()} | |",
        *[
            f"| (c) pull std, S/N {k} ({int(m.sum())} stars) | {np.round(v, 3).tolist()} | |"
            for (k, v), m in zip(c["pull_std_by_snr"].items(), in_bin)
        ],
        *[
            f"| (d) fit_labels, {args.n_fit} spectra, float32, n_starts={k}, return_model=False, best of 3 "
            f"| **{v['spectra_per_s']:.0f} spectra/s** (first call {v['first_call_s']:.1f} s, mean LM steps "
            f"{v['mean_steps']:.1f}, converged {v['converged']}/{args.n_fit}, median χ² {v['median_chi2']:.1f}) "
            "| >= 500 |"
            for k, v in dd.items()
        ],
        "",
        f"Median model σ per pixel (from validation residuals): {b['median_pixel_sigma_model']:.2e}.",
        f"CPU usage during the run: {results['cpu_usage']}",
        "",
        "## Machine",
        "",
        machine_markdown(info),
    ]
    name = "train_payne_quick" if args.quick else "train_payne"
    paths = write_results(name, results, "\n".join(md))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
