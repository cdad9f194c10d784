"""Box-constrained Levenberg-Marquardt for ONE small least-squares problem, and ``multistart``,
which runs it for a batch of problems.

The problem is given by ``normal(x) -> (obj, g, H)``: the objective (χ² plus prior
penalty), half its gradient g = -JᵀW r + P(x - m), and the Gauss-Newton matrix
H = JᵀWJ + P. The step solves (H + λ diag H) δ = -g on the labels that are not held
at a bound, is projected onto the box, and is accepted only if the objective does not
increase (λ shrinks after an accepted step and grows tenfold after a rejected one).

Convergence uses the Gauss-Newton decrement gᵀH⁻¹g: the objective decrease the full
Gauss-Newton step predicts, which is also the squared distance to the minimum in units
of the formal label errors. It is scale-free, so one tolerance serves every problem.

Structured secant term (Dennis, Gay & Welsch 1981, the NL2SOL idea). Gauss-Newton drops the
residual-curvature term Σ w r ∇²model of the Hessian. Where the model does not fit (real
spectra) that term matters: on MILES the kernel emulator's Gauss-Newton steps overshot by up
to ~1.8× along one direction, so the fit zig-zagged towards the minimum with a linear rate
and took 20-64 steps. The step therefore uses H + S, where S estimates that term from the
gradients already computed at accepted steps: with s the step and y = g_new − g_old, the
secant condition is S s = y − H_old s. S is sized down when it overstates the curvature along
s (factor min(1, |sᵀ(y − H_old s)| / |sᵀSs|)) and updated by the symmetric rank-two formula
S += (v yᵀ + y vᵀ)/(yᵀs) − (vᵀs) y yᵀ/(yᵀs)², v = y − H_old s − S s, only when yᵀs > 0.
When H + S is not positive definite the step falls back to H. S changes the path only: the
convergence test, the accepted objective and the returned H (the covariance) are unchanged.
Measured on the MILES peer benchmark (16 test stars restarted off their minimum): 20-64 steps
→ 6-12 for the slow ones, 5-13 → 5-6 for the others.

Batches (``multistart``). Under vmap a loop runs until its slowest member is done, and every
iteration costs the whole batch. The batch therefore steps together only while more than 1/8 of
it is unfinished; the rest are then gathered and stepped alone. Measured (kernel emulator, 2
cores, float64, 3 starts, warm): 300 synthetic spectra at 100 px 0.123-0.124 → 0.091-0.095 ms per
spectrum together with the cached template normals of ``_fit_core``; MILES 87 stars 0.33 → 0.26-0.27
ms at 215 px, 6.0-6.6 → 4.7-5.0 ms at 4300 px, identical minima on the MILES 5-fold CV (χ² within
2e-9, labels within 2e-5 σ).

Multi-start screening (``_screen``). Every start takes ``SCREEN_STEPS`` steps and the lowest
objective continues. The last screening step only needs the objective at the point it tries
(whether it is accepted, and the ranking); the gradient and normal matrix are computed once, at
the winner. For the kernel emulator an objective costs about 40 % of a model + Jacobian
evaluation (one row of products instead of 1 + L), so a 3-start screening costs 3 + 3 × 0.4 + 1
instead of 6 evaluations. Same points, same choice (a test checks it against full steps); on the
MILES 5-fold CV identical minima (215 px: χ² within 6e-10, labels within 1.1e-5 σ; 4300 px: within
1e-10). Pruning instead (the second step only for the 2 best starts after the first, or 1 screening
step) saved as much but changed the minimum of one MILES star at 4300 px (Δχ² = +705): the start
that wins after two steps can rank last after one.

Checked starts (``start_alternatives``; emulators with ``_check_starts_by_one_step``, the kernel
emulator). The best-ranked start is fitted alone; every other start gets one LM step from its
cached normal equations (one objective evaluation), and ``fit_labels`` fits a spectrum again from
the lowest such point only where it lies below the fit's minimum. The screening's winner is often
another start in the same basin (synthetic problem: the best-ranked start won 203/212/221 of 300 at
S/N 20/50/200, real APOGEE toy stars 261 of 403), which the screening paid for with full
evaluations at every start; the check pays one objective per extra start. Kernel, 400 centres ×
100 px, 300 spectra per S/N, 2 cores, five alternating process pairs, CPU-time median per spectrum
(S/N 20 / 50 / 200): 124-179 / 118-148 / 119-141 → 105-142 / 84-113 / 93-114 µs. Refits: none on
that problem, 5 % of the real APOGEE toy stars, 1-1.4 % of MILES. Minima in 5-fold CV against the
screening: see ``KernelEmulator._check_starts_by_one_step``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["levenberg_marquardt", "multistart", "spd_inverse", "start_alternatives"]

_LAMBDA0 = 1e-3
SCREEN_STEPS = 2  # LM steps each multi-start start gets before only the best one continues
TAIL_FRACTION = 8  # multistart: step only the unfinished problems once at most 1/8 of the batch is left
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
    y = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(hf), gf, lower=True)
    return y @ y


def spd_inverse(h):
    """Inverse of a symmetric positive definite matrix (or a stack of them) from its Cholesky factor
    (NaN where it is not positive definite). Cheaper to compile than ``jnp.linalg.inv`` (LU)."""
    eye = jnp.broadcast_to(jnp.eye(h.shape[-1], dtype=h.dtype), h.shape)
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), eye)


def levenberg_marquardt(normal, x0, lo, hi, *, max_steps: int, tol: float, start=None):
    """Minimise the objective from ``x0`` inside ``[lo, hi]``.

    ``start``: ``normal(x0)`` if the caller has it already (``x0`` must then be inside the box);
    saves one evaluation.

    Returns ``(x, obj, h, n_steps, converged, decrement, g)``; ``converged`` is True when
    the decrement is below ``tol`` (also when the damping saturates and the decrement
    is within 100·tol, i.e. at the precision floor of float32 problems). ``obj``, ``g`` and
    ``h`` are those at ``x``.
    """
    state = _init(normal, x0, lo, hi, max_steps=max_steps, tol=tol, start=start)
    state = _run(normal, state, lo, hi, max_steps=max_steps, tol=tol)
    return state.x, state.obj, state.h, state.k, state.conv, state.dec, state.g


def _run(normal, state, lo, hi, *, max_steps, tol):
    """Step ONE problem from ``state`` until it is done."""
    return jax.lax.while_loop(
        lambda st: ~st.done, lambda st: _step(normal, st, lo, hi, max_steps=max_steps, tol=tol), state
    )


class _State(NamedTuple):
    x: jax.Array
    obj: jax.Array
    g: jax.Array
    h: jax.Array
    lam: jax.Array
    k: jax.Array
    n_small: jax.Array
    conv: jax.Array
    done: jax.Array
    dec: jax.Array
    s_mat: jax.Array
    aux: object = None  # what ``normal`` returns beyond (obj, g, H) at x (e.g. the model), or None


def _eval(normal, x):
    """``normal(x)`` as (obj, g, H, aux); aux None where ``normal`` returns only (obj, g, H)."""
    out = normal(x)
    return (out[0], out[1], out[2], out[3] if len(out) > 3 else None)


def _finite(obj, g, h):
    return jnp.isfinite(obj) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(h))


def _init(normal, x0, lo, hi, *, max_steps, tol, start=None) -> _State:
    if start is None:
        x0 = jnp.clip(x0, lo, hi)
        obj0, g0, h0, aux0 = _eval(normal, x0)
    else:
        obj0, g0, h0, aux0 = tuple(start) + (None,) * (4 - len(start))
    dec0 = _decrement(x0, g0, h0, lo, hi)
    finite0 = _finite(obj0, g0, h0)
    conv0 = finite0 & (dec0 < tol)
    lam0 = jnp.asarray(_LAMBDA0, obj0.dtype)
    zero = jnp.zeros((), jnp.int32)
    done0 = ~finite0 | conv0 | (max_steps <= 0)
    return _State(x0, obj0, g0, h0, lam0, zero, zero, conv0, done0, dec0, jnp.zeros_like(h0), aux0)


def _proposal(state: _State, lo, hi):
    """The point the next LM step from ``state`` tries (inside the box)."""
    x, g, h, lam, s_mat = state.x, state.g, state.h, state.lam, state.s_mat
    free = _free(x, g, lo, hi)
    gf, hf = _masked(free, g, h)
    _, hs = _masked(free, g, h + s_mat)
    d = jnp.diag(hf)
    d = jnp.maximum(d, 1e-12 * jnp.max(d))
    # H + S where it is positive definite (finite Cholesky factor), else Gauss-Newton alone.
    # Cholesky factors only (no LU): the same steps to rounding; the fit programs compile 5-12 %
    # faster (Cannon 4.0-4.7 -> 3.8-4.2 s, kernel 6.3-7.3 -> 5.9-6.0 s on 2 cores) and the Cannon's
    # O(T²) steps run ~20 % faster (4300 px, 5120 spectra: 0.75 / 0.93 -> 0.61 / 0.70 s).
    c_s = jnp.linalg.cholesky(hs + lam * jnp.diag(d))
    spd = jnp.all(jnp.isfinite(c_s))
    c = jnp.where(spd, c_s, jnp.linalg.cholesky(hf + lam * jnp.diag(d)))
    delta = -jax.scipy.linalg.cho_solve((c, True), gf)
    return jnp.clip(x + delta, lo, hi)


def _step(normal, state: _State, lo, hi, *, max_steps, tol) -> _State:
    """One LM step (the caller keeps the old state where ``state.done``)."""
    x, obj, g, h, lam, k, n_small, _, _, _, s_mat, aux = state
    x_new = _proposal(state, lo, hi)
    obj_new, g_new, h_new, aux_new = _eval(normal, x_new)
    accept = _finite(obj_new, g_new, h_new) & (obj_new <= obj)
    s_mat = jnp.where(accept, _secant_update(s_mat, x_new - x, g_new - g, h), s_mat)
    # Count consecutive steps that lowered the objective by less than tol: at the
    # rounding floor (float32) the decrement cannot reach tol, only get close.
    small = ~accept | (obj - obj_new < tol)
    n_small = jnp.where(small, n_small + 1, 0)
    x = jnp.where(accept, x_new, x)
    obj = jnp.where(accept, obj_new, obj)
    g = jnp.where(accept, g_new, g)
    h = jnp.where(accept, h_new, h)
    aux = jax.tree.map(lambda a, b: jnp.where(accept, a, b), aux_new, aux)
    lam = jnp.where(accept, jnp.maximum(lam * 0.2, _LAMBDA_MIN), lam * 10.0)
    k = k + 1
    dec = _decrement(x, g, h, lo, hi)
    stalled = lam > _LAMBDA_MAX
    at_floor = (stalled | (n_small >= 3)) & (dec < 100.0 * tol)
    conv = (dec < tol) | at_floor
    done = conv | stalled | (k >= max_steps)
    return _State(x, obj, g, h, lam, k, n_small, conv, done, dec, s_mat, aux)


def multistart(
    problem, rows, starts, budget, *, tol, start_normals=None, tail_fraction=TAIL_FRACTION, return_aux=False
):
    """LM for a batch of B problems, each from the best of several starts.

    ``problem(row) -> (normal, lo, hi)`` builds one problem from its row of ``rows`` (a pytree
    of arrays [B, …]); ``starts`` [B, S, n]; ``budget`` [B] steps per problem (0: none);
    ``start_normals``: ``normal`` at every start, ``(obj [B, S], g [B, S, n], H [B, S, n, n])``, if
    the caller has it (starts inside the box), which saves S evaluations per problem.

    With S > 1 every start gets ``SCREEN_STEPS`` steps and only the best one continues (full runs
    from every start would cost S times more model Jacobians); the screening steps count.

    The main run steps the batch together while more than ``B // TAIL_FRACTION`` problems are
    unfinished, then gathers the unfinished ones into a batch of that size and steps only those
    (each step under vmap costs the whole batch, so a few slow fits used to make every fit of the
    chunk run as many steps as the slowest). ``tail_fraction=None``: one vmapped loop per problem
    instead (the linear-feature path, whose steps are too cheap to gain from a smaller batch).
    Returns ``(x, obj, h, n_steps, converged)``, [B, …], and with ``return_aux`` also ``aux``: what
    ``normal`` returns beyond (obj, g, H) at x (e.g. the model values; ``start_normals`` then carry it
    as a fourth element), so that the caller need not evaluate the model at the solution again.
    """

    def first(row, starts_1, budget_1, start_normals_1):
        normal, lo, hi, objective = _unpack(problem(row))
        if starts_1.shape[0] > 1:
            x0, k0, start = _screen(normal, objective, starts_1, start_normals_1, lo, hi, tol=tol)
        else:
            x0, k0 = starts_1[0], jnp.zeros((), jnp.int32)
            start = None if start_normals_1 is None else jax.tree.map(lambda a: a[0], start_normals_1)
        state = _init(normal, x0, lo, hi, max_steps=budget_1 - k0, tol=tol, start=start)
        return state, k0

    def step(rows_, state, budget_):
        def one(row, st, b):
            normal, lo, hi, _ = _unpack(problem(row))
            new = _step(normal, st, lo, hi, max_steps=b, tol=tol)
            return jax.tree.map(lambda old, nw: jnp.where(st.done, old, nw), st, new)

        return jax.vmap(one)(rows_, state, budget_)

    if tail_fraction is None:  # every problem in its own (vmapped) loop

        def whole(row, starts_1, budget_1, start_normals_1):
            state, k0 = first(row, starts_1, budget_1, start_normals_1)
            normal, lo, hi, _ = _unpack(problem(row))
            state = _run(normal, state, lo, hi, max_steps=budget_1 - k0, tol=tol)
            return state, k0

        state, k0 = jax.vmap(whole)(rows, starts, budget, start_normals)
        out = (state.x, state.obj, state.h, k0 + state.k, state.conv)
        return out + (state.aux,) if return_aux else out

    state, k0 = jax.vmap(first)(rows, starts, budget, start_normals)
    budget = budget - k0
    n = budget.shape[0]
    tail = n // tail_fraction
    state = jax.lax.while_loop(lambda st: jnp.sum(~st.done) > tail, lambda st: step(rows, st, budget), state)
    if tail > 0:
        # At most `tail` problems are unfinished: step only those. (Padding indices point at finished
        # problems, whose states the steps leave unchanged.)
        idx = jnp.nonzero(~state.done, size=tail, fill_value=jnp.argmax(state.done))[0]
        sub_rows, sub_state = jax.tree.map(lambda a: a[idx], (rows, state))
        sub_state = jax.lax.while_loop(
            lambda st: jnp.any(~st.done), lambda st: step(sub_rows, st, budget[idx]), sub_state
        )
        state = jax.tree.map(lambda a, b: a.at[idx].set(b), state, sub_state)
    out = (state.x, state.obj, state.h, k0 + state.k, state.conv)
    return out + (state.aux,) if return_aux else out


def _unpack(p):
    """``problem(row)``: ``(normal, lo, hi)`` or ``(normal, lo, hi, objective)``."""
    normal, lo, hi = p[:3]
    objective = p[3] if len(p) > 3 else (lambda x: normal(x)[0])
    return normal, lo, hi, objective


def _screen(normal, objective, starts, start_normals, lo, hi, *, tol):
    """The multi-start screening of ONE problem: ``SCREEN_STEPS`` LM steps from each start [S, n],
    the best result continues. The last screening step needs only the objective at the point it
    tries (``objective``: model fluxes without their Jacobian, ~1/4 of the products of a kernel
    model evaluation), and the gradient and normal matrix only at the one point that continues:
    the same points and choice as full steps, for one full evaluation instead of S.

    Returns ``(x0, k0, start)``: the best point, the steps taken to it, ``normal(x0)`` as (obj, g, H, aux)."""

    def run(x0, sn):
        st = _init(normal, x0, lo, hi, max_steps=SCREEN_STEPS, tol=tol, start=sn)
        for _ in range(SCREEN_STEPS - 1):
            new = _step(normal, st, lo, hi, max_steps=SCREEN_STEPS, tol=tol)
            st = jax.tree.map(lambda old, nw: jnp.where(st.done, old, nw), st, new)
        x_try = _proposal(st, lo, hi)
        obj_try = objective(x_try)
        take = ~st.done & jnp.isfinite(obj_try) & (obj_try <= st.obj)
        return st, x_try, jnp.where(take, obj_try, st.obj), take

    st, x_try, objs, take = jax.vmap(run)(starts, start_normals)
    best = jnp.argmin(jnp.where(jnp.isfinite(objs), objs, jnp.inf))
    kept = (st.obj[best], st.g[best], st.h[best], jax.tree.map(lambda a: a[best], st.aux))
    new = _eval(normal, x_try[best])
    # A tried point whose gradient or normal matrix is not finite counts as a rejected step.
    use = take[best] & _finite(*new[:3])
    start = jax.tree.map(lambda a, b: jnp.where(use, a, b), new, kept)
    x0 = jnp.where(use, x_try[best], st.x[best])
    k0 = st.k[best] + jnp.where(st.done[best], 0, 1)
    return x0, k0, start


def start_alternatives(problem, rows, starts, start_normals, *, tol):
    """One LM step from each of several starts of B problems, for the starts' check of
    ``fit_labels`` (``AbstractEmulator._check_starts_by_one_step``): ``starts`` [B, S, n] with
    ``start_normals`` ``(obj [B, S], g [B, S, n], H [B, S, n, n])`` at them (inside the box). The step
    costs one objective evaluation per start (no Jacobian). Returns, per problem, the point with
    the lowest objective over the starts and their stepped points, and that objective (inf where
    none is finite): ``(x [B, n], obj [B])``."""

    def one(row, starts_1, sn_1):
        normal, lo, hi, objective = _unpack(problem(row))

        def each(x0, sn):
            st = _init(normal, x0, lo, hi, max_steps=1, tol=tol, start=sn)
            x1 = _proposal(st, lo, hi)
            obj1 = objective(x1)
            take = ~st.done & jnp.isfinite(obj1) & (obj1 <= st.obj)
            obj = jnp.where(take, obj1, st.obj)
            return jnp.where(take, x1, x0), jnp.where(jnp.isfinite(obj), obj, jnp.inf)

        xs, objs = jax.vmap(each)(starts_1, sn_1)
        best = jnp.argmin(objs)
        return xs[best], objs[best]

    return jax.vmap(one)(rows, starts, start_normals)


def _secant_update(s_mat, step, y, h_old):
    """Structured secant update of the residual-curvature estimate S (module docstring)."""
    ys = y @ step
    y_sharp = y - h_old @ step
    sss = step @ s_mat @ step
    denom = jnp.where(sss != 0, jnp.abs(sss), 1.0)
    size = jnp.where(sss != 0, jnp.minimum(1.0, jnp.abs(step @ y_sharp) / denom), 1.0)
    s_sized = size * s_mat
    v = y_sharp - s_sized @ step
    ys_safe = jnp.where(ys > 0, ys, 1.0)
    new = s_sized + (jnp.outer(v, y) + jnp.outer(y, v)) / ys_safe - (v @ step) * jnp.outer(y, y) / ys_safe**2
    usable = (ys > 0) & jnp.all(jnp.isfinite(new))
    return jnp.where(usable, new, s_mat)
