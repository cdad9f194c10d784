"""Preprocessing: Doppler shifts, air/vacuum, resampling, continuum normalisation, resolution, quality.

All functions take numpy-compatible arrays, one spectrum [P] or a batch [N, P] on a shared
wavelength grid, return numpy arrays and never modify their input. A bad pixel is
``ivar == 0``; outputs never contain NaN.
"""

from .continuum import normalize_chebyshev as normalize_chebyshev
from .continuum import normalize_median_poly as normalize_median_poly
from .continuum import normalize_spline as normalize_spline
from .quality import quality_flags as quality_flags
from .quality import snr_estimate as snr_estimate
from .resample import log_lambda_grid as log_lambda_grid
from .resample import resample as resample
from .resolution import degrade_resolution as degrade_resolution
from .rv import C_KMS as C_KMS
from .rv import air_to_vacuum as air_to_vacuum
from .rv import doppler_shift as doppler_shift
from .rv import to_rest_frame as to_rest_frame
from .rv import vacuum_to_air as vacuum_to_air

__all__ = [
    "C_KMS",
    "air_to_vacuum",
    "degrade_resolution",
    "doppler_shift",
    "log_lambda_grid",
    "normalize_chebyshev",
    "normalize_median_poly",
    "normalize_spline",
    "quality_flags",
    "resample",
    "snr_estimate",
    "to_rest_frame",
    "vacuum_to_air",
]
