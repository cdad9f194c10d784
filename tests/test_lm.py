"""The box-constrained Levenberg-Marquardt core on a problem where Gauss-Newton zig-zags."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax  # noqa: F401  (enables float64)
from slamjax._lm import levenberg_marquardt, multistart, spd_inverse

T = np.linspace(-3, 3, 60)
# Two blended lines fitted by one Gaussian: the residuals stay large at the minimum, so the
# Hessian's residual-curvature term (which Gauss-Newton drops) is large there.
Y = np.exp(-(((T - 0.6) / 0.5) ** 2)) + 0.9 * np.exp(-(((T + 0.6) / 0.5) ** 2))
LO, HI = np.array([-3.0, 0.0]), np.array([3.0, 5.0])


def _model(x):
    return x[1] * jnp.exp(-(((T - x[0]) / 0.7) ** 2))


def _normal(x):
    r = Y - _model(x)
    j = jax.jacfwd(_model)(x)
    return jnp.sum(r * r), -j.T @ r, j.T @ j


def _gauss_newton_steps(x, tol):
    """Steps of the same damping schedule with the Gauss-Newton matrix alone (numpy)."""
    lam, k = 1e-3, 0
    obj, g, h = (np.asarray(v) for v in _normal(x))
    while g @ np.linalg.solve(h, g) >= tol and k < 500:
        d = -np.linalg.solve(h + lam * np.diag(np.diag(h)), g)
        o2, g2, h2 = (np.asarray(v) for v in _normal(x + d))
        k += 1
        if o2 <= obj:
            x, obj, g, h, lam = x + d, o2, g2, h2, max(lam * 0.2, 1e-9)
        else:
            lam *= 10
    return k, x


def test_secant_term_cuts_zigzag_and_keeps_minimum_and_hessian():
    x0 = jnp.array([0.5, 1.0])
    x, obj, h, k, conv, dec, g = jax.jit(
        lambda x0: levenberg_marquardt(_normal, x0, jnp.asarray(LO), jnp.asarray(HI), max_steps=200, tol=1e-10)
    )(x0)
    k_gn, x_gn = _gauss_newton_steps(np.asarray(x0), 1e-10)
    assert bool(conv)
    assert k_gn >= 20  # the zig-zag this problem was chosen for
    assert int(k) <= 10, int(k)
    # the same minimum: both runs stop within 1e-5 of the formal scale of each other
    np.testing.assert_allclose(np.asarray(x), x_gn, atol=1e-4)
    assert float(dec) < 1e-10
    # the returned matrix is still JᵀJ at the solution (it gives the covariance)
    np.testing.assert_allclose(np.asarray(h), np.asarray(_normal(x)[2]), rtol=1e-12, atol=1e-12)
    # and the objective is the minimum: no grid point nearby is lower
    grid = np.stack(np.meshgrid(np.linspace(-0.01, 0.01, 21), np.linspace(-0.01, 0.01, 21)), -1).reshape(-1, 2)
    objs = np.array([float(_normal(np.asarray(x) + d)[0]) for d in grid])
    assert float(obj) <= objs.min() + 1e-12


def test_rows_without_steps_do_not_hold_up_the_batch():
    """A row with no information (zero normal matrix: a padding row or a spectrum without good
    pixels) never converges; with a step budget of 0 (``_fit_core.step_budget``) it must not make the
    vmapped loop run to the other rows' budget. Counted: loop iterations = batched normal() calls."""
    from slamjax._fit_core import step_budget

    calls = []

    def normal(x, scale):
        jax.debug.callback(lambda: calls.append(1))
        o, g, h = _normal(x)
        return o * scale, g * scale, h * scale

    def run(x0, scale, budget):
        def one(x, s, b):
            return levenberg_marquardt(
                lambda xx: normal(xx, s), x, jnp.asarray(LO), jnp.asarray(HI), max_steps=b, tol=1e-10
            )

        return jax.vmap(one)(x0, scale, budget)

    x0 = jnp.array([[0.5, 1.0], [0.5, 1.0]])
    scale = jnp.array([1.0, 0.0])  # row 1: objective, gradient and normal matrix all zero
    budget = step_budget(jnp.array([False, True]), 200)
    assert budget.tolist() == [200, 0]
    x, obj, h, k, conv, dec, g = jax.jit(run)(x0, scale, budget)
    jax.effects_barrier()
    assert bool(conv[0]) and int(k[1]) == 0 and np.allclose(x[1], x0[1])
    assert len(calls) == int(k[0]) + 1  # the start plus one evaluation per step of the real row
    ref = jax.jit(run)(x0[:1], scale[:1], budget[:1])
    np.testing.assert_allclose(x[0], ref[0][0], rtol=1e-12)
    calls.clear()
    # Without the budget the zero row's steps are all rejected (NaN) until the damping saturates.
    jax.jit(run)(x0, scale, jnp.array([200, 200]))
    jax.effects_barrier()
    assert len(calls) == 15 > int(k[0]) + 1


def test_multistart_steps_the_last_unfinished_problems_apart():
    """A batch of 16 problems of which a few need many steps: the batch steps together until at
    most 16 // 8 = 2 are left, then only those are stepped. Results equal per-problem runs."""
    sizes = []
    amps = jnp.linspace(0.6, 1.4, 16)
    x0 = jnp.stack([jnp.full(16, 0.5), jnp.ones(16)], axis=1).at[:2].set(jnp.array([[-2.5, 0.2], [2.5, 4.0]]))

    def problem(amp):
        def record(v):  # called once per batched evaluation, with the batch
            sizes.append(v.shape[0])
            return v

        def normal(x):
            x = jax.pure_callback(record, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="expand_dims")
            return _normal(x * jnp.array([1.0, amp]))  # a rescaled problem per row

        return normal, jnp.asarray(LO), jnp.asarray(HI)

    budget = jnp.full(16, 200)
    ref = jax.jit(
        jax.vmap(
            lambda a, s: levenberg_marquardt(
                problem(a)[0], s, jnp.asarray(LO), jnp.asarray(HI), max_steps=200, tol=1e-10
            )
        )
    )(amps, x0)
    sizes.clear()  # count the multistart run only
    x, obj, h, k, conv = jax.jit(lambda a, s, b: multistart(problem, a, s, b, tol=1e-10))(amps, x0[:, None, :], budget)
    jax.effects_barrier()
    np.testing.assert_allclose(x, ref[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(k, ref[3])
    assert bool(jnp.all(conv))
    full, tail = sizes.count(16), sizes.count(2)  # batched normal() calls: the start, then one per step
    k_sorted = np.sort(np.asarray(k))
    assert full == 1 + k_sorted[-3]  # together until only 2 are unfinished
    assert tail == k_sorted[-1] - k_sorted[-3] > 0  # then the last two alone


def test_spd_inverse_matches_inv_and_flags_non_positive_definite():
    """The covariance inverse (Cholesky): equal to the LU inverse for SPD matrices, NaN (status
    NON_FINITE downstream) for a singular or indefinite one, per matrix of a stack."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 5, 5))
    spd = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(5)
    np.testing.assert_allclose(np.asarray(spd_inverse(jnp.asarray(spd))), np.linalg.inv(spd), rtol=1e-9, atol=1e-12)
    bad = spd.copy()
    bad[1] = np.diag([1.0, 1.0, 0.0, 1.0, 1.0])  # singular
    bad[2] = np.diag([1.0, -1.0, 1.0, 1.0, 1.0])  # indefinite
    out = np.asarray(spd_inverse(jnp.asarray(bad)))
    assert np.all(np.isfinite(out[[0, 3]])) and np.all(np.isnan(out[1])) and np.all(np.isnan(out[2]))


def test_screening_picks_what_full_screening_steps_pick_with_one_jacobian():
    """The multi-start screening evaluates only the objective at its last step's points and the
    gradient and normal matrix at the one point that continues: the same point, step count and
    (obj, g, H) as SCREEN_STEPS full LM steps from every start, for S − 1 fewer normal() calls."""
    from slamjax import _lm

    lo, hi = jnp.asarray(LO), jnp.asarray(HI)
    # starts around both lines and far off (one steps onto the box edge, one barely moves)
    starts = jnp.array([[-2.5, 0.3], [0.55, 1.2], [-0.7, 0.5], [2.9, 4.5], [1.5, 0.05]])
    calls = {"normal": 0, "objective": 0}

    def counted(name, fn):
        def wrapped(x):
            x = jax.pure_callback(
                lambda v: (calls.__setitem__(name, calls[name] + (v.shape[0] if v.ndim > 1 else 1)), v)[1],
                jax.ShapeDtypeStruct(x.shape, x.dtype),
                x,
                vmap_method="expand_dims",
            )
            return fn(x)

        return wrapped

    normal = counted("normal", _normal)
    objective = counted("objective", lambda x: _normal(x)[0])
    x0, k0, (obj, g, h, aux) = jax.jit(lambda s: _lm._screen(normal, objective, s, None, lo, hi, tol=1e-10))(starts)
    assert aux is None  # normal() returns (obj, g, H) only
    jax.effects_barrier()
    n_s, n_steps = starts.shape[0], _lm.SCREEN_STEPS
    assert calls == {"normal": n_s * (n_steps - 1) + n_s + 1, "objective": n_s}  # starts, full steps, best

    ref = jax.vmap(lambda s: levenberg_marquardt(_normal, s, lo, hi, max_steps=n_steps, tol=1e-10))(starts)
    objs = np.asarray(ref[1])
    best = int(np.argmin(objs))
    assert len(set(np.round(objs, 6))) == n_s  # the starts end at different points: a real choice
    np.testing.assert_allclose(x0, ref[0][best], rtol=1e-12, atol=1e-14)
    assert int(k0) == int(ref[3][best])
    np.testing.assert_allclose(obj, objs[best], rtol=1e-12)
    np.testing.assert_allclose(g, ref[6][best], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h, ref[2][best], rtol=1e-12, atol=1e-12)


def test_start_alternatives_is_one_lm_step_from_each_start_and_keeps_the_lowest():
    """The check of the extra starts: per problem, the lowest objective over each start and the
    point one LM step takes it to (the step only where it lowers the objective), the same point as
    one full LM step; one objective evaluation per start and no normal() call."""
    from slamjax import _lm

    lo, hi = jnp.asarray(LO), jnp.asarray(HI)
    starts = jnp.array([[[-2.5, 0.3], [0.55, 1.2], [2.9, 4.5]], [[1.5, 0.05], [-0.7, 0.5], [0.55, 1.2]]])
    calls = {"normal": 0}

    def normal(x):
        calls["normal"] += 1
        return _normal(x)

    def problem(row):
        return normal, lo, hi, lambda x: _normal(x)[0]

    start_normals = jax.vmap(jax.vmap(_normal))(starts)
    calls["normal"] = 0
    x, obj = jax.jit(lambda s, sn: _lm.start_alternatives(problem, jnp.zeros(2), s, sn, tol=1e-10))(
        starts, start_normals
    )
    assert calls["normal"] == 0  # not even traced: the step needs the objective only
    for b in range(2):
        ref = [levenberg_marquardt(_normal, s, lo, hi, max_steps=1, tol=1e-10) for s in starts[b]]
        objs = np.array([float(r[1]) for r in ref])
        best = int(np.argmin(objs))
        assert float(obj[b]) == pytest.approx(objs[best], rel=1e-12)
        np.testing.assert_allclose(x[b], ref[best][0], rtol=1e-12, atol=1e-14)
        assert objs[best] < float(start_normals[0][b].min())  # the step mattered
