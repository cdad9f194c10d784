import numpy as np
import pytest
from scipy.optimize import minimize

import slamjax as sj
from slamjax.emulators._svr import solve_svr_dual

from .test_kernel import _smooth_problem


def _problem(m=30, p=4, seed=0, gamma=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, 3))
    k = np.exp(-gamma * np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=2))
    y = np.sin(x @ rng.normal(size=(3, p))) + 0.1 * rng.normal(size=(m, p))
    return k, y - y.mean(axis=0)


def _dual(beta, k, y, eps):
    return 0.5 * beta @ k @ beta - y @ beta + eps * np.abs(beta).sum()


def _scipy_dual(k, y, c, eps, intercept):
    """The same QP on the split variables α⁺, α⁻ ∈ [0, C] (smooth objective)."""
    m = len(y)

    def fun(a):
        beta = a[:m] - a[m:]
        g = k @ beta - y
        return 0.5 * beta @ k @ beta - y @ beta + eps * a.sum(), np.concatenate([g + eps, -g + eps])

    bounds = [(0.0, c)] * (2 * m)
    if intercept:
        cons = {
            "type": "eq",
            "fun": lambda a: a[:m].sum() - a[m:].sum(),
            "jac": lambda a: np.r_[np.ones(m), -np.ones(m)],
        }
        r = minimize(
            fun,
            np.zeros(2 * m),
            jac=True,
            method="SLSQP",
            bounds=bounds,
            constraints=[cons],
            options={"ftol": 1e-15, "maxiter": 2000},
        )
    else:
        r = minimize(
            fun,
            np.zeros(2 * m),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 20000, "maxcor": 50},
        )
    return r.x[:m] - r.x[m:]


@pytest.mark.parametrize("intercept", [False, True])
def test_matches_scipy_qp(intercept):
    k, y = _problem()
    c, eps = np.array([0.5, 2.0, 10.0, 100.0]), 0.1
    beta, info = solve_svr_dual(k, y, c, eps, intercept=intercept)
    assert info["converged"].all() and np.all(info["kkt"] <= 1e-6)
    for j in range(y.shape[1]):
        ref = _scipy_dual(k, y[:, j], c[j], eps, intercept)
        f, fref = _dual(beta[:, j], k, y[:, j], eps), _dual(ref, k, y[:, j], eps)
        assert f <= fref + 1e-6 * abs(fref), (j, f, fref)  # measured: |Δf|/|f| ≲ 1e-10
        np.testing.assert_allclose(beta[:, j], ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
        np.testing.assert_allclose(info["objective"][j], f, rtol=1e-12)
    if intercept:
        np.testing.assert_allclose(beta.sum(axis=0), 0.0, atol=1e-10)


@pytest.mark.parametrize("intercept", [False, True])
def test_kkt_conditions(intercept):
    k, y = _problem(m=40, p=3, seed=1)
    c, eps = np.array([1.0, 5.0, 50.0]), np.array([0.05, 0.1, 0.2])
    beta, info = solve_svr_dual(k, y, c, eps, tol=1e-9, intercept=intercept)
    assert info["converged"].all()
    assert np.all(info["gap"] >= -1e-9) and np.all(info["gap"] < 1e-6 * np.abs(info["objective"]))
    r = y - k @ beta - info["intercept"][None, :]
    tol = 1e-6
    cb, eb = np.broadcast_to(c, beta.shape), np.broadcast_to(eps, beta.shape)
    inside = np.abs(r) < eb - tol
    assert np.all(np.abs(beta[inside]) < tol)  # strictly inside the tube: β = 0
    at_bound = np.abs(beta) > cb - tol
    assert np.all(np.abs(r[at_bound]) > eb[at_bound] - tol)  # |β| = C: on or outside the tube
    assert np.all(np.sign(beta[at_bound]) == np.sign(r[at_bound]))
    free = (np.abs(beta) > tol) & ~at_bound  # 0 < |β| < C: exactly on the tube edge
    assert free.any()
    np.testing.assert_allclose(r[free], eb[free] * np.sign(beta[free]), atol=1e-6)
    outside = np.abs(r) > eb + tol
    np.testing.assert_allclose(np.abs(beta[outside]), cb[outside], rtol=1e-9)  # outside: β = ±C
    assert np.all(np.abs(beta) <= cb + 1e-12)


def test_small_epsilon_large_c_is_interpolation():
    k, y = _problem(m=25, p=2, seed=2, gamma=1.0)
    interp = np.linalg.solve(k, y)
    c = 10 * np.abs(interp).max()
    beta, info = solve_svr_dual(k, y, c, 0.0, tol=1e-10, max_iter=100000)
    assert info["converged"].all()
    np.testing.assert_allclose(beta, interp, atol=1e-6 * np.abs(interp).max())
    # a thin tube: every residual within ε, close to the ridge solution with a tiny λ
    beta, info = solve_svr_dual(k, y, c, 1e-4, tol=1e-10, max_iter=100000)
    assert np.abs(y - k @ beta).max() <= 1e-4 * (1 + 1e-6)
    ridge = np.linalg.solve(k + 1e-6 * np.eye(len(k)), y)
    assert np.abs(k @ (beta - ridge)).max() < 2e-4
    # with the intercept: the bordered interpolation system [K 1; 1ᵀ 0]
    m = len(k)
    a = np.block([[k, np.ones((m, 1))], [np.ones((1, m)), np.zeros((1, 1))]])
    sol = np.linalg.solve(a, np.vstack([y, np.zeros((1, 2))]))
    beta, info = solve_svr_dual(k, y, 10 * np.abs(sol).max(), 0.0, tol=1e-10, max_iter=100000, intercept=True)
    np.testing.assert_allclose(beta, sol[:m], atol=1e-6 * np.abs(sol).max())
    np.testing.assert_allclose(info["intercept"], sol[m], atol=1e-6)


def test_solver_inputs():
    k, y = _problem(m=10, p=2)
    beta, info = solve_svr_dual(k, y[:, 0], 1.0, 0.1)  # one pixel: squeezed outputs
    assert beta.shape == (10,) and info["converged"].shape == ()
    beta2, _ = solve_svr_dual(k, y, np.ones((10, 2)), np.array([0.1, 0.1]))
    np.testing.assert_allclose(beta2[:, 0], beta, atol=1e-12)
    c = np.ones((10, 2))
    c[3, 1] = 0.0  # an excluded entry
    beta3, _ = solve_svr_dual(k, y, c, 0.1)
    assert beta3[3, 1] == 0.0
    beta4, info = solve_svr_dual(k, y, 1.0, 0.1, max_iter=0)
    assert np.all(beta4 == 0) and not info["converged"].any() and np.all(info["n_iter"] == 0)
    with pytest.raises(ValueError, match="C must"):
        solve_svr_dual(k, y, -1.0, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        solve_svr_dual(k, y, 1.0, -0.1)
    with pytest.raises(ValueError, match="need K"):
        solve_svr_dual(k[:5], y, 1.0, 0.1)


def test_emulator_epsilon_loss(tmp_path, caplog):
    ds, clean = _smooth_problem(m=120, p=8, seed=1)
    sq = sj.KernelEmulator.train(ds)
    with caplog.at_level("WARNING"):
        ep = sj.KernelEmulator.train(ds, loss="epsilon", epsilon=0.05)
    assert "squared-loss" in caplog.text
    # same selection and LOO numbers, different coefficients
    np.testing.assert_array_equal(np.asarray(ep.lam), np.asarray(sq.lam))
    np.testing.assert_array_equal(np.asarray(ep.cv_mse), np.asarray(sq.cv_mse))
    assert not np.allclose(np.asarray(ep.coef), np.asarray(sq.coef))
    test = np.random.default_rng(5).uniform([4500, 1.5, -1.5], [6500, 4.5, 0.0], size=(50, 3))
    e_sq = np.median(np.abs(sq.predict(test) - clean(test)))
    e_ep = np.median(np.abs(ep.predict(test) - clean(test)))
    assert e_ep < 1.5 * e_sq, (e_ep, e_sq)
    back = sj.load_emulator(ep.save(tmp_path / "svr.npz"))
    assert type(back) is sj.KernelEmulator
    np.testing.assert_array_equal(back.predict(test[:4]), ep.predict(test[:4]))
    # a dead pixel (no good training entry) keeps the plain mean of 1, no SVR intercept
    ivar = ds.ivar.copy()
    ivar[:, 0] = 0.0
    dead = sj.SpectrumSet(ds.wave, ds.flux, ivar, labels=ds.labels, label_names=ds.label_names)
    ep_dead = sj.KernelEmulator.train(dead, loss="epsilon", epsilon=0.05)
    np.testing.assert_array_equal(ep_dead.predict(test[:3])[:, 0], 1.0)
    assert np.isinf(np.asarray(ep_dead.pixel_variance)[0])
    with pytest.raises(ValueError, match="loss"):
        sj.KernelEmulator.train(ds, loss="huber")
    with pytest.raises(ValueError, match="epsilon"):
        sj.KernelEmulator.train(ds, loss="epsilon", epsilon=-1.0)
