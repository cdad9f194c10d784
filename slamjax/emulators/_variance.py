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


def model_variance(e, noise_var, good, usable):
    """Per-pixel model variance s² (flux² units) by maximum likelihood from held-out residuals ``e``
    [n, P] (flux units) with e_i ~ N(0, s² + σ_i²), ``noise_var`` σ_i² [n, P], over the ``good``
    entries; 0 when the likelihood falls at s² = 0, inf at pixels that are not ``usable``.

    The score ∂ℓ/∂s² = ½ Σ_i [(e_i² − σ_i² − s²) / (σ_i² + s²)²] is negative for s² ≥ max e_i². Its root
    is bracketed by 10 halvings in log s² of [1e-14, 1]·max e_i² (to a factor 1.03), then refined by 4
    Newton steps kept inside the bracket; 0 when the score is not positive at the bottom of that range."""
    e2 = jnp.where(good, jnp.asarray(e) ** 2, 0.0)
    nv = jnp.where(good, jnp.asarray(noise_var), 1.0)
    good = jnp.asarray(good)
    return np.where(usable, np.asarray(_ml_variance(e2, nv, good)), np.inf)


@jax.jit
def _ml_variance(e2, nv, good):
    def score(s2, slope=False):
        t = nv + s2[None, :]
        val = jnp.sum(jnp.where(good, (e2 - t) / (t * t), 0.0), axis=0)
        if not slope:
            return val
        return val, jnp.sum(jnp.where(good, (t - 2.0 * e2) / (t * t * t), 0.0), axis=0)

    top = jnp.maximum(jnp.max(e2, axis=0), jnp.finfo(e2.dtype).tiny)
    lo, hi = jnp.log(top * 1e-14), jnp.log(top)
    floor = score(jnp.exp(lo)) > 0

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = score(jnp.exp(mid)) > 0  # the likelihood still rises: the root is above mid
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 10, halve, (lo, hi))
    lo, hi = jnp.exp(lo), jnp.exp(hi)

    def newton(_, s2):
        val, slope = score(s2, slope=True)
        step = jnp.where(slope < 0, -val / jnp.where(slope < 0, slope, -1.0), 0.0)
        return jnp.clip(s2 + step, lo, hi)

    s2 = jax.lax.fori_loop(0, 4, newton, 0.5 * (lo + hi))
    return jnp.where(floor, s2, 0.0)
