"""Per-pixel model variance from held-out residuals, shared by the kernel and Payne emulators.

A held-out residual is model error plus the held-out star's own noise, e_i ~ N(0, s² + σ_i²). s² is
the maximum-likelihood value over a pixel's good entries (floored at 0). With equal σ_i it is the
moment estimate mean(e²) − σ²; unlike the moment estimate mean(e² − σ²) it is not decided by one
star with a huge σ_i (a flagged pixel given a large error instead of ivar = 0), whose e_i² − σ_i²
is mostly noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["model_variance"]

_BLOCK_FLOATS = 2**22  # entries per block of pixels


def model_variance(e, noise_var, good, usable):
    """Per-pixel model variance s² (flux² units) from held-out residuals ``e`` [n, P] (flux units) with
    e_i ~ N(0, s² + σ_i²), ``noise_var`` σ_i² [n, P], over the ``good`` entries; inf at pixels that are
    not ``usable`` and at pixels with a non-finite residual at a good entry (a broken model there is not
    an exact one). Entries with infinite σ_i² carry no information and are left out.

    s² is a root of the score ∂ℓ/∂s² = ½ Σ_i [(e_i² − σ_i² − s²) / (σ_i² + s²)²], which is ≤ 0 for
    s² ≥ max e_i²: bracketed by 16 halvings in log s² of [1e-10 · min σ_i², max e_i²], then refined by 4
    Newton steps kept inside the bracket. 0 when the score is ≤ 0 at the bottom of that range (a model
    variance below 1e-10 of every star's noise variance changes no weight). Where the likelihood has
    several maxima (possible with very unequal σ_i) this is the one the bisection reaches, not
    necessarily the global one."""
    e = np.asarray(e, dtype=np.float64)
    nv = np.asarray(noise_var, dtype=np.float64)
    n, p = e.shape
    s2 = np.empty(p)
    broken = np.zeros(p, dtype=bool)
    step = max(1, _BLOCK_FLOATS // max(n, 1))  # pixel blocks bound the temporaries (17,000 stars: 246 px)
    for c0 in range(0, p, step):
        sl = slice(c0, min(c0 + step, p))
        ok = np.asarray(good[:, sl]) & np.isfinite(nv[:, sl])
        broken[sl] = np.any(ok & ~np.isfinite(e[:, sl]), axis=0)
        ok &= np.isfinite(e[:, sl])
        e2 = np.where(ok, e[:, sl], 0.0) ** 2
        s2[sl] = np.asarray(_ml_variance(jnp.asarray(e2), jnp.asarray(np.where(ok, nv[:, sl], 1.0)), jnp.asarray(ok)))
    return np.where(np.asarray(usable) & ~broken, s2, np.inf)


@jax.jit
def _ml_variance(e2, nv, good):
    def score(s2, slope=False):
        t = nv + s2[None, :]
        val = jnp.sum(jnp.where(good, (e2 - t) / (t * t), 0.0), axis=0)
        if not slope:
            return val
        return val, jnp.sum(jnp.where(good, (t - 2.0 * e2) / (t * t * t), 0.0), axis=0)

    tiny = jnp.finfo(e2.dtype).tiny
    bottom = jnp.maximum(1e-10 * jnp.min(jnp.where(good, nv, jnp.inf), axis=0), tiny)
    top = jnp.maximum(jnp.max(e2, axis=0), bottom)
    lo, hi = jnp.log(bottom), jnp.log(top)
    floor = score(bottom) > 0

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = score(jnp.exp(mid)) > 0  # the likelihood still rises: the root is above mid
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 16, halve, (lo, hi))
    lo, hi = jnp.exp(lo), jnp.exp(hi)

    def newton(_, s2):
        val, slope = score(s2, slope=True)
        step = jnp.where(slope < 0, -val / jnp.where(slope < 0, slope, -1.0), 0.0)
        return jnp.clip(s2 + step, lo, hi)

    s2 = jax.lax.fori_loop(0, 4, newton, 0.5 * (lo + hi))
    return jnp.where(floor, s2, 0.0)
