"""Continuum normalisation of an emulator's output as a fixed, differentiable linear projection.

Many physical emulators predict un-normalised flux (e.g. the Kurucz-trained network of Ting et
al. 2018 distributed with ``binspec``, El-Badry et al. 2018a,b). Observed spectra are usually
normalised by fitting a low-order polynomial to a fixed set of continuum pixels and dividing by
it. For segment k (e.g. a detector chip) with continuum pixels C_k, the weighted least-squares
Chebyshev fit of degree n is linear in the flux:

    c = V_k (V_{C_k}ᵀ W V_{C_k})⁻¹ V_{C_k}ᵀ W f_{C_k} = B G f,

with V the Chebyshev design matrix, W fixed weights. ``G`` [S(n+1), P] (coefficients from flux)
and ``B`` [P, S(n+1)] (continuum from coefficients) are precomputed once, so the normalised model
``f / (B G f)`` and its Jacobian ``(J − (f/c)·(B G J)) / c`` cost O(P·S·(n+1)) on top of the
inner emulator.

The Chebyshev variable is the wavelength mapped linearly to [−1, 1] over the segment's continuum
pixels (``numpy.polynomial.Chebyshev.fit``'s default domain). Mathematically the fit is the same
for any affine map of the wavelength (the polynomial space does not change); the map only keeps
the normal equations well conditioned. It does matter that the variable is the wavelength and
not the pixel index (the APOGEE grid is uniform in log λ). With ``degree=2``, one segment per
APOGEE chip and the Cannon continuum pixels, this reproduces the ``flux_true`` of the
``apogee_kurucz_nn`` data set to float32 precision (max |Δ| 6e-8).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._nuisance import split_at_dead_runs
from ._base import AbstractEmulator, LabelSpace, register

__all__ = ["ContinuumNormalized", "find_segments"]


def find_segments(wave, gap_factor: float = 5.0) -> tuple[tuple[int, int], ...]:
    """Contiguous pixel ranges ``(start, stop)`` of ``wave``, split where the step in ln λ
    exceeds ``gap_factor`` times its median (e.g. the two APOGEE chip gaps -> 3 segments)."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2 or not np.all(np.diff(wave) > 0) or wave[0] <= 0:
        raise ValueError("wave must be a positive, strictly increasing 1-D grid of at least 2 pixels")
    step = np.diff(np.log(wave))
    cuts = np.flatnonzero(step > gap_factor * np.median(step)) + 1
    edges = [0, *cuts.tolist(), wave.size]
    return tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))


@register
class ContinuumNormalized(AbstractEmulator):
    """An emulator of un-normalised flux, divided by its own polynomial continuum fit.

    Build one with :meth:`from_mask`. ``em(labels)`` = ``f / (B G f)`` with ``f = inner(labels)``;
    labels, label box and wavelength grid are those of ``inner``.

    Attributes:
        space, wave: those of ``inner`` (kept as fields, equal to ``inner.space`` and
            ``inner.wave``, because the emulator interface declares them as fields).
        inner: the wrapped emulator (un-normalised flux).
        basis: ``B`` [P, S·(n+1)], the Chebyshev polynomials of each segment at its pixels
            (zero outside the segment).
        fit: ``G`` [S·(n+1), P], the least-squares map from flux to coefficients (non-zero
            only at continuum pixels).
        pixel_variance: model variance of the normalised flux [P] (flux² units).
        degree: Chebyshev degree n; segments: static ``(start, stop)`` pixel ranges.
    """

    space: LabelSpace
    wave: Float[Array, " P"]
    pixel_variance: Float[Array, " P"]
    inner: AbstractEmulator
    basis: Float[Array, "P K"]
    fit: Float[Array, "K P"]
    degree: int = eqx.field(static=True)
    segments: tuple[tuple[int, int], ...] = eqx.field(static=True)

    @property
    def float32_ok(self) -> bool:
        return self.inner.float32_ok

    def _fit_form(self, dtype):
        return dataclasses.replace(self, inner=self.inner._fit_form(dtype))

    def continuum(self, flux):
        """The fitted continuum [P] of an un-normalised spectrum ``flux`` [P]."""
        return self.basis @ (self.fit @ flux)

    def __call__(self, labels):
        f = self.inner(labels)
        return f / self.continuum(f)

    def flux_and_jacobian(self, labels):
        """Normalised flux [P] and its Jacobian [P, L]: d(f/c) = (df − (f/c) dc)/c, dc = B G df."""
        f, jac = self.inner.flux_and_jacobian(labels)
        c = self.continuum(f)
        dc = self.basis @ (self.fit @ jac)
        norm = f / c
        return norm, (jac - norm[:, None] * dc) / c[:, None]

    @classmethod
    def from_mask(
        cls,
        inner: AbstractEmulator,
        continuum_mask,
        *,
        degree: int = 2,
        segments=None,
        weights=None,
        wave=None,
        pixel_variance=None,
    ) -> ContinuumNormalized:
        """Wrap ``inner`` with a per-segment weighted Chebyshev continuum fit.

        Arguments:
            inner: an emulator of un-normalised flux [P].
            continuum_mask: boolean [P], the continuum pixels the polynomial is fitted to
                (e.g. the Cannon continuum pixels of APOGEE); those where ``inner`` is unusable
                (infinite ``pixel_variance``) are left out.
            degree: Chebyshev degree n per segment.
            segments: ``(start, stop)`` pixel ranges covering the grid; default: split at
                wavelength gaps (:func:`find_segments`) and in the middle of long runs of
                ``inner``'s unusable pixels (infinite ``pixel_variance``; e.g. the chip gaps
                of a model trained on apStar's gapless grid).
            weights: fixed non-negative fit weights [P] (least-squares weights, i.e. ivar-like);
                default 1 (an unweighted fit).
            wave: wavelength grid [P] (Å); replaces ``inner.wave`` (e.g. for a network loaded
                without one). Default ``inner.wave``.
            pixel_variance: model variance of the normalised flux [P]. Default: ``inner``'s
                variance divided by the squared continuum of the model at the centre of the
                label box (a first-order propagation; 0 stays 0).

        Raises:
            ValueError: for wrong shapes, segments that do not tile the grid, or a segment
                with fewer than ``degree + 1`` weighted continuum pixels.
        """
        if not isinstance(inner, AbstractEmulator):
            raise TypeError(f"inner must be a slamjax emulator, got {type(inner).__name__}")
        n_pix = inner.n_pixels
        if wave is not None:
            wave = np.asarray(wave, dtype=np.float64)
            if wave.shape != (n_pix,):
                raise ValueError(f"wave must have shape ({n_pix},), got {wave.shape}")
            inner = eqx.tree_at(lambda e: e.wave, inner, jnp.asarray(wave))
        wave = np.asarray(inner.wave, dtype=np.float64)
        mask = np.asarray(continuum_mask)
        if mask.shape != (n_pix,) or mask.dtype != bool:
            raise ValueError(f"continuum_mask must be boolean [{n_pix}], got {mask.dtype} {mask.shape}")
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
        w = np.ones(n_pix) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (n_pix,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite, non-negative, shape ({n_pix},)")
        usable = np.isfinite(np.asarray(inner.pixel_variance, dtype=np.float64))
        if segments is None:
            segments = split_at_dead_runs(find_segments(wave), usable)
        else:
            segments = tuple((int(a), int(b)) for a, b in segments)
        if not segments or segments[0][0] != 0 or segments[-1][1] != n_pix:
            raise ValueError(f"segments must tile pixels 0..{n_pix}, got {segments}")
        if any(b <= a for a, b in segments) or any(s[1] != t[0] for s, t in zip(segments[:-1], segments[1:])):
            raise ValueError(f"segments must be contiguous, increasing (start, stop) ranges, got {segments}")

        n_coef = degree + 1
        basis = np.zeros((n_pix, len(segments) * n_coef))
        fit = np.zeros((len(segments) * n_coef, n_pix))
        for k, (a, b) in enumerate(segments):
            use = mask[a:b] & (w[a:b] > 0) & usable[a:b]  # no continuum from pixels the model cannot predict
            idx = a + np.flatnonzero(use)
            if idx.size < n_coef:
                raise ValueError(
                    f"segment {k} (pixels {a}-{b}) has {idx.size} weighted continuum pixels; "
                    f"a degree-{degree} fit needs >= {n_coef}"
                )
            x0, x1 = wave[idx[0]], wave[idx[-1]]
            scale = 2.0 / (x1 - x0) if x1 > x0 else 1.0
            t_seg = (wave[a:b] - x0) * scale - 1.0
            v_seg = np.polynomial.chebyshev.chebvander(t_seg, degree)  # [P_k, n+1]
            v_c = v_seg[idx - a]
            sw = np.sqrt(w[idx])
            cols = slice(k * n_coef, (k + 1) * n_coef)
            basis[a:b, cols] = v_seg
            fit[cols, idx] = np.linalg.pinv(sw[:, None] * v_c) * sw[None, :]
        if pixel_variance is None:
            s2 = np.asarray(inner.pixel_variance, dtype=np.float64)
            if np.any(s2 != 0):
                centre = 0.5 * (np.asarray(inner.space.lo) + np.asarray(inner.space.hi))
                f0 = np.asarray(inner(jnp.asarray(centre)), dtype=np.float64)
                s2 = s2 / (basis @ (fit @ f0)) ** 2
            pixel_variance = s2
        pixel_variance = np.asarray(pixel_variance, dtype=np.float64)
        if pixel_variance.shape != (n_pix,):
            raise ValueError(f"pixel_variance must have shape ({n_pix},), got {pixel_variance.shape}")
        return cls(
            space=inner.space,
            wave=inner.wave,
            inner=inner,
            basis=jnp.asarray(basis),
            fit=jnp.asarray(fit),
            pixel_variance=jnp.asarray(pixel_variance),
            degree=int(degree),
            segments=segments,
        )
