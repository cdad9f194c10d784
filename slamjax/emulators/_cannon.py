"""The Cannon's polynomial model (Ness et al. 2015): flux_p = θ_p · v(z) with intrinsic scatter s_p.

v(z) holds all monomials of the standardised labels z up to degree ``order`` (1, z_i, z_i z_j
for the quadratic model). Training maximises, for every pixel p independently,

    ln L_p = -1/2 Σ_n [ (f_np - θ_p·v_n)² / (σ_np² + s_p²) + ln(σ_np² + s_p²) ]

by alternating the exact weighted least-squares solution for θ_p at fixed s_p² with a 1-D
maximisation over s_p² at fixed θ_p (safeguarded Newton / Fisher scoring on the score); each
half-step cannot decrease ln L_p. All pixels are solved at once (the normal matrices are one
matrix product over stars).
"""

from __future__ import annotations

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._spectra import SpectrumSet
from ._base import AbstractLinearEmulator, LabelSpace, register, training_labels
from ._base import monomials as _monomials

logger = logging.getLogger(__name__)

__all__ = ["CannonEmulator"]

_LN_S2_MIN, _LN_S2_MAX = 2 * np.log(1e-6), 2 * np.log(3.0)  # s in [1e-6, 3]


@register
class CannonEmulator(AbstractLinearEmulator):
    """The Cannon: per-pixel polynomial in standardised labels, with intrinsic scatter.

    Build one with :meth:`train`. ``em(labels)`` evaluates ONE spectrum (labels [L] in
    physical units) and returns flux [P].

    Attributes:
        space: label names, standardisation and training label box.
        wave: wavelength grid [P] (Å).
        design: coefficients θ [P, T] on the features ``features(z)``.
        pixel_variance: intrinsic scatter s² [P] (flux² units); ``inf`` where a pixel
            had too few good training pixels to be modelled.
        terms: the monomials, as tuples of label indices (``()`` is the constant).
    """

    space: LabelSpace
    wave: Float[Array, " P"]
    design: Float[Array, "P T"]
    pixel_variance: Float[Array, " P"]
    terms: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    order: int = eqx.field(static=True)

    def features(self, z):
        cols = [jnp.ones((), z.dtype)]
        for term in self.terms[1:]:
            value = z[term[0]]
            for i in term[1:]:
                value = value * z[i]
            cols.append(value)
        return jnp.stack(cols)

    @property
    def term_names(self) -> list[str]:
        names = self.space.names
        return ["1" if not t else "*".join(names[i] for i in t) for t in self.terms]

    @classmethod
    def train(
        cls,
        ds: SpectrumSet,
        order: int = 2,
        *,
        fit_scatter: bool = True,
        n_iter: int = 6,
        label_names=None,
    ) -> CannonEmulator:
        """Train on a labelled :class:`SpectrumSet`.

        Arguments:
            ds: training spectra with labels (physical units); ``ivar == 0`` pixels get
                zero weight.
            order: polynomial degree in the standardised labels (2 = The Cannon's
                quadratic model with all linear, square and cross terms).
            fit_scatter: fit the per-pixel intrinsic scatter s² (else s² = 0).
            n_iter: alternations between θ and s² (the likelihood is non-decreasing).
            label_names: optional subset (and order) of ``ds.label_names`` to train on.

        Raises:
            ValueError: without labels, with non-finite labels, with no more stars than
                coefficients, or with a constant label.
        """
        names, labels = training_labels(ds, label_names)
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        order = int(order)  # a numpy integer would not serialise into the model file's JSON header
        terms = _monomials(len(names), order)
        n_terms = len(terms)
        if ds.n_spectra <= n_terms:
            raise ValueError(f"{ds.n_spectra} training spectra for {n_terms} coefficients per pixel; need more stars")
        space = LabelSpace.from_labels(labels, names)
        proto = cls(
            space=space,
            wave=jnp.asarray(ds.wave),
            design=jnp.zeros((ds.n_pixels, n_terms)),
            pixel_variance=jnp.zeros(ds.n_pixels),
            terms=terms,
            order=order,
        )
        v = jax.vmap(lambda x: proto.features(space.standardise(x)))(jnp.asarray(labels))  # [N, T]
        theta, s2 = _train_pixels(
            v, jnp.asarray(ds.flux, jnp.float64), jnp.asarray(ds.ivar, jnp.float64), n_iter, fit_scatter
        )
        theta, s2 = np.array(theta), np.array(s2)
        n_good = (ds.ivar > 0).sum(axis=0)
        unusable = n_good <= n_terms
        if unusable.any():
            logger.warning(
                "CannonEmulator: %d pixels have <= %d good training pixels; given zero weight",
                int(unusable.sum()),
                n_terms,
            )
            theta[unusable] = 0.0
            theta[unusable, 0] = 1.0
            s2[unusable] = np.inf
        return cls(
            space=space,
            wave=jnp.asarray(ds.wave),
            design=jnp.asarray(theta),
            pixel_variance=jnp.asarray(s2),
            terms=terms,
            order=order,
        )


@eqx.filter_jit
def _train_pixels(v, flux, ivar, n_iter: int, fit_scatter: bool):
    """θ [P, T] and s² [P] for all pixels; flux, ivar [N, P]; v [N, T]."""
    n_terms = v.shape[1]
    vv = (v[:, :, None] * v[:, None, :]).reshape(v.shape[0], n_terms * n_terms)  # [N, T²]
    good = ivar > 0

    def solve_theta(s2):
        w = jnp.where(good, ivar / (1.0 + ivar * s2[None, :]), 0.0)  # [N, P]
        a = (w.T @ vv).reshape(-1, n_terms, n_terms)  # [P, T, T]
        b = (w * flux).T @ v  # [P, T]
        # A vanishing ridge (relative 1e-12) only guards exactly singular pixels.
        ridge = 1e-12 * jnp.trace(a, axis1=1, axis2=2)[:, None, None] / n_terms + 1e-300
        return jnp.linalg.solve(a + ridge * jnp.eye(n_terms)[None], b[..., None])[..., 0]

    def fit_s2(theta, s2_prev):
        resid = flux - v @ theta.T  # [N, P]
        r2 = jnp.where(good, resid**2, 0.0).T  # [P, N]: reductions along the contiguous axis
        sig2 = jnp.where(good, 1.0 / jnp.where(good, ivar, 1.0), 1.0).T
        u_prev = jnp.log(jnp.maximum(s2_prev, jnp.exp(_LN_S2_MIN)))
        return jnp.exp(_max_likelihood_ln_s2(r2, sig2, good.T, u_prev))

    s2 = jnp.zeros(flux.shape[1], flux.dtype)
    theta = solve_theta(s2)
    if fit_scatter:
        for _ in range(n_iter):
            s2 = fit_s2(theta, s2)
            theta = solve_theta(s2)
    return theta, s2


def _max_likelihood_ln_s2(r2, sig2, good, u_prev, max_steps: int = 60):
    """Per pixel, u = ln s² in [ln 1e-12, ln 9] maximising ln L = -1/2 Σ_n [r²/(σ² + s²) + ln(σ² + s²)].

    r2, sig2, good: [P, N] (squared residuals, noise variances, mask); u_prev [P]: the previous
    value (warm start; the moment estimate mean(r² − σ²) when there is none). Root of
    g(s²) = Σ_n (v − r²)/v², v = σ² + s², by Newton steps (Fisher scoring, s² ← s² − g / Σ_n v⁻²,
    where the observed curvature is not positive), safeguarded by a bracket with g(lo) < 0 < g(hi)
    (geometric bisection when a step leaves it). A pixel with g ≥ 0 at the lower end has its
    maximum at s → 0 (residuals no larger than the noise); one whose root lies above s = 3 ends
    at that bracket end. The loop stops when every pixel's step is below 1e-9 of its mean
    σ² + s² (the scale on which s² enters the weights). If the previous value has the higher
    likelihood it is kept, so an alternation never lowers ln L.

    Replaces a 25-point grid plus 30 golden-section steps (58 likelihood evaluations with a
    logarithm per star and pixel) with the same optimum (benchmarks/results/cannon_train.md).
    """
    x_min, x_max = np.exp(_LN_S2_MIN), np.exp(_LN_S2_MAX)

    def grad(x):
        """g, and the curvature for the step: observed (Newton) where positive, else expected."""
        q = jnp.where(good, 1.0 / (sig2 + x[:, None]), 0.0)
        q2 = q * q
        expected = jnp.sum(q2, axis=1)
        observed = jnp.sum(q2 * (2.0 * r2 * q - 1.0), axis=1)
        return jnp.sum(q - r2 * q2, axis=1), jnp.where(observed > 0, observed, expected)

    def nll(x):
        var = sig2 + x[:, None]
        return 0.5 * jnp.sum(jnp.where(good, r2 / var + jnp.log(var), 0.0), axis=1)

    n_pix = r2.shape[0]
    lo = jnp.full(n_pix, x_min, r2.dtype)
    hi = jnp.full(n_pix, x_max, r2.dtype)
    g_lo, _ = grad(lo)
    edge = g_lo >= 0  # maximum at s -> 0: nothing to iterate (the upper end, s = 3, stays a bracket end)
    x_prev = jnp.clip(jnp.exp(u_prev), x_min, x_max)
    n_good = jnp.maximum(jnp.sum(good, axis=1), 1)
    moments = jnp.sum(jnp.where(good, r2 - sig2, 0.0), axis=1) / n_good
    x0 = jnp.where(x_prev > x_min, x_prev, jnp.clip(moments, x_min, x_max))
    x0 = jnp.where(edge, x_min, x0)
    scale = jnp.sum(jnp.where(good, sig2, 0.0), axis=1) / n_good  # a step matters relative to σ² + s²

    def cond(state):
        _, _, _, step, k = state
        return (k < max_steps) & (jnp.max(step) > 1e-9)

    def body(state):
        x, lo, hi, _, k = state
        g, info = grad(x)
        lo = jnp.where(g < 0, x, lo)
        hi = jnp.where(g < 0, hi, x)
        x_new = x - g / jnp.where(info > 0, info, 1.0)
        ok = (info > 0) & (x_new >= lo) & (x_new <= hi)  # closed: a converged x stays put
        x_new = jnp.where(edge, x, jnp.where(ok, x_new, jnp.sqrt(lo * hi)))
        return x_new, lo, hi, jnp.abs(x_new - x) / (x + scale), k + 1

    init = (x0, lo, hi, jnp.where(edge, 0.0, jnp.inf).astype(r2.dtype), jnp.asarray(0))
    x, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    cands = jnp.stack([x_prev, x])  # [2, P]; ties keep the previous value
    best = jnp.argmin(jax.vmap(nll)(cands), axis=0)
    return jnp.log(jnp.take_along_axis(cands, best[None, :], axis=0)[0])
