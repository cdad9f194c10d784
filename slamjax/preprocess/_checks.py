"""Input validation shared by the preprocessing functions (private)."""

from __future__ import annotations

import numpy as np


def as_float(x, name: str) -> np.ndarray:
    """``x`` as a floating-point numpy array (integers become float64)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def check_wave(wave, name: str = "wave") -> np.ndarray:
    """A finite, strictly increasing 1-D wavelength grid (or rows of one, [N, P])."""
    wave = as_float(wave, name)
    if wave.ndim not in (1, 2) or wave.shape[-1] < 2:
        raise ValueError(f"{name} must be [P] or [N, P] with P >= 2, got shape {wave.shape}")
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{name} contains non-finite values")
    steps = np.diff(wave, axis=-1)
    if not np.all(steps > 0):
        bad = np.argwhere(~(steps > 0))[0]
        raise ValueError(f"{name} must be strictly increasing; it is not at index {tuple(int(i) for i in bad)}")
    return wave


def check_flux_ivar(flux, ivar, n_pixels: int, what: str = "P") -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate ``flux``/``ivar`` [P] or [N, P] against ``n_pixels``; return 2-D arrays and whether input was 1-D.

    Non-finite flux or ivar, and negative ivar, become bad pixels (``ivar = 0``, ``flux = 1``).
    """
    flux = as_float(flux, "flux")
    ivar = as_float(ivar, "ivar")
    if flux.shape != ivar.shape:
        raise ValueError(f"flux shape {flux.shape} does not match ivar shape {ivar.shape}")
    single = flux.ndim == 1
    if single:
        flux, ivar = flux[None, :], ivar[None, :]
    if flux.ndim != 2 or flux.shape[1] != n_pixels:
        raise ValueError(f"flux must be [{what}] or [N, {what}] with {what} = {n_pixels}, got {flux.shape}")
    bad = ~(np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0))
    if bad.any():  # copies only when something changes; the caller's arrays are never modified
        flux = np.where(bad, 1.0, flux).astype(flux.dtype, copy=False)
        ivar = np.where(bad, 0.0, ivar).astype(ivar.dtype, copy=False)
    return flux, ivar, single


def check_spectra(wave, flux, ivar) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Validate ``wave`` [P], ``flux``/``ivar`` [P] or [N, P]; return 2-D copies and whether input was 1-D."""
    wave = check_wave(wave)
    if wave.ndim != 1:
        raise ValueError(f"wave must be 1-D [P], got shape {wave.shape}")
    flux, ivar, single = check_flux_ivar(flux, ivar, wave.shape[0])
    return wave, flux, ivar, single


def grid_gaps(wave: np.ndarray, factor: float | None = 2.0, segments=None) -> tuple[np.ndarray, np.ndarray]:
    """Gaps in a wavelength grid: ``(gap [..., P-1] bool, local_step [..., P-1])`` per pixel interval.

    Interval ``i`` (between pixels ``i`` and ``i + 1``) is a gap when its step exceeds ``factor``
    times the local step, the median of the two steps on either side of it (fewer at the ends),
    or when it joins two of ``segments`` (``(start, stop)`` pixel ranges, as the readers record in
    ``meta["segments"]``). A median of four is not moved by one large step, so a lone pixel inside
    a gap (two large steps in a row) is found too. ``factor=None`` uses ``segments`` only.
    ``local_step`` is that median (the step itself where there are no neighbours).
    """
    wave = np.asarray(wave, dtype=np.float64)
    step = np.diff(wave, axis=-1)
    n = step.shape[-1]
    local = step.copy()
    gap = np.zeros(step.shape, dtype=bool)
    if n >= 2:
        # the median of the steps at offsets -2, -1, +1, +2: in the interior the mean of the middle two of
        # four, from elementwise min/max (a sort along a stacked axis took 35 s for 10,000 × 3909 px grids)
        if n >= 5:
            a, b, c, d = step[..., :-4], step[..., 1:-3], step[..., 3:-1], step[..., 4:]
            lo1, hi1, lo2, hi2 = np.minimum(a, b), np.maximum(a, b), np.minimum(c, d), np.maximum(c, d)
            local[..., 2:-2] = 0.5 * (np.maximum(lo1, lo2) + np.minimum(hi1, hi2))
        padded = np.pad(step, [*[(0, 0)] * (step.ndim - 1), (2, 2)], constant_values=np.nan)
        for i in sorted({0, 1, n - 2, n - 1} | (set(range(2, n - 2)) if n < 5 else set())):
            nb = padded[..., [i, i + 1, i + 3, i + 4]]  # fewer than four at the ends (NaN)
            local[..., i] = np.nanmedian(nb, axis=-1)
        if factor is not None:
            if not (np.isfinite(factor) and factor > 1):
                raise ValueError(f"gap_factor must be > 1 or None, got {factor!r}")
            gap = step > factor * local
    if segments is not None:
        edges = set()
        for seg in segments:
            try:
                start, stop = (int(v) for v in seg)
            except (TypeError, ValueError) as err:
                raise ValueError(f"segments must be (start, stop) pixel ranges, got {seg!r}") from err
            if not 0 <= start < stop <= n + 1:
                raise ValueError(f"segment {seg!r} is not a pixel range within 0..{n + 1}")
            edges.update(e - 1 for e in (start, stop) if 0 < e <= n)
        if edges:
            gap = gap.copy()
            gap[..., sorted(edges)] = True
    local = np.where(gap & (step < local), step, local)
    return gap, local
