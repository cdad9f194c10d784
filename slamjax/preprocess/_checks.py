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
