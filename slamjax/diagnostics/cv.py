"""Per-pixel cross-validated model errors (standardised flux units)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._spectra import SpectrumSet
from ..emulators import CannonEmulator, KernelEmulator

__all__ = ["cv_mse"]


def cv_mse(em, ds: SpectrumSet | None = None) -> dict[str, np.ndarray]:
    """Leave-one-out CV MSE and mean absolute deviation per pixel, in standardised flux.

    Standardised flux means flux divided by its per-pixel standard deviation over the
    good training pixels, so 1 − MSE is the fraction of the flux variance the model
    explains (SLAM's full COD).

    - :class:`~slamjax.KernelEmulator`: the exact LOO values stored at training time.
    - :class:`~slamjax.CannonEmulator`: needs its training set ``ds``; exact LOO residuals
      of the weighted least-squares fit at the trained weights w = 1/(σ² + s²):
      e_i = r_i / (1 − h_ii), h_ii = w_i v_iᵀ (VᵀWV)⁻¹ v_i (s² held fixed).

    Returns ``{"mse": [P], "md": [P]}`` (NaN for pixels with fewer than 3 good pixels).
    """
    if isinstance(em, KernelEmulator):
        return {"mse": np.asarray(em.cv_mse), "md": np.asarray(em.cv_md)}
    if isinstance(em, CannonEmulator):
        if ds is None or ds.labels is None:
            raise ValueError("the Cannon's CV MSE needs its labelled training set: cv_mse(em, ds)")
        if ds.n_pixels != em.n_pixels:
            raise ValueError(f"training set has {ds.n_pixels} pixels, emulator {em.n_pixels}")
        labels = np.stack([ds.label(n) for n in em.label_names], axis=1)
        mse, md = _cannon_loo(
            em, jnp.asarray(labels), jnp.asarray(ds.flux, jnp.float64), jnp.asarray(ds.ivar, jnp.float64)
        )
        return {"mse": np.asarray(mse), "md": np.asarray(md)}
    raise TypeError(f"no CV MSE for {type(em).__name__}")


@jax.jit
def _cannon_loo(em, labels, flux, ivar):
    v = jax.vmap(lambda x: em.features(em.space.standardise(x)))(labels)  # [N, T]
    s2 = em.pixel_variance
    good = (ivar > 0) & jnp.isfinite(flux) & jnp.isfinite(s2)[None, :]
    w = jnp.where(good, ivar / (1.0 + jnp.where(good, ivar * s2[None, :], 0.0)), 0.0)
    n_t = v.shape[1]
    vv = (v[:, :, None] * v[:, None, :]).reshape(v.shape[0], n_t * n_t)
    a = (w.T @ vv).reshape(-1, n_t, n_t)  # [P, T, T]
    ainv = jnp.linalg.inv(a)
    h = w * jnp.einsum("ni,pij,nj->np", v, ainv, v)
    f = jnp.where(good, flux, 0.0)
    r = f - v @ em.design.T
    e = jnp.where(good, r / (1.0 - h), 0.0)
    n = jnp.sum(good, axis=0)
    mean = jnp.sum(f, axis=0) / jnp.maximum(n, 1)
    var = jnp.sum(jnp.where(good, (f - mean[None, :]) ** 2, 0.0), axis=0) / jnp.maximum(n - 1, 1)
    ok = (n >= 3) & (var > 0)
    mse = jnp.where(ok, jnp.sum(e * e, axis=0) / jnp.maximum(n, 1) / jnp.where(ok, var, 1.0), jnp.nan)
    md = jnp.where(ok, jnp.sum(jnp.abs(e), axis=0) / jnp.maximum(n, 1) / jnp.sqrt(jnp.where(ok, var, 1.0)), jnp.nan)
    return mse, md
