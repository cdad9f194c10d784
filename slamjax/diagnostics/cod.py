"""Coefficients of dependence (CODs; SLAM, Zhang, Liu & Deng 2020, §6)."""

from __future__ import annotations

import numpy as np

from .._spectra import SpectrumSet
from ..emulators import CannonEmulator, KernelEmulator
from .cv import cv_mse

__all__ = ["cod"]

_EMULATORS = {"kernel": KernelEmulator, "cannon": CannonEmulator}


def cod(ds: SpectrumSet, emulator: str = "kernel", **train_kwargs) -> dict:
    """Full and per-label coefficients of dependence per pixel.

    full COD_p = 1 − CV MSE_p (standardised flux): the fraction of the flux variance at pixel p
    that the labels explain. Per-label: retrain without label l (leave-one-label-out); the
    increase of the CV MSE, ΔMSE_pl = max(MSE_p(−l) − MSE_p, 0), measures how much pixel p
    depends on l. The per-label CODs are ΔMSE_pl scaled so that Σ_l COD_pl = full COD_p (zero
    where no label matters).

    With strongly correlated labels (e.g. Teff and log g along a giant branch) dropping either one
    costs little, and the scaling to the full COD turns small, noise-level ΔMSE differences into
    large per-label CODs: read ``cv_mse_without`` (the raw ΔMSE) there. Pixels with fewer than 3
    good training values or no flux variance have NaN CODs.

    Returns ``{"full": [P], "per_label": [P, L], "label_names": (...), "cv_mse": [P],
    "cv_mse_without": [P, L]}``.
    """
    if "label_names" in train_kwargs:
        raise ValueError("cod uses every label of ds (and each of them left out in turn); pass a ds with those labels")
    if emulator not in _EMULATORS:
        raise ValueError(f"unknown emulator {emulator!r}; available: {sorted(_EMULATORS)}")
    if ds.labels is None or ds.n_labels < 2:
        raise ValueError("CODs need a labelled SpectrumSet with at least 2 labels")
    cls = _EMULATORS[emulator]
    names = ds.label_names

    def mse_of(label_names):
        em = cls.train(ds, label_names=label_names, **train_kwargs)
        return cv_mse(em, ds)["mse"]

    full_mse = mse_of(names)
    without = np.stack([mse_of([n for n in names if n != name]) for name in names], axis=1)
    full = 1.0 - full_mse
    delta = np.clip(without - full_mse[:, None], 0.0, None)
    total = delta.sum(axis=1, keepdims=True)
    per = np.where(total > 0, delta / np.where(total > 0, total, 1.0), 0.0) * np.clip(full, 0.0, None)[:, None]
    return {"full": full, "per_label": per, "label_names": names, "cv_mse": full_mse, "cv_mse_without": without}
