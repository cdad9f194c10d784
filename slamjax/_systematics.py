"""Estimating an emulator's systematic label errors from fits of held-out spectra of known labels.

The result is a :class:`slamjax.emulators.LabelSystematics` (neighbours or smooth form); this
module fits the smooth form's log-variance polynomials and chooses between the forms by
held-out likelihood. Public entry points: :func:`slamjax.validate.label_systematics` and
:func:`slamjax.validate.cv_systematics`.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from .emulators._base import LabelSystematics, _n_poly_terms, _poly_terms, _psd, smooth_variance

logger = logging.getLogger(__name__)

MODELS = ("auto", "smooth", "neighbours")
NEIGHBOURS = (15, 30, 60)  # the candidate neighbour counts of model="auto"
DEGREE = 2  # of the smooth form's log-variance polynomial
RIDGE = 1.0  # on its non-constant coefficients (the log-likelihood is a sum over ~100s of spectra)
N_HOLDOUT = 5  # folds of the held-out comparison


def estimate(res, true, subtract_cov: bool, scale, what: str, *, model="auto", k=None) -> LabelSystematics:
    """LabelSystematics from fits ``res`` of spectra the model did not see, true labels ``true`` [N, L].

    Per usable fit (finite labels, status ≤ HIT_BOUND) the excess d dᵀ (d = fitted − true), minus
    the formal covariance if ``subtract_cov``, placed at the FITTED labels: a catalogue star is
    looked up by its fitted labels, so the map must give E[d dᵀ | fitted labels]. Where the
    emulator is biased the two differ (a quadratic Cannon on non-quadratic spectra, synthetic
    benchmark: Teff pull std 1.19-1.21 keyed at the true labels, 1.18 at the fitted ones).

    ``model``: "neighbours" (mean excess of the ``k`` nearest, default 30), "smooth" (log-variance
    polynomials fitted to all, correlations from the ``k`` nearest) or "auto": the one of the
    smooth form and the neighbours form with k in (15, 30, 60) (or the given ``k``) whose
    variances give the highest likelihood of held-out errors (5 folds).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if k is not None and (int(k) != k or k < 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    ok = (res.status <= 2) & np.all(np.isfinite(true), axis=1) & np.all(np.isfinite(res.labels), axis=1)
    if ok.sum() < 2:
        raise ValueError(f"only {int(ok.sum())} of {len(true)} {what} fits are usable; cannot estimate")
    scale = np.asarray(scale, dtype=np.float64)
    points = np.asarray(res.labels[ok], dtype=np.float64)
    d = (points - true[ok]) / scale  # label errors in units of the label scale
    cov = np.asarray(res.cov[ok], dtype=np.float64) / (scale[:, None] * scale[None, :])
    excess = d[:, :, None] * d[:, None, :] - (cov if subtract_cov else 0.0)
    var = np.diagonal(cov, axis1=1, axis2=2) if subtract_cov else np.zeros_like(d)
    u = points / scale
    v, n_lab = d.shape
    smooth_ok = v >= 4 * _n_poly_terms(n_lab, DEGREE) + 20
    if model == "smooth" and not smooth_ok:
        raise ValueError(
            f"the smooth form needs at least {4 * _n_poly_terms(n_lab, DEGREE) + 20} usable {what} fits "
            f"for {n_lab} labels, got {v}; use model='neighbours'"
        )
    if model == "auto":
        ks = [min(int(k), v)] if k is not None else sorted({min(kk, v) for kk in NEIGHBOURS})
        if smooth_ok and v >= 2 * N_HOLDOUT:
            model, k_best = _choose(u, d, var, excess, ks, what)
        else:
            model, k_best = "neighbours", ks[len(ks) // 2]
        if model == "neighbours":
            k = k_best
    k = min(int(k if k is not None else 30), v)  # the smooth form takes its correlations from k neighbours
    log_var = _fit_log_var(u, d, var) if model == "smooth" else None
    return LabelSystematics(
        points=jnp.asarray(points),
        excess=jnp.asarray(excess * (scale[:, None] * scale[None, :])),
        scale=jnp.asarray(scale),
        k=k,
        log_var=None if log_var is None else jnp.asarray(log_var),
        degree=DEGREE,
        label_names=None if getattr(res, "label_names", None) is None else tuple(res.label_names),
    )


def _fit_log_var(u, d, var):
    """Maximum-likelihood coefficients [L, T] of log s_l²(u) = poly(u − centre), d_nl ~ N(0, var_nl + s_l²(u_n))."""
    a = _poly_terms(u - u.mean(axis=0), DEGREE)  # the centre smooth_variance uses
    return np.stack([_fit_one(a, d[:, i], var[:, i]) for i in range(d.shape[1])])


def _fit_one(a, d, var):
    d2 = d * d

    def nll(b):
        s = np.exp(np.clip(a @ b, -700.0, 700.0))
        tot = var + s
        g = 0.5 * ((1.0 / tot - d2 / tot**2) * s) @ a
        g[1:] += RIDGE * b[1:]
        return 0.5 * np.sum(np.log(tot) + d2 / tot) + 0.5 * RIDGE * np.sum(b[1:] ** 2), g

    b0 = np.zeros(a.shape[1])
    b0[0] = np.log(max(np.mean(d2 - var), 0.01 * np.mean(d2), 1e-300))
    out = minimize(nll, b0, jac=True, method="L-BFGS-B")
    if not np.all(np.isfinite(out.x)):
        raise RuntimeError("the log-variance fit of the systematic label errors failed (non-finite coefficients)")
    return out.x


def _choose(u, d, var, excess, ks, what):
    """The form (and k) whose variances give the lowest held-out negative log-likelihood of d."""
    v = len(u)
    fold = np.random.default_rng(0).permutation(v) % N_HOLDOUT
    scores = {("smooth", None): 0.0, **{("neighbours", kk): 0.0 for kk in ks}}
    for f in range(N_HOLDOUT):
        tr, te = fold != f, fold == f
        ntr = int(tr.sum())
        tree = cKDTree(u[tr])
        for kk in ks:
            kk_f = min(kk, ntr)
            near = tree.query(u[te], k=kk_f)[1].reshape(int(te.sum()), kk_f)
            s = np.diagonal(_psd(excess[tr][near].mean(axis=1)), axis1=1, axis2=2)
            scores[("neighbours", kk)] += _nll(d[te], var[te], s)
        s = smooth_variance(u[te], u[tr], _fit_log_var(u[tr], d[tr], var[tr]), DEGREE)
        scores[("smooth", None)] += _nll(d[te], var[te], s)
    best = min(scores, key=scores.get)
    logger.info(
        "systematic label errors from %d %s fits: %s (held-out -log L: %s)",
        v,
        what,
        "smooth form" if best[0] == "smooth" else f"{best[1]} neighbours",
        ", ".join(f"{m if m == 'smooth' else f'k={kk}'} {sc:.1f}" for (m, kk), sc in scores.items()),
    )
    return best


def _nll(d, var, s):
    tot = np.maximum(var + s, 1e-300)
    return float(np.sum(0.5 * (np.log(tot) + d * d / tot)))
