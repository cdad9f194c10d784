"""The inputs of `fit_labels` that depend on the emulator alone, kept between calls.

``_prepared`` holds each emulator's fit layout (``_fit_view`` in the fit's dtype) and its
template spectra (the training labels' model fluxes and Jacobians that screen the starts);
``_template_inputs`` builds the template part of a fit's common inputs from them.
"""

from __future__ import annotations

import functools
import weakref

import equinox as eqx
import jax
import numpy as np

from ._chunking import _pad
from .emulators._base import AbstractLinearEmulator, _fit_view

_MAX_TEMPLATES_GENERIC = 512
_PREPARED_CACHE_SIZE = 8  # emulators whose fit layout is kept between calls (_prepared)
_PREPARED_CACHE_MAX_BYTES = 64 * 2**20  # larger fit layouts are rebuilt per call, not kept
_TEMPLATE_JAC_MAX_BYTES = 64 * 2**20  # template Jacobians [K, P, L] kept (512 × 4300 px × 3 labels: 53 MB)
_PREPARED_CACHE_TOTAL_BYTES = 256 * 2**20  # all kept layouts and templates together (least recently used go first)
_prepared_cache: dict = {}  # (id(em), dtype) -> (weakref to em, {"em": fit view, "templates": (z, flux, jac)})


def _prepared(em, dtype) -> dict:
    """The emulator as the compiled fit takes it (``_fit_view`` in ``dtype``) and, once computed,
    its template spectra, kept per emulator between calls (emulators are immutable). Building them
    each call cost ~2-3 ms (kernel, 400 centres × 100 px: the fit layout and 512 template spectra),
    as much as fitting ~15 spectra; for larger emulators the layout copies grow with the model.
    Held by a weak reference; at most ``_PREPARED_CACHE_SIZE`` emulators (k folds of a CV), only
    layouts up to ``_PREPARED_CACHE_MAX_BYTES`` (a 2000 × 7214 px kernel in float64 takes 115 MB), and
    ``_PREPARED_CACHE_TOTAL_BYTES`` for all kept layouts and templates together."""
    key = (id(em), np.dtype(dtype).str)
    hit = _prepared_cache.get(key)
    if hit is not None and hit[0]() is em:
        _prepared_cache[key] = _prepared_cache.pop(key)  # most recently used last: eviction takes the first
        return hit[1]
    em_c = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, _fit_view(em, dtype))
    entry = {"em": em_c}
    if sum(a.nbytes for a in jax.tree.leaves(em_c) if eqx.is_array(a)) > _PREPARED_CACHE_MAX_BYTES:
        return entry  # a large model: rebuilding costs little next to its fits, holding it costs memory
    while len(_prepared_cache) >= _PREPARED_CACHE_SIZE:
        _prepared_cache.pop(next(iter(_prepared_cache)))
    _prepared_cache[key] = (weakref.ref(em, lambda _, key=key: _prepared_cache.pop(key, None)), entry)
    _trim_prepared_cache(keep=entry)
    return entry


def _entry_bytes(entry) -> int:
    return sum(a.nbytes for a in jax.tree.leaves(entry) if hasattr(a, "nbytes"))


def _trim_prepared_cache(keep) -> None:
    """Drop the least recently used emulators while the cache holds more than ``_PREPARED_CACHE_TOTAL_BYTES``
    (8 CV-fold kernel models at full MILES resolution held ~60 MB of template Jacobians each);
    ``keep`` (the entry in use) stays."""
    total = sum(_entry_bytes(e) for _, e in _prepared_cache.values())
    for key in list(_prepared_cache):
        if total <= _PREPARED_CACHE_TOTAL_BYTES:
            break
        entry = _prepared_cache[key][1]
        if entry is not keep:
            total -= _entry_bytes(entry)
            del _prepared_cache[key]


@functools.partial(jax.jit, static_argnums=2)
def _template_flux(em, templates_z, with_jac):
    """Template fluxes [K, P] and, ``with_jac``, their Jacobians [K, P, L] in standardised labels."""
    if not with_jac:
        return jax.vmap(lambda z: em(em.space.physical(z)))(templates_z), None
    flux, jac = jax.vmap(lambda z: em.flux_and_jacobian(em.space.physical(z)))(templates_z)
    return flux, jac * em.space.scale[None, None, :]


def _training_templates(space, subsample: bool) -> np.ndarray:
    """The training labels as standardised start templates [K, L]; with ``subsample``, a fixed
    random subset of at most ``_MAX_TEMPLATES_GENERIC`` (model evaluations per template)."""
    templates = np.asarray(space.train)
    if subsample and templates.shape[0] > _MAX_TEMPLATES_GENERIC:
        pick = np.random.default_rng(0).choice(templates.shape[0], _MAX_TEMPLATES_GENERIC, replace=False)
        templates = templates[np.sort(pick)]
    return (templates - np.asarray(space.mean)) / np.asarray(space.scale)


def _template_inputs(em, prepared, templates_z, lo_z, hi_z, from_training, rv, continuum, dtype) -> dict:
    """The templates entries of the compiled fit's common inputs: padded templates and their mask
    and, for a nonlinear emulator without RV or continuum, their fluxes (and Jacobians when the
    starts come from the training set alone), computed once per emulator and kept in ``prepared``."""
    # Padded to a power of two (the padding rows never start a fit): training sets of nearby
    # sizes, e.g. cross-validation folds, share one compiled fit. (A finer grid split 96- and
    # 97-star folds into two compilations.)
    k_pad = 1 << int(np.ceil(np.log2(templates_z.shape[0])))
    out = {
        "templates": _pad(templates_z, k_pad - templates_z.shape[0], 0.0).astype(dtype),
        "templates_ok": np.arange(k_pad) < templates_z.shape[0],
    }
    if not isinstance(em, AbstractLinearEmulator) and (rv is False or rv is None) and continuum is None:
        # Template spectra once, not once per chunk (512 model evaluations per chunk).
        # With their Jacobians (if they take at most _TEMPLATE_JAC_MAX_BYTES), the screening
        # of the starts needs no model evaluation at the starts themselves.
        jac_bytes = k_pad * em.n_pixels * templates_z.shape[1] * np.dtype(dtype).itemsize
        inside = np.all((templates_z >= lo_z) & (templates_z <= hi_z))
        with_jac = from_training and inside and jac_bytes <= _TEMPLATE_JAC_MAX_BYTES
        cached = prepared.get("templates")
        stale = cached is None or not np.array_equal(cached[0], out["templates"])
        if stale or (with_jac and cached[2] is None):
            flux_t, jac_t = _template_flux(prepared["em"], out["templates"], with_jac)
            cached = prepared["templates"] = (out["templates"], flux_t, jac_t)
            _trim_prepared_cache(keep=prepared)
        out["templates_flux"] = cached[1]
        if with_jac:
            out["templates_jac"] = cached[2]
    return out
