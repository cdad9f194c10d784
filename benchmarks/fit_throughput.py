"""Throughput of ``sj.fit_labels`` with the Cannon emulator (spectra per second).

Acceptance target: >= 5,000 spectra/s for N = 10,000 spectra of 4300 pixels and 3 labels
(teff, logg, fe_h) on 2 CPU cores, in float64 and float32, with compile time reported
separately. (The Cannon packages' own test step does 250-1,000 spectra/s per core.)

What it does:

1. trains a quadratic Cannon on the bundled MILES sample (train time reported; a second
   training gives the time without compilation);
2. simulates N spectra from the trained model at labels drawn from the training labels
   plus a small jitter kept inside the training box, with Gaussian noise at S/N 50 per
   pixel (ivar = 2500), fixed seed;
3. for each dtype x init mode (``init="training"`` with 3 starts = the default, and
   ``init=<true labels>``, one start) x chunk size: times the first call on one chunk
   (trace + compile + one chunk), a second call on the same chunk (so compile ~ first -
   second), one untimed full-N warm-up, then the full-N fit ``--repeats`` times (best
   and median), with the process's CPU use, page faults and the load from other processes;
4. reports spectra/s, status counts, mean LM steps, accuracy (median |fit - truth| / σ),
   and the achieved GFLOP/s from a FLOP model of the quadratic-form path that
   ``fit_labels`` uses for linear emulators, next to plain XLA matmul GFLOP/s;
5. optionally (default for full runs) shows where the time goes: a profile of the helpers
   of ``slamjax._fit`` and ``slamjax._chunking`` during full-N fits, a replay of one captured ``_fit_chunk`` call
   (numpy vs device inputs, compute, LM iterations, output conversion, dispatch), and
   "what-if" throughputs with candidate changes swapped in. All of it from the outside:
   functions are wrapped or swapped for one measurement and restored, the library is
   never modified.

Results go to ``benchmarks/results/fit_throughput.{json,md}`` (``--quick``:
``fit_throughput_quick.*``). Runs unchanged on a GPU (the default JAX device is used).

    python benchmarks/fit_throughput.py            # full run, N = 10,000
    python benchmarks/fit_throughput.py --quick    # smoke run, N = 1,000
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Benchmark the checkout this file lives in (and find the _machine helper).
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _machine import (  # noqa: E402
    cpu_times,
    cpu_usage,
    machine_info,
    machine_markdown,
    own_cpu_seconds,
    write_results,
)

import slamjax as sj  # noqa: E402

TARGET = 5000.0  # spectra/s on 2 CPU cores
SNR = 50.0
JITTER = 0.02  # label jitter, fraction of the training-box width (1σ)


# ------------------------------------------------------------------------ helpers
def _now():
    return time.perf_counter()


def _timed(fn):
    """Seconds for ``fn()`` including completion of any JAX work it returns."""
    t0 = _now()
    out = fn()
    jax.block_until_ready(out)
    return _now() - t0, out


def _times(fn, reps):
    ts = []
    for _ in range(reps):
        ts.append(_timed(fn)[0])
    return ts


def _rusage():
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF)


def _process_stats(ru0, ru1, wall_s, n_spectra):
    """CPU use of this process over timed fits: cores kept busy, system-time share, page faults."""
    if ru0 is None or ru1 is None or wall_s <= 0:
        return None
    user, system = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    return {
        "cpu_user_s": user,
        "cpu_system_s": system,
        "cores_busy": (user + system) / wall_s,
        "system_fraction": system / (user + system) if user + system > 0 else None,
        "minor_faults_per_spectrum": (ru1.ru_minflt - ru0.ru_minflt) / n_spectra,
        "major_faults": ru1.ru_majflt - ru0.ru_majflt,
    }


def effective_chunk(chunk_size: int, n: int) -> int:
    """The compiled batch size ``fit_labels`` uses (mirrors slamjax/_fit.py and slamjax/_chunking.py)."""
    return int(min(chunk_size, 1 << max(0, int(np.ceil(np.log2(n))))))


def simulate(em, ds, n: int, snr: float, seed: int):
    """Truth labels [N, L] and noisy flux/ivar [N, P] (float64) from the emulator."""
    rng = np.random.default_rng(seed)
    train = np.asarray(em.space.train)
    lo, hi = np.asarray(em.space.lo), np.asarray(em.space.hi)
    width = hi - lo
    truth = train[rng.integers(0, train.shape[0], n)] + rng.normal(size=(n, train.shape[1])) * JITTER * width
    # keep the jittered labels strictly inside the box (away from the HIT_BOUND edge)
    truth = np.clip(truth, lo + 0.005 * width, hi - 0.005 * width)
    sigma = 1.0 / snr
    flux = em.predict(truth) + rng.normal(scale=sigma, size=(n, em.n_pixels))
    ivar = np.full_like(flux, 1.0 / sigma**2)
    return truth, flux, ivar


def flops_per_spectrum(n_pix, n_terms, n_labels, n_templates, n_starts, mean_steps) -> dict:
    """FLOP model of one spectrum on the linear-emulator (quadratic-form) path of ``_fit_chunk``.

    Counts multiply and add separately (a multiply-add = 2 FLOPs); ignores compares,
    ``where`` selects are counted as 1. Per-chunk work shared by all spectra of a chunk
    (θ'ᵢθ'ⱼ columns, template features) is negligible and left out.

    * pixel pass: A = w @ [θ'ᵢθ'ⱼ] (one [P] x [P, T'(T'+1)/2] product), b = (w f_c) @ θ',
      c = Σ w f_c², plus ~14 elementwise ops per pixel for the mask, weights and centring;
    * template scan (``init="training"``): χ² of every training label vector from A, b, c:
      K x (T'² + T') multiply-adds, then top-k;
    * LM: per step one ``normal(z)`` (A u, uᵀAu, uᵀb, gradient, Gauss-Newton matrix
      duᵀ A du with du from ``jacfwd``: O(T'²(1 + L))) and two L x L solves (step and
      decrement); per start one extra initial evaluation; per spectrum one final
      ``normal`` at the selected solution. Steps per start are taken as the mean
      ``n_steps`` of the selected start (the other starts' counts are not returned);
    * model flux v(z) @ θᵀ (2 P T) and χ² (4 P); covariance inverse (~2 L³).
    """
    p, t, nl, k, s = n_pix, n_terms - 1, n_labels, n_templates, n_starts
    n_tri = t * (t + 1) // 2
    normal = 2 * t * t * (1 + nl) + t * (5 + 5 * nl + 2 * nl * nl) + 4 * nl
    solve = 2 * ((2 * nl**3) // 3 + 2 * nl * nl)
    lm_step = normal + solve + 10 * nl
    parts = {
        "pixel_pass": p * (2 * n_tri + 2 * t + 14),
        "template_scan": (2 * k * (t * t + t) + 3 * k) if k else 0,
        "lm": s * (mean_steps * lm_step + normal + solve // 2) + normal,
        "model_and_chi2": 2 * p * n_terms + 4 * p,
        "covariance": 2 * nl**3,
    }
    parts["total"] = sum(parts.values())
    parts["lm_per_step"] = lm_step
    return parts


def reference_gflops(dtype, n_pix: int, reps: int = 5) -> dict:
    """GFLOP/s XLA reaches here on plain matrix products, to put the fit's rate in context.

    ``fit_shaped``: [1024, P] x [P, 64], the shape class of the fit's pixel pass;
    ``square``: [1024, 1024] x [1024, 1024]. Median of ``reps`` after a warm-up.
    """
    rng = np.random.default_rng(0)
    out = {}
    for name, (m, k, n) in {"fit_shaped": (1024, n_pix, 64), "square": (1024, 1024, 1024)}.items():
        a = jax.device_put(rng.random((m, k)).astype(dtype))
        b = jax.device_put(rng.random((k, n)).astype(dtype))
        mm = jax.jit(jnp.matmul)
        jax.block_until_ready(mm(a, b))
        t = statistics.median(_times(lambda a=a, b=b, mm=mm: mm(a, b), reps))
        out[name] = 2.0 * m * k * n / t / 1e9
    return out


# ------------------------------------------------------------------- one config
def run_config(em, flux, ivar, truth, *, dtype, init_mode, chunk_size, n_starts, repeats):
    n = flux.shape[0]
    eff = effective_chunk(chunk_size, n)
    n1 = min(eff, n)
    s = n_starts if init_mode == "training" else 1

    def call(sl):
        init = "training" if init_mode == "training" else truth[sl]
        return sj.fit_labels(em, flux[sl], ivar[sl], init=init, n_starts=n_starts, chunk_size=chunk_size, dtype=dtype)

    tag = f"{np.dtype(dtype).name:7s} init={init_mode:8s} chunk={chunk_size:5d}"
    first_s, _ = _timed(lambda: call(slice(0, n1)))
    warm_chunk_s = min(_times(lambda: call(slice(0, n1)), 2))
    warmup_full_s, _ = _timed(lambda: call(slice(None)))  # compiles anything the first chunk did not need
    print(
        f"  {tag}: first call ({n1} spectra) {first_s:7.2f} s, warm {warm_chunk_s:.3f} s; "
        f"full-N warm-up {warmup_full_s:.2f} s",
        flush=True,
    )
    times, res = [], None
    ru0, st0 = _rusage(), cpu_times()
    for _ in range(repeats):
        del res
        gc.collect()
        t, res = _timed(lambda: call(slice(None)))
        times.append(t)
    ru1, st1 = _rusage(), cpu_times()
    best, med = min(times), statistics.median(times)

    err = res.labels_err
    dev = res.labels - truth
    with np.errstate(invalid="ignore", divide="ignore"):
        zabs = np.abs(dev / err)
    n_chunks = -(-n // eff)
    mean_steps = float(res.n_steps.mean())
    k_templates = int(np.asarray(em.space.train).shape[0]) if init_mode == "training" else 0
    flops = flops_per_spectrum(em.n_pixels, int(em.design.shape[1]), em.n_labels, k_templates, s, mean_steps)
    out = {
        "dtype": np.dtype(dtype).name,
        "init": init_mode,
        "n_starts": s,
        "chunk_size": chunk_size,
        "effective_chunk": eff,
        "n_chunks": n_chunks,
        "n": n,
        "first_call_s": first_s,
        "first_call_spectra": n1,
        "warm_chunk_s": warm_chunk_s,
        "compile_s_est": max(first_s - warm_chunk_s, 0.0),
        "warmup_full_s": warmup_full_s,
        "times_s": times,
        "best_s": best,
        "median_s": med,
        "spectra_per_s_best": n / best,
        "spectra_per_s_median": n / med,
        "status": res.summary(),
        "mean_n_steps": mean_steps,
        "max_n_steps": int(res.n_steps.max()),
        "process": _process_stats(ru0, ru1, sum(times), n * repeats),
        "machine_cpu": cpu_usage(
            st0, st1, None if ru0 is None else sum(getattr(ru1, a) - getattr(ru0, a) for a in ("ru_utime", "ru_stime"))
        ),
        "accuracy": {
            "median_abs_dev_over_sigma": float(np.nanmedian(zabs)),
            "median_abs_dev_over_sigma_per_label": dict(
                zip(res.label_names, np.nanmedian(zabs, axis=0).tolist(), strict=True)
            ),
            "median_abs_dev_per_label": dict(
                zip(res.label_names, np.nanmedian(np.abs(dev), axis=0).tolist(), strict=True)
            ),
            "median_sigma_per_label": dict(zip(res.label_names, np.nanmedian(err, axis=0).tolist(), strict=True)),
            "median_rchi2": float(np.nanmedian(res.rchi2)),
        },
        "flops_per_spectrum": flops,
        "gflops_per_s_best": flops["total"] * n / best / 1e9,
    }
    print(
        f"  {tag}: best {best:.3f} s, median {med:.3f} s -> {n / best:8.0f} spectra/s; "
        f"status {res.summary()}; mean n_steps {mean_steps:.2f}; "
        f"median |Δ|/σ {out['accuracy']['median_abs_dev_over_sigma']:.3f}; "
        f"{out['gflops_per_s_best']:.2f} GFLOP/s",
        flush=True,
    )
    del res
    gc.collect()
    return out


# ------------------------------------------------------------------- breakdown
# Everything below looks at fit_labels from the outside: it wraps or swaps functions of
# slamjax._fit and slamjax._chunking for one measurement at a time (restoring them afterwards) and never edits
# the library. It adapts to internal changes where it can and skips what it cannot do.

_PROFILED = ("_run_chunks", "_fit_chunk", "snr_of", "_pad", "_prior_arrays")


def _fit_modules():
    """``slamjax._fit`` and the module whose globals ``_run_chunks`` calls ``_fit_chunk`` and
    ``snr_of`` through (``slamjax._chunking``, or ``slamjax._fit`` itself in older versions)."""
    from slamjax import _fit as fitmod

    run = getattr(fitmod, "_run_chunks", None)
    runmod = sys.modules.get(getattr(run, "__module__", ""), fitmod)
    return fitmod, runmod


@contextlib.contextmanager
def _patched(*patches):
    """Temporarily set ``module.name = value`` for each ``(module, name, value)``."""
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    try:
        for m, n, v in patches:
            setattr(m, n, v)
        yield
    finally:
        for m, n, v in reversed(saved):
            setattr(m, n, v)


@contextlib.contextmanager
def _profiled(modules, names):
    """Accumulate calls and wall time of ``module.<name>`` (those that exist, in each of ``modules``;
    a function looked up in two modules is counted under one name) while active."""
    stats, patches = {}, []
    for module, name in ((m, n) for n in names for m in dict.fromkeys(modules)):
        fn = getattr(module, name, None)
        if not callable(fn):
            continue
        rec = stats.setdefault(name, {"calls": 0, "s": 0.0})

        def wrapper(*a, _fn=fn, _rec=rec, **k):
            t0 = _now()
            try:
                return _fn(*a, **k)
            finally:
                _rec["calls"] += 1
                _rec["s"] += _now() - t0

        patches.append((module, name, wrapper))
    with _patched(*patches):
        yield stats


@contextlib.contextmanager
def _top_k_in_float32():
    """While active, ``jax.lax.top_k`` ranks a float32 copy of float64 input.

    XLA:CPU has a fast top-k only for float32; float64 falls back to a full sort. The
    template scan only ranks starting points, so float32 ranking is enough. Only traces
    made while this is active are affected (callers use a fresh cache key, a slightly
    different static ``tol`` in older versions, or clear the compiled function's cache).
    Yields a list whose first entry counts calls (0 = not traced).
    """
    orig = jax.lax.top_k
    calls = [0]

    def top_k(operand, k, **kwargs):
        calls[0] += 1
        if operand.dtype == np.float64:
            operand = operand.astype(np.float32)
        return orig(operand, k, **kwargs)

    with _patched((jax.lax, "top_k", top_k)):
        yield calls


def _jax_jit_variant(eqx_jitted):
    """The function under ``eqx.filter_jit`` re-jitted with plain ``jax.jit`` (keyword args static).

    ``eqx.filter_jit`` (equinox >= 0.12) blocks until every call has finished (it waits on
    an error marker), so the host cannot work while XLA computes; ``jax.jit`` returns at
    once (asynchronous dispatch).
    """
    fn = getattr(eqx_jitted, "__wrapped__", None) or eqx_jitted.fn
    cache = {}

    def call(em, args, **kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = jax.jit(functools.partial(fn, **kw))
        return cache[key](em, args)

    return call


def _capture_first_call(module, name, run):
    """Run ``run()`` and return the positional and keyword arguments of the first ``module.name`` call."""
    orig, captured = getattr(module, name), {}

    def wrapper(*a, **k):
        if not captured:
            captured.update(args=a, kwargs=k)
        return orig(*a, **k)

    with _patched((module, name, wrapper)):
        run()
    return captured


def breakdown(em, flux, ivar, *, dtype, chunk_size, n_starts, reps, repeats):
    """Where one ``fit_labels`` call (init="training") spends its time.

    1. profile: wall time inside the helpers of ``slamjax._fit`` and ``slamjax._chunking`` during full-N fits (the
       fastest of ``repeats``);
    2. one chunk: the first ``_fit_chunk`` call is captured and replayed: with the numpy
       inputs, with inputs already on the device, after one LM step, with float32 top-k,
       and re-jitted with ``jax.jit`` (dispatch vs completion); median of ``reps``.
    """
    fitmod, runmod = _fit_modules()

    n = flux.shape[0]
    b = effective_chunk(chunk_size, n)
    n1 = min(b, n)
    out = {"dtype": np.dtype(dtype).name, "chunk": b, "n_chunks": -(-n // b), "reps": reps}

    def fit(sl=slice(None)):
        return sj.fit_labels(em, flux[sl], ivar[sl], n_starts=n_starts, chunk_size=chunk_size, dtype=dtype)

    fit(slice(0, n1))  # compiled already by the main runs; make sure
    best = None
    for _ in range(repeats):
        with _profiled((fitmod, runmod), _PROFILED) as stats:
            wall, _ = _timed(fit)
        if best is None or wall < best[0]:
            best = (wall, stats)
    out["profile_wall_s"], out["profile"] = best

    def med(fn):
        return statistics.median(_times(fn, reps))

    cap = _capture_first_call(runmod, "_fit_chunk", lambda: fit(slice(0, n1)))
    fc = runmod._fit_chunk
    em_c, args = cap["args"][:2]
    kw = cap["kwargs"]
    out["fit_chunk_kwargs"] = {k: v for k, v in kw.items() if isinstance(v, int | float | bool | str)}
    out["call_numpy_inputs_s"] = med(lambda: fc(em_c, args, **kw))
    out["h2d_s"] = med(lambda: jax.device_put(args))
    args_dev = jax.block_until_ready(jax.device_put(args))
    jax.block_until_ready(fc(em_c, args_dev, **kw))
    out["compute_s"] = med(lambda: fc(em_c, args_dev, **kw))
    out["spectra_per_s_compute_only"] = b / out["compute_s"]
    conv = []
    for _ in range(reps):
        res = jax.block_until_ready(fc(em_c, args_dev, **kw))
        t0 = _now()
        {k: np.array(v) for k, v in res.items()}
        conv.append(_now() - t0)
    out["outputs_to_numpy_s"] = statistics.median(conv)
    out["snr_of_s"] = med(lambda: runmod.snr_of(flux[:n1], ivar[:n1]))

    # after one LM step (pixel pass + template scan + 1 step + model); rest = LM iterations
    one = None
    if isinstance(args, dict) and "max_steps" in args:  # dynamic step limit: no recompilation
        one = (dict(args_dev, max_steps=np.asarray(1, np.asarray(args["max_steps"]).dtype)), kw)
    elif "max_steps" in kw:
        one = (args_dev, dict(kw, max_steps=1))
    if one is not None:
        jax.block_until_ready(fc(em_c, one[0], **one[1]))
        out["compute_1step_s"] = med(lambda: fc(em_c, one[0], **one[1]))
        out["lm_iterations_s"] = out["compute_s"] - out["compute_1step_s"]

    fresh = "tol" in kw or hasattr(fc, "clear_cache")  # a new trace under the patch: new key, or no cache
    if np.dtype(dtype) == np.float64 and fresh:
        # older versions: a slightly different static tol is a fresh cache key; now tol is data
        kw_t = dict(kw, tol=kw["tol"] * (1 + 1e-9)) if "tol" in kw else kw
        if "tol" not in kw:
            fc.clear_cache()
        with _top_k_in_float32() as calls:
            jax.block_until_ready(fc(em_c, args_dev, **kw_t))
            out["compute_top_k_float32_s"] = med(lambda: fc(em_c, args_dev, **kw_t))
        if "tol" not in kw:
            fc.clear_cache()  # the patched program must not serve later calls ...
            jax.block_until_ready(fc(em_c, args_dev, **kw))  # ... and the timings below must not compile
        if calls[0] == 0:
            del out["compute_top_k_float32_s"]

    plain = _jax_jit_variant(fc)
    jax.block_until_ready(plain(em_c, args_dev, **kw))
    ret, done = [], []
    for _ in range(reps):
        t0 = _now()
        res = plain(em_c, args_dev, **kw)
        ret.append(_now() - t0)
        jax.block_until_ready(res)
        done.append(_now() - t0)
    out["jax_jit_returns_after_s"] = statistics.median(ret)
    out["jax_jit_done_after_s"] = statistics.median(done)
    t0 = _now()
    res = fc(em_c, args_dev, **kw)
    out["filter_jit_returns_after_s"] = _now() - t0
    jax.block_until_ready(res)
    return out


def what_ifs(em, flux, ivar, *, dtype, chunk_size, small_chunk, n_starts, repeats):
    """Full-N ``fit_labels`` with candidate changes swapped in, interleaved round by round.

    Every variant is warmed up on one chunk, then each round times every variant once
    (so slow drifts of a shared machine hit all variants alike); best of ``repeats``.
    Labels are compared with the unchanged ``fit_labels`` (max |Δ| in units of σ).
    """
    import inspect

    fitmod, runmod = _fit_modules()

    n = flux.shape[0]
    f64 = np.dtype(dtype) == np.float64
    params = inspect.signature(sj.fit_labels).parameters
    tol0 = getattr(fitmod, "_TOL", {}).get(np.dtype(dtype))
    topk = {"tol": tol0 * (1 + 2e-9)} if f64 and tol0 is not None and "tol" in params else None
    async_fix = (runmod, "_fit_chunk", _jax_jit_variant(runmod._fit_chunk))

    def snr_stub(f, iv):
        return np.full(np.shape(f)[0], np.nan)

    variants = {"as_is": ((), {})}
    if hasattr(runmod, "snr_of"):
        variants["snr_stubbed"] = (((runmod, "snr_of", snr_stub),), {})
    if "return_model" in params:
        variants["no_model"] = ((), {"return_model": False})
    variants["jax_jit"] = ((async_fix,), {})
    if topk:
        variants["top_k_float32"] = ((), topk)
        variants["jax_jit+top_k_float32"] = ((async_fix,), topk)
    if small_chunk and effective_chunk(small_chunk, n) != effective_chunk(chunk_size, n):
        variants[f"chunk_{small_chunk}"] = ((), {"chunk_size": small_chunk})

    def call(name, sl):
        patches, kw = variants[name]
        kw = {"chunk_size": chunk_size, **kw}
        with _patched(*patches):
            return sj.fit_labels(em, flux[sl], ivar[sl], n_starts=n_starts, dtype=dtype, **kw)

    out = {name: {"best_s": np.inf} for name in variants}
    for name, (_, kw) in variants.items():  # warm-up; top-k variants get the patch in their trace
        n1 = min(effective_chunk(kw.get("chunk_size", chunk_size), n), n)
        with _top_k_in_float32() if "tol" in kw else contextlib.nullcontext([1]) as calls:
            call(name, slice(0, n1))
        if calls[0] == 0:
            raise RuntimeError(f"the top_k patch did not reach the trace of {name}")
    ref = None
    for _ in range(repeats):
        for name in variants:
            t, res = _timed(lambda name=name: call(name, slice(None)))
            o = out[name]
            o["best_s"] = min(o["best_s"], t)
            if name == "as_is":
                ref = (res.labels, res.labels_err)
            o["max_abs_dev_vs_as_is_over_sigma"] = float(np.nanmax(np.abs(res.labels - ref[0]) / ref[1]))
            o["status"] = res.summary()
            del res
    for name, v in out.items():
        v["spectra_per_s"] = n / v["best_s"]
        print(f"    what-if {np.dtype(dtype).name} {name}: {v['spectra_per_s']:,.0f} spectra/s", flush=True)
    return out


# ------------------------------------------------------------------- reporting
def _other(usage):
    x = (usage or {}).get("other_processes")
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ms(x):
    return "n/a" if x is None else f"{1e3 * x:.1f}"


def _breakdown_markdown(bd: list, s: dict) -> list[str]:
    ind, ind2 = "&nbsp;" * 4, "&nbsp;" * 8
    head = "| | " + " | ".join(f"{b['dtype']}" for b in bd) + " |"
    sep = "|---|" + "---:|" * len(bd)
    lines = [
        "",
        f'## Where the time goes (init="training", chunk {bd[0]["chunk"]})',
        "",
        "Measured from the benchmark side only: helpers of `slamjax._fit` and `slamjax._chunking` are wrapped "
        "with timers, or the first `_fit_chunk` call is captured and replayed; the library is unchanged.",
        "",
        f"**Full-N profile** (fastest of {s['repeats']}): wall time spent inside each helper, s (share of the "
        "`fit_labels` wall time). Indented rows are inside the row above.",
        "",
        head,
        sep,
    ]

    def prof(b, name):
        return b["profile"].get(name, {}).get("s")

    def cell(b, x):
        return "n/a" if x is None else f"{x:.3f} ({x / b['profile_wall_s']:.0%})"

    rows = [("**`fit_labels`**", lambda b: b["profile_wall_s"])]
    nested = all("_run_chunks" in b["profile"] for b in bd)
    if nested:
        rows += [
            ("`_prior_arrays` (prior in standardised units)", lambda b: prof(b, "_prior_arrays")),
            ("`_run_chunks` (the chunk loops, both LM phases)", lambda b: prof(b, "_run_chunks")),
            (f"{ind}`_fit_chunk` (compiled fit; the call blocks until done)", lambda b: prof(b, "_fit_chunk")),
            (f"{ind}`snr_of` (median S/N, numpy)", lambda b: prof(b, "snr_of")),
            (f"{ind}`_pad`", lambda b: prof(b, "_pad")),
            (
                f"{ind}rest of the loop: slicing, `astype`, copying outputs into the result arrays",
                lambda b: prof(b, "_run_chunks") - sum(prof(b, k) or 0.0 for k in ("_fit_chunk", "snr_of", "_pad")),
            ),
            (
                "outside the loop: input checks, setup, `FitResult`",
                lambda b: b["profile_wall_s"] - prof(b, "_run_chunks") - (prof(b, "_prior_arrays") or 0.0),
            ),
        ]
    else:
        top = ("_fit_chunk", "snr_of", "_pad", "_prior_arrays")
        rows += [(f"`{k}`", lambda b, k=k: prof(b, k)) for k in top]
        rows.append(
            (
                "rest: input checks, slicing, outputs → numpy, concatenation, Python",
                lambda b: b["profile_wall_s"] - sum(prof(b, k) or 0.0 for k in top),
            )
        )
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cell(b, fn(b)) for b in bd) + " |")
    calls = ", ".join(f"{b['dtype']}: " + ", ".join(f"{k} ×{v['calls']}" for k, v in b["profile"].items()) for b in bd)
    lines += [
        "",
        f"Calls: {calls}.",
        "",
        f"**One chunk** ({bd[0]['chunk']} spectra; the first `_fit_chunk` call of `fit_labels` replayed, median of "
        f"{bd[0]['reps']}), ms:",
        "",
        head,
        sep,
    ]
    rows = [
        ("`_fit_chunk` with the numpy inputs, as `fit_labels` calls it", "call_numpy_inputs_s"),
        (f"{ind}host → device copy alone (`jax.device_put`)", "h2d_s"),
        (f"{ind}compiled compute, inputs already on the device", "compute_s"),
        (f"{ind2}up to the first LM step (weights, A/b/c pixel pass, template scan, model)", "compute_1step_s"),
        (f"{ind2}remaining LM iterations", "lm_iterations_s"),
        (f"{ind2}*what-if:* compiled compute with `top_k` on float32 (float64 only)", "compute_top_k_float32_s"),
        ("outputs → numpy copies (`np.array` of every output, incl. the [B, P] model)", "outputs_to_numpy_s"),
        ("`snr_of` on the chunk", "snr_of_s"),
        ("`eqx.filter_jit` call returns after (device inputs)", "filter_jit_returns_after_s"),
        ("same function under plain `jax.jit`: call returns after", "jax_jit_returns_after_s"),
        (f"{ind}… and the result is ready after", "jax_jit_done_after_s"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(_ms(b.get(key)) for b in bd) + " |")
    lines += [
        "",
        "Compiled compute alone: "
        + ", ".join(f"{b['spectra_per_s_compute_only']:,.0f} spectra/s ({b['dtype']})" for b in bd)
        + ".",
    ]
    labels = {
        "as_is": "`fit_labels` as is",
        "snr_stubbed": "`snr_of` replaced by a no-op (upper bound of any S/N speed-up)",
        "no_model": "`return_model=False` (no [N, P] model flux kept)",
        "jax_jit": "`_fit_chunk` under plain `jax.jit` (asynchronous: `snr_of` overlaps the compute)",
        "top_k_float32": "`jax.lax.top_k` ranks a float32 copy of the template χ²",
        "jax_jit+top_k_float32": "both of the above",
    }
    names = []
    for b in bd:
        names += [k for k in b.get("what_if", {}) if k not in names]
    if names:
        lines += [
            "",
            "**What-ifs**: full-N `fit_labels` with one change swapped in by the benchmark for that measurement "
            f"only; variants interleaved round by round, best of {s['what_if_repeats']}. The last column is the "
            "largest label difference from the unchanged fit, in units of the formal error.",
            "",
            "| variant | " + " | ".join(f"{b['dtype']} spectra/s" for b in bd) + " | max \\|Δ\\|/σ vs as is |",
            "|---|" + "---:|" * len(bd) + "---:|",
        ]
        for key in names:
            label = labels.get(key, key.replace("chunk_", "`fit_labels` as is with chunk_size="))
            cells, devs = [], []
            for b in bd:
                w = b.get("what_if", {}).get(key)
                if w is None:
                    cells.append("n/a")
                    continue
                gain = w["spectra_per_s"] / b["what_if"]["as_is"]["spectra_per_s"] - 1.0
                cells.append(f"{w['spectra_per_s']:,.0f}" + ("" if key == "as_is" else f" ({gain:+.0%})"))
                devs.append(f"{w['max_abs_dev_vs_as_is_over_sigma']:.1g}")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {' / '.join(devs)} |")
    return lines


def _fmt_status(st: dict) -> str:
    short = {"CONVERGED": "conv", "MAX_STEPS": "max", "HIT_BOUND": "bound", "BAD_INPUT": "bad", "NON_FINITE": "nonfin"}
    return " ".join(f"{short.get(k, k)} {v}" for k, v in st.items() if v) or "-"


def markdown(result: dict) -> str:
    s, runs, info = result["setup"], result["runs"], result["machine"]
    cpu_backend = info["jax"].get("default_backend") == "cpu"
    n_cores = info["cpu"]["affinity_count"] or info["cpu"]["os_cpu_count"] or 1
    lines = [
        "# `sj.fit_labels` throughput: Cannon emulator",
        "",
        f"N = {s['n']:,} simulated spectra, {s['n_pixels']} pixels, {s['n_labels']} labels "
        f"({', '.join(s['label_names'])}), quadratic Cannon ({s['n_terms']} terms), S/N {s['snr']:g} per pixel "
        f"(ivar = {s['snr'] ** 2:g}), seed {s['seed']}. Backend: **{info['jax']['default_backend']}** "
        f"({', '.join(info['jax']['device_kinds'])}). Target: ≥ {s['target']:,.0f} spectra/s on 2 CPU cores.",
        "",
        "## Summary",
        "",
    ]
    for dt in s["dtypes"]:
        cand = [r for r in runs if r["dtype"] == dt and r["init"] == "training"]
        if cand:
            r = max(cand, key=lambda r: r["spectra_per_s_best"])
            ok = "meets" if r["spectra_per_s_best"] >= s["target"] else "**misses**"
            lines.append(
                f'- {dt}, default `init="training"` ({r["n_starts"]} starts): best '
                f"**{r['spectra_per_s_best']:,.0f} spectra/s** (chunk {r['chunk_size']}), {ok} the "
                f"{s['target']:,.0f}/s target; compile ≈ {r['compile_s_est']:.1f} s (one-off)."
            )
    usage = s.get("cpu_usage_during_run") or {}
    if (usage.get("other_processes") or 0.0) > 0.10:
        lines.append(
            f"- **Warning: other processes used {100 * usage['other_processes']:.0f}% of the machine's CPU time "
            "during this run; the timings are disturbed (slower and noisier than on an idle machine).**"
        )
    lines += [
        f"- Training the Cannon on the bundled sample ({s['n_train']} stars): {s['train_first_s']:.2f} s "
        f"(first call, incl. compilation)"
        + (f", {s['train_warm_s']:.2f} s warm." if s.get("train_warm_s") is not None else "."),
        f"- Simulating the spectra: {s['simulate_s']:.2f} s (not part of the fit timings).",
        "",
        "## Throughput",
        "",
        "Times are wall-clock seconds of `sj.fit_labels` on all N spectra (numpy in, numpy out), after warm-up; "
        f"best and median of {s['repeats']}. *First call* = first `fit_labels` call on one chunk (trace + compile + "
        "run); *compile* ≈ first call − warm call on the same chunk.",
        "",
    ]
    head = "| dtype | init | chunk | first call s | compile s | best s | median s | spectra/s best | spectra/s median |"
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    if cpu_backend:
        head += " per core |"
        sep += "---:|"
    head += " GFLOP/s | mean LM steps | status | median \\|Δ\\|/σ |"
    sep += "---:|---:|---|---:|"
    lines += [head, sep]
    for r in runs:
        init = f"training ×{r['n_starts']}" if r["init"] == "training" else "truth ×1"
        chunk = str(r["chunk_size"]) + (
            "" if r["effective_chunk"] == r["chunk_size"] else f" (→{r['effective_chunk']})"
        )
        row = (
            f"| {r['dtype']} | {init} | {chunk} | {r['first_call_s']:.2f} | {r['compile_s_est']:.2f} | "
            f"{r['best_s']:.3f} | {r['median_s']:.3f} | {r['spectra_per_s_best']:,.0f} | "
            f"{r['spectra_per_s_median']:,.0f} |"
        )
        if cpu_backend:
            row += f" {r['spectra_per_s_best'] / n_cores:,.0f} |"
        row += (
            f" {r['gflops_per_s_best']:.2f} | {r['mean_n_steps']:.2f} | {_fmt_status(r['status'])} | "
            f"{r['accuracy']['median_abs_dev_over_sigma']:.3f} |"
        )
        lines.append(row)
    if any(r.get("process") for r in runs):
        lines += [
            "",
            "Process CPU use during the timed fits (`getrusage`): cores kept busy = (user + system CPU time) / "
            "wall time; a large system-time share and many page faults point at allocation of fresh large "
            "buffers (glibc serves blocks > 32 MiB with `mmap`, and every new mapping is page-faulted in again). "
            "*Other processes*: share of the machine's CPU time used by anything but this benchmark meanwhile.",
            "",
            "| dtype | init | chunk | cores busy | system time | minor page faults / spectrum | other processes |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            pr = r.get("process")
            if pr:
                sysf = "n/a" if pr["system_fraction"] is None else f"{100 * pr['system_fraction']:.0f}%"
                lines.append(
                    f"| {r['dtype']} | {r['init']} | {r['chunk_size']} | {pr['cores_busy']:.2f} | {sysf} | "
                    f"{pr['minor_faults_per_spectrum']:.1f} | {_other(r.get('machine_cpu'))} |"
                )
    acc = runs[0]["accuracy"] if runs else None
    if acc:
        per = ", ".join(
            f"{k}: {acc['median_abs_dev_per_label'][k]:.3g} (σ {acc['median_sigma_per_label'][k]:.3g})"
            for k in acc["median_abs_dev_per_label"]
        )
        lines += [
            "",
            f"Accuracy sanity check (first row): median |fit − truth| per label {per}; median reduced χ² "
            f"{acc['median_rchi2']:.3f}. |Δ|/σ uses the formal errors, which include the Cannon's intrinsic "
            "scatter s² while the simulated spectra have none, so values below the Gaussian 0.674 are expected.",
        ]
    f0 = runs[0]["flops_per_spectrum"] if runs else None
    if f0:
        lines += [
            "",
            "## FLOP model (per spectrum, quadratic-form path for linear emulators)",
            "",
            f"First row ({runs[0]['dtype']}, {runs[0]['init']}): pixel pass (A, b, c) {f0['pixel_pass']:,.0f}; "
            f"template scan {f0['template_scan']:,.0f}; LM {f0['lm']:,.0f} ({f0['lm_per_step']:,} per step per "
            f"start); model flux + χ² {f0['model_and_chi2']:,.0f}; total **{f0['total'] / 1e6:.2f} MFLOP**. "
            "GFLOP/s in the table = total × N / best time (useful work; each row uses its own mean n_steps "
            "and number of starts). The pixel pass dominates, and it is a few [B, P] × [P, ≤ 55] products: "
            f"about {f0['total'] / (2 * s['n_pixels'] * np.dtype(runs[0]['dtype']).itemsize):.1f} FLOP per byte "
            f"of input (flux + ivar in {runs[0]['dtype']}), i.e. the first row reads "
            f"{runs[0]['spectra_per_s_best'] * 2 * s['n_pixels'] * np.dtype(runs[0]['dtype']).itemsize / 1e6:,.0f}"
            " MB/s of input."
            + (
                " For scale, plain XLA matrix products on this machine: "
                + "; ".join(
                    f"{dt} {g['fit_shaped']:.1f} GFLOP/s ([1024, P] × [P, 64]), {g['square']:.1f} GFLOP/s (1024²)"
                    for dt, g in s["reference_gflops"].items()
                )
                + "."
                if s.get("reference_gflops")
                else ""
            ),
        ]
    bd = result.get("breakdown") or []
    if bd:
        lines += _breakdown_markdown(bd, s)
    usage = s.get("cpu_usage_during_run")
    if usage:
        lines += [
            "",
            f"CPU time during the run (all cores, /proc/stat): busy {100 * usage['busy']:.1f}%, idle "
            f"{100 * usage['idle']:.1f}%, steal {100 * usage['steal']:.2f}%; other processes used "
            f"{_other(usage)} of the machine (a large share means these timings were disturbed).",
        ]
    lines += ["", "## Machine", "", machine_markdown(info), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, default=None, help="number of spectra (default 10000; 1000 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: N=1000, no breakdown, no warm re-training")
    p.add_argument("--chunk-sizes", default="1024,4096", help="comma-separated chunk sizes (default 1024,4096)")
    p.add_argument("--dtypes", default="float64,float32", help="comma-separated (default float64,float32)")
    p.add_argument("--inits", default="training,truth", help="comma-separated: training and/or truth")
    p.add_argument("--n-starts", type=int, default=3, help="starts for init='training' (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed full-N fits per configuration (default 3)")
    p.add_argument("--snr", type=float, default=SNR, help="S/N per pixel of the simulated spectra (default 50)")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--target", type=float, default=TARGET, help="target spectra/s (default 5000)")
    p.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the pieces of one chunk (default: on, off with --quick)",
    )
    p.add_argument(
        "--what-if",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --breakdown: also time fit_labels with candidate fixes monkeypatched in (default on)",
    )
    p.add_argument(
        "--what-if-repeats", type=int, default=5, help="interleaved rounds of the what-if variants (default 5)"
    )
    p.add_argument(
        "--what-if-chunk", type=int, default=256, help="smaller chunk size tried as a what-if (0 = none; default 256)"
    )
    p.add_argument("--out-dir", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--name", default=None, help="results file stem (default fit_throughput[_quick])")
    p.add_argument("--no-write", action="store_true", help="print only, write no result files")
    args = p.parse_args(argv)
    args.n = args.n if args.n is not None else (1000 if args.quick else 10_000)
    args.chunk_sizes = [int(c) for c in args.chunk_sizes.split(",") if c.strip()]
    args.dtypes = [np.dtype(d.strip()).name for d in args.dtypes.split(",") if d.strip()]
    args.inits = [i.strip() for i in args.inits.split(",") if i.strip()]
    if args.breakdown is None:
        args.breakdown = not args.quick
    if args.name is None:
        args.name = "fit_throughput_quick" if args.quick else "fit_throughput"
    bad = [i for i in args.inits if i not in ("training", "truth")]
    if bad or any(d not in ("float32", "float64") for d in args.dtypes) or args.n < 1 or args.repeats < 1:
        p.error("inits must be training/truth, dtypes float32/float64, n >= 1, repeats >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = machine_info()
    print(machine_markdown(info), flush=True)
    load, n_cpu = info.get("loadavg_at_start"), info["cpu"]["affinity_count"] or info["cpu"]["os_cpu_count"] or 1
    if load and load[0] > 0.5 * n_cpu:
        print(f"WARNING: load average {load[0]:.2f} on {n_cpu} cores at start: timings will be disturbed", flush=True)
    cpu_before, own_before = cpu_times(), own_cpu_seconds()

    ds = sj.data.load_sample()
    t_train, em = _timed(lambda: sj.CannonEmulator.train(ds))
    t_train_warm = None if args.quick else _timed(lambda: sj.CannonEmulator.train(ds))[0]
    print(f"train: {t_train:.2f} s (first)" + ("" if t_train_warm is None else f", {t_train_warm:.2f} s (warm)"))
    t_sim, (truth, flux64, ivar64) = _timed(lambda: simulate(em, ds, args.n, args.snr, args.seed))
    print(f"simulated {args.n} spectra x {em.n_pixels} px in {t_sim:.2f} s", flush=True)
    data = {
        "float64": (flux64, ivar64),
        "float32": (flux64.astype(np.float32), ivar64.astype(np.float32)) if "float32" in args.dtypes else None,
    }

    seen, chunk_sizes = set(), []
    for c in args.chunk_sizes:  # chunk sizes that compile to the same batch would only re-measure it
        e = effective_chunk(c, args.n)
        if e in seen:
            print(f"chunk size {c} runs as {e} for N={args.n}; skipped (duplicate)")
            continue
        seen.add(e)
        chunk_sizes.append(c)

    runs = []
    for dt in args.dtypes:
        flux, ivar = data[dt]
        for init_mode in args.inits:
            for c in chunk_sizes:
                runs.append(
                    run_config(
                        em,
                        flux,
                        ivar,
                        truth,
                        dtype=np.dtype(dt),
                        init_mode=init_mode,
                        chunk_size=c,
                        n_starts=args.n_starts,
                        repeats=args.repeats,
                    )
                )

    bds = []
    if args.breakdown and "training" in args.inits:
        c = chunk_sizes[0]
        for dt in args.dtypes:
            flux, ivar = data[dt]
            kw = dict(dtype=np.dtype(dt), chunk_size=c, n_starts=args.n_starts)
            try:  # internals may move: keep the main results whatever happens here
                bd = breakdown(em, flux, ivar, reps=5, repeats=args.repeats, **kw)
            except Exception as err:
                print(f"breakdown ({dt}) failed: {type(err).__name__}: {err}", flush=True)
                continue
            print(
                f"breakdown {dt} chunk {bd['chunk']}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in bd.items() if k.endswith("_s")),
                flush=True,
            )
            if args.what_if:
                try:
                    bd["what_if"] = what_ifs(
                        em, flux, ivar, small_chunk=args.what_if_chunk, repeats=args.what_if_repeats, **kw
                    )
                except Exception as err:
                    print(f"what-ifs ({dt}) failed: {type(err).__name__}: {err}", flush=True)
            bds.append(bd)
    ref = {dt: reference_gflops(np.dtype(dt), em.n_pixels) for dt in args.dtypes}
    print("reference matmul GFLOP/s:", ref, flush=True)
    own = None if own_before is None else own_cpu_seconds() - own_before
    usage = cpu_usage(cpu_before, cpu_times(), own)

    em_info = {
        "n": args.n,
        "n_pixels": em.n_pixels,
        "n_labels": em.n_labels,
        "label_names": list(em.label_names),
        "n_terms": int(em.design.shape[1]),
        "n_train": int(ds.n_spectra),
        "snr": args.snr,
        "label_jitter_frac_of_box": JITTER,
        "seed": args.seed,
        "dtypes": args.dtypes,
        "inits": args.inits,
        "n_starts": args.n_starts,
        "chunk_sizes": chunk_sizes,
        "repeats": args.repeats,
        "what_if_repeats": args.what_if_repeats,
        "target": args.target,
        "quick": args.quick,
        "train_first_s": t_train,
        "train_warm_s": t_train_warm,
        "simulate_s": t_sim,
        "cpu_usage_during_run": usage,
        "reference_gflops": ref,
    }
    result = {"benchmark": "fit_throughput", "setup": em_info, "runs": runs, "breakdown": bds, "machine": info}
    md = markdown(result)
    if not args.no_write:
        paths = write_results(args.name, result, md, args.out_dir)
        print("wrote " + ", ".join(str(p) for p in paths))
    print()
    print(md)
    return result


if __name__ == "__main__":
    main()
