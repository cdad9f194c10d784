"""`Spectrum`: one spectrum as read from one survey file, before any resampling."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Spectrum"]


def _readonly_1d(x, name: str, dtype) -> np.ndarray:
    arr = np.array(x, dtype=dtype)  # always a copy: the caller's arrays are never aliased or modified
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [P], got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One spectrum from one file, on the survey's own wavelength grid.

    Arguments:
        wave: wavelength [P] in Å, finite and strictly increasing.
        flux: flux [P] in the survey's units (see ``meta["flux_unit"]`` where known).
        ivar: inverse variance of ``flux`` [P], >= 0; ``ivar == 0`` marks a bad pixel.
        mask: bad-pixel mask [P], ``True`` = bad (survey bitmasks already applied), or
            ``None`` to derive it from ``ivar == 0``.
        vacuum: ``True`` if ``wave`` is in vacuum, ``False`` if in air.
        rv: the star's heliocentric (barycentric) radial velocity in km/s reported by the
            survey, or ``None``. Which frame ``wave`` is in is recorded in ``meta["frame"]``
            (``"rest"``, ``"heliocentric"`` or ``"observed"``) and the velocity to remove
            from ``wave`` to reach the stellar rest frame in ``meta["doppler_shift"]``
            (0 for products already shifted to rest, ``None`` if unknown).
        snr: the survey's S/N: a float, a dict (per band or arm), or ``None``.
        id: identifier (LAMOST obsid, APOGEE ID, SDSS plate-mjd-fiber).
        meta: provenance: ``survey``, ``product``, ``path``, selected header values,
            ``segments`` (list of (start, stop) pixel ranges of concatenated chips/arms).

    The stored arrays are float64 (``mask`` bool) copies, made read-only. ``mask`` and
    ``ivar`` are made consistent: a pixel is bad (``mask`` True) exactly when its ivar is
    0. Non-finite flux is never kept silently: such pixels get ``flux = 0``, ``ivar = 0``,
    ``mask = True``, and their number goes to ``meta["n_nonfinite_flux"]`` and the log.

    Raises:
        ValueError: on shape mismatches, a non-finite or non-increasing wavelength grid,
            or negative / NaN / infinite inverse variances.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None
    vacuum: bool
    rv: float | None = None
    snr: float | dict[str, float] | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        wave = _readonly_1d(self.wave, "wave", np.float64)
        flux = _readonly_1d(self.flux, "flux", np.float64)
        ivar = _readonly_1d(self.ivar, "ivar", np.float64)
        p = wave.shape[0]
        if p == 0:
            raise ValueError("empty spectrum: wave has no pixels")
        if flux.shape != (p,) or ivar.shape != (p,):
            raise ValueError(f"shape mismatch: wave {wave.shape}, flux {flux.shape}, ivar {ivar.shape}")
        if self.mask is None:
            mask = np.zeros(p, dtype=bool)
        else:
            mask = _readonly_1d(self.mask, "mask", bool)
            if mask.shape != (p,):
                raise ValueError(f"mask shape {mask.shape} does not match wave shape {wave.shape}")
        if not np.all(np.isfinite(wave)):
            raise ValueError(f"wave contains {int((~np.isfinite(wave)).sum())} non-finite values")
        if p > 1 and not np.all(np.diff(wave) > 0):
            bad = int(np.argmin(np.diff(wave) > 0))
            raise ValueError(
                f"wave must be strictly increasing; it is not between pixels {bad} and {bad + 1} "
                f"({float(wave[bad]):.10g} -> {float(wave[bad + 1]):.10g})"
            )
        if np.any(np.isnan(ivar)) or np.any(np.isinf(ivar)) or np.any(ivar < 0):
            raise ValueError(
                f"ivar must be finite and >= 0 (use ivar = 0 for bad pixels): {int(np.isnan(ivar).sum())} NaN, "
                f"{int(np.isinf(ivar).sum())} infinite, {int((ivar < 0).sum())} negative values"
            )
        meta = dict(self.meta)
        nonfinite = ~np.isfinite(flux)
        n_bad = int(nonfinite.sum())
        if n_bad:
            flux[nonfinite] = 0.0
            logger.info("Spectrum %s: %d non-finite flux values masked (ivar = 0)", self.id, n_bad)
        meta["n_nonfinite_flux"] = n_bad
        mask |= nonfinite | (ivar == 0)
        ivar[mask] = 0.0
        for arr in (wave, flux, ivar, mask):
            arr.setflags(write=False)
        snr = self.snr
        if isinstance(snr, dict):
            snr = {str(k): float(v) for k, v in snr.items()}
        elif snr is not None:
            snr = float(snr)
        object.__setattr__(self, "wave", wave)
        object.__setattr__(self, "flux", flux)
        object.__setattr__(self, "ivar", ivar)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "vacuum", bool(self.vacuum))
        object.__setattr__(self, "rv", None if self.rv is None else float(self.rv))
        object.__setattr__(self, "snr", snr)
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "meta", meta)

    @property
    def n_pixels(self) -> int:
        return self.wave.shape[0]

    @property
    def product(self) -> str | None:
        """The detected survey product (``"lamost_lrs"``, ``"apstar"``, ...), from ``meta``."""
        return self.meta.get("product")

    def __repr__(self) -> str:
        return (
            f"Spectrum(id={self.id!r}, product={self.product!r}, n_pixels={self.n_pixels}, "
            f"wave=[{self.wave[0]:.2f}, {self.wave[-1]:.2f}], vacuum={self.vacuum}, "
            f"n_masked={int(self.mask.sum())}, rv={self.rv}, snr={self.snr})"
        )
