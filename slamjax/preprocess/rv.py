"""Doppler shifts and air/vacuum wavelength conversion."""

from __future__ import annotations

import numpy as np

from ._checks import as_float

__all__ = ["C_KMS", "air_to_vacuum", "doppler_shift", "to_rest_frame", "vacuum_to_air"]

C_KMS = 299_792.458
"""Speed of light in km/s."""


def _doppler_factor(rv_kms) -> np.ndarray:
    beta = as_float(rv_kms, "rv_kms") / C_KMS
    if np.any(np.abs(beta) >= 1):
        raise ValueError("|rv| must be smaller than the speed of light")
    return np.sqrt((1.0 + beta) / (1.0 - beta))


def _apply(wave, rv_kms, inverse: bool) -> np.ndarray:
    wave = as_float(wave, "wave")
    factor = _doppler_factor(rv_kms)
    if inverse:
        factor = 1.0 / factor
    if factor.ndim == 0:
        return wave * factor
    if factor.ndim != 1:
        raise ValueError(f"rv_kms must be a scalar or [N], got shape {factor.shape}")
    if wave.ndim == 1:
        return factor[:, None] * wave[None, :]
    if wave.ndim == 2 and wave.shape[0] == factor.shape[0]:
        return factor[:, None] * wave
    raise ValueError(f"wave shape {wave.shape} does not fit rv_kms shape {factor.shape}")


def doppler_shift(wave, rv_kms) -> np.ndarray:
    """Observed wavelengths of a source moving with radial velocity ``rv_kms`` (relativistic).

    λ_obs = λ_rest · sqrt((1 + β) / (1 − β)), β = rv / c; positive ``rv_kms`` = receding = redshift.

    Arguments:
        wave: rest-frame wavelengths, [P] or [N, P] (any unit).
        rv_kms: radial velocity in km/s, a scalar or [N] (one per spectrum).

    Returns:
        Shifted wavelengths: [P] for a scalar velocity and 1-D ``wave``, otherwise [N, P].
    """
    return _apply(wave, rv_kms, inverse=False)


def to_rest_frame(wave, rv_kms) -> np.ndarray:
    """Inverse of :func:`doppler_shift`: rest-frame wavelengths of pixels observed at ``wave``.

    Same arguments and shapes as :func:`doppler_shift`.
    """
    return _apply(wave, rv_kms, inverse=True)


# Morton (2000, ApJS 130, 403) eq. 3, the IAU standard refractive index of dry air at 15 °C,
# 101 325 Pa, 0.045 % CO2 (Ciddor 1996, Appl. Opt. 35, 1566), as a function of the VACUUM
# wavenumber s = 10^4 / λ_vac [µm^-1]; the form used by VALD and SDSS. By IAU convention
# wavelengths below 2000 Å are always vacuum wavelengths, so they are left unchanged.
_AIR_MIN = 2000.0


def _n_air(wave_vac: np.ndarray) -> np.ndarray:
    s2 = (1e4 / wave_vac) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wave) -> np.ndarray:
    """Air wavelengths [Å] from vacuum wavelengths [Å]: λ_air = λ_vac / n(λ_vac).

    Uses the IAU standard (Morton 2000, ApJS 130, 403, eq. 3, based on Ciddor 1996).
    Wavelengths below 2000 Å are returned unchanged (IAU convention). Any shape.
    """
    wave = as_float(wave, "wave")
    wave_safe = np.where(wave >= _AIR_MIN, wave, _AIR_MIN)
    return np.where(wave >= _AIR_MIN, wave / _n_air(wave_safe), wave)


def air_to_vacuum(wave) -> np.ndarray:
    """Vacuum wavelengths [Å] from air wavelengths [Å], the exact inverse of :func:`vacuum_to_air`.

    Solves λ_vac = λ_air · n(λ_vac) by fixed-point iteration (n varies so slowly with λ
    that four iterations converge to < 1e-9 Å); this inverts Morton's formula to machine
    precision, unlike the approximate closed-form inversions in the literature.
    Wavelengths below 2000 Å are returned unchanged. Any shape.
    """
    wave = as_float(wave, "wave")
    wave_safe = np.where(wave >= _AIR_MIN, wave, _AIR_MIN)
    vac = wave_safe * _n_air(wave_safe)
    for _ in range(4):
        vac = wave_safe * _n_air(vac)
    return np.where(wave >= _AIR_MIN, vac, wave)
