"""Per-spectrum quality: S/N and bad-pixel flags."""

from __future__ import annotations

import numpy as np

from .._spectra import snr_of
from ._checks import as_float

__all__ = ["quality_flags", "snr_estimate"]


def _two_d(flux, ivar):
    flux = as_float(flux, "flux")
    ivar = as_float(ivar, "ivar")
    if flux.shape != ivar.shape:
        raise ValueError(f"flux shape {flux.shape} does not match ivar shape {ivar.shape}")
    if flux.ndim not in (1, 2):
        raise ValueError(f"flux must be [P] or [N, P], got shape {flux.shape}")
    return (flux[None, :], ivar[None, :], True) if flux.ndim == 1 else (flux, ivar, False)


def snr_estimate(flux, ivar):
    """Median per-pixel S/N, |flux|·sqrt(ivar), over the good pixels (ivar > 0, finite flux).

    Arguments:
        flux, ivar: [P] or [N, P].

    Returns:
        S/N per spectrum [N] (a float for one spectrum); 0 for a spectrum without good pixels.
    """
    flux, ivar, single = _two_d(flux, ivar)
    ivar = np.where(np.isfinite(ivar), ivar, 0.0)
    snr = np.nan_to_num(snr_of(flux, ivar), nan=0.0)
    return float(snr[0]) if single else snr


def quality_flags(flux, ivar, max_bad: int = 50):
    """True for spectra with at most ``max_bad`` bad pixels (SLAM's default cut is 50).

    A pixel is bad when ``ivar <= 0`` or flux or ivar is not finite. A spectrum with no good
    pixel at all is always flagged False.

    Arguments:
        flux, ivar: [P] or [N, P].
        max_bad: the largest acceptable number of bad pixels.

    Returns:
        bool [N] (a bool for one spectrum).
    """
    flux, ivar, single = _two_d(flux, ivar)
    bad = ~(np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0))
    n_bad = bad.sum(axis=1)
    good = (n_bad <= max_bad) & (n_bad < flux.shape[1])
    return bool(good[0]) if single else good
