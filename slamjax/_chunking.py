"""Chunking helpers of :func:`slamjax.fit_labels`: compiled batch shapes, padding, the progress bar
and the default number of worker threads. (``_fit._run_chunks`` runs the chunks.)"""

from __future__ import annotations

import os

import jax
import numpy as np

_MAX_WORKERS = 8  # default ceiling of chunks fitted at once on CPU (fit_labels ``workers``)


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
