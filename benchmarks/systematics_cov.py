"""Cost per star of the systematic label covariance that ``fit_labels`` adds at each fitted point.

``LabelSystematics.cov`` runs on the host (numpy/scipy) after the compiled fit, once per star.
This times it for V held-out fits (V = 400, a peer-benchmark training set; V = 17,000, a
survey-size training set) in both forms (neighbours; smooth log-variance), and the estimate
itself (``model="auto"``: smooth fit + 5-fold held-out choice). Synthetic inputs, fixed seed:
3 labels, errors that grow towards the edges of the label box. Each timing is the best of
``--repeats`` after one warm-up call.

    python benchmarks/systematics_cov.py            # N = 20,000 query stars
    python benchmarks/systematics_cov.py --quick    # N = 2,000, V = 400 and 4,000
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
from _machine import machine_info, machine_markdown, write_results  # noqa: E402

from slamjax._systematics import estimate  # noqa: E402


def held_out_fits(v, seed=0):
    """Fits of V held-out stars: (result-like object, true labels [V, 3])."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(v, 3))
    c = np.full((v, 3), 1e-4) * rng.uniform(0.5, 1.5, size=(v, 1))
    s = 0.01 * np.exp(1.5 * np.sum(x**2, axis=1, keepdims=True)) * np.ones(3)
    d = rng.normal(size=(v, 3)) * np.sqrt(c + s**2)
    res = types.SimpleNamespace(labels=x + d, cov=c[:, :, None] * np.eye(3), status=np.zeros(v, dtype=int))
    return res, x


def best_of(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    n = 2_000 if a.quick else 20_000
    sizes = (400, 4_000) if a.quick else (400, 17_000)
    query = np.random.default_rng(1).uniform(-1.0, 1.0, size=(n, 3))
    info = machine_info()
    rows = []
    for v in sizes:
        res, true = held_out_fits(v)
        scale = np.ones(3)
        for model in ("neighbours", "smooth", "auto"):
            run = lambda res=res, true=true, model=model: estimate(res, true, True, scale, "bench", model=model)  # noqa: E731
            t_est = best_of(run, a.repeats)
            sys_err = run()
            t_cov = best_of(lambda sys_err=sys_err: sys_err.cov(query), a.repeats)
            form = "smooth" if sys_err.log_var is not None else f"{sys_err.k} neighbours"
            rows.append({"V": v, "model": model, "form": form, "estimate_s": t_est, "cov_us_per_star": 1e6 * t_cov / n})
            print(f"V={v} {model} ({form}): estimate {t_est:.3f} s, cov {1e6 * t_cov / n:.1f} µs per star", flush=True)
    md = [
        "# Systematic label covariance: cost per star (`benchmarks/systematics_cov.py`)",
        "",
        f"{n} query stars, 3 labels; best of {a.repeats} after a warm-up.",
        "",
        "| V held-out fits | model | form | estimate s | cov µs per star |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['V']} | {r['model']} | {r['form']} | {r['estimate_s']:.3f} | {r['cov_us_per_star']:.1f} |" for r in rows
    ]
    md += ["", "## Machine", "", machine_markdown(info)]
    if not a.no_write:
        name = "systematics_cov_quick" if a.quick else "systematics_cov"
        paths = write_results(name, {"machine": info, "n_query": n, "rows": rows}, "\n".join(md))
        print("wrote", *paths)


if __name__ == "__main__":
    main()
