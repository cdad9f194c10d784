"""Exact ε-SVR (SLAM's per-pixel regressor) for many pixels sharing one kernel matrix.

SLAM (Zhang, Liu & Deng 2020) fits every pixel with scikit-learn's (libsvm's) ε-SVR and an RBF
kernel. With one training set and one γ the kernel matrix K [m, m] is the same for all pixels, so
the duals of all pixels can be solved together with matrix products K @ B, B [m, P].

For pixel p, with β = α⁺ − α⁻ (libsvm's ``dual_coef_``), the dual is

    minimise  ½ βᵀKβ − yᵀβ + ε‖β‖₁   over   −C_i ≤ β_i ≤ C_i      [and Σ_i β_i = 0 with an intercept],

the dual of   ½‖w‖² + Σ_i C_i max(0, |y_i − f(x_i)| − ε),   f(x) = Σ_i β_i k(x, x_i) + b.

``intercept=True`` is libsvm's formulation: the intercept b makes Σβ = 0 an equality constraint,
which is kept exactly by projecting inside the proximal step (the prox of box + ε‖·‖₁ + {Σβ = 0}
is ``clip(soft(v − ν, tε), −C, C)`` with the scalar ν found by bisection), and b is the multiplier
of that constraint. ``intercept=False`` drops b (and the constraint); that is the natural choice
for fluxes standardised to zero mean per pixel, where the RBF expansion alone carries the mean.

Algorithm: FISTA (accelerated proximal gradient) with step 1/λ_max(K), per-pixel adaptive
(gradient-based) momentum restarts, and a fixed iteration cap. Every ``check_every`` iterations the
KKT residual of each pixel is evaluated: the natural (prox-gradient) residual
``R = L (β − prox(β − ∇/L))`` (zero exactly at the optimum), measured as ``max_i |R_i| / max_i |y_i|``.
A pixel is converged, and frozen, once this relative KKT residual is ≤ ``tol`` (default 1e-6).
The duality gap (primal − dual objective, with the final b) is reported, not used for stopping.

Limitation (measured): convergence is linear with a rate set by the conditioning of K on the free
support vectors. Well-conditioned problems converge in a few hundred iterations; smooth RBF
kernels (small γ, K numerically singular) with large C (C = 1/λ = 100–1000) can need far more than
the default cap of 20000 (relative KKT residual still ~1e-2–1e-4 there). Such pixels are reported
as not converged (``info["converged"]``); the iterate is still feasible.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["solve_svr_dual"]

_BISECT = 60  # bisection steps for the multiplier of Σβ = 0 (then one exact linear interpolation)


def solve_svr_dual(
    K,
    Y,
    C,
    epsilon,
    tol: float = 1e-6,
    max_iter: int = 20000,
    *,
    intercept: bool = False,
    init=None,
    lipschitz: float | None = None,
    check_every: int = 10,
):
    """Solve the ε-SVR dual for all pixels (columns of ``Y``) on one shared kernel matrix.

    Arguments:
        K: symmetric positive semi-definite kernel matrix [m, m].
        Y: targets [m, P] (or [m] for one pixel).
        C: box bound ≥ 0: scalar, per pixel [P], or per entry [m, P] (C_ip = 0 removes entry i
            of pixel p from the fit, e.g. a bad pixel).
        epsilon: tube half-width ≥ 0, in the units of ``Y``: scalar or per pixel [P].
        tol: convergence tolerance on the relative KKT residual ``max|R| / max|y|`` (see module
            docstring); default 1e-6.
        max_iter: iteration cap per pixel.
        intercept: include libsvm's intercept b (enforces Σβ = 0 exactly).
        init: optional warm start [m, P] (clipped to the box).
        lipschitz: λ_max(K) if already known (otherwise computed with ``eigvalsh``).
        check_every: iterations between convergence checks.

    Returns:
        ``(beta, info)``: β = α⁺ − α⁻ [m, P] (so f(x) = Σ_i β_i k(x, x_i) + b) and a dict of numpy
        arrays over pixels: ``n_iter`` [P], ``converged`` [P] (relative KKT residual ≤ tol),
        ``kkt`` [P] (final relative KKT residual), ``gap`` [P] (duality gap, objective units),
        ``objective`` [P] (dual objective above), ``intercept`` [P] (b; zeros without intercept).
        With 1-D ``Y`` the outputs are squeezed to one pixel.
    """
    K = jnp.asarray(K)
    Y = jnp.asarray(Y)
    one = Y.ndim == 1
    if one:
        Y = Y[:, None]
    if K.ndim != 2 or K.shape[0] != K.shape[1] or Y.ndim != 2 or Y.shape[0] != K.shape[0]:
        raise ValueError(f"need K [m, m] and Y [m, P], got {K.shape} and {Y.shape}")
    m, p = Y.shape
    dtype = jnp.result_type(K.dtype, Y.dtype, jnp.float32)
    K, Y = K.astype(dtype), Y.astype(dtype)
    C = np.asarray(C, dtype=np.float64)
    eps = np.asarray(epsilon, dtype=np.float64)
    if C.ndim == 1:
        C = C[None, :]
    if C.ndim > 2 or eps.ndim > 1:
        raise ValueError("C must be a scalar, [P] or [m, P]; epsilon a scalar or [P]")
    C = np.broadcast_to(C, (m, p))
    eps = np.broadcast_to(eps, (p,))
    if not (np.all(np.isfinite(C)) and np.all(C >= 0)):
        raise ValueError("C must be finite and >= 0")
    if not (np.all(np.isfinite(eps)) and np.all(eps >= 0)):
        raise ValueError("epsilon must be finite and >= 0")
    if max_iter < 0 or check_every < 1:
        raise ValueError("need max_iter >= 0 and check_every >= 1")
    if lipschitz is None:
        lipschitz = float(jnp.linalg.eigvalsh(K)[-1])
    lipschitz = max(float(lipschitz), 1e-300)
    C_j, eps_j = jnp.asarray(C, dtype=dtype), jnp.asarray(eps, dtype=dtype)
    if init is None:
        beta0 = jnp.zeros((m, p), dtype)
    else:
        beta0 = jnp.clip(jnp.asarray(init, dtype).reshape(m, p), -C_j, C_j)
    step = jnp.asarray(1.0 / lipschitz, dtype)
    tol_j = jnp.asarray(tol, dtype)
    beta, n_iter, _ = _fista(
        K,
        Y,
        C_j,
        eps_j,
        beta0,
        jnp.zeros(p, jnp.int32),
        step,
        tol_j,
        intercept=intercept,
        n_outer=-(-max_iter // check_every),
        check_every=check_every,
    )
    out = _report(K, Y, C_j, eps_j, beta, n_iter, step, tol_j, intercept=intercept)
    info = {k: np.asarray(v) for k, v in out.items()}
    beta = np.asarray(beta)
    if one:
        beta = beta[:, 0]
        info = {k: v[0] for k, v in info.items()}
    return beta, info


def _soft(v, t):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


def _prox(v, C, te, intercept):
    """prox of t·(ε‖β‖₁ + box [−C, C] [+ Σβ = 0]) at v [m, P]; ``te`` = t·ε [P]. Returns (β, ν [P])."""
    te2 = te[None, :]
    if not intercept:
        return jnp.clip(_soft(v, te2), -C, C), jnp.zeros_like(te)

    def total(nu):  # Σ_i β_i(ν): continuous, non-increasing, piecewise linear in ν
        return jnp.sum(jnp.clip(_soft(v - nu[None, :], te2), -C, C), axis=0)

    lo = jnp.min(v, axis=0) - te  # total(lo) ≥ 0
    hi = jnp.max(v, axis=0) + te  # total(hi) ≤ 0

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        pos = total(mid) > 0
        return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECT, bisect, (lo, hi))
    flo, fhi = total(lo), total(hi)
    # exact when no breakpoint is left inside the bracket; midpoint on a flat (zero) segment
    denom = jnp.where(flo > fhi, flo - fhi, 1.0)
    nu = jnp.where(flo > fhi, lo + jnp.clip(flo / denom, 0.0, 1.0) * (hi - lo), 0.5 * (lo + hi))
    return jnp.clip(_soft(v - nu[None, :], te2), -C, C), nu


def _kkt(K, Y, C, eps, beta, step, intercept):
    """Relative natural residual max|β − prox(β − t∇)| / (t·max|y|) [P], multiplier ν [P], ∇ [m, P]."""
    grad = K @ beta - Y
    pb, nu = _prox(beta - step * grad, C, step * eps, intercept)
    ymax = jnp.max(jnp.abs(Y), axis=0)
    res = jnp.max(jnp.abs(beta - pb), axis=0) / step / jnp.where(ymax > 0, ymax, 1.0)
    return res, nu, grad


@functools.partial(jax.jit, static_argnames=("intercept", "n_outer", "check_every"))
def _fista(K, Y, C, eps, beta0, n_iter0, step, tol, *, intercept, n_outer, check_every):
    """FISTA with adaptive restarts; pixels whose KKT residual is ≤ tol are frozen."""
    te = step * eps

    def iterate(_, state):
        beta, z, t, active, n_iter = state
        x_new, _ = _prox(z - step * (K @ z - Y), C, te, intercept)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = jnp.sum((z - x_new) * (x_new - beta), axis=0) > 0  # O'Donoghue & Candès
        mom = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        z_new = x_new + mom[None, :] * (x_new - beta)
        t_new = jnp.where(restart, 1.0, t_new)
        act = active[None, :]
        return (
            jnp.where(act, x_new, beta),
            jnp.where(act, z_new, z),
            jnp.where(active, t_new, t),
            active,
            n_iter + active.astype(n_iter.dtype),
        )

    def outer_cond(state):
        i, inner = state
        return (i < n_outer) & jnp.any(inner[3])

    def outer_body(state):
        i, inner = state
        beta, z, t, active, n_iter = jax.lax.fori_loop(0, check_every, iterate, inner)
        active = active & (_kkt(K, Y, C, eps, beta, step, intercept)[0] > tol)
        return i + 1, (beta, z, t, active, n_iter)

    p = Y.shape[1]
    active0 = _kkt(K, Y, C, eps, beta0, step, intercept)[0] > tol
    init = (beta0, beta0, jnp.ones(p, Y.dtype), active0, n_iter0)
    _, (beta, _, _, active, n_iter) = jax.lax.while_loop(outer_cond, outer_body, (jnp.int32(0), init))
    return beta, n_iter, active


@functools.partial(jax.jit, static_argnames=("intercept",))
def _report(K, Y, C, eps, beta, n_iter, step, tol, *, intercept):
    res, nu, grad = _kkt(K, Y, C, eps, beta, step, intercept)
    b = nu / step if intercept else jnp.zeros_like(nu)
    quad = jnp.sum(beta * (grad + Y), axis=0)  # βᵀKβ
    l1 = jnp.sum(jnp.abs(beta), axis=0)
    objective = 0.5 * quad - jnp.sum(Y * beta, axis=0) + eps * l1
    resid = -grad - b[None, :]  # y − Kβ − b
    hinge = jnp.sum(C * jnp.maximum(jnp.abs(resid) - eps[None, :], 0.0), axis=0)
    gap = 0.5 * quad + hinge + objective  # primal − (−objective)
    return {"n_iter": n_iter, "converged": res <= tol, "kkt": res, "gap": gap, "objective": objective, "intercept": b}


def epsilon_refit(eig, y, good, gidx, lam, epsilon, pixel_chunk, *, intercept=True, tol=1e-6, max_iter=20000):
    """Re-solve each pixel with the ε-SVR dual at its selected (γ, λ), using C = 1/λ.

    ``eig`` are the eigenpairs of the kernel matrix of each γ, ``y`` [m, P] standardised flux,
    ``good`` [m, P] the usable entries (bad ones get C = 0, i.e. no influence), ``gidx``/``lam``
    [P] the selection. Returns (β [m, P], intercept b [P], converged [P]); warm-started from the
    ridge solution.
    """
    m, p = y.shape
    beta, b, conv = np.zeros((m, p)), np.zeros(p), np.ones(p, dtype=bool)
    c_all = good / lam[None, :]
    for g, (evals, q) in enumerate(eig):
        evals = np.maximum(evals, 0.0)
        k = (q * evals[None, :]) @ q.T  # exactly PSD version of exp(−γ d²)
        cols = np.flatnonzero(gidx == g)
        for c0 in range(0, cols.size, pixel_chunk):
            sl = cols[c0 : c0 + pixel_chunk]
            ridge = q @ ((q.T @ y[:, sl]) / (evals[:, None] + lam[None, sl]))  # KRR α
            bt, info = solve_svr_dual(
                k,
                y[:, sl],
                c_all[:, sl],
                epsilon,
                tol=tol,
                max_iter=max_iter,
                intercept=intercept,
                init=ridge,
                lipschitz=float(evals[-1]),
            )
            beta[:, sl], b[sl], conv[sl] = bt, info["intercept"], info["converged"]
    return beta, b, conv
