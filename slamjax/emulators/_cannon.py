"""The Cannon's polynomial model (Ness et al. 2015): flux_p = θ_p · v(z) with intrinsic scatter s_p.

v(z) holds all monomials of the standardised labels z up to degree ``order`` (1, z_i, z_i z_j
for the quadratic model). Training maximises, for every pixel p independently,

    ln L_p = -1/2 Σ_n [ (f_np - θ_p·v_n)² / (σ_np² + s_p²) + ln(σ_np² + s_p²) ]

by alternating the exact weighted least-squares solution for θ_p at fixed s_p² with a 1-D
maximisation over s_p² at fixed θ_p; each half-step cannot decrease ln L_p. All pixels are
solved at once (the normal matrices are one matrix product over stars).
"""

from __future__ import annotations

import itertools
import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._spectra import SpectrumSet
from ._base import AbstractLinearEmulator, LabelSpace, register, training_labels

logger = logging.getLogger(__name__)

__all__ = ["CannonEmulator"]

_LN_S_MIN, _LN_S_MAX = np.log(1e-6), np.log(3.0)


def _monomials(n_labels: int, order: int) -> tuple[tuple[int, ...], ...]:
    terms: list[tuple[int, ...]] = [()]
    for degree in range(1, order + 1):
        terms.extend(itertools.combinations_with_replacement(range(n_labels), degree))
    return tuple(terms)


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
            ValueError: without labels, with non-finite labels, with fewer stars than
                coefficients, or with a constant label.
        """
        names, labels = training_labels(ds, label_names)
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
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

    def neg_loglike(ln_s, r2, sig2, g):
        var = sig2 + jnp.exp(2.0 * ln_s)
        return 0.5 * jnp.sum(jnp.where(g, r2 / var + jnp.log(var), 0.0))

    def fit_s2(theta):
        resid = flux - v @ theta.T  # [N, P]
        r2 = (resid**2).T  # [P, N]
        sig2 = jnp.where(good, 1.0 / jnp.where(good, ivar, 1.0), 0.0).T
        return jax.vmap(_minimise_1d, in_axes=(None, 0, 0, 0))(neg_loglike, r2, sig2, good.T)

    s2 = jnp.zeros(flux.shape[1], flux.dtype)
    theta = solve_theta(s2)
    if fit_scatter:
        for _ in range(n_iter):
            s2 = jnp.exp(2.0 * fit_s2(theta))
            theta = solve_theta(s2)
    return theta, s2


def _minimise_1d(fun, *args):
    """Minimise fun(ln s, *args) on [ln 1e-6, ln 3]: a 25-point grid, then golden section.

    The golden-section search reuses one interior point per step (one evaluation per
    step); 30 steps shrink the bracket (two grid cells, 1.3 in ln s) below 1e-6.
    """
    grid = jnp.linspace(_LN_S_MIN, _LN_S_MAX, 25)
    values = jax.vmap(lambda x: fun(x, *args))(grid)
    i = jnp.argmin(values)
    step = grid[1] - grid[0]
    a = jnp.maximum(grid[i] - step, _LN_S_MIN)
    b = jnp.minimum(grid[i] + step, _LN_S_MAX)
    invphi = (np.sqrt(5.0) - 1.0) / 2.0
    c = b - invphi * (b - a)
    d = a + invphi * (b - a)

    def body(_, state):
        a, b, c, d, fc, fd = state
        left = fc < fd
        # left: minimum in [a, d]; new d = old c, new c evaluated. Else mirror.
        na = jnp.where(left, a, c)
        nb = jnp.where(left, d, b)
        nc = jnp.where(left, nb - invphi * (nb - na), d)
        nd = jnp.where(left, c, na + invphi * (nb - na))
        x_new = jnp.where(left, nc, nd)
        f_new = fun(x_new, *args)
        nfc = jnp.where(left, f_new, fd)
        nfd = jnp.where(left, fc, f_new)
        return na, nb, nc, nd, nfc, nfd

    a, b, c, d, fc, fd = jax.lax.fori_loop(0, 30, body, (a, b, c, d, fun(c, *args), fun(d, *args)))
    x = jnp.where(fc < fd, c, d)
    # Prefer the lower edge (s ≈ 0) when the likelihood is flat or best there.
    return jnp.where(fun(_LN_S_MIN, *args) <= jnp.minimum(fc, fd), _LN_S_MIN, x)
