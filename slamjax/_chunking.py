"""Chunks of :func:`slamjax.fit_labels`: compiled batch shapes, padding, the worker threads, the
progress bar, and ``_run_chunks``, which fits a batch chunk by chunk (``_fit_core._fit_chunk`` or
``_fit_nuisance._fit_chunk_nuisance`` per chunk) and concatenates the outputs."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import jax
import numpy as np

from ._fit_core import _fit_chunk
from ._fit_nuisance import _fit_chunk_nuisance
from ._spectra import snr_of

_MAX_WORKERS = 8  # default ceiling of chunks fitted at once on CPU (fit_labels ``workers``)
_MIN_WORKER_CHUNK = 128  # a batch is split for concurrent workers only into chunks of at least this many spectra


def _default_workers() -> int:
    """fit_labels' default ``workers``: the CPU cores this process may use (at most
    ``_MAX_WORKERS``) on the CPU backend, 1 on accelerators."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide thread pool with ``workers`` threads that ``fit_labels`` runs concurrent
    chunks on. Kept between calls: starting two threads per call cost ~1.7 ms each on a busy
    2-core machine (the second chunk waited for its thread), ~10 % of a 300-spectrum kernel fit."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix=f"slamjax-fit{workers}")
        return pool


def _forget_pools() -> None:  # a forked child has none of the parent's threads
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _chunk_shape(n: int, chunk_size: int) -> int:
    """Compiled batch size for n spectra: as few chunks as ``chunk_size`` allows, of equal size,
    rounded up to a quarter-octave grid (…, 256, 320, 384, 448, 512, …) so that the padding wastes
    at most ~25 % (a power-of-two shape wasted up to half: 300 spectra ran as 512) and the
    number of distinct compiled shapes stays small."""
    per = -(-n // -(-n // chunk_size))  # n / (number of chunks), rounded up
    if per <= 8:
        return 1 << max(0, int(np.ceil(np.log2(per))))
    p = 1 << int(np.floor(np.log2(per)))
    return next(c for c in (p, p * 5 // 4, p * 3 // 2, p * 7 // 4, 2 * p) if c >= per)


def _pad(a, pad, value):
    if pad == 0:
        return np.asarray(a)
    widths = [(0, pad)] + [(0, 0)] * (np.ndim(a) - 1)
    return np.pad(np.asarray(a), widths, constant_values=value)


def _progress(iterable, enabled, total):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, unit="chunk", desc="fit_labels")


def _run_chunks(em, rows, common, n_starts, max_steps, settings, snr):
    """Fit all rows chunk by chunk (fixed padded chunk shape); concatenated numpy outputs.

    With ``settings["workers"] > 1`` the batch is cut into at least that many chunks (of at least
    ``_MIN_WORKER_CHUNK`` spectra) and the chunks run in a thread pool: each thread launches the
    compiled fit of its chunk (XLA releases the GIL) and copies the outputs to numpy; the calling
    thread computes the S/N and collects the chunks in order. Concurrent first calls of a new shape
    compile it once (JAX's compilation cache waits for the first)."""
    flux, ivar = rows["flux"], rows["ivar"]
    n = flux.shape[0]
    dtype = settings["dtype"]
    workers = settings.get("workers", 1)
    size = settings["chunk_size"]
    if workers > 1:
        n_chunks = max(-(-n // size), min(workers, n // _MIN_WORKER_CHUNK))
        size = min(size, -(-n // max(n_chunks, 1)))
    chunk = _chunk_shape(n, size)
    if settings.get("pow2"):  # at least 16 (unless chunk_size is smaller): fewer distinct shapes
        chunk = 1 << int(np.ceil(np.log2(max(chunk, min(16, settings["chunk_size"])))))
    kw = dict(n_starts=n_starts, return_model=settings["return_model"])
    check = dict(check_starts=True) if settings.get("check_starts") else {}
    starts = range(0, n, chunk)

    def launch(i0):
        i1 = min(i0 + chunk, n)
        pad = chunk - (i1 - i0)
        args = dict(common, max_steps=np.int32(max_steps), tol=np.asarray(settings["tol"], dtype))
        for key, value in rows.items():
            fill = 1.0 if key == "flux" else 0.0
            # "max_steps" as a row: a step budget per spectrum (padding rows: none)
            cast = np.int32 if key == "max_steps" else dtype
            args[key] = _pad(value[i0:i1], pad, fill).astype(cast, copy=False)
        if settings.get("nuis") is not None:
            return _fit_chunk_nuisance(em, args, nuis=settings["nuis"], **kw)
        return _fit_chunk(em, args, **kw, **check)

    out: dict[str, np.ndarray] = {}

    def collect(i0, res):
        i1 = min(i0 + chunk, n)
        extra = {"snr": snr_of(flux[i0:i1], ivar[i0:i1])} if snr else {}
        for k, v in (res | extra).items():
            v = np.asarray(v)
            if k not in out:  # preallocate once: one copy per output instead of two
                out[k] = np.empty((n,) + v.shape[1:], v.dtype)
            out[k][i0:i1] = v[: i1 - i0]

    if workers == 1 or len(starts) == 1:
        for i0 in _progress(starts, settings["progress"], total=len(starts)):
            # numpy computes the S/N median while XLA works on the chunk (async dispatch);
            # XLA's CPU sort made a sort-based median cost more than the whole fit.
            collect(i0, launch(i0))
        return out

    def fit_one(i0):
        return {k: np.asarray(v) for k, v in launch(i0).items()}

    pool = _worker_pool(workers)  # kept between calls (thread start-up cost, see _worker_pool)
    futures = []
    try:
        futures = [pool.submit(fit_one, i0) for i0 in starts]
        for i0, fut in _progress(zip(starts, futures), settings["progress"], total=len(starts)):
            collect(i0, fut.result())
    finally:  # on an error: drop this call's chunks that have not started, wait for the running ones
        for fut in futures:
            fut.cancel()
        wait(futures)
    return out
