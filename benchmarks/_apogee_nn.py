"""APOGEE-like spectra at known labels from the Kurucz-trained per-pixel network.

Follows ``../shared/data/apogee_kurucz_nn/README.md`` (network of Ting et al. 2018 as
shipped with El-Badry et al.'s ``binspec``; data files only, in ``raw/``):

1. labels: 55 % giants (Teff U(3800, 5200), logg on a linear RGB relation + N(0, 0.2),
   clipped to [0.5, 3.8]), 45 % dwarfs/subgiants (Teff U(4200, 6800), logg = 4.6 -
   0.5 (Teff - 4200)/2600 + N(0, 0.15), clipped to [3.6, 5.0]); [Fe/H] U(-0.9, 0.45),
   [α/Fe] U(-0.15, 0.45);
2. the network ``NN_unnormalized_spectra.npz``: s = (labels - x_min)/(x_max - x_min) - 0.5,
   flux = Σ_k w1 sigmoid(w0 · s + b0) + b1 per pixel;
3. per detector chip (split at the two gaps), a degree-2 Chebyshev fit to the Cannon
   continuum pixels (wavelength mapped to [-1, 1] over the chip); flux / fit;
4. noise: relative error template ``spec_err / median(spec_err)`` of a real APOGEE star
   (pixels with ``spec_err > 0.1`` or non-finite are bad in every star: ivar = 0, flux = 1),
   per-star S/N log-uniform in ``snr_range``, sigma = template / S/N.

``generate`` reproduces the shipped ``apogee_kurucz_nn.npz`` ``flux_true`` at its labels to
~1e-7 (checked in ``tests/test_apogee_nn_generator.py``); the label draws and noise use a
different random stream than the shipped file, so the spectra themselves differ.

Usage::

    from _apogee_nn import generate
    wave, flux, ivar, flux_true, labels, names = generate(5000, seed=1)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.polynomial import chebyshev

__all__ = ["DATA_DIR", "LABEL_NAMES", "available", "evaluate", "generate", "normalise", "sample_labels"]

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "apogee_kurucz_nn"
LABEL_NAMES = ("teff", "logg", "fe_h", "alpha_fe")
_CHUNK = 512


def available(data_dir=DATA_DIR) -> bool:
    """Whether the raw network files are present."""
    return (Path(data_dir) / "raw" / "NN_unnormalized_spectra.npz").exists()


@lru_cache(maxsize=2)
def _load(data_dir=DATA_DIR):
    raw = Path(data_dir) / "raw"
    if not raw.exists():
        raise FileNotFoundError(f"APOGEE network files not found in {raw}")
    with np.load(raw / "NN_unnormalized_spectra.npz") as d:
        net = {k: d[k].astype(np.float64) for k in d.files}
    with np.load(raw / "apogee_wavelength.npz") as d:
        wave = d["wavelength"].astype(np.float64)
    with np.load(raw / "cannon_cont_pixels_apogee.npz") as d:
        cont = d["pixels_cannon"].astype(bool)
    with np.load(raw / "noise_template_2M13012770+5754582.npz") as d:
        err = d["spec_err"].astype(np.float64)
    bad = ~np.isfinite(err) | (err > 0.1)
    template = err / np.median(err[np.isfinite(err)])
    # Chips: the two places where the log-lambda step jumps (the detector gaps).
    jumps = np.flatnonzero(np.diff(np.log10(wave)) > 1e-5) + 1
    edges = np.concatenate([[0], jumps, [wave.size]])
    return net, wave, cont, template, bad, edges


def evaluate(labels, data_dir=DATA_DIR) -> np.ndarray:
    """Un-normalised network flux [N, 7214] at labels [N, 4] (teff, logg, fe_h, alpha_fe), float64."""
    net = _load(data_dir)[0]
    labels = np.atleast_2d(np.asarray(labels, np.float64))
    if labels.shape[1] != 4:
        raise ValueError(f"labels must be [N, 4] {LABEL_NAMES}, got {labels.shape}")
    s = (labels - net["x_min"]) / (net["x_max"] - net["x_min"]) - 0.5
    out = np.empty((labels.shape[0], net["b_array_1"].size))
    for i in range(0, labels.shape[0], _CHUNK):
        a = np.einsum("pkl,nl->npk", net["w_array_0"], s[i : i + _CHUNK]) + net["b_array_0"][None]
        h = 1.0 / (1.0 + np.exp(-a))
        out[i : i + _CHUNK] = np.einsum("npk,pk->np", h, net["w_array_1"]) + net["b_array_1"][None]
    return out


def normalise(flux, data_dir=DATA_DIR) -> np.ndarray:
    """Continuum-normalise [N, 7214] fluxes: per chip, divide by a degree-2 Chebyshev fit to the Cannon pixels."""
    _, wave, cont, _, _, edges = _load(data_dir)
    flux = np.atleast_2d(flux)
    out = np.empty_like(flux)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        w = wave[a:b]
        x = 2.0 * (w - w[0]) / (w[-1] - w[0]) - 1.0
        m = cont[a:b]
        # One least-squares solve for all stars: V c = f on the continuum pixels.
        v = chebyshev.chebvander(x, 2)
        coef, *_ = np.linalg.lstsq(v[m], flux[:, a:b][:, m].T, rcond=None)
        out[:, a:b] = flux[:, a:b] / (v @ coef).T
    return out


def sample_labels(n: int, rng) -> np.ndarray:
    """Labels [n, 4] drawn as in the README (giant/dwarf mixture)."""
    giant = rng.random(n) < 0.55
    teff = np.where(giant, rng.uniform(3800, 5200, n), rng.uniform(4200, 6800, n))
    logg_g = np.clip(0.6 + 2.9 * (teff - 3800) / 1400 + rng.normal(0, 0.2, n), 0.5, 3.8)
    logg_d = np.clip(4.6 - 0.5 * (teff - 4200) / 2600 + rng.normal(0, 0.15, n), 3.6, 5.0)
    logg = np.where(giant, logg_g, logg_d)
    feh = rng.uniform(-0.9, 0.45, n)
    afe = rng.uniform(-0.15, 0.45, n)
    return np.stack([teff, logg, feh, afe], axis=1)


def generate(n: int, seed: int, snr_range=(20.0, 200.0), noiseless: bool = False, labels=None, data_dir=DATA_DIR):
    """Simulate ``n`` APOGEE-like normalised spectra.

    Arguments:
        n: number of stars (ignored when ``labels`` are given).
        seed: seed of the label draws and the noise.
        snr_range: per-star S/N drawn log-uniform in this range.
        noiseless: return ``flux = flux_true`` (ivar still describes the nominal noise).
        labels: optional labels [N, 4] to use instead of drawing them.

    Returns:
        ``(wave [P], flux [N, P], ivar [N, P], flux_true [N, P], labels [N, 4], label_names)``;
        flux/ivar/flux_true float32, ``ivar = 0`` and ``flux = 1`` at the template's bad pixels.
    """
    _, wave, _, template, bad, _ = _load(data_dir)
    rng = np.random.default_rng(seed)
    labels = sample_labels(n, rng) if labels is None else np.atleast_2d(np.asarray(labels, np.float64))
    lo, hi = np.log(snr_range[0]), np.log(snr_range[1])
    if not 0 < snr_range[0] <= snr_range[1]:
        raise ValueError(f"snr_range must be positive and increasing, got {snr_range}")
    snr = np.exp(rng.uniform(lo, hi, labels.shape[0]))
    flux_true = normalise(evaluate(labels, data_dir), data_dir)
    sigma = template[None, :] / snr[:, None]
    noise = 0.0 if noiseless else rng.normal(size=flux_true.shape) * sigma
    flux = np.where(bad[None, :], 1.0, flux_true + noise)
    ivar = np.where(bad[None, :], 0.0, 1.0 / np.where(bad[None, :], 1.0, sigma) ** 2)
    return (
        wave,
        flux.astype(np.float32),
        ivar.astype(np.float32),
        flux_true.astype(np.float32),
        labels,
        LABEL_NAMES,
    )
