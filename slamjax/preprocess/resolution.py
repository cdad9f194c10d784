"""Degrading the spectral resolution with a Gaussian line-spread function."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ._checks import check_spectra, grid_gaps

__all__ = ["degrade_resolution"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # 1 / 2.3548


def degrade_resolution(
    wave,
    flux,
    ivar,
    R_in: float,  # noqa: N803 (R is the usual symbol)
    R_out: float,  # noqa: N803
    max_bad_weight: float = 0.2,
    *,
    segments=None,
    gap_factor: float | None = 2.0,
):
    """Convolve spectra with a Gaussian so that resolving power ``R_in`` becomes ``R_out``.

    The kernel has a constant width in ln λ, σ = sqrt(1/R_out² − 1/R_in²) / 2.3548 (Gaussian
    LSFs add in quadrature; R = λ/FWHM), i.e. σ_λ = λ·σ at each pixel. It is evaluated
    directly on the input grid (any grid; pixel widths enter as quadrature weights), truncated
    at ±5σ and normalised to unit sum at each output pixel, so a flat spectrum stays flat and
    the equivalent width of a line is conserved.

    ``R_in`` and ``R_out`` may also vary along the spectrum (arrays [P], one value per pixel; the
    kernel of output pixel p then uses σ at p). A spectrograph with a constant FWHM in Å (e.g.
    MILES, 2.5 Å) has R = wave / FWHM. Where the two are equal a pixel is left as it is, so two
    data sets can be brought to their common resolution, FWHM(λ) = max(FWHM_a(λ), FWHM_b(λ)),
    each degraded only where the other is broader.

    Bad pixels (ivar = 0) get zero weight and the kernel is renormalised over the good ones;
    an output pixel whose kernel has more than ``max_bad_weight`` of its weight on bad pixels,
    beyond the ends of the spectrum or inside a gap of the grid gets ``ivar = 0`` (flux 1).
    A gap (between detector chips or arms) is a step between two of ``segments`` or one larger
    than ``gap_factor`` times the local step (the median of the two steps on either side); the
    pixels on its edges get the width of a local step, not half the gap, so the kernel weight
    that falls into the gap is missing exactly as beyond the ends of the spectrum.

    Error propagation: var_out = Σ_q K_pq² var_q, exact for independent input pixels. It
    ignores the covariance the convolution creates between neighbouring output pixels (they
    share input pixels), so summing χ² over output pixels overcounts the information by
    roughly the number of pixels per LSF; treat ``ivar_out`` as per-pixel, not joint.

    Arguments:
        wave: wavelengths [P] in Å, strictly increasing.
        flux, ivar: [P] or [N, P].
        R_in: resolving power of the input (λ/FWHM), a number or [P]; ``np.inf`` for an
            unresolved model.
        R_out: target resolving power, a number with ``0 < R_out < R_in``, or [P] with
            ``0 < R_out <= R_in`` at every pixel.
        max_bad_weight: fraction of kernel weight on bad/missing pixels beyond which the output is masked.
        segments: ``(start, stop)`` pixel ranges of separately recorded pieces (chips, arms), e.g.
            a reader's ``meta["segments"]``; the steps between them are gaps.
        gap_factor: a step larger than this times the local step is a gap (> 1); ``None``
            finds gaps from ``segments`` only.

    Returns:
        ``(flux_out, ivar_out)`` on the input grid, shaped like ``flux``.
    """
    wave, flux, ivar, single = check_spectra(wave, flux, ivar)
    per_pixel = np.ndim(R_in) > 0 or np.ndim(R_out) > 0
    r_in, r_out = (np.asarray(r, dtype=np.float64) for r in (R_in, R_out))
    if per_pixel:
        for name, r in (("R_in", r_in), ("R_out", r_out)):
            if r.ndim > 1 or (r.ndim == 1 and r.shape != wave.shape):
                raise ValueError(f"{name} must be a number or an array of shape {wave.shape}, got shape {r.shape}")
        r_in, r_out = np.broadcast_to(r_in, wave.shape), np.broadcast_to(r_out, wave.shape)
        bad = ~((r_out > 0) & (r_in >= r_out))  # also NaN
        if bad.any():
            p = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"need 0 < R_out <= R_in at every pixel; {int(bad.sum())} pixels violate it, the first at "
                f"{wave[p]:.2f} Å (R_in={r_in[p]!r}, R_out={r_out[p]!r})"
            )
    elif not (R_out > 0 and R_in > R_out):
        raise ValueError(f"need 0 < R_out < R_in, got R_in={R_in!r}, R_out={R_out!r}")
    # σ = 0 (R_out == R_in): the pixel is its own output
    sigma = np.sqrt(np.maximum(1.0 / r_out**2 - 1.0 / r_in**2, 0.0)) * _FWHM_TO_SIGMA
    # pixel widths (quadrature weights): half the step to each neighbour, as np.gradient, but a
    # step across a gap counts as one local step, so no pixel stands in for the missing coverage
    gap, local = grid_gaps(wave, gap_factor, segments)
    step = np.where(gap, local, np.diff(wave))
    dw = np.empty_like(wave)
    dw[0], dw[-1] = step[0], step[-1]
    dw[1:-1] = 0.5 * (step[:-1] + step[1:])
    sig_l = np.broadcast_to(wave * sigma, wave.shape)
    lo = np.searchsorted(wave, wave - 5 * sig_l, side="left")
    hi = np.searchsorted(wave, wave + 5 * sig_l, side="right")
    rows = np.repeat(np.arange(wave.size), hi - lo)
    cols = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
    blur = sig_l[rows] > 0
    s_r = np.where(blur, sig_l[rows], 1.0)
    z = (wave[cols] - wave[rows]) / s_r
    # unit-normalised Gaussian density × pixel width: row sums are ~1 away from the edges
    vals = np.where(blur, np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * s_r) * dw[cols], 1.0)
    kern = sparse.csr_matrix((vals, (rows, cols)), shape=(wave.size, wave.size))
    kern_sq = kern.multiply(kern).tocsr()
    full = np.asarray(kern.sum(axis=1)).ravel()
    # the full Gaussian integrates to 1; edge rows of `kern` miss the part beyond the grid
    full = np.where(full > 0, np.maximum(full, 1.0), 1.0)
    good = (ivar > 0).astype(np.float64)
    var = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), 0.0)
    wsum = (kern @ good.T).T  # kernel weight on good pixels, [N, P]
    fsum = (kern @ (good * flux).T).T
    vsum = (kern_sq @ var.T).T
    frac_good = wsum / full[None, :]
    ok = frac_good >= 1.0 - max_bad_weight
    safe = np.where(ok, wsum, 1.0)
    flux_out = np.where(ok, fsum / safe, 1.0).astype(flux.dtype, copy=False)
    var_out = vsum / (safe * safe)
    ivar_out = np.where(ok & (var_out > 0), 1.0 / np.where(var_out > 0, var_out, 1.0), 0.0).astype(ivar.dtype)
    if single:
        return flux_out[0], ivar_out[0]
    return flux_out, ivar_out
