"""``fit_labels`` throughput versus batch size for each emulator, on CPU or GPU, with FLOP estimates.

For each emulator (kernel, Cannon, dense Payne) x dtype (float32; float64 with ``--float64``,
the default on CPU) x batch size (``chunk_size``), times ``sj.fit_labels`` on N simulated
spectra (``return_model=False``, default ``init="training"`` with 3 starts) and reports
spectra/s, mean LM steps, the converged fraction, an analytic estimate of the FLOPs per
spectrum, the achieved GFLOP/s and the fraction of the device's peak. The same script runs
on CPU and GPU (the default JAX device is used and recorded).

Acceptance (GPU): >= 20,000 spectra/s for the kernel emulator with 2,000 training stars,
4,000 pixels, 3 labels, float32, recorded with the device name.

Data (numpy, fixed seeds): 3 labels (teff, logg, fe_h); every spectrum is
``exp(-Σ_k τ_k(labels) φ_k(λ))``: one Gaussian absorption line per 25 pixels with an optical
depth τ_k that is a smooth non-linear (sigmoid x sine) function of the labels; Gaussian noise
at S/N 50 (ivar = 2500). 2,000 training stars; test labels uniform in the central 80 % of
the training box.

Emulators, trained here (training time reported, not part of the fit timings):

* kernel: ``KernelEmulator.train`` on all 2,000 stars (the exact model: m = 2,000 kernel
  centres) with a reduced grid γ ∈ {0.1, 0.3, 1.0}, λ = 0.01 (3 eigendecompositions instead
  of the default 5 x 6 grid; fitting cost does not depend on the grid);
* cannon: quadratic ``CannonEmulator.train`` with one scatter iteration (``n_iter=1``);
* payne: dense ``PayneEmulator.train``, hidden (300, 300), SiLU, float32, only
  ``--payne-epochs`` epochs (default 30): a throughput test, not a converged network.

Timing: for each configuration one full-N call first (compilation + run, reported as
*first call*; it also compiles the straggler pass of ``fit_labels`` at the shape the timed
runs need), then at least ``--repeats`` timed full-N calls (more until they add up to
``--min-seconds``), ``time.perf_counter`` around
``fit_labels`` + ``jax.block_until_ready`` on the result arrays (numpy already; the call is
synchronous). Best and median are reported; spectra/s uses the best.

FLOP model (multiply and add counted separately; exp/log and compares not counted). L labels,
P pixels, S starts, K templates (training labels used to rank starts: at most 512 on the
generic path, all of them on the linear path). One *evaluation* is one ``normal(z)`` call of
the LM (model, Jacobian, χ², gradient, Gauss-Newton matrix) plus the per-step L x L solves:

* kernel (generic path): flux + Jacobian by ``jacfwd`` = one [1 + L, m] x [m, P] contraction:
  ``2 m P (1 + L)`` + ``m (4L + G (2 + 2L))`` (distances, exponentials and tangents for
  G γ groups); flux alone ``2 m P``;
* payne dense (generic path): ``2 (1 + L) (L H1 + H1 H2 + H2 P)`` (tangents propagated
  through both hidden layers; the last layer is one [1 + L, H2] x [H2, P] product);
  flux alone ``2 (L H1 + H1 H2 + H2 P)``;
* both generic emulators add per evaluation the normal equations ``P (2L² + 6L + 8)``; per
  spectrum the weights/masks (~12 P), final model + χ² (flux + 4 P), the template ranking
  ``4 P K`` (two [B, P] x [P, K] products), and per chunk the K template fluxes (``K x``
  flux, shared by the chunk);
* cannon (linear path, ``flux = θ v(z)``, T terms, T' = T - 1): per spectrum one pixel pass
  ``P (T'(T' + 1) + 2T' + 14)`` builds the quadratic form (A, b, c), the template ranking
  costs ``2K (T'² + T') + 3K``, each evaluation ``2T'²(1 + L) + T'(5 + 5L + 2L²) + 4L``
  (independent of P), final model + χ² ``2 P T + 4 P``.

Evaluations per spectrum (``fit_labels`` internals, mirrored here: phase 1 gives every
spectrum a budget of 10 LM steps; with S > 1 starts each start is screened by 2 LM steps and
only the best continues: the objective, gradient and normal matrix at the starts come from the
templates' cached Jacobians, the first step needs a full evaluation, the second only the
objective (model flux), and the start that continues one full evaluation; spectra not converged
after phase 1 are refitted in a second pass from their best point): in phase 1 ``S + 1 + (n₁ − 2)``
full evaluations (the Cannon's linear path ``2S + 1 + (n₁ − 2)``: no cached template normals) and
``S`` objective-only ones, in phase 2 ``n₂ + 1``, plus the final model and χ² of each phase;
with the kernel emulator's checked starts (its template Jacobians cached) ``n₁`` full and
``S − 1`` objective-only evaluations in phase 1 (a refit from a checked start counts its steps in
n₁; its first evaluation is not counted); where n₁, n₂ are
the step counts of the spectrum in each phase (from ``FitResult.n_steps``). This is the
*useful* work. Under ``vmap`` a ``while_loop`` runs every member of a batch until the slowest
stops, so the *executed* work counts, per chunk, every row (padding included) for each LM step
the chunk takes together, which for non-linear emulators is until at most 1/8 of the chunk is
unfinished, then 1/8 of the chunk for the steps of its slowest row (``_lm.multistart``; the
Cannon's linear path steps the whole chunk to the end); both are reported. As a cross-check the
compiled XLA cost analysis (``jax.jit(...).lower(...).compile().cost_analysis()``) of one batched
emulator evaluation
(flux + Jacobian; the Cannon's pixel pass) is recorded next to the analytic count (XLA also
counts compares and selects, hence ~1.1 for the Cannon's mask-heavy pixel pass).

Peak: a table of nominal dense peaks (NVIDIA data sheets: H100 SXM / H200 67 TFLOP/s FP32
non-tensor, 34 FP64, 495 TF32 tensor; H100 PCIe 51 / 26 / 378; A100 19.5 / 9.7 / 156); on a
CPU the "peak" is the practical peak measured here: the GFLOP/s of a large matrix product in
the same dtype (best of 5, measured before and after the fits; the better of the two, since a
shared machine's load drifts). On a GPU the matrix product is measured as well (and, in float32,
also at precision HIGHEST). NB: JAX's default matmul precision on NVIDIA GPUs lets float32
products use TF32 tensor cores, so float32 fits can exceed the FP32 non-tensor figure; the
fraction is still reported against the FP32 figure (the TF32 figure is recorded too).

Host side: the numpy work ``fit_labels`` does on the host (input checks over [N, P], ids, the
per-chunk median S/N) is replicated and timed on the same arrays; it bounds the spectra/s of
any device, since one Python thread does it.

Run (a checkout with a dev environment; on a GPU machine install JAX with CUDA first:
``pip install -e . "jax[cuda12]"``)::

    python benchmarks/gpu_fit.py             # CPU: N = 512, batches 64, 256, 512, float32 + float64
                                             # GPU: N = 65,536, batches 64 ... 4096, float32
    python benchmarks/gpu_fit.py --float64   # GPU: float64 as well
    python benchmarks/gpu_fit.py --quick     # smoke run: 400 stars x 1,000 px, N = 256

Results: ``benchmarks/results/gpu_fit_<platform>.{json,md}`` (``gpu_fit_cpu``, ``gpu_fit_gpu``;
``_quick`` suffix with ``--quick``).
"""

from __future__ import annotations

import argparse
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

TARGET = 20_000.0  # spectra/s, kernel emulator, float32, GPU
SNR = 50.0
LABEL_NAMES = ("teff", "logg", "fe_h")
LO = np.array([4000.0, 1.0, -2.0])
HI = np.array([7000.0, 5.0, 0.5])
SEED = 20250601
EMULATORS = ("kernel", "cannon", "payne")
KERNEL_GAMMAS = (0.1, 0.3, 1.0)
KERNEL_LAMBDAS = (0.01,)
# Mirrors of fit_labels internals used by the FLOP model (slamjax/_fit.py, slamjax/_fit_core.py, slamjax/_lm.py).
MAX_TEMPLATES_GENERIC = 512
FIRST_BUDGET = 10
SCREEN_STEPS = 2
TAIL_FRACTION = 8  # multistart steps only the unfinished rows once at most 1/8 of a chunk is left
TEMPLATE_JAC_MAX_BYTES = 64 * 2**20  # template Jacobians cached up to this size (checked starts need them)
# Nominal dense peaks in TFLOP/s (no sparsity): FP32 non-tensor, FP64 non-tensor, TF32 tensor.
# Matched against jax's device_kind in this order (first substring that occurs wins).
GPU_PEAKS = (
    ("H200", "H200", 67.0, 34.0, 495.0),
    ("H100 PCIe", "H100 PCIe", 51.0, 26.0, 378.0),
    ("H100 NVL", "H100 NVL", 60.0, 30.0, 418.0),
    ("H100", "H100 SXM", 67.0, 34.0, 495.0),
    ("A100", "A100", 19.5, 9.7, 156.0),
)


# ------------------------------------------------------------------------ data
def line_model(n_pix: int, seed: int = SEED) -> dict:
    """A fixed random line list: centres, widths, label responses of the optical depths."""
    rng = np.random.default_rng(seed)
    k = max(8, n_pix // 25)
    centre = rng.uniform(-5, n_pix + 5, k)
    width = rng.uniform(1.0, 3.0, k)
    x = np.arange(n_pix)
    return {
        "profile": np.exp(-0.5 * ((x[None, :] - centre[:, None]) / width[:, None]) ** 2),  # [K, P]
        "coef": rng.normal(size=(k, 3)) * 2.0,
        "offset": rng.normal(size=k),
        "phase": rng.uniform(0, 2 * np.pi, k),
        "depth": rng.uniform(0.05, 0.5, k),
    }


def clean_flux(labels, model) -> np.ndarray:
    """Noise-free spectra [N, P]: exp(-Σ τ_k(labels) φ_k), τ smooth and non-linear in the labels."""
    z = (labels - (LO + HI) / 2) / ((HI - LO) / 2)  # [-1, 1] on the training box
    a = z @ model["coef"].T + model["offset"]
    tau = model["depth"] / (1.0 + np.exp(-a)) * (1.0 + 0.3 * np.sin(1.5 * z[:, 2:3] + model["phase"]))
    return np.exp(-(tau @ model["profile"]))


def simulate(n, model, seed, box=(0.0, 1.0)):
    """Labels [N, 3] uniform in a fraction ``box`` of the training box, flux and ivar at S/N 50."""
    rng = np.random.default_rng(seed)
    lo, hi = LO + box[0] * (HI - LO), LO + box[1] * (HI - LO)
    labels = rng.uniform(lo, hi, size=(n, 3))
    flux = clean_flux(labels, model)
    flux += rng.normal(size=flux.shape) / SNR
    ivar = np.full(flux.shape, SNR**2)
    return labels, flux, ivar


# ------------------------------------------------------------------------ helpers
def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return time.perf_counter() - t0, out


def effective_chunk(chunk_size: int, n: int) -> int:
    """The compiled batch size ``fit_labels`` uses (mirrors slamjax/_fit.py and slamjax/_chunking.py)."""
    return int(min(chunk_size, 1 << max(0, int(np.ceil(np.log2(n))))))


def device_peak(device) -> dict:
    """Nominal peak TFLOP/s of a known GPU (None entries when unknown or on CPU)."""
    kind = device.device_kind
    if device.platform == "gpu":
        for key, name, fp32, fp64, tf32 in GPU_PEAKS:
            if key.lower() in kind.lower():
                return {"matched": name, "float32": fp32, "float64": fp64, "tf32_tensor": tf32}
    return {"matched": None, "float32": None, "float64": None, "tf32_tensor": None}


def matmul_gflops(dtype, n: int, reps: int = 3, precision=None) -> float:
    """GFLOP/s of an [n, n] x [n, n] matrix product in ``dtype`` (best of ``reps`` after a warm-up)."""
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.random((n, n)).astype(dtype))
    b = jax.device_put(rng.random((n, n)).astype(dtype))
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    jax.block_until_ready(mm(a, b))
    best = min(_timed(lambda: mm(a, b))[0] for _ in range(reps))
    return 2.0 * n**3 / best / 1e9


def _cost_flops(fn, *args) -> float | None:
    """FLOPs XLA's cost analysis reports for ``jax.jit(fn)(*args)`` (None if unavailable)."""
    try:
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - best effort on every backend
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def host_floor(flux, ivar, batch: int) -> dict:
    """Seconds of the numpy work ``fit_labels`` does on the host for these arrays (a replica of
    slamjax/_fit.py and ``snr_of``): the input checks over [N, P] (ivar >= 0, finite flux; before
    any device work), the default ids, and the per-chunk median S/N (overlaps the device's work
    on that chunk)."""
    t0 = time.perf_counter()
    bool(np.all(ivar >= 0))
    bool(np.all(np.isfinite(flux)))
    t1 = time.perf_counter()
    np.arange(flux.shape[0]).astype(str)
    t2 = time.perf_counter()
    for i0 in range(0, flux.shape[0], batch):
        f, iv = flux[i0 : i0 + batch], ivar[i0 : i0 + batch]
        s = np.abs(f) * np.sqrt(iv)
        good = (iv > 0) & np.isfinite(s)
        good.sum(axis=1)
        m = s.shape[1] // 2
        s.partition(m, axis=1)
        upper = s[:, m].astype(np.float64)
        if s.shape[1] % 2 == 0:  # even count: mean of the two middle values
            upper = 0.5 * (upper + s[:, :m].max(axis=1))
    t3 = time.perf_counter()
    return {"checks_s": t1 - t0, "ids_s": t2 - t1, "snr_s": t3 - t2, "seconds": t3 - t0}


# ------------------------------------------------------------------------ emulators
def build_emulator(kind: str, ds, payne_epochs: int):
    if kind == "kernel":
        em = sj.KernelEmulator.train(ds, gamma_grid=KERNEL_GAMMAS, lam_grid=KERNEL_LAMBDAS)
        note = (
            f"exact kernel model, m = {ds.n_spectra} centres, γ grid {KERNEL_GAMMAS}, λ grid {KERNEL_LAMBDAS} "
            "(reduced grid for a quick build)"
        )
    elif kind == "cannon":
        em = sj.CannonEmulator.train(ds, order=2, n_iter=1)
        note = "quadratic Cannon (10 terms), one scatter iteration (n_iter=1)"
    elif kind == "payne":
        em = sj.PayneEmulator.train(
            ds, hidden=(300, 300), max_epochs=payne_epochs, patience=payne_epochs, dtype=np.float32, key=0
        )
        note = (
            f"dense 300 x 300 SiLU network trained for only {payne_epochs} epochs: "
            "a throughput test, not a converged emulator"
        )
    else:
        raise ValueError(kind)
    jax.block_until_ready(jax.tree.leaves(em))
    return em, note


def emulator_dims(kind: str, em) -> dict:
    d = {"P": int(em.n_pixels), "L": int(em.n_labels), "K_train": int(np.asarray(em.space.train).shape[0])}
    if kind == "kernel":
        d |= {"m": int(em.x_train.shape[0]), "G": len(em.groups)}
        d["K"] = min(d["K_train"], MAX_TEMPLATES_GENERIC)
    elif kind == "payne":
        h1, h2 = em.hidden
        d |= {"H1": int(h1), "H2": int(h2)}
        d["K"] = min(d["K_train"], MAX_TEMPLATES_GENERIC)
    else:
        d |= {"T": int(em.design.shape[1])}
        d["K"] = d["K_train"]
    return d


def flop_costs(kind: str, d: dict) -> dict:
    """Analytic FLOP costs (module docstring): per evaluation, per fit pass, per template ranking."""
    p, nl, k = d["P"], d["L"], d["K"]
    lm = 2 * (2 * (2 * nl**3 // 3 + 2 * nl * nl)) + 10 * nl  # step solve + decrement solve per step
    if kind == "cannon":
        t = d["T"] - 1
        quad = 2 * t * t * (1 + nl) + t * (5 + 5 * nl + 2 * nl * nl) + 4 * nl
        pass_ = p * (t * (t + 1) + 2 * t + 14) + 2 * p * d["T"] + 4 * p + 2 * nl**3
        return {
            "emulator_fj": None,
            "emulator_f": 2 * p * d["T"],
            "evaluation": quad + lm,
            "objective": 2 * t * t + 4 * t + 2 * nl,  # the quadratic form alone (last screening step)
            "start_evaluations": True,  # no cached template normals on the linear path
            "pass_per_row": pass_,
            "pixel_pass": p * (t * (t + 1) + 2 * t + 14),
            "templates_per_row": 2 * k * (t * t + t) + 3 * k,
            "templates_per_chunk": k * (t * t + t),
        }
    if kind == "kernel":
        m, g = d["m"], d["G"]
        fj = 2 * m * p * (1 + nl) + m * (4 * nl + g * (2 + 2 * nl))
        f = 2 * m * p + m * (4 + 2 * g)
    else:
        h1, h2 = d["H1"], d["H2"]
        f = 2 * (nl * h1 + h1 * h2 + h2 * p)
        fj = (1 + nl) * f
    normal = p * (2 * nl * nl + 6 * nl + 8)
    return {
        "emulator_fj": fj,
        "emulator_f": f,
        "evaluation": fj + normal + lm,
        "objective": f + 3 * p,  # model flux and Σ w r² only (last screening step)
        "pass_per_row": 12 * p + f + 4 * p + 2 * nl**3,
        "templates_per_row": 4 * p * k,
        "templates_per_chunk": k * (f + p),
    }


def _lockstep_evals(steps, chunk: int, tail: bool) -> float:
    """Evaluations a compiled chunk executes for the main LM steps ``steps`` of its rows (padding
    rows take none). ``_lm.multistart`` steps the whole chunk while more than chunk // TAIL_FRACTION
    rows are unfinished, then only a batch of that many until its slowest row is done; the linear
    path (``tail=False``) steps the whole chunk until its slowest row is done."""
    steps = np.sort(np.concatenate([steps, np.zeros(chunk - steps.size, steps.dtype)]))
    top = int(steps[-1]) if steps.size else 0
    small = chunk // TAIL_FRACTION
    if not tail or small == 0:
        return float(chunk * top)
    together = int(steps[chunk - small - 1])  # steps until at most `small` rows are unfinished
    return float(chunk * together + small * (top - together))


def flops_per_spectrum(costs: dict, n_steps, status, batch: int, n_starts: int, checked: bool = False) -> dict:
    """Useful and executed (lockstep) FLOPs per spectrum, from the per-spectrum LM step counts.

    ``checked``: the kernel emulator's checked starts (``fit_labels`` fits the best-ranked start
    alone, one full evaluation per LM step, and each other start gets one objective-only step).
    A spectrum refitted from a checked start counts the steps of both fits in ``n_steps``; its
    refit's first evaluation is not counted (the result does not say which spectra were refitted)."""
    n = n_steps.size
    s = n_starts
    # Full evaluations (model, Jacobian, normal matrix): SCREEN_STEPS - 1 steps per start and one at the
    # start that continues (generic emulators take the starts' own from the templates' cached Jacobians,
    # the linear path evaluates them); objective-only: the last screening step of each start. (The final
    # model and χ² of each phase are in pass_per_row.)
    starts = s if costs.get("start_evaluations") else 0
    screen = (SCREEN_STEPS - 1) * s + 1 + starts if s > 1 else 0
    screen_obj = s if s > 1 else 0
    k0 = SCREEN_STEPS if s > 1 else 0
    if checked and s > 1:
        screen, screen_obj, k0 = 0, s - 1, 0
    n1 = np.minimum(n_steps, FIRST_BUDGET)
    main1 = np.maximum(n1 - k0, 0)
    redo = (n_steps >= FIRST_BUDGET) & (status != int(sj.Status.BAD_INPUT)) & (status != int(sj.Status.NON_FINITE))
    main2 = np.where(redo, n_steps - FIRST_BUDGET, 0)
    ev, ob = costs["evaluation"], costs["objective"]
    tail = not costs.get("start_evaluations")  # the linear path keeps one loop per problem
    chunk = effective_chunk(batch, n)
    n_chunks = -(-n // chunk)
    useful_full = screen + main1 + redo * (main2 + 1)
    useful_obj = screen_obj
    useful_evals = useful_full + useful_obj * ob / ev  # in full-evaluation equivalents
    useful = (
        useful_evals.mean() * ev
        + (1 + redo.mean()) * costs["pass_per_row"]
        + costs["templates_per_row"]
        + costs["templates_per_chunk"] * n_chunks / n
    )
    exec_evals = 0.0
    for i0 in range(0, n, chunk):
        exec_evals += chunk * (screen + screen_obj * ob / ev) + _lockstep_evals(main1[i0 : i0 + chunk], chunk, tail)
    rows = n_chunks * chunk
    idx = np.flatnonzero(redo)
    n_chunks2, rows2 = 0, 0
    if idx.size:
        chunk2 = effective_chunk(batch, idx.size)
        for i0 in range(0, idx.size, chunk2):
            exec_evals += chunk2 + _lockstep_evals(main2[idx[i0 : i0 + chunk2]], chunk2, tail)
            n_chunks2 += 1
        rows2 = n_chunks2 * chunk2
    executed = (
        exec_evals * ev
        + (rows + rows2) * costs["pass_per_row"]
        + rows * costs["templates_per_row"]
        + n_chunks * costs["templates_per_chunk"]
    ) / n
    return {
        "useful": float(useful),
        "executed": float(executed),
        "evaluations_useful": float(useful_evals.mean()),
        "evaluations_executed": float(exec_evals / n),
        "refitted_fraction": float(redo.mean()),
        "chunks": [n_chunks, n_chunks2],
    }


def cost_analysis_check(kind: str, em, dtype, d: dict, costs: dict, batch: int = 256) -> dict:
    """XLA cost analysis of one batched emulator evaluation, per spectrum, next to the analytic count."""
    em_c = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, em)
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.uniform(LO, HI, size=(batch, d["L"])).astype(dtype))
    out = {"batch": batch}
    if kind == "cannon":
        # The fit's linear path: the per-spectrum pixel pass that builds A, b, c (replica of slamjax/_fit_core.py).
        theta0, theta = em_c.design[:, 0], em_c.design[:, 1:]
        iu, ju = np.triu_indices(theta.shape[1])
        tri = theta[:, iu] * theta[:, ju]
        s2 = em_c.pixel_variance
        ivar = jnp.full((batch, d["P"]), SNR**2, dtype)
        flux = jnp.ones((batch, d["P"]), dtype)

        def pixel_pass(ivar, flux):
            good = (ivar > 0) & jnp.isfinite(flux) & jnp.isfinite(s2)[None, :]
            w = jnp.where(good, ivar / (1.0 + jnp.where(good, ivar * s2[None, :], 0.0)), 0.0)
            fc = jnp.where(good, flux, 0.0) - theta0[None, :]
            return w @ tri, (w * fc) @ theta, jnp.sum(w * fc * fc, axis=1), jnp.sum(good, axis=1)

        xla = _cost_flops(pixel_pass, ivar, flux)
        out |= {"what": "pixel pass (weights, A, b, c)", "analytic": costs["pixel_pass"]}
    else:
        xla = _cost_flops(jax.vmap(em_c.flux_and_jacobian), labels)
        out |= {"what": "flux + Jacobian", "analytic": costs["emulator_fj"]}
    out["xla"] = None if xla is None else xla / batch
    out["ratio"] = None if xla is None else out["xla"] / out["analytic"]
    return out


# ------------------------------------------------------------------------ one configuration
def run_config(em, kind, costs, flux, ivar, truth, *, dtype, batch, repeats, min_seconds, n_starts):
    n = flux.shape[0]

    def call():
        # workers=1: one chunk of `batch` spectra at a time, the quantity this benchmark varies (the CPU
        # default runs several chunks at once; an accelerator's default is 1 anyway).
        return sj.fit_labels(
            em, flux, ivar, n_starts=n_starts, chunk_size=batch, dtype=dtype, return_model=False, workers=1
        )

    first_s, _ = _timed(call)
    times, res = [], None
    # At least `repeats` timed runs, more (up to 50) until they add up to `min_seconds`.
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 50):
        res = None
        t, res = _timed(call)
        times.append(t)
    best = min(times)
    rate = n / best
    s_eff = min(n_starts, int(np.asarray(em.space.train).shape[0]))
    k_templates = min(int(np.asarray(em.space.train).shape[0]), MAX_TEMPLATES_GENERIC)
    jac_bytes = (1 << int(np.ceil(np.log2(k_templates)))) * em.n_pixels * em.n_labels * np.dtype(dtype).itemsize
    checked = kind != "cannon" and em._check_starts_by_one_step and jac_bytes <= TEMPLATE_JAC_MAX_BYTES
    fl = flops_per_spectrum(costs, res.n_steps, res.status, batch, s_eff, checked=checked)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = np.abs(res.labels - truth) / res.labels_err
    row = {
        "emulator": kind,
        "dtype": np.dtype(dtype).name,
        "batch": batch,
        "compiled_batch": effective_chunk(batch, n),
        "n": n,
        "first_call_s": first_s,
        "times_s": times,
        "best_s": best,
        "median_s": statistics.median(times),
        "spectra_per_s": rate,
        "mean_steps": float(res.n_steps.mean()),
        "max_steps": int(res.n_steps.max()),
        "converged_fraction": float(np.mean(res.status == int(sj.Status.CONVERGED))),
        "status_counts": {sj.Status(int(k)).name: int(v) for k, v in zip(*np.unique(res.status, return_counts=True))},
        "median_abs_pull": np.nanmedian(pull, axis=0).round(3).tolist(),
        "flops_per_spectrum": fl,
        "gflops_useful": fl["useful"] * rate / 1e9,
        "gflops_executed": fl["executed"] * rate / 1e9,
    }
    print(
        f"  {kind:6s} {row['dtype']:7s} batch {batch:5d}: {rate:9,.0f} spectra/s (best {best:.3f} s, first call "
        f"{first_s:.2f} s); steps {row['mean_steps']:.2f}, converged {row['converged_fraction']:.1%}; "
        f"{fl['useful'] / 1e6:.1f} MFLOP/spectrum useful, {fl['executed'] / 1e6:.1f} executed; "
        f"{row['gflops_useful']:.1f} / {row['gflops_executed']:.1f} GFLOP/s",
        flush=True,
    )
    return row


# ------------------------------------------------------------------------ report
def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(results: dict, info: dict) -> str:
    s = results["setup"]
    dev = results["device"]
    peak = dev["nominal_peak_tflops"]
    gpu = dev["platform"] == "gpu"
    lines = [
        "# `fit_labels` throughput versus batch size (`benchmarks/gpu_fit.py`)",
        "",
        f"Device: **{dev['kind']}** (platform `{dev['platform']}`, {dev['name']}). "
        f"N = {s['n']:,} test spectra of {s['pixels']:,} px, {len(LABEL_NAMES)} labels, S/N {SNR:g}; emulators trained "
        f"on {s['train_stars']:,} synthetic stars; `fit_labels(..., chunk_size=batch, dtype=dtype, "
        f'return_model=False, workers=1)`, default `init="training"` with {s["n_starts"]} starts; best of at least '
        f"{s['repeats']} timed runs (more until they add up to {s['min_seconds']:g} s) after a full-N first call "
        "(compilation included in *first call* only).",
        "",
    ]
    acc = results.get("acceptance")
    if acc:
        lines += [f"**Acceptance** ({acc['criterion']}): {acc['verdict']}", ""]
    lines += ["## Peak used for the fractions", ""]
    if dev["platform"] == "gpu":
        if peak["matched"]:
            lines.append(
                f"- Nominal ({peak['matched']}): FP32 non-tensor {peak['float32']:g} TFLOP/s, FP64 {peak['float64']:g} "
                f"TFLOP/s (TF32 tensor {peak['tf32_tensor']:g} TFLOP/s dense: JAX's default matmul precision lets "
                "float32 products use TF32, so float32 may exceed the FP32 figure)."
            )
        else:
            lines.append(f"- Device kind `{dev['kind']}` is not in the peak table: no % of peak (use `--peak-tflops`).")
    else:
        lines.append("- CPU: the practical peak measured here, a large matrix product in the same dtype.")
    for dt, g in results["matmul_gflops"].items():
        lines.append(
            f"- Measured matrix product ({g['n']}², {dt}, default precision): **{g['gflops']:,.1f} GFLOP/s** "
            f"(best of 5 at the start: {g['start']:,.1f}, at the end: {g['end']:,.1f})"
        )
        if g.get("highest"):
            lines.append(f"- Measured matrix product ({g['n']}², {dt}, precision HIGHEST): {g['highest']:,.1f} GFLOP/s")
    lines.append(f"- `jax_default_matmul_precision`: {results['matmul_precision']}")
    lines.append("")

    for kind in s["emulators"]:
        e = results["emulators"][kind]
        d = e["dims"]
        lines += [f"## {kind}", "", f"{e['note']}; trained in {e['train_s']:.1f} s. Dimensions: {d}.", ""]
        lines += [
            "| dtype | batch | spectra/s | best s | first call s | mean LM steps | converged | MFLOP/spectrum "
            "useful / executed | GFLOP/s useful | GFLOP/s executed | % peak (executed) |"
            + (" % matmul (executed) |" if gpu else "")
            + " median \\|Δ\\|/σ |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---|",
        ]
        for r in results["rows"]:
            if r["emulator"] != kind:
                continue
            fl = r["flops_per_spectrum"]
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['spectra_per_s']:,.0f} | {r['best_s']:.3f} | "
                f"{r['first_call_s']:.2f} | {r['mean_steps']:.2f} | {r['converged_fraction']:.1%} | "
                f"{fl['useful'] / 1e6:.2f} / {fl['executed'] / 1e6:.2f} | {r['gflops_useful']:,.1f} | "
                f"{r['gflops_executed']:,.1f} | {_pct(r['peak_fraction_executed'])} | "
                + (f"{_pct(r['matmul_fraction_executed'])} | " if gpu else "")
                + f"{r['median_abs_pull']} |"
            )
        c = e["costs"]
        lines += ["", "FLOP model (per spectrum unless noted):", ""]
        lines.append(f"- per LM evaluation (model, Jacobian, normal equations, solves): {c['evaluation']:,}")
        if c["emulator_fj"]:
            lines.append(f"- of which emulator flux + Jacobian: {c['emulator_fj']:,}; flux alone {c['emulator_f']:,}")
        lines.append(
            f"- per fit pass (weights, {'pixel pass, ' if kind == 'cannon' else ''}final model, χ², covariance): "
            f"{c['pass_per_row']:,}"
        )
        lines.append(
            f"- start ranking over K = {d['K']} templates: {c['templates_per_row']:,} per spectrum + "
            f"{c['templates_per_chunk']:,} per chunk"
        )
        for dt, ca in e["cost_analysis"].items():
            if ca["xla"] is None:
                lines.append(f"- XLA cost analysis ({dt}, {ca['what']}): not available on this backend")
            else:
                lines.append(
                    f"- XLA cost analysis ({dt}, {ca['what']}, batch {ca['batch']}): {ca['xla']:,.0f} per spectrum vs "
                    f"analytic {ca['analytic']:,} (ratio {ca['ratio']:.3f})"
                )
        lines.append("")

    lines += [
        "Columns: *useful* FLOPs count each spectrum's own LM steps; *executed* FLOPs count every row of a "
        "chunk (padding included) for the steps the chunk takes together (a vmapped `while_loop` runs in "
        "lockstep), and for the emulators other than the Cannon 1/8 of the chunk for the steps of its slowest "
        "rows after that (the LM steps only the unfinished ones once at most 1/8 are left). "
        "% peak = executed GFLOP/s / peak. median |Δ|/σ: |fit − truth| / formal error per label (sanity check; "
        "the emulators are approximate, so values above 0.67 are expected).",
        "",
        "## Host-side work (replica)",
        "",
        "The numpy work `fit_labels` does on the host, replicated and timed on the same arrays: the input checks "
        "over [N, P] (before any device work), the default ids, and the per-chunk median S/N (overlapped with the "
        "device's work on that chunk). One Python thread does it whatever the device, so N / total bounds the "
        "spectra/s of any device.",
        "",
        "| dtype | batch | checks s | ids s | S/N median s | total s | max spectra/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for h in results["host_floor"]:
        lines.append(
            f"| {h['dtype']} | {h['batch']} | {h['checks_s']:.3f} | {h['ids_s']:.3f} | {h['snr_s']:.3f} | "
            f"{h['seconds']:.3f} | {h['spectra_per_s']:,.0f} |"
        )
    u = results.get("cpu_usage")
    if u:
        lines += [
            "",
            f"CPU time during the run (all cores, /proc/stat): busy {u['busy']:.1%}, steal {u['steal']:.2%}"
            + (f"; other processes used {u['other_processes']:.0%} of the machine" if "other_processes" in u else "")
            + " (a large share means these timings were disturbed).",
        ]
    lines += ["", "## Machine", "", machine_markdown(info)]
    return "\n".join(lines)


# ------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 400 stars x 1,000 px, N = 256, batches 64, 256")
    ap.add_argument("--n", type=int, default=None, help="test spectra (default GPU 65,536, CPU 512, quick 256)")
    ap.add_argument(
        "--batches", default=None, help="comma-separated chunk sizes (default GPU 64,256,1024,4096; CPU 64,256,512)"
    )
    ap.add_argument("--emulators", default=",".join(EMULATORS), help="comma-separated subset of kernel,cannon,payne")
    ap.add_argument("--float64", action=argparse.BooleanOptionalAction, default=None, help="also float64")
    ap.add_argument("--repeats", type=int, default=None, help="minimum timed runs per configuration (GPU 2, CPU 1)")
    ap.add_argument(
        "--min-seconds", type=float, default=None, help="repeat timed runs until they add up to this (GPU 3, CPU 1)"
    )
    ap.add_argument("--n-starts", type=int, default=3)
    ap.add_argument("--train-stars", type=int, default=None, help="default 2,000 (quick 400)")
    ap.add_argument("--pixels", type=int, default=None, help="default 4,000 (quick 1,000)")
    ap.add_argument("--payne-epochs", type=int, default=None, help="default 30 (quick 5)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device peak (TFLOP/s, fit dtype)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--name", default=None, help="results name (default gpu_fit_<platform>[_quick])")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    q = args.quick
    n = args.n or (256 if q else 65_536 if on_gpu else 512)
    batches = (
        [int(b) for b in args.batches.split(",")]
        if args.batches
        else [64, 256]
        if q
        else [64, 256, 1024, 4096]
        if on_gpu
        else [64, 256, 512]
    )
    use64 = (not on_gpu) if args.float64 is None else args.float64
    dtypes = [np.float32, np.float64] if use64 else [np.float32]
    repeats = args.repeats or (2 if on_gpu else 1)
    min_seconds = args.min_seconds if args.min_seconds is not None else (3.0 if on_gpu else 0.3 if q else 1.0)
    m = args.train_stars or (400 if q else 2_000)
    p = args.pixels or (1_000 if q else 4_000)
    epochs = args.payne_epochs or (5 if q else 30)
    kinds = [k for k in args.emulators.split(",") if k]
    for k in kinds:
        if k not in EMULATORS:
            ap.error(f"unknown emulator {k!r}")
    print(f"device {device} ({device.device_kind}); N = {n}, batches {batches}, dtypes {[d.__name__ for d in dtypes]}")

    # Peak and matmul reference.
    peak = device_peak(device)
    mm_n = 8192 if on_gpu else (1024 if q else 2048)
    mm = {np.dtype(dt).name: {"n": mm_n, "start": matmul_gflops(dt, mm_n, reps=5)} for dt in dtypes}
    if on_gpu and np.float32 in dtypes:
        mm["float32"]["highest"] = matmul_gflops(np.float32, mm_n, reps=5, precision=jax.lax.Precision.HIGHEST)
    print(f"matmul {mm_n}²: {mm}", flush=True)

    # Data.
    t0 = time.perf_counter()
    model = line_model(p)
    train_labels, train_flux, train_ivar = simulate(m, model, SEED + 1)
    ds = sj.SpectrumSet(
        np.linspace(15_100.0, 16_900.0, p), train_flux, train_ivar, labels=train_labels, label_names=LABEL_NAMES
    )
    truth, flux64, ivar64 = simulate(n, model, SEED + 2, box=(0.1, 0.9))
    data = {np.dtype(dt).name: (flux64.astype(dt), ivar64.astype(dt)) for dt in dtypes}
    if not use64:
        del flux64, ivar64
    print(f"simulated {m} training + {n} test spectra of {p} px in {time.perf_counter() - t0:.1f} s", flush=True)

    results = {
        "setup": {
            "n": n,
            "batches": batches,
            "dtypes": [np.dtype(d).name for d in dtypes],
            "repeats": repeats,
            "min_seconds": min_seconds,
            "n_starts": args.n_starts,
            "train_stars": m,
            "pixels": p,
            "payne_epochs": epochs,
            "emulators": kinds,
            "snr": SNR,
            "seed": SEED,
            "quick": q,
        },
        "device": {
            "platform": device.platform,
            "kind": device.device_kind,
            "name": str(device),
            "nominal_peak_tflops": peak,
        },
        "matmul_gflops": mm,
        "matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None)),
        "emulators": {},
        "rows": [],
    }
    before, own0 = cpu_times(), own_cpu_seconds()
    for kind in kinds:
        train_s, (em, note) = _timed(lambda kind=kind: build_emulator(kind, ds, epochs))
        dims = emulator_dims(kind, em)
        costs = flop_costs(kind, dims)
        ca = {np.dtype(dt).name: cost_analysis_check(kind, em, dt, dims, costs) for dt in dtypes}
        print(f"{kind}: trained in {train_s:.1f} s; {dims}; cost analysis {ca}", flush=True)
        results["emulators"][kind] = {
            "note": note,
            "train_s": train_s,
            "dims": dims,
            "costs": costs,
            "cost_analysis": ca,
        }
        # dtypes alternate within each batch size, so that drifts in machine load hit both alike
        for batch in batches:
            for dt in dtypes:
                f, iv = data[np.dtype(dt).name]
                row = run_config(
                    em,
                    kind,
                    costs,
                    f,
                    iv,
                    truth,
                    dtype=dt,
                    batch=batch,
                    repeats=repeats,
                    min_seconds=min_seconds,
                    n_starts=args.n_starts,
                )
                results["rows"].append(row)
        del em
    results["cpu_usage"] = cpu_usage(before, cpu_times(), own_cpu_seconds() - own0)
    results["rows"].sort(key=lambda r: (kinds.index(r["emulator"]), r["dtype"], r["batch"]))

    # Matrix-product reference again at the end; the better of the two is the "measured" figure.
    for dt in dtypes:
        g = mm[np.dtype(dt).name]
        g["end"] = matmul_gflops(dt, mm_n, reps=5)
        g["gflops"] = max(g["start"], g["end"])
    print(f"matmul {mm_n}²: {mm}", flush=True)
    for r in results["rows"]:
        mm_g = mm[r["dtype"]]["gflops"]
        if args.peak_tflops:
            pk = args.peak_tflops * 1e3
        elif on_gpu:
            pk = None if peak[r["dtype"]] is None else peak[r["dtype"]] * 1e3
        else:
            pk = mm_g
        r["peak_gflops"] = pk
        r["peak_fraction_useful"] = r["gflops_useful"] / pk if pk else None
        r["peak_fraction_executed"] = r["gflops_executed"] / pk if pk else None
        r["matmul_fraction_executed"] = r["gflops_executed"] / mm_g

    results["host_floor"] = []
    for dt in dtypes:
        f, iv = data[np.dtype(dt).name]
        for batch in sorted({batches[0], batches[-1]}):
            h = host_floor(f, iv, effective_chunk(batch, n))
            h |= {"dtype": np.dtype(dt).name, "batch": batch, "spectra_per_s": n / h["seconds"]}
            results["host_floor"].append(h)

    kernel32 = [r for r in results["rows"] if r["emulator"] == "kernel" and r["dtype"] == "float32"]
    if kernel32:
        best = max(kernel32, key=lambda r: r["spectra_per_s"])
        full = m == 2_000 and p == 4_000 and not q
        ok = best["spectra_per_s"] >= TARGET
        crit = "GPU, kernel emulator 2,000 stars x 4,000 px, 3 labels, float32: >= 20,000 spectra/s"
        verdict = f"best {best['spectra_per_s']:,.0f} spectra/s at batch {best['batch']} on {device.device_kind}" + (
            (" — **met**" if ok else " — **not met**")
            if on_gpu and full
            else " (not evaluated: " + ("not a GPU" if not on_gpu else "not the acceptance configuration") + ")"
        )
        results["acceptance"] = {
            "criterion": crit,
            "verdict": verdict,
            "met": bool(ok) if on_gpu and full else None,
            "best_spectra_per_s": best["spectra_per_s"],
            "device_kind": device.device_kind,
        }
        print("acceptance:", verdict)

    info = machine_info()
    results["machine"] = info
    md = markdown(results, info)
    if args.no_write:
        print(md)
        return results
    name = args.name or ("gpu_fit_" + device.platform + ("_quick" if q else ""))
    paths = write_results(name, results, md, out_dir=args.out_dir)
    print("wrote", *paths)
    return results


if __name__ == "__main__":
    main()
