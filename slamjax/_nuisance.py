"""Nuisance parameters of a label fit: Doppler shift and multiplicative continuum.

The emulator predicts flux in the star's rest frame on its own grid ``wave`` [P]. A
spectrum observed with radial velocity v (km/s) on that same grid sees, at pixel p, the
rest-frame flux at λ_p·D(v), D = sqrt((1 − β)/(1 + β)), β = v/c, i.e. at ln λ_p − atanh β.
The model is moved onto the data pixels by cubic (Catmull-Rom) interpolation in pixel
index, which is C¹ in v, so Gauss-Newton sees a smooth objective. The fractional index of
ln λ_p − atanh β is computed in float64 whatever the fit's dtype (in float32 ln λ has
~6e-7 absolute precision, 4 % of an APOGEE pixel).

The grid is split into segments at gaps (Δ ln λ more than 3× its median, e.g. the APOGEE
chip gaps on apVisit wavelengths) and in the middle of every long run (at least
``max(_DEAD_RUN_MIN, P // 100)`` pixels) of the model's unusable pixels (infinite model
variance) inside a segment, where each new piece keeps at least that many usable pixels: the
chip gaps on a common grid without wavelength gaps, such as apStar's, where no training spectrum
had data. A segment in which a spectrum has fewer weighted pixels than continuum coefficients
keeps its continuum at 1 (a prior) and reports it as NaN. A pixel whose interpolation
stencil would leave its own segment, or touch an unusable model pixel, anywhere in the
velocity window of the fit gets zero weight (the window is ±``_WINDOW_PIXELS`` pixel
velocities around the starting velocity, so about that many pixels per segment edge, and
about 2·``_WINDOW_PIXELS`` + 4 data pixels around an isolated unusable model pixel, whatever
the velocity): the model has no value there to interpolate.

The multiplicative continuum is Σ_k c_sk T_k(x) per segment s, T_k Chebyshev polynomials,
x mapped linearly from the segment's wavelength range onto [−1, 1].
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

C_KMS = 299_792.458
_WINDOW_PIXELS = 8  # half-width of the LM velocity window around the grid-search velocity
_GAP_FACTOR = 3.0
_DEAD_RUN_MIN = 20  # shortest run of unusable model pixels that splits a segment (and P // 100)


def dead_run_min(n_pixels: int) -> int:
    """Shortest run of dead pixels treated as a detector gap on a grid of ``n_pixels``."""
    return max(_DEAD_RUN_MIN, n_pixels // 100)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the maximal runs of True in a boolean vector."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def split_at_dead_runs(segments, usable) -> tuple[tuple[int, int], ...]:
    """``segments`` (tiling the grid) further split in the middle of each run of at least
    ``min_run = max(_DEAD_RUN_MIN, P // 100)`` unusable pixels inside a segment (not at its ends). A cut is
    kept only where both new pieces hold at least ``min_run`` usable pixels: no segment without data."""
    usable = np.asarray(usable, dtype=bool)
    min_run = dead_run_min(usable.size)
    count = np.r_[0, np.cumsum(usable)]  # usable pixels before each index
    edges = [0]
    for a, b in segments:
        last = a
        for i, j in runs(~usable[a:b]):
            i, j = a + i, a + j
            c = (i + j) // 2
            if j - i >= min_run and i > a and j < b and min(count[c] - count[last], count[b] - count[c]) >= min_run:
                edges.append(c)
                last = c
        edges.append(b)
    return tuple((int(x), int(y)) for x, y in zip(edges[:-1], edges[1:]))


def segments_of(wave, usable=None) -> tuple[tuple[int, int], ...]:
    """(start, stop) pixel ranges of the grid split at gaps (Δ ln λ > 3 × median) and, given the
    model's ``usable`` pixels [P], in the middle of long runs of unusable ones (:func:`split_at_dead_runs`)."""
    lnw = np.log(np.asarray(wave, dtype=np.float64))
    d = np.diff(lnw)
    cut = (np.flatnonzero(d > _GAP_FACTOR * np.median(d)) + 1).tolist()
    edges = [0, *cut, lnw.size]
    segments = tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
    return segments if usable is None else split_at_dead_runs(segments, usable)


def pixel_velocity(wave) -> float:
    """Median velocity step of one pixel (km/s)."""
    return float(C_KMS * np.median(np.diff(np.log(np.asarray(wave, dtype=np.float64)))))


def chebyshev_basis(wave, segments, degree: int) -> np.ndarray:
    """Block basis [P, S·(degree+1)]: T_k(x) on segment s, zero elsewhere."""
    wave = np.asarray(wave, dtype=np.float64)
    basis = np.zeros((wave.size, len(segments) * (degree + 1)))
    for s, (a, b) in enumerate(segments):
        w = wave[a:b]
        span = w[-1] - w[0]
        x = 2.0 * (w - w[0]) / span - 1.0 if span > 0 else np.zeros_like(w)
        basis[a:b, s * (degree + 1) : (s + 1) * (degree + 1)] = np.polynomial.chebyshev.chebvander(x, degree)
    return basis


class Shifter:
    """Doppler shifts on one grid. Holds float64 ln λ [P], each pixel's segment bounds and the
    cumulative count of unusable model pixels [P + 1]."""

    def __init__(self, lnw, seg_lo, seg_hi, dead_before):
        self.lnw, self.seg_lo, self.seg_hi, self.dead_before = lnw, seg_lo, seg_hi, dead_before

    @classmethod
    def arrays(cls, wave, segments, usable=None) -> dict:
        """numpy arrays (``lnw``, ``seg_lo``, ``seg_hi``, ``dead_before``) to pass into compiled code:
        each pixel's stencil must stay in [seg_lo, seg_hi] (its segment) and hold no pixel that is not
        ``usable`` (``dead_before[k]``: unusable pixels before k; all usable when ``usable`` is None)."""
        lnw = np.log(np.asarray(wave, dtype=np.float64))
        seg_lo = np.zeros(lnw.size, dtype=np.int32)
        seg_hi = np.zeros(lnw.size, dtype=np.int32)
        for a, b in segments:
            seg_lo[a:b] = a
            seg_hi[a:b] = b - 1
        dead = np.zeros(lnw.size, bool) if usable is None else ~np.asarray(usable, dtype=bool)
        dead_before = np.r_[0, np.cumsum(dead)].astype(np.int32)
        return {"lnw": lnw, "seg_lo": seg_lo, "seg_hi": seg_hi, "dead_before": dead_before}

    @classmethod
    def of(cls, arrays) -> Shifter:
        return cls(*(jnp.asarray(arrays[k]) for k in cls.KEYS))

    KEYS = ("lnw", "seg_lo", "seg_hi", "dead_before")

    def index(self, v):
        """Fractional rest-frame pixel index [P] seen by each data pixel at velocity v (float64)."""
        v = jnp.asarray(v).astype(jnp.float64)
        lnw = self.lnw
        return jnp.interp(lnw - jnp.arctanh(v / C_KMS), lnw, jnp.arange(lnw.shape[0], dtype=jnp.float64))

    def valid(self, v_lo, v_hi):
        """Pixels [P] whose cubic stencil stays inside their segment and touches no unusable model
        pixel for any v in [v_lo, v_hi]."""
        t1, t2 = self.index(v_lo), self.index(v_hi)
        lo = (jnp.floor(jnp.minimum(t1, t2)) - 1).astype(jnp.int32)
        hi = (jnp.floor(jnp.maximum(t1, t2)) + 2).astype(jnp.int32)
        inside = (lo >= self.seg_lo) & (hi <= self.seg_hi)
        p = self.lnw.shape[0]
        n_dead = self.dead_before[jnp.clip(hi + 1, 0, p)] - self.dead_before[jnp.clip(lo, 0, p)]
        return inside & (n_dead == 0)

    def shift(self, m, v):
        """``m`` [P, ...] (rest frame) interpolated onto the data pixels at velocity ``v``."""
        return cubic_at(m, self.index(v))

    def nearest(self, a, v):
        """``a`` [P] (observed frame) moved to the rest frame by nearest-pixel lookup (screening)."""
        t = jnp.clip(jnp.round(self.index(-v)), 0, a.shape[0] - 1).astype(jnp.int32)
        return a[t]


def cubic_at(m, t):
    """Catmull-Rom interpolation of ``m`` [P, ...] at fractional pixel indices ``t`` [P]."""
    p = m.shape[0]
    i = jnp.clip(jnp.floor(t), 1, p - 3)
    f = (t - i).astype(m.dtype)
    i = i.astype(jnp.int32)
    p0, p1, p2, p3 = m[i - 1], m[i], m[i + 1], m[i + 2]
    if m.ndim > 1:
        f = f.reshape((p,) + (1,) * (m.ndim - 1))
    # C¹ across pixels; reproduces quadratics exactly.
    return p1 + f * (
        0.5 * (p2 - p0) + f * ((p0 - 2.5 * p1 + 2.0 * p2 - 0.5 * p3) + f * (1.5 * (p1 - p2) + 0.5 * (p3 - p0)))
    )
