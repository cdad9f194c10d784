"""Nuisance parameters in `fit_labels`: radial velocity and per-segment continuum (see `_nuisance`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._fit_core import chunk_status, gauss_newton_terms, step_budget
from ._lm import multistart, spd_inverse
from ._nuisance import _WINDOW_PIXELS, C_KMS, Shifter, chebyshev_basis, pixel_velocity, segments_of

# ------------------------------------------------------------ nuisance parameters
_RV_TEMPLATES = 6  # label vectors whose shifted models make the radial-velocity grid
_RV_GRID_STEP = 1.5  # grid step in pixel velocities (LM refines inside ±_WINDOW_PIXELS)
_V_SCALE = 100.0  # the fit works with v / 100 km/s


def _spread_subset(z, k):
    """``k`` rows of ``z`` spread over its range (greedy farthest-point, deterministic)."""
    if z.shape[0] <= k:
        return np.arange(z.shape[0])
    pick = [int(np.argmin(np.sum(z**2, axis=1)))]  # start nearest the centre
    d = np.sum((z - z[pick[0]]) ** 2, axis=1)
    while len(pick) < k:
        j = int(np.argmax(d))
        pick.append(j)
        d = np.minimum(d, np.sum((z - z[j]) ** 2, axis=1))
    return np.sort(np.asarray(pick))


def _nuisance_setup(em, rv, continuum, dtype):
    """Static config and arrays for fits with a Doppler shift and/or a continuum."""
    usable = np.isfinite(np.asarray(em.pixel_variance))
    segments = segments_of(np.asarray(em.wave), usable)
    arrays = Shifter.arrays(np.asarray(em.wave), segments, usable)
    degree = -1
    if continuum is not None:
        degree = int(continuum)
        if degree < 0 or degree != continuum:
            raise ValueError(f"continuum must be a polynomial degree >= 0, got {continuum!r}")
        basis = chebyshev_basis(np.asarray(em.wave), segments, degree)
    else:
        basis = chebyshev_basis(np.asarray(em.wave), segments, 0)  # segment indicators
    arrays["basis"] = basis.astype(dtype)
    n_v = 0
    if rv is not False and rv is not None:
        bounds = (-500.0, 500.0) if rv is True else tuple(float(b) for b in rv)
        if len(bounds) != 2 or not (bounds[0] < bounds[1]) or not np.all(np.isfinite(bounds)):
            raise ValueError(f"rv must be True, False or finite bounds (lo, hi) in km/s, got {rv!r}")
        if max(abs(bounds[0]), abs(bounds[1])) >= 0.1 * C_KMS:
            raise ValueError("rv bounds must be within ±0.1 c")
        step = _RV_GRID_STEP * pixel_velocity(em.wave)
        vgrid = np.arange(bounds[0], bounds[1] + 0.5 * step, step)
        n_v = vgrid.size
        space = em.space
        train = np.asarray(space.train)
        pick = _spread_subset((train - np.asarray(space.mean)) / np.asarray(space.scale), _RV_TEMPLATES)
        rest = np.asarray(em.predict(train[pick]))  # [K, P]
        # the grid search's mask keeps the segment edges only: across the whole velocity range every
        # unusable model pixel would blank ~(range / pixel velocity) data pixels, and a template
        # interpolated through one is only a start
        sh = Shifter.of(Shifter.arrays(np.asarray(em.wave), segments))
        shifted = jax.jit(jax.vmap(jax.vmap(sh.shift, in_axes=(None, 0)), in_axes=(0, None)))(
            jnp.asarray(rest), jnp.asarray(vgrid)
        )
        arrays["grid_models"] = np.asarray(shifted).reshape(-1, rest.shape[1]).astype(dtype)
        arrays["vgrid"] = vgrid.astype(dtype)
        arrays["grid_valid"] = np.asarray(sh.valid(bounds[0], bounds[1]))
        arrays["v_bounds"] = np.asarray(bounds, dtype=dtype)
    cfg = (n_v > 0, degree, segments, n_v, pixel_velocity(em.wave))
    return cfg, arrays


def _segment_chi2(f, w, models, segments, scaled):
    """χ² [B, K] of data f, w [B, P] against models [K, P], optionally with the best scale per segment.

    Returns (chi2, scale [B, K, S]). Segments partition the pixels, so the cost is that of one
    unsegmented product.
    """
    total, scales = 0.0, []
    for a, b in segments:
        fs, ws, ms = f[:, a:b], w[:, a:b], models[:, a:b]
        a1 = jnp.sum(ws * fs * fs, axis=1)[:, None]
        a2 = (ws * fs) @ ms.T
        a3 = ws @ (ms * ms).T
        if scaled:
            s = jnp.where(a3 > 0, a2 / jnp.where(a3 > 0, a3, 1.0), 1.0)
            total = total + a1 - s * a2
            scales.append(s)
        else:
            total = total + a1 - 2.0 * a2 + a3
            scales.append(jnp.ones_like(a2))
    return total, jnp.stack(scales, axis=2)


@functools.partial(jax.jit, static_argnames=("nuis", "n_starts", "return_model"))
def _fit_chunk_nuisance(em, args, *, nuis, n_starts, return_model=True):
    """Like :func:`_fit_chunk`, with parameters x = [z (L), v/100 km/s (if rv), continuum (S·(n+1))]."""
    rv_on, degree, segments, n_v, v_pix = nuis
    flux, ivar = args["flux"], args["ivar"]
    tol = args["tol"]
    dtype = flux.dtype
    s2 = em.pixel_variance
    good = (ivar > 0) & jnp.isfinite(flux) & jnp.isfinite(s2)[None, :]
    w = jnp.where(good, ivar / (1.0 + jnp.where(good, ivar * s2[None, :], 0.0)), 0.0)
    f = jnp.where(good, flux, 0.0)
    space = em.space
    n_lab = space.mean.shape[0]
    sh = Shifter(*(args[k] for k in Shifter.KEYS))
    basis = args["basis"]
    n_seg = len(segments)
    cont_on = degree >= 0
    n_c = basis.shape[1] if cont_on else 0
    n_par = n_lab + int(rv_on) + n_c
    pm, pp = args["prior_m"], args["prior_p"]
    batch = flux.shape[0]

    # Starting velocity: grid search over a few shifted models (per-segment scale if continuum).
    if rv_on:
        if "v0" in args:
            v0 = args["v0"]
        else:
            wg = w * args["grid_valid"][None, :]
            chi_g, _ = _segment_chi2(f, wg, args["grid_models"], segments, cont_on)
            best = jnp.argmin(jnp.where(jnp.isfinite(chi_g), chi_g, jnp.inf), axis=1)
            v0 = args["vgrid"][best % n_v]
        half = _WINDOW_PIXELS * v_pix
        vb = args["v_bounds"]
        v_lo = jnp.maximum(v0 - half, vb[0])
        v_hi = jnp.minimum(v0 + half, vb[1])
        valid = jax.vmap(sh.valid)(v_lo, v_hi)
        w = jnp.where(valid, w, 0.0)
    else:
        v0 = jnp.zeros(batch, dtype)
        v_lo = v_hi = v0
    # Weighted pixels per segment [B, S]. With a continuum, a segment with fewer than degree + 1 has
    # no determined continuum (a dead chip or arm): its pixels get no weight (a polynomial through
    # them would only fit them exactly), and a unit prior below holds its coefficients at a continuum
    # of 1, where they change no residual, instead of leaving the normal matrix singular (NaN labels).
    seg_pix = jnp.stack([jnp.sum(w[:, a:b] > 0, axis=1) for a, b in segments], axis=1).astype(jnp.int32)
    n_held = jnp.zeros(batch, jnp.int32)
    if cont_on:
        dead_seg = seg_pix < degree + 1
        w = jnp.where(dead_seg[:, np.repeat(np.arange(n_seg), [b - a for a, b in segments])], 0.0, w)
        seg_pix = jnp.where(dead_seg, 0, seg_pix)
        n_held = jnp.sum(dead_seg, axis=1) * (degree + 1)
    n_pix = jnp.sum(w > 0, axis=1)

    # Starting labels (and continuum scales).
    starts = args.get("starts")  # [B, S, L] or, in phase 2, full parameter vectors [B, 1, D]
    scale0 = None if starts is None else jnp.ones(starts.shape[:2] + (n_seg,), dtype)
    if "templates" in args:
        templates = args["templates"]
        flux_t = jax.vmap(lambda z: em(space.physical(z)))(templates)  # [K, P] rest frame
        if rv_on:
            f_r = jax.vmap(sh.nearest)(f, v0)
            w_r = jax.vmap(sh.nearest)(w, v0)
        else:
            f_r, w_r = f, w
        obj_t, scale_t = _segment_chi2(f_r, w_r, flux_t, segments, cont_on)
        obj_t = obj_t + jnp.sum(pp[:, None, :] * (templates[None] - pm[:, None, :]) ** 2, axis=2)
        obj_t = jnp.where(jnp.isfinite(obj_t) & args["templates_ok"][None, :], obj_t, jnp.inf)
        _, idx = jax.lax.top_k(-obj_t.astype(jnp.float32), n_starts)
        scale_t = jnp.take_along_axis(scale_t, idx[:, :, None], axis=1)  # [B, S, n_seg]
        starts = templates[idx] if starts is None else jnp.concatenate([starts, templates[idx]], axis=1)
        scale0 = scale_t if scale0 is None else jnp.concatenate([scale0, scale_t], axis=1)
    if starts.shape[2] == n_lab:  # extend label starts with nuisance starts
        parts = [starts]
        if rv_on:
            parts.append(jnp.broadcast_to((v0 / _V_SCALE)[:, None, None], starts.shape[:2] + (1,)))
        if cont_on:
            c0 = jnp.zeros(starts.shape[:2] + (n_seg, degree + 1), dtype)
            c0 = c0.at[..., 0].set(scale0)
            parts.append(c0.reshape(starts.shape[:2] + (n_c,)))
        starts = jnp.concatenate(parts, axis=2).astype(dtype)

    inf = jnp.full((batch, n_c), jnp.inf, dtype)
    lo_parts = [jnp.broadcast_to(args["lo"], (batch, n_lab))]
    hi_parts = [jnp.broadcast_to(args["hi"], (batch, n_lab))]
    if rv_on:
        lo_parts.append((v_lo / _V_SCALE)[:, None].astype(dtype))
        hi_parts.append((v_hi / _V_SCALE)[:, None].astype(dtype))
    lo = jnp.concatenate([*lo_parts, -inf], axis=1)
    hi = jnp.concatenate([*hi_parts, inf], axis=1)
    pad = jnp.zeros((batch, int(rv_on)), dtype)
    if cont_on:
        held = jnp.repeat(seg_pix < degree + 1, degree + 1, axis=1)  # [B, n_c]
        unit = jnp.tile(jnp.eye(1, degree + 1, dtype=dtype)[0], n_seg)  # [1, 0, ...] per segment
        pm_c = jnp.where(held, unit[None, :], 0.0).astype(dtype)
        pp_c = held.astype(dtype)
    else:
        pm_c = pp_c = jnp.zeros((batch, 0), dtype)
    pm_x = jnp.concatenate([pm, pad, pm_c], axis=1)
    pp_x = jnp.concatenate([pp, pad, pp_c], axis=1)

    def predict(x):
        """Model on the data pixels [P] and its Jacobian [P, D] at parameters x."""
        z = x[:n_lab]
        model, jac = em.flux_and_jacobian(space.physical(z))
        jz = jac * space.scale[None, :]
        cols = []
        if rv_on:
            v = x[n_lab] * _V_SCALE
            model, dmodel = jax.jvp(lambda vv: sh.shift(model, vv), (v,), (jnp.ones_like(v),))
            jz = sh.shift(jz, v)
            cols.append(dmodel[:, None] * _V_SCALE)
        if cont_on:
            cont = basis @ x[n_lab + int(rv_on) :]
            jac_c = model[:, None] * basis
            jz = jz * cont[:, None]
            cols = [c * cont[:, None] for c in cols] + [jac_c]
            model = model * cont
        return model, jnp.concatenate([jz, *cols], axis=1)

    def problem(row):
        f1, w1, m, p, lo1, hi1 = row

        def normal(x):
            model, jac = predict(x)
            r = f1 - model
            obj = jnp.sum(w1 * r * r) + jnp.sum(p * (x - m) ** 2)
            g, h = gauss_newton_terms(jac.T, w1, r)
            g, h = g + p * (x - m), h + jnp.diag(p)
            return obj, g, h

        return normal, lo1, hi1

    too_few = n_pix < n_par - n_held + 1  # held continuum coefficients are not fitted
    budget = step_budget(too_few, args["max_steps"])
    x, _, h, k, conv = multistart(problem, (f, w, pm_x, pp_x, lo, hi), starts, budget, tol=tol)
    model = jax.vmap(lambda xx: predict(xx)[0])(x)
    cov_x = spd_inverse(h)
    chi2 = jnp.sum(w * (f - model) ** 2, axis=1)

    bounded = jnp.isfinite(lo[0]) & jnp.isfinite(hi[0])
    tiny = 1e-6 * jnp.where(bounded[None, :], hi - lo, 0.0)
    edge = ((x <= lo + tiny) | (x >= hi - tiny)) & bounded[None, :]
    at_bound = jnp.any(edge, axis=1)
    status = chunk_status(x, chi2, cov_x, conv, at_bound, too_few)
    out = dict(
        z=x[:, :n_lab],
        cov_z=cov_x[:, :n_lab, :n_lab],
        x=x,
        cov_x=cov_x,
        v0=v0,
        chi2=chi2,
        n_pixels=n_pix,
        seg_pixels=seg_pix,
        n_steps=k,
        status=status,
        converged=conv,
    )
    return out | {"model": model} if return_model else out


def _nuisance_outputs(cat, nuis, n_lab, bad, scale):
    """rv, continuum coefficients, their errors and the full covariance (physical units)."""
    rv_on, degree, segments, _, _ = nuis
    x = cat["x"].astype(np.float64)
    cov = cat["cov_x"].astype(np.float64)
    units = np.concatenate([scale, [_V_SCALE] if rv_on else [], np.ones(x.shape[1] - n_lab - int(rv_on))])
    cov = cov * units[:, None] * units[None, :]
    cov[bad] = np.nan
    err = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    out = {"cov_full": cov}
    if rv_on:
        out["rv"] = np.where(bad, np.nan, x[:, n_lab] * _V_SCALE)
        out["rv_err"] = err[:, n_lab]
    if degree >= 0:
        k = n_lab + int(rv_on)
        shape = (x.shape[0], len(segments), degree + 1)
        # a segment without enough weighted pixels has no fitted continuum (held at 1 by a prior)
        held = np.repeat(np.asarray(cat["seg_pixels"]) < degree + 1, degree + 1, axis=1)
        cov[:, k:, :][held] = np.nan
        np.moveaxis(cov[:, :, k:], 2, 1)[held] = np.nan
        err = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        out["continuum"] = np.where(bad[:, None] | held, np.nan, x[:, k:]).reshape(shape)
        out["continuum_err"] = err[:, k:].reshape(shape)
        out["continuum_segments"] = tuple((int(a), int(b)) for a, b in segments)
    return out
