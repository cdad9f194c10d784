"""The compiled core of :func:`slamjax.fit_labels`: the fit of one chunk of spectra.

Two evaluation strategies give the same χ² (a test checks this):

* generic: model flux and Jacobian from the emulator at every step, O(P·L) per step;
* linear-feature emulators (``flux = θ v(z)``, e.g. The Cannon): with W fixed per
  spectrum, χ²(z) = c − 2 u·b + uᵀAu with u = v(z)[1:], A = θ'ᵀWθ', b = θ'ᵀW(f − θ_0),
  c = (f − θ_0)ᵀW(f − θ_0). A, b, c cost one pass over the pixels; every LM step and
  every multi-start template after that is O(T²), independent of P. (Centring on the
  constant column θ_0 keeps c small, which matters in float32.)

Starts from the training labels (templates) are ranked by their objective from the template
spectra, computed once per emulator, and taken apart from each other (``diverse_starts``). For the
generic path ``fit_labels`` also keeps the templates' Jacobians (up to
``_fit_prepared._TEMPLATE_JAC_MAX_BYTES``): the objective, gradient and normal matrix at each start then
cost O(P·L²) instead of a model evaluation. With them, an emulator whose
``_check_starts_by_one_step`` is set (the kernel emulator) fits only the best-ranked start here and
returns, per spectrum, the best point one LM step takes the other starts to and whether its
objective is below the minimum found (``alt_z``, ``alt_better``); ``fit_labels`` fits those again.

With ``return_model`` the LM carries the model values of its accepted point (``normal`` returns them
as a fourth element, the template starts bring their cached spectra), so the model at the solution
costs no evaluation of its own (kernel 400 × 100 px, 320 spectra, four alternating process pairs:
CPU time min 108.8-113.0 → 107.9-109.3 µs per spectrum, wall min 64.3-67.3 → 64.1-64.4 µs).

Emulators with a ``_pixel_order`` (the kernel emulator's float64 fit layout, whose coefficient
columns are grouped by γ) are evaluated in that order: the data are permuted once per chunk
instead of the model flux and Jacobian at every evaluation, and the Jacobian comes out as
[L, P], the layout the normal matrix needs. Measured with the multi-start screening change of
``slamjax._lm`` (kernel, 400 centres × 100 px, 300 spectra, 2 cores, interleaved runs, best of
40): 72-73 → 63-66 µs per spectrum for the compiled chunk, identical minima.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._lm import TAIL_FRACTION, multistart, spd_inverse, start_alternatives
from ._result import Status
from .emulators._base import AbstractLinearEmulator

_START_CANDIDATES = 16  # diverse_starts: starts are chosen among this many best templates
_START_SEPARATION = 0.5  # ... at least this far apart (standardised labels), where there are such


# ------------------------------------------------------------------ compiled core
# Plain jax.jit, not eqx.filter_jit: equinox (0.13) blocks until each call completes, which
# serialised the numpy S/N median behind the compiled fit (measured +9-14 % with jax.jit). The
# emulator is a pytree (static fields in its treedef); ``args`` holds only arrays.
# The tolerance is data (``args["tol"]``, a 0-d array), so fits with another ``tol`` reuse the program.
@functools.partial(jax.jit, static_argnames=("n_starts", "return_model", "check_starts"))
def _fit_chunk(em, args, *, n_starts, return_model=True, check_starts=False):
    flux, ivar = args["flux"], args["ivar"]
    tol = args["tol"]
    s2 = em.pixel_variance
    good = (ivar > 0) & jnp.isfinite(flux) & jnp.isfinite(s2)[None, :]
    w = jnp.where(good, ivar / (1.0 + jnp.where(good, ivar * s2[None, :], 0.0)), 0.0)
    f = jnp.where(good, flux, 0.0)
    n_pix = jnp.sum(good, axis=1)
    lo, hi = args["lo"], args["hi"]
    pm, pp = args["prior_m"], args["prior_p"]

    if isinstance(em, AbstractLinearEmulator):
        theta0, theta = em.design[:, 0], em.design[:, 1:]
        fc = f - theta0[None, :]
        n_t = theta.shape[1]
        iu, ju = np.triu_indices(n_t)
        a_tri = w @ (theta[:, iu] * theta[:, ju])  # [B, T'(T'+1)/2]
        a = jnp.zeros((w.shape[0], n_t, n_t), w.dtype).at[:, iu, ju].set(a_tri).at[:, ju, iu].set(a_tri)
        b = (w * fc) @ theta
        c = jnp.sum(w * fc * fc, axis=1)
        data = (a, b, c)

        def model_of(z):
            # One matrix product for the batch (faster than vmapping em over spectra).
            return jax.vmap(em.features)(z) @ em.design.T

        def make_normal(data, m, p):
            a, b, c = data

            def u_of(z):
                return em.features(z)[1:]

            def normal(z):
                u = u_of(z)
                du = jax.jacfwd(u_of)(z)
                au = a @ u
                obj = c - 2.0 * u @ b + u @ au + jnp.sum(p * (z - m) ** 2)
                g = du.T @ (au - b) + p * (z - m)
                h = du.T @ a @ du + jnp.diag(p)
                return obj, g, h

            def objective(z):
                u = u_of(z)
                return c - 2.0 * u @ b + u @ (a @ u) + jnp.sum(p * (z - m) ** 2)

            return normal, objective
    else:
        # Emulators with a ``_pixel_order`` get the data permuted once into their own pixel order (the
        # sums do not depend on it); columns that are no pixel (order −1, padding) get zero weight.
        order = em._pixel_order
        if order is None:
            data = (f, w)
        else:
            data = (f[:, jnp.maximum(order, 0)], jnp.where(order >= 0, w[:, jnp.maximum(order, 0)], 0.0))

        def make_normal(data, m, p):
            f, w = data

            def normal(z):
                model, jt = em._flux_and_jacobian_t(z)
                r = f - model
                obj = jnp.sum(w * r * r) + jnp.sum(p * (z - m) ** 2)
                g, h = gauss_newton_terms(jt, w, r)
                # With return_model the LM carries the model (evaluation order) at its accepted point.
                out = (obj, g + p * (z - m), h + jnp.diag(p))
                return out + (model,) if return_model else out

            def objective(z):
                r = f - em._flux_ordered(z)
                return jnp.sum(w * r * r) + jnp.sum(p * (z - m) ** 2)

            return normal, objective

    starts = args.get("starts")
    start_normals = None
    if "templates" in args:
        templates = args["templates"]
        # Σ_l p_l (t_l − m_l)² expanded into matrix products: the broadcast [B, K, L] form cost
        # about as much as the data term (~0.5 ms per 320 spectra × 512 templates).
        prior_t = (pp * pm * pm).sum(axis=1)[:, None] + pp @ (templates * templates).T - 2.0 * (pp * pm) @ templates.T
        if isinstance(em, AbstractLinearEmulator):
            a, b, c = data
            u_t = jax.vmap(em.features)(templates)[:, 1:]  # [K, T']
            uu_t = (u_t[:, :, None] * u_t[:, None, :]).reshape(u_t.shape[0], -1)
            obj_t = c[:, None] - 2.0 * b @ u_t.T + a.reshape(a.shape[0], -1) @ uu_t.T + prior_t
        else:
            flux_t = args["templates_flux"]  # [K, P], computed once per fit_labels call
            # One matrix product for both data terms, Σ w (f − t)² = Σ w f² + [w f, w] · [−2 t, t²]
            # (two products took ~2x as long: 1.45 ms per 320 spectra × 512 templates × 100 px).
            rows = jnp.concatenate([w * f, w], axis=1)
            cols = jnp.concatenate([-2.0 * flux_t, flux_t * flux_t], axis=1)
            obj_t = jnp.sum(w * f * f, axis=1)[:, None] + rows @ cols.T + prior_t
        obj_t = jnp.where(jnp.isfinite(obj_t) & args["templates_ok"][None, :], obj_t, jnp.inf)
        idx = diverse_starts(obj_t, templates, n_starts)
        from_templates = templates[idx]  # [B, S, L]
        if starts is None and "templates_jac" in args:
            # The objective, gradient and normal matrix at each start from the templates' cached
            # flux and Jacobian: O(P·L²) each instead of a model evaluation.
            start_normals = _template_normals(f, w, pm, pp, from_templates, flux_t[idx], args["templates_jac"][idx])
            if return_model:  # the model at each start, in the evaluation order (see normal)
                cols = np.arange(f.shape[1]) if em._pixel_order is None else jnp.maximum(em._pixel_order, 0)
                start_normals = start_normals + (flux_t[idx][:, :, cols],)
        starts = from_templates if starts is None else jnp.concatenate([starts, from_templates], axis=1)

    def problem(row):
        data_1, m, p = row
        normal, objective = make_normal(data_1, m, p)
        return normal, lo, hi, objective

    too_few = n_pix < lo.shape[0] + 1
    budget = step_budget(too_few, args["max_steps"])
    check = check_starts and start_normals is not None and starts.shape[1] > 1
    if check:
        # The best-ranked start is fitted alone; the others get one step each (fit_labels refits
        # the spectra where one of them lands below the fit's minimum).
        alt_z, alt_obj = start_alternatives(
            problem, (data, pm, pp), starts[:, 1:], tuple(a[:, 1:] for a in start_normals[:3]), tol=tol
        )
        starts = starts[:, :1]
        start_normals = tuple(a[:, :1] for a in start_normals)
    # Linear-feature steps are O(T²): per-iteration overhead, not the batch size, sets their cost, so
    # a gathered tail cannot save much; measured no difference (Cannon, 4300 px, chunk 256, 5120
    # spectra: 0.79 s with, 0.80 s without), and they keep one loop per problem.
    linear = isinstance(em, AbstractLinearEmulator)
    tail = None if linear else TAIL_FRACTION
    z, obj, h, k, conv, *carried = multistart(
        problem,
        (data, pm, pp),
        starts,
        budget,
        tol=tol,
        start_normals=start_normals,
        tail_fraction=tail,
        return_aux=return_model and not linear,
    )
    chi2 = obj - jnp.sum(pp * (z - pm) ** 2, axis=1)
    cov_z = spd_inverse(h)
    if linear:
        model = model_of(z)
        chi2 = jnp.sum(w * (f - model) ** 2, axis=1)
    elif return_model:  # the model the LM carried, from evaluation order back to the pixels
        model = carried[0]
        order = em._pixel_order
        if order is not None:
            key = jnp.where(order >= 0, order, f.shape[1] + jnp.arange(order.shape[0]))
            model = model[:, jnp.argsort(key)[: f.shape[1]]]
        chi2 = jnp.sum(w * (f - model) ** 2, axis=1)

    tiny = 1e-6 * (hi - lo)
    at_bound = jnp.any((z <= (lo + tiny)[None, :]) | (z >= (hi - tiny)[None, :]), axis=1)
    status = chunk_status(z, chi2, cov_z, conv, at_bound, too_few)
    out = dict(z=z, cov_z=cov_z, chi2=chi2, n_pixels=n_pix, n_steps=k, status=status, converged=conv)
    if check:
        out |= dict(alt_z=alt_z, alt_better=jnp.isfinite(obj) & (alt_obj < obj - tol) & ~too_few)
    return out | {"model": model} if return_model else out


def gauss_newton_terms(jt, w, r):
    """Half the gradient, −Jᵀ W r [n], and the Gauss-Newton matrix JᵀWJ [n, n] from the Jacobian
    transposed ``jt`` [n, P], weights and residuals [P], as elementwise products summed over the
    pixels. XLA's CPU dot for these per-spectrum [n, P] × [P, n] products, batched over a chunk, was
    slower (2 cores, float64, best of 30, dot → this): n = 3, 320 spectra × 100 px 212 → 165 µs,
    256 × 4300 px 31-44 → 4.2-6.8 ms (a kernel model + Jacobian there costs ~33 ms); n = 4,
    32 × 7214 px 1.6-2.0 → 1.0-1.8 ms; n = 13, 32 × 7214 px 19-22 → 9-12 ms. (−Σ jw·r, reusing
    jw = jt·w, was up to 3× slower than −Σ jt·(w r) with jt given as a transpose.)"""
    jw = jt * w[None, :]
    return -jnp.sum(jt * (w * r)[None, :], axis=-1), jnp.sum(jw[:, None, :] * jt[None, :, :], axis=-1)


def diverse_starts(obj_t, templates, n_starts, n_candidates=_START_CANDIDATES, separation=_START_SEPARATION):
    """Indices [B, S] of the starting templates: the lowest objective ``obj_t`` [B, K] first, then
    the lowest among the ``n_candidates`` best that lie at least ``separation`` (standardised label
    units) from every start taken so far (the nearest ones again only when there are no others).
    Neighbouring templates of the best one mostly run into the same minimum; a start farther away
    can find another. Ranked in float32: XLA's CPU top_k sorts float64 ~40× slower, and only the
    choice of starting points depends on it."""
    n_cand = min(n_candidates, obj_t.shape[1])
    _, cand = jax.lax.top_k(-obj_t.astype(jnp.float32), n_cand)  # best first
    if n_starts == 1:
        return cand[:, :1]
    t_c = templates[cand]  # [B, C, L]
    taken = jnp.zeros(cand.shape, bool)
    near = jnp.zeros(cand.shape, bool)
    picks = []
    for _ in range(n_starts):
        # Candidates near a start rank after all others (their order kept); taken ones last of all.
        rank = jnp.where(taken, 2 * n_cand, jnp.arange(n_cand)[None, :] + jnp.where(near, n_cand, 0))
        j = jnp.argmin(rank, axis=1)
        picks.append(j)
        taken = taken | (jnp.arange(n_cand)[None, :] == j[:, None])
        t_j = jnp.take_along_axis(t_c, j[:, None, None], axis=1)  # [B, 1, L]
        near = near | (jnp.sum((t_c - t_j) ** 2, axis=-1) < separation**2)
    return jnp.take_along_axis(cand, jnp.stack(picks, axis=1), axis=1)


def _template_normals(f, w, pm, pp, z_t, flux_t, jac_t):
    """(obj [B, S], g [B, S, L], H [B, S, L, L]) of the generic objective at template starts z_t
    [B, S, L], from their fluxes [B, S, P] and Jacobians [B, S, P, L] (standardised labels)."""
    r = f[:, None, :] - flux_t
    wr = w[:, None, :] * r
    dz = z_t - pm[:, None, :]
    obj = jnp.sum(wr * r, axis=2) + jnp.sum(pp[:, None, :] * dz * dz, axis=2)
    terms = jax.vmap(jax.vmap(gauss_newton_terms, in_axes=(0, None, 0)))
    g, h = terms(jnp.swapaxes(jac_t, 2, 3), w, r)
    return obj, g + pp[:, None, :] * dz, h + jax.vmap(jnp.diag)(pp)[:, None, :, :]


def step_budget(too_few, max_steps):
    """LM step limit per row [B]: none for rows without enough good pixels (BAD_INPUT, and the
    padding rows of a chunk). Their normal matrix is zero, so the Gauss-Newton decrement is NaN and
    they never converge; under vmap the whole chunk then ran every step of the budget (the kernel
    fit of 300 spectra padded to 320: 8 lock-step LM iterations where 4 served every real fit)."""
    return jnp.where(too_few, 0, max_steps)


def chunk_status(x, chi2, cov, conv, at_bound, too_few):
    """Status codes [B] of a chunk's fits (parameters ``x`` [B, n], ``cov`` [B, n, n]): BAD_INPUT
    (``too_few`` good pixels) over NON_FINITE over HIT_BOUND (``at_bound``) over CONVERGED/MAX_STEPS."""
    finite = (
        jnp.all(jnp.isfinite(x), axis=1)
        & jnp.isfinite(chi2)
        & jnp.all(jnp.isfinite(cov), axis=(1, 2))
        & jnp.all(jnp.diagonal(cov, axis1=1, axis2=2) > 0, axis=1)
    )
    status = jnp.where(conv, int(Status.CONVERGED), int(Status.MAX_STEPS))
    status = jnp.where(at_bound, int(Status.HIT_BOUND), status)
    status = jnp.where(finite, status, int(Status.NON_FINITE))
    return jnp.where(too_few, int(Status.BAD_INPUT), status)
