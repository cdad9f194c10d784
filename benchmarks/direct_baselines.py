"""Direct (spectrum -> labels) baselines: accuracy and training time on MILES and APOGEE-like spectra.

(a) MILES FGK: the bundled sample (434 stars x 4300 px, teff/logg/fe_h), 5-fold cross-validation:
    every star is predicted by a model that never saw it.
(b) APOGEE-like: spectra from the Kurucz-trained network in ../shared/data/apogee_kurucz_nn/raw
    (benchmarks/_apogee_nn.py), 5,000 training and 1,000 test stars, S/N log-uniform in [20, 200],
    labels teff/logg/fe_h/alpha_fe.

Baselines (slamjax.direct): LassoMLP, ResidualMLP, SpectrumCNN (1-D) and SpectrumCNN(fold2d=True).
Beside them, the generative emulators on the same spectra: Cannon, Kernel and Payne (dense), trained on
the same training stars and fitted with ``fit_labels`` (float32, default starts; the kernel in float64, its
float32 model being inexact: see README "Precision" — until 2026-11-30 its rows were float32 fits); their
rows add the pull std (fit - true) / formal error.
Reported per label: MAE, bias (mean of pred - true), sigma (std of pred - true); training and
prediction time. Target: <= 10 minutes of training per baseline for (b) on 2 CPU cores.

Run: python benchmarks/direct_baselines.py [--quick] [--part a|b|ab] [--only LassoMLP,ResidualMLP]
Results: benchmarks/results/direct_baselines.{json,md} (direct_baselines_quick.* with --quick)
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
import slamjax.direct as sd  # noqa: E402
from slamjax.validate import kfold_indices  # noqa: E402

TARGET_TRAIN_S = 600.0
SNR_BINS = (20.0, 50.0, 100.0, 200.0)


def _fit_dtype(emu):
    """float32 fits, except the kernel emulator, whose float32 model is inexact (README "Precision")."""
    return np.float64 if emu == "kernel" else np.float32


def baselines(part: str, quick: bool) -> dict:
    """name -> (class, train keyword arguments) for one part; quick = a few epochs only."""
    if part == "a":  # 347 training stars per fold
        cfg = {
            "LassoMLP": (sd.LassoMLP, dict(ensemble=5, width=64, depth=2, max_epochs=400, patience=40)),
            "ResidualMLP": (sd.ResidualMLP, dict(width=256, n_blocks=2, max_epochs=300, patience=40, batch_size=32)),
            "SpectrumCNN": (sd.SpectrumCNN, dict(max_epochs=300, patience=40, batch_size=32)),
            "SpectrumCNN-2D": (sd.SpectrumCNN, dict(fold2d=True, max_epochs=300, patience=40, batch_size=32)),
        }
    else:  # 5000 training stars
        cfg = {
            "LassoMLP": (sd.LassoMLP, dict(ensemble=3, width=128, depth=2, max_epochs=200, patience=20)),
            "ResidualMLP": (sd.ResidualMLP, dict(width=256, n_blocks=2, max_epochs=150, patience=20)),
            "SpectrumCNN": (sd.SpectrumCNN, dict(channels=(4, 8, 16), max_epochs=40, patience=8)),
            "SpectrumCNN-2D": (sd.SpectrumCNN, dict(fold2d=True, channels=(4, 8, 16), max_epochs=40, patience=8)),
        }
    if quick:
        for _, kw in cfg.values():
            kw.update(max_epochs=min(kw["max_epochs"], 8), patience=4)
            if "ensemble" in kw:
                kw["ensemble"] = 2
    return cfg


def generative(part: str, quick: bool) -> dict:
    """name -> (validate emulator name, train keyword arguments) of the generative rows."""
    payne = dict(max_epochs=300 if part == "a" else 100, patience=40 if part == "a" else 20)
    if quick:
        payne.update(max_epochs=5, patience=3, hidden=(32, 32))
    return {"Cannon": ("cannon", {}), "Kernel": ("kernel", {}), "Payne": ("payne", payne)}


def _pulls(fit, true, names):
    pull = (fit.labels - true) / fit.labels_err
    ok = fit.status <= 2
    return {n: float(np.std(pull[ok, j])) for j, n in enumerate(names)}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()  # train/predict return host (numpy) results: finished when they return
    return out, time.perf_counter() - t0


def summarise(pred, true, names, snr=None):
    stats = sj.diagnostics.label_stats(pred, true, snr=snr, bins=None if snr is None else SNR_BINS, label_names=names)
    out = {n: {"mae": stats[n]["mae"], "bias": stats[n]["bias"], "sigma": stats[n]["scatter"]} for n in names}
    if snr is not None:
        out["by_snr"] = [
            {"lo": b["lo"], "hi": b["hi"], **{n: {"mae": b[n]["mae"], "n": b[n]["n"]} for n in names}}
            for b in stats["bins"]
        ]
    return out


def _vmp(pred, true, names):
    """Very-metal-poor ([Fe/H] < -2) classification report of out-of-fold predictions (None without fe_h)."""
    if "fe_h" not in names:
        return None
    j = list(names).index("fe_h")
    return sd.vmp_report(true[:, j], pred[:, j])


def part_a(only, quick, seed):
    ds = sj.data.load_sample()
    k = 5
    if quick:
        ds = ds[np.random.default_rng(0).permutation(ds.n_spectra)[:150]]
        k = 3
    names = ds.label_names
    fold = kfold_indices(ds.n_spectra, k, seed)
    out = {"stars": ds.n_spectra, "pixels": ds.n_pixels, "folds": k, "labels": list(names), "models": {}}
    base = np.empty_like(ds.labels)
    for i in range(k):
        base[fold == i] = ds.labels[fold != i].mean(axis=0)
    out["predict_training_mean"] = summarise(base, ds.labels, names)
    for name, (cls, kw) in baselines("a", quick).items():
        if only and name not in only:
            continue
        pred = np.empty_like(ds.labels)
        train_s, predict_s = [], 0.0
        for i in range(k):
            model, dt = timed(lambda i=i: cls.train(ds[fold != i], key=seed + i, **kw))
            train_s.append(dt)
            p, dt = timed(lambda model=model, i=i: model.predict(ds[fold == i]))
            pred[fold == i] = p
            predict_s += dt
        res = summarise(pred, ds.labels, names)
        out["models"][name] = {"config": kw, "train_s_per_fold": train_s, "predict_s": predict_s, "stats": res}
        out["models"][name]["vmp"] = _vmp(pred, ds.labels, names)
        if name == "LassoMLP":
            out["models"][name]["n_selected_last_fold"] = dict(zip(names, model.n_selected, strict=True))
        print(f"(a) {name}: train {np.mean(train_s):.1f} s/fold; " + _line(res, names), flush=True)
    for name, (emu, kw) in generative("a", quick).items():
        if only and name not in only:
            continue
        cv = sj.validate.cross_validate(ds, emulator=emu, k=k, seed=seed, train_kwargs=kw, dtype=_fit_dtype(emu))
        res = summarise(cv.result.labels, ds.labels, names)
        out["models"][name] = {
            "config": kw,
            "generative": True,
            "train_s_per_fold": [cv.train_seconds / k] * k,
            "predict_s": cv.fit_seconds,
            "pull_std": _pulls(cv.result, ds.labels, names),
            "status_counts": np.bincount(cv.result.status, minlength=5).tolist(),
            "stats": res,
            "vmp": _vmp(cv.result.labels, ds.labels, names),
        }
        print(f"(a) {name}: train {cv.train_seconds / k:.1f} s/fold; " + _line(res, names), flush=True)
    return out


def part_b(only, quick, seed, n_train, n_test):
    from _apogee_nn import available, generate

    if not available():
        print("(b) skipped: ../shared/data/apogee_kurucz_nn/raw not found")
        return {"skipped": "shared data not available"}
    if quick:
        n_train, n_test = 400, 150
    (wave, flux, ivar, _, labels, names), gen_s = timed(lambda: generate(n_train, seed=seed + 1))
    train = sj.SpectrumSet(wave, flux, ivar, labels, names)
    wave, flux, ivar, _, labels_t, _ = generate(n_test, seed=seed + 2)
    test = sj.SpectrumSet(wave, flux, ivar, labels_t, names)
    snr = test.snr  # median per-pixel S/N of each test spectrum
    out = {
        "n_train": n_train,
        "n_test": n_test,
        "pixels": train.n_pixels,
        "snr_range": [20, 200],
        "labels": list(names),
        "generate_s": gen_s,
        "models": {},
        "predict_training_mean": summarise(
            np.broadcast_to(labels.mean(axis=0), labels_t.shape), labels_t, names, snr=snr
        ),
    }
    for name, (cls, kw) in baselines("b", quick).items():
        if only and name not in only:
            continue
        c0, own0 = cpu_times(), own_cpu_seconds()
        model, train_s = timed(lambda cls=cls, kw=kw: cls.train(train, key=seed, **kw))
        usage = cpu_usage(c0, cpu_times(), None if own0 is None else own_cpu_seconds() - own0)
        # Warm-up on the whole test set (same shapes, so the timed call compiles nothing).
        _, first_s = timed(lambda model=model: model.predict(test))
        pred, predict_s = timed(lambda model=model: model.predict(test))
        res = summarise(pred, labels_t, names, snr=snr)
        out["models"][name] = {
            "config": kw,
            "train_s": train_s,
            "within_target": train_s <= TARGET_TRAIN_S,
            "predict_first_call_s": first_s,
            "predict_s": predict_s,
            "spectra_per_s": n_test / predict_s,
            "cpu_usage_during_training": usage,
            "stats": res,
        }
        if name == "LassoMLP":
            out["models"][name]["n_selected"] = dict(zip(names, model.n_selected, strict=True))
        print(f"(b) {name}: train {train_s:.1f} s; " + _line(res, names), flush=True)
    for name, (emu, kw) in generative("b", quick).items():
        if only and name not in only:
            continue
        cls = sj.validate._EMULATORS[emu]
        em, train_s = timed(lambda cls=cls, kw=kw: cls.train(train, **kw))
        dt = _fit_dtype(emu)
        _, first_s = timed(lambda em=em, dt=dt: sj.fit_labels(em, test, dtype=dt, return_model=False))
        fit, predict_s = timed(lambda em=em, dt=dt: sj.fit_labels(em, test, dtype=dt, return_model=False))
        res = summarise(fit.labels, labels_t, names, snr=snr)
        out["models"][name] = {
            "config": kw,
            "generative": True,
            "train_s": train_s,
            "within_target": train_s <= TARGET_TRAIN_S,
            "predict_first_call_s": first_s,
            "predict_s": predict_s,
            "spectra_per_s": n_test / predict_s,
            "pull_std": _pulls(fit, labels_t, names),
            "status_counts": np.bincount(fit.status, minlength=5).tolist(),
            "stats": res,
        }
        print(f"(b) {name}: train {train_s:.1f} s; " + _line(res, names), flush=True)
    return out


def _line(res, names):
    return "; ".join(
        f"{n} MAE {res[n]['mae']:.3g} bias {res[n]['bias']:+.3g} sigma {res[n]['sigma']:.3g}" for n in names
    )


def _table(part: dict, with_time: str) -> list[str]:
    names = part["labels"]
    head = "| model | " + " | ".join(f"{n} MAE / bias / σ" for n in names) + f" | {with_time} | pull std |"
    rows = [head, "|" + " --- |" * (len(names) + 3)]
    entries = [("predict training mean", {"stats": part["predict_training_mean"]})] + list(part["models"].items())
    for name, m in entries:
        cells = [
            f"{m['stats'][n]['mae']:.3g} / {m['stats'][n]['bias']:+.2g} / {m['stats'][n]['sigma']:.3g}" for n in names
        ]
        if "train_s" in m:
            t = f"{m['train_s']:.1f}"
        elif "train_s_per_fold" in m:
            t = f"{np.mean(m['train_s_per_fold']):.1f}"
        else:
            t = "–"
        pulls = " / ".join(f"{m['pull_std'][n]:.2f}" for n in names) if "pull_std" in m else "–"
        label = f"{name} (generative + fit_labels)" if m.get("generative") else name
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {t} | {pulls} |")
    return rows


def markdown(results, info) -> str:
    md = ["# Direct baselines (slamjax.direct)", "", f"Command: `{' '.join(info.get('argv') or sys.argv)}`", ""]
    a = results.get("a")
    if a:
        md += [
            f"## (a) MILES FGK, {a['folds']}-fold CV ({a['stars']} stars x {a['pixels']} px)",
            "",
            "Out-of-fold predictions of every star. Teff in K, logg and [Fe/H] in dex.",
            "",
            *_table(a, "train s / fold"),
            "",
        ]
        vmp = [(n, m["vmp"]) for n, m in a["models"].items() if m.get("vmp")]
        if vmp:
            md += [
                f"Very metal-poor stars ([Fe/H] < -2; {vmp[0][1]['n_true_vmp']} of {a['stars']}) from the "
                "out-of-fold [Fe/H] (`slamjax.direct.vmp_report`): completeness = TP / (TP + FN), "
                "contamination = FP / (TP + FP).",
                "",
                "| model | TP | FN | FP | completeness | contamination |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for n, r in vmp:
                md.append(
                    f"| {n} | {r['tp']} | {r['fn']} | {r['fp']} | {r['completeness']:.2f} | {r['contamination']:.2f} |"
                )
            md.append("")
    b = results.get("b")
    if b and "models" in b:
        md += [
            f"## (b) APOGEE-like (Kurucz network), {b['n_train']} training / {b['n_test']} test stars, "
            f"{b['pixels']} px, S/N 20-200",
            "",
            f"Target: training <= {TARGET_TRAIN_S / 60:.0f} min per baseline on 2 CPU cores. "
            "SpectrumCNN-2D sees only the first 4096 of 7214 pixels (chip a and half of chip b).",
            "",
            *_table(b, "train s"),
            "",
            "MAE by S/N bin:",
            "",
        ]
        names = b["labels"]
        md += ["| model | S/N | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
        for name, m in b["models"].items():
            for row in m["stats"]["by_snr"]:
                md.append(
                    f"| {name} | {row['lo']:g}-{row['hi']:g} | "
                    + " | ".join(f"{row[n]['mae']:.3g}" for n in names)
                    + " |"
                )
        md += [
            "",
            "Prediction speed: the second call on the whole test set (the first, listed, compiles); generative "
            "rows are `fit_labels` with the default starts, in float32 (the kernel in float64).",
            "",
            "| model | predict (spectra/s) | first predict call (s) |",
            "| --- | --- | --- |",
        ]
        md += [f"| {n} | {m['spectra_per_s']:.0f} | {m['predict_first_call_s']:.2f} |" for n, m in b["models"].items()]
        md.append("")
    md += ["## Machine", "", machine_markdown(info)]
    for run in results.get("earlier_runs", []):
        md.append(f"- Rows not rerun come from: `{run['command']}` on {run['date_utc']} (same machine type)")
    return "\n".join(md)


def _merge(name, new, out_dir):
    """The existing results file ``name`` updated with the parts/models of ``new``; earlier machines kept."""
    import json

    path = (Path(out_dir) if out_dir is not None else _HERE / "results") / f"{name}.json"
    if not path.exists():
        return new
    old = json.loads(path.read_text())
    for part in ("a", "b"):
        if part not in new or "models" not in new[part]:
            continue
        if part in old and "models" in old[part]:
            models = {**old[part]["models"], **new[part]["models"]}
            old[part] = {**new[part], "models": models}
        else:
            old[part] = new[part]
    m = old["machine"]
    earlier = old.get("earlier_runs", []) + [{"date_utc": m.get("date_utc"), "command": m.get("command")}]
    old.update(machine=new["machine"], total_s=new["total_s"], earlier_runs=earlier)
    return old


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few epochs (smoke test)")
    ap.add_argument("--part", choices=["a", "b", "ab"], default="ab")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated models (LassoMLP,ResidualMLP,SpectrumCNN,SpectrumCNN-2D,Cannon,Kernel,Payne)",
    )
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--name", default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="update only the parts/models run now in the existing results file, keep the others",
    )
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(baselines("a", False)) - set(generative("a", False))
    if unknown:
        ap.error(f"unknown baselines {sorted(unknown)}")

    info = machine_info()
    results = {"quick": args.quick, "seed": args.seed}
    t0 = time.perf_counter()
    if "a" in args.part:
        results["a"] = part_a(only, args.quick, args.seed)
    if "b" in args.part:
        results["b"] = part_b(only, args.quick, args.seed, args.n_train, args.n_test)
    results["total_s"] = time.perf_counter() - t0
    results["machine"] = info
    name = args.name or ("direct_baselines_quick" if args.quick else "direct_baselines")
    if args.merge:
        results = _merge(name, results, args.out_dir)
    if not args.no_write:
        paths = write_results(name, results, markdown(results, info), out_dir=args.out_dir)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
