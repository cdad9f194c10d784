"""Shared fixtures: a known Cannon model to simulate from, and paths to the shared data."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
from slamjax.emulators import LabelSpace
from slamjax.emulators._cannon import _monomials

# Catch silent broadcasting mistakes (optimistix/tests/conftest.py does the same).
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


_MAPS = Path("/proc/self/maps")
_MAPS_HEADROOM = 20_000  # maps one test may add (its compilations) before the next check


def _maps_limit() -> int:
    try:
        ceiling = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        ceiling = 65_530  # the Linux default
    return max(ceiling - _MAPS_HEADROOM, 10_000)


_MAPS_LIMIT = _maps_limit()


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs when the process holds many memory mappings. XLA's CPU backend
    maps ~600-800 regions per compiled fit program and Linux allows vm.max_map_count (65,530 by
    default) per process; the whole suite in one process compiles enough fits to reach that, and
    the next compilation then segfaults (measured: 65,118 maps at the crash). Clearing only above
    ``_MAPS_LIMIT`` (the ceiling less ``_MAPS_HEADROOM``, room for ~25 compilations in one test)
    keeps the compilations that later tests share: each clear costs the recompilation of those."""
    yield
    if _MAPS.exists():
        with open(_MAPS) as fh:
            n_maps = sum(1 for _ in fh)
        if n_maps > _MAPS_LIMIT:
            jax.clear_caches()


def shared_file(*parts) -> Path:
    """Path into ../shared/data, or skip the test when the shared data are absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def make_cannon(n_pixels=400, order=2, seed=1, scatter=0.0, names=("teff", "logg", "fe_h")):
    """A Cannon model with realistic-looking coefficients and a known label box."""
    rng = np.random.default_rng(seed)
    n_lab = len(names)
    lo = np.array([4000.0, 1.0, -2.0, -0.2][:n_lab])
    hi = np.array([7000.0, 5.0, 0.5, 0.4][:n_lab])
    train = rng.uniform(lo, hi, size=(300, n_lab))
    space = LabelSpace.from_labels(train, names)
    terms = _monomials(n_lab, order)
    theta = np.zeros((n_pixels, len(terms)))
    depth = rng.uniform(0.0, 0.5, n_pixels) * (rng.random(n_pixels) < 0.6)
    theta[:, 0] = 1.0 - depth
    for t, term in enumerate(terms[1:], start=1):
        size = 0.04 if len(term) == 1 else 0.008
        theta[:, t] = rng.normal(0.0, size, n_pixels) * (0.3 + depth)
    wave = np.linspace(5000.0, 5000.0 + 0.5 * n_pixels, n_pixels, endpoint=False)
    s2 = np.full(n_pixels, scatter**2)
    return sj.CannonEmulator(
        space=space,
        wave=jnp.asarray(wave),
        design=jnp.asarray(theta),
        pixel_variance=jnp.asarray(s2),
        terms=terms,
        order=order,
    )


def simulate(em, labels, snr, seed=0):
    """Noisy spectra from ``em`` at ``labels``: noise σ = 1/snr plus the model scatter."""
    rng = np.random.default_rng(seed)
    clean = em.predict(labels)
    sigma = np.full_like(clean, 1.0 / snr)
    s = np.sqrt(np.asarray(em.pixel_variance))[None, :]
    flux = clean + rng.normal(size=clean.shape) * np.sqrt(sigma**2 + s**2)
    return flux, 1.0 / sigma**2, clean


def interior_labels(em, n, seed=0, margin=0.15):
    """Labels drawn uniformly from the inner part of the training box."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(em.space.lo), np.asarray(em.space.hi)
    w = hi - lo
    return rng.uniform(lo + margin * w, hi - margin * w, size=(n, lo.size))


@pytest.fixture(scope="session")
def cannon():
    return make_cannon()


@pytest.fixture(scope="session")
def sample():
    return sj.data.load_sample()
