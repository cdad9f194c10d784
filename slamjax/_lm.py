"""Box-constrained Levenberg-Marquardt for ONE small least-squares problem (vmapped by callers).

The problem is given by ``normal(x) -> (obj, g, H)``: the objective (χ² plus prior
penalty), half its gradient g = -JᵀW r + P(x - m), and the Gauss-Newton matrix
H = JᵀWJ + P. The step solves (H + λ diag H) δ = -g on the labels that are not held
at a bound, is projected onto the box, and is accepted only if the objective does not
increase (λ shrinks after an accepted step and grows tenfold after a rejected one).

Convergence uses the Gauss-Newton decrement gᵀH⁻¹g: the objective decrease the full
Gauss-Newton step predicts, which is also the squared distance to the minimum in units
of the formal label errors. It is scale-free, so one tolerance serves every problem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["levenberg_marquardt"]

_LAMBDA0 = 1e-3
SCREEN_STEPS = 2  # LM steps each multi-start start gets before only the best one continues
_LAMBDA_MIN = 1e-9
_LAMBDA_MAX = 1e10


def _free(x, g, lo, hi):
    """Labels not held at a bound by a gradient pointing out of the box."""
    return ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))


def _masked(free, g, h):
    eye = jnp.eye(g.shape[0], dtype=h.dtype)
    hf = jnp.where(free[:, None] & free[None, :], h, eye)
    return jnp.where(free, g, 0.0), hf


def _decrement(x, g, h, lo, hi):
    gf, hf = _masked(_free(x, g, lo, hi), g, h)
    return gf @ jnp.linalg.solve(hf, gf)


def levenberg_marquardt(normal, x0, lo, hi, *, max_steps: int, tol: float, start=None):
    """Minimise the objective from ``x0`` inside ``[lo, hi]``.

    ``start``: ``normal(x0)`` if the caller has it already (``x0`` must then be inside the box);
    saves one evaluation.

    Returns ``(x, obj, h, n_steps, converged, decrement, g)``; ``converged`` is True when
    the decrement is below ``tol`` (also when the damping saturates and the decrement
    is within 100·tol, i.e. at the precision floor of float32 problems). ``obj``, ``g`` and
    ``h`` are those at ``x``.
    """
    if start is None:
        x0 = jnp.clip(x0, lo, hi)
        obj0, g0, h0 = normal(x0)
    else:
        obj0, g0, h0 = start
    dec0 = _decrement(x0, g0, h0, lo, hi)
    finite0 = jnp.isfinite(obj0) & jnp.all(jnp.isfinite(g0)) & jnp.all(jnp.isfinite(h0))
    conv0 = finite0 & (dec0 < tol)
    lam0 = jnp.asarray(_LAMBDA0, obj0.dtype)
    zero = jnp.asarray(0)
    init = (x0, obj0, g0, h0, lam0, zero, zero, conv0, ~finite0 | conv0, dec0)

    def cond(state):
        return ~state[8]

    def body(state):
        x, obj, g, h, lam, k, n_small, _, _, _ = state
        gf, hf = _masked(_free(x, g, lo, hi), g, h)
        d = jnp.diag(hf)
        d = jnp.maximum(d, 1e-12 * jnp.max(d))
        delta = -jnp.linalg.solve(hf + lam * jnp.diag(d), gf)
        x_new = jnp.clip(x + delta, lo, hi)
        obj_new, g_new, h_new = normal(x_new)
        ok = jnp.isfinite(obj_new) & jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(h_new))
        accept = ok & (obj_new <= obj)
        # Count consecutive steps that lowered the objective by less than tol: at the
        # rounding floor (float32) the decrement cannot reach tol, only get close.
        small = ~accept | (obj - obj_new < tol)
        n_small = jnp.where(small, n_small + 1, 0)
        x = jnp.where(accept, x_new, x)
        obj = jnp.where(accept, obj_new, obj)
        g = jnp.where(accept, g_new, g)
        h = jnp.where(accept, h_new, h)
        lam = jnp.where(accept, jnp.maximum(lam * 0.2, _LAMBDA_MIN), lam * 10.0)
        k = k + 1
        dec = _decrement(x, g, h, lo, hi)
        stalled = lam > _LAMBDA_MAX
        at_floor = (stalled | (n_small >= 3)) & (dec < 100.0 * tol)
        conv = (dec < tol) | at_floor
        done = conv | stalled | (k >= max_steps)
        return x, obj, g, h, lam, k, n_small, conv, done, dec

    x, obj, g, h, _, k, _, conv, _, dec = jax.lax.while_loop(cond, body, init)
    return x, obj, h, k, conv, dec, g
