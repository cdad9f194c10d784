"""The kernel emulator's model selection: exact LOO / k-fold CV of every (γ, λ) for every pixel,
with bad training entries left out exactly.

Notation (see ``_kernel``'s module docstring): for one γ the hat matrix of the ridge problem is
H = U diag(s) Uᵀ with s = σ²/(σ² + λ); the full-data fit of a pixel is f = H y.

Bad training entries (ivar = 0 or non-finite flux) of a pixel form a set b. The fit to the good
entries g only is the fixed point of imputation: values y_b with (I − H_bb) y_b = (H y₀)_b, where
y₀ is y with zeros at b, make the full-data fit pass through them (its residual at b is zero, so
they do not pull on the fit), and the full-data fit of y₀ + y_b is then the good-only fit. One
B × B solve per pixel and λ (B = |b|) gives it exactly (``_bad_block``); imputation rounds
converge to it only slowly where λ is small and a bad star has high leverage.

The held-out residuals are those of the good-only problem. Leaving out a set F of good stars is
the same problem with the missing set b ∪ F. For LOO (F = {i}) the good-only hat diagonal is
H^g_ii = H_ii + H_ib (I − H_bb)⁻¹ H_bi (Woodbury on the features of b), and e_i = r_i / (1 − H^g_ii).
For k-fold, with P = I − H_FF (shared by all pixels) and b' = b \\ F, the values at F of the
fit without F ∪ b' solve the block system [[P, −H_Fb'], [−H_b'F, I − H_b'b']] [y_F; y_b'] =
(H y_{−F∪b})_{F∪b'}, by the Schur complement on b' (a B × B solve per pixel after one P⁻¹ per
fold and λ). A pixel with B bad entries costs ~B times a pixel without (an n × B block of H);
pixels with more than ``exact_bad_max(n, k)`` bad entries (64, or more where n·k is small: 356 for
434 stars) are left to imputation rounds
(``KernelEmulator.train``), which is approximate there.

The held-out residuals ``e`` that ``select`` returns give the model variance (``_variance``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EXACT_BAD_MAX", "exact_bad_max", "exact_pixels", "select"]

EXACT_BAD_MAX = 64  # pixels with more bad training entries than this are imputed (approximate)
_BAD_BLOCK_FLOATS = 2**22  # pixels per exact bad-entry block: ~this many floats in its n × B blocks of H


def select(spectral, y, good, lams, pixel_chunk, folds):
    """Per-pixel best (γ, λ) by exact LOO (or k-fold) MSE over good entries.

    Pixels whose bad entries number 1 to ``exact_bad_max(n, k)`` (and which have at least 3 good ones) are
    fitted and cross-validated on their good entries exactly (``_bad_block``); the other pixels
    use ``y`` as given at bad entries (zeros, or values imputed by the caller). Returns ``mse``,
    ``md``, ``lam``, ``gidx``, ``coef`` [r, P], ``resid`` = y − fit [n, P] and the held-out residuals
    ``e`` [n, P] (0 at bad entries), all at each pixel's selected (γ, λ)."""
    n, p = y.shape
    exact = np.flatnonzero(exact_pixels(good, spectral))
    lams_j = jnp.asarray(lams)
    folds_j = None if folds is None else [jnp.asarray(f) for f in folds]
    # Every pixel in contiguous blocks (the exact pixels' results are replaced below: ~B times their cost, so
    # few of them; contiguous blocks update the best values in place)
    best = _empty_best(spectral, n, p, lams)
    for g, (u, sig2, c) in enumerate(spectral):
        u_j, sig2_j, c_j = jnp.asarray(u), jnp.asarray(sig2), jnp.asarray(c)
        for c0 in range(0, p, pixel_chunk):
            sl = slice(c0, min(c0 + pixel_chunk, p))
            block = _cv_block(u_j, sig2_j, c_j, jnp.asarray(y[:, sl]), jnp.asarray(good[:, sl]), lams_j, folds_j)
            _keep(best, g, sl, lams, block)
    if exact.size:
        sub = _empty_best(spectral, n, exact.size, lams)
        buckets = _bad_buckets(good[:, exact], pixel_chunk)
        data = []
        for at, bidx, _ in buckets:
            cols, pad = exact[at], ((0, 0), (0, bidx.shape[0] - at.size))  # padding columns: all good, y = 0
            y0 = np.pad(np.where(good[:, cols], y[:, cols], 0.0), pad)
            data.append((jnp.asarray(y0), jnp.asarray(np.pad(good[:, cols], pad, constant_values=True))))
        for g, (u, sig2, c) in enumerate(spectral):
            u_j, sig2_j, c_j = jnp.asarray(u), jnp.asarray(sig2), jnp.asarray(c)
            for li, lam in enumerate(lams_j):
                # the folds' (I − H_FF)⁻¹ once per (γ, λ), shared by every block of pixels
                fold_inv = None if folds_j is None else _fold_inverses(u_j, sig2_j, lam, folds_j)
                for (at, bidx, bmask), (y0, good_b) in zip(buckets, data):
                    block = [
                        np.asarray(a)[..., : at.size]
                        for a in _bad_block(u_j, sig2_j, c_j, y0, good_b, bidx, bmask, lam, folds_j, fold_inv)
                    ]
                    _keep(sub, g, at, lams, block[:2] + [np.full(at.size, li)] + block[2:])
        # A pixel whose exact CV failed at every (γ, λ) (non-finite MSE) keeps the first pass's values.
        done = np.isfinite(sub["mse"])
        for key, value in sub.items():
            best[key][..., exact[done]] = value[..., done]
    return best


def exact_pixels(good, spectral):
    """The pixels (bool [P]) that ``select`` fits exactly on their good entries: 1 to ``exact_bad_max``
    bad entries and at least 3 good ones."""
    n = good.shape[0]
    n_bad = n - good.sum(axis=0)
    cap = exact_bad_max(n, max(sp[0].shape[1] for sp in spectral))
    return (n_bad >= 1) & (n_bad <= cap) & (n - n_bad >= 3)


def exact_bad_max(n, k):
    """The most bad entries a pixel may have to be fitted exactly: the exact path costs ~n·k·B per pixel
    and λ (an n × B block of H); at least ``EXACT_BAD_MAX``, and as many as keep that block within
    ~2²⁶ products (MILES-size sets, n = k = 434: up to 356 bad stars)."""
    return max(EXACT_BAD_MAX, int(2**26 // max(n * k, 1)))


def _empty_best(spectral, n, p, lams):
    r = spectral[0][2].shape[0]
    return {
        "mse": np.full(p, np.inf),
        "md": np.full(p, np.nan),
        "lam": np.full(p, lams[0]),
        "gidx": np.zeros(p, dtype=np.int64),
        "coef": np.zeros((r, p)),
        "resid": np.zeros((n, p)),
        "e": np.zeros((n, p)),
    }


def _keep(best, g, at, lams, block):
    """Update ``best`` at columns ``at`` (a slice or indices) where the block of γ index ``g`` is better."""
    mse, md, li, coef, resid, e = (np.asarray(a) for a in block)
    better = mse < best["mse"][at]
    if isinstance(at, slice):  # in place, one pass per array
        for key, value in (("mse", mse), ("md", md), ("lam", lams[li]), ("gidx", g)):
            np.copyto(best[key][at], value, where=better)
        for key, value in (("coef", coef), ("resid", resid), ("e", e)):
            np.copyto(best[key][:, at], value, where=better[None, :])
        return
    upd = at[better]
    best["mse"][upd], best["md"][upd], best["lam"][upd] = mse[better], md[better], lams[li[better]]
    best["gidx"][upd] = g
    for key, value in (("coef", coef), ("resid", resid), ("e", e)):
        best[key][:, upd] = value[:, better]


def _bad_buckets(good, pixel_chunk):
    """Blocks of the columns of ``good`` [n, p] with equal padded bad-entry count B (a power of 4, at most n)
    and a power-of-two number of columns (at least 8): few compiled shapes, also across the training sets of
    a cross-validation (a compilation costs more than the padding at these sizes). Returns (column indices,
    bad rows [c, B], mask [c, B]) with c >= the number of indices (padding rows: mask False)."""
    n = good.shape[0]
    n_bad = n - good.sum(axis=0)
    width = np.minimum(4 ** np.ceil(np.log(n_bad) / np.log(4) - 1e-9).astype(np.int64), n)

    # Merge widths, smallest first, while the merged block at most doubles the work of separate blocks and fits
    # in memory (e.g. MILES: 97 pixels with 1-4 bad stars run as one block): fewer compiled shapes.
    def padded(count):
        return max(8, 1 << int(np.ceil(np.log2(max(count, 1)))))

    groups, widths = [], []
    for w in np.unique(width):
        cols = np.flatnonzero(width == w)
        if groups:
            merged = np.concatenate([groups[-1], cols])
            separate = widths[-1] * padded(groups[-1].size) + w * padded(cols.size)
            size = padded(merged.size)
            if w * size <= 2 * separate and size <= pixel_chunk and n * w * size <= _BAD_BLOCK_FLOATS:
                groups[-1], widths[-1] = merged, w
                continue
        groups.append(cols)
        widths.append(w)
    out = []
    for cols, w in zip(groups, widths):
        w = int(w)
        per = 1 << int(np.log2(max(1, min(pixel_chunk, _BAD_BLOCK_FLOATS // (n * w)))))
        for c0 in range(0, cols.size, per):
            at = cols[c0 : c0 + per]
            size = min(per, max(8, 1 << int(np.ceil(np.log2(at.size)))))
            bidx = np.zeros((size, w), dtype=np.int64)
            bmask = np.zeros((size, w), dtype=bool)
            for j, col in enumerate(at):
                bad = np.flatnonzero(~good[:, col])
                bidx[j, : bad.size], bmask[j, : bad.size] = bad, True
            out.append((at, jnp.asarray(bidx), jnp.asarray(bmask)))
    return out


def _solve_each(mats, rhss):
    """``[solve(a, b) for a, b in zip(mats, rhss)]`` as ONE batched solve: each system padded with the
    identity to the largest size. XLA's CPU runtime runs independent solves of one program at the same
    time, and two batched LAPACK calls waiting on each other's share of a 2-thread pool deadlocked
    (jaxlib 0.10.2, seen once in a CI run): one call never waits on another."""
    m = max(a.shape[0] for a in mats)
    a_pad = jnp.stack([jnp.eye(m, dtype=a.dtype).at[: a.shape[0], : a.shape[0]].set(a) for a in mats])
    vector = rhss[0].ndim == 1
    rhss = [b[:, None] if vector else b for b in rhss]
    b_pad = jnp.stack([jnp.zeros((m,) + b.shape[1:], b.dtype).at[: b.shape[0]].set(b) for b in rhss])
    x = jnp.linalg.solve(a_pad, b_pad)
    return [x[i, : a.shape[0], 0] if vector else x[i, : a.shape[0]] for i, a in enumerate(mats)]


@jax.jit
def _cv_block(u, sig2, c, y, good, lams, folds=None):
    """For one γ and a block of pixels: best λ per pixel by exact LOO (``folds=None``) or k-fold MSE.
    Returns (mse, md, λ index, coef, resid, held-out residuals e) at each pixel's best λ."""
    uty = u.T @ y  # [k, p]
    u2 = u * u
    n = jnp.maximum(jnp.sum(good, axis=0), 1)

    def one(lam):
        shrink = sig2 / (sig2 + lam)
        resid = y - u @ (shrink[:, None] * uty)
        if folds is None:
            h = u2 @ shrink  # hat-matrix diagonal [n]
            e = resid / (1.0 - h)[:, None]
        else:
            e = jnp.zeros_like(resid)
            mats = [jnp.eye(idx.shape[0], dtype=u.dtype) - (u[idx] * shrink[None, :]) @ u[idx].T for idx in folds]
            for idx, e_f in zip(folds, _solve_each(mats, [resid[idx] for idx in folds])):
                e = e.at[idx].set(e_f)
        e = jnp.where(good, e, 0.0)
        return jnp.sum(e * e, axis=0) / n, jnp.sum(jnp.abs(e), axis=0) / n, e

    def body(carry, lam):
        bmse, bmd, bli, be, i = carry
        mse, md, e = one(lam)
        better = mse < bmse
        new = (jnp.where(better, mse, bmse), jnp.where(better, md, bmd), jnp.where(better, i, bli))
        return new + (jnp.where(better[None, :], e, be), i + 1), None

    p = y.shape[1]
    init = (jnp.full(p, jnp.inf), jnp.zeros(p), jnp.zeros(p, jnp.int32), jnp.zeros_like(y), jnp.int32(0))
    (mse, md, li, e, _), _ = jax.lax.scan(body, init, lams)
    # Coefficients and residuals once, at each pixel's own best λ (not for every λ in the scan).
    denom = sig2[:, None] + lams[li][None, :]  # [k, p]
    coef = c @ (uty / denom)
    resid = y - u @ (sig2[:, None] * uty / denom)
    return mse, md, li, coef, resid, e


@jax.jit
def _fold_inverses(u, sig2, lam, folds):
    """(I − H_FF)⁻¹ of every fold F at one λ (k-fold CV of pixels with bad entries)."""
    shrink = sig2 / (sig2 + lam)
    mats = [jnp.eye(idx.shape[0], dtype=u.dtype) - (u[idx] * shrink[None, :]) @ u[idx].T for idx in folds]
    return _solve_each(mats, [jnp.eye(idx.shape[0], dtype=u.dtype) for idx in folds])


@jax.jit
def _bad_block(u, sig2, c, y, good, bidx, bmask, lam, folds=None, fold_inv=None):
    """For one γ, one λ and a block of pixels with bad entries: the fit and the LOO (``folds=None``) or
    k-fold CV on their good entries only (module docstring). ``y`` [n, p] is 0 at bad entries;
    ``bidx``/``bmask`` [p, B]: each pixel's bad rows, padded (``bmask`` False); ``fold_inv``: the
    folds' (I − H_FF)⁻¹ (``_fold_inverses``). Returns (mse, md, coef, resid, e) as ``_cv_block``;
    ``resid`` is y − fit, so ``y − resid`` at a bad entry is the good-only model there."""
    n = u.shape[0]
    shrink = sig2 / (sig2 + lam)
    uty = u.T @ y  # [k, p]
    h = (u * u) @ shrink
    n_good = jnp.maximum(jnp.sum(good, axis=0), 1)
    eye_b = jnp.eye(bidx.shape[1], dtype=u.dtype)

    def pixel(y1, good1, uty1, b1, m1):
        """One pixel: (e [n], Uᵀ of the imputed flux [k], fit [n])."""
        pair = m1[:, None] & m1[None, :]
        fit0 = u @ (shrink * uty1)
        ub = u[b1]  # [B, k]
        hnb = (u @ (shrink[:, None] * ub.T)) * m1[None, :]  # H[:, b], padded columns 0
        a = jnp.where(pair, eye_b - hnb[b1], eye_b)  # I − H_bb (identity at padding); positive definite
        chol = jnp.linalg.cholesky(a)
        rhs = jnp.where(m1, fit0[b1], 0.0)[:, None]
        if folds is None:  # one triangular solve for both right-hand sides (see _solve_each)
            sol = jax.scipy.linalg.cho_solve((chol, True), jnp.concatenate([rhs, hnb.T], axis=1))
            yb, z = sol[:, 0], sol[:, 1:]  # z: [B, n]
        else:
            yb = jax.scipy.linalg.cho_solve((chol, True), rhs)[:, 0]
        fit = fit0 + hnb @ yb
        uty_full = uty1 + ub.T @ yb
        r = jnp.where(good1, y1 - fit, 0.0)
        if folds is None:
            hg = h + jnp.sum(hnb.T * z, axis=0)
            e = jnp.where(good1, r / jnp.where(good1, 1.0 - hg, 1.0), 0.0)
        else:
            e = jnp.zeros(n, u.dtype)
            parts, schurs, rhss = [], [], []
            for idx, p_inv in zip(folds, fold_inv):
                in_f = jnp.zeros(n, bool).at[idx].set(True)
                mf = m1 & ~in_f[b1]  # b' = b \ F
                uf = u[idx]
                s_uty = shrink * (uty1 - uf.T @ y1[idx])  # H y with F (and b) left out, in the U basis
                t_f, t_b = uf @ s_uty, jnp.where(mf, ub @ s_uty, 0.0)
                h_fb = hnb[idx] * mf[None, :]
                pi_t, pi_h = p_inv @ t_f, p_inv @ h_fb
                schurs.append(jnp.where(mf[:, None] & mf[None, :], eye_b - hnb[b1] - h_fb.T @ pi_h, eye_b))
                rhss.append(t_b + h_fb.T @ pi_t)
                parts.append((idx, pi_t, pi_h))
            for (idx, pi_t, pi_h), yb_f in zip(parts, _solve_each(schurs, rhss)):  # one solve for all folds
                y_f = pi_t + pi_h @ yb_f  # the fit without F at F
                e = e.at[idx].set(y1[idx] - y_f)
            e = jnp.where(good1, e, 0.0)
        return e, uty_full, fit

    e, uty_full, fit = jax.vmap(pixel, in_axes=(1, 1, 1, 0, 0), out_axes=(1, 1, 1))(y, good, uty, bidx, bmask)
    mse = jnp.sum(e * e, axis=0) / n_good
    md = jnp.sum(jnp.abs(e), axis=0) / n_good
    coef = c @ (uty_full / (sig2 + lam)[:, None])
    return mse, md, coef, y - fit, e
