"""Cross-validation: every star is fitted by a model that never saw it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ._fit import fit_labels
from ._result import FitResult
from ._spectra import SpectrumSet
from .emulators import CannonEmulator, KernelEmulator

__all__ = ["CVResult", "OutlierRejection", "cross_validate", "kfold_indices", "reject_outliers"]

logger = logging.getLogger(__name__)

_EMULATORS = {"cannon": CannonEmulator, "kernel": KernelEmulator}


def kfold_indices(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Fold number [n] in 0..k-1 for each of n items: a seeded random permutation cut in k parts."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= k <= n for k-fold CV, got k={k}, n={n}")
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return fold


@dataclass
class CVResult:
    """Cross-validated fits: ``result`` holds every star in the input order."""

    result: FitResult
    true: np.ndarray
    fold: np.ndarray
    label_names: tuple[str, ...]
    train_seconds: float
    fit_seconds: float
    info: dict = field(default_factory=dict)

    def stats(self, snr=None, bins=None) -> dict:
        """Bias, scatter, MAE per label (see :func:`slamjax.diagnostics.label_stats`)."""
        from .diagnostics import label_stats

        return label_stats(self.result.labels, self.true, snr=snr, bins=bins, label_names=self.label_names)


def cross_validate(
    ds: SpectrumSet,
    emulator: str = "cannon",
    k: int = 5,
    *,
    seed: int = 0,
    train_kwargs: dict | None = None,
    **fit_kwargs,
) -> CVResult:
    """k-fold cross-validation of an emulator + :func:`slamjax.fit_labels` on a labelled set.

    For each fold, the emulator is trained on the other k − 1 folds and the held-out
    spectra are fitted (``fit_kwargs`` go to ``fit_labels``). Returns a :class:`CVResult`
    whose ``result`` lists the held-out fits in the original order of ``ds``.
    """
    if emulator not in _EMULATORS:
        raise ValueError(f"unknown emulator {emulator!r}; available: {sorted(_EMULATORS)}")
    if ds.labels is None:
        raise ValueError("cross-validation needs a labelled SpectrumSet")
    cls = _EMULATORS[emulator]
    fold = kfold_indices(ds.n_spectra, k, seed)
    parts = []
    t_train = t_fit = 0.0
    for i in range(k):
        t0 = time.perf_counter()
        em = cls.train(ds[fold != i], **(train_kwargs or {}))
        t1 = time.perf_counter()
        test = ds[fold == i]
        res = fit_labels(em, test, **fit_kwargs)
        t2 = time.perf_counter()
        t_train += t1 - t0
        t_fit += t2 - t1
        parts.append((np.flatnonzero(fold == i), res))
    order = np.concatenate([idx for idx, _ in parts])
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)

    def cat(name):
        return np.concatenate([getattr(r, name) for _, r in parts])[inv]

    result = FitResult(
        labels=cat("labels"),
        cov=cat("cov"),
        chi2=cat("chi2"),
        n_pixels=cat("n_pixels"),
        n_steps=cat("n_steps"),
        status=cat("status"),
        snr=cat("snr"),
        model_flux=None if parts[0][1].model_flux is None else cat("model_flux"),
        ids=ds.ids,
        label_names=parts[0][1].label_names,
    )
    true = np.stack([ds.label(n) for n in result.label_names], axis=1)
    return CVResult(result, true, fold, result.label_names, t_train, t_fit, {"emulator": emulator, "k": k})


@dataclass
class OutlierRejection:
    """Result of :func:`reject_outliers`: the cleaned set and who was dropped and why."""

    clean: SpectrumSet
    dropped_ids: np.ndarray
    dropped_index: np.ndarray
    deviation: np.ndarray  # [N, L] (fit − reference) / robust σ per label
    sigma: dict
    cv: CVResult


def reject_outliers(
    ds: SpectrumSet,
    emulator: str = "kernel",
    k: int = 10,
    nsigma: float = 4.0,
    *,
    seed: int = 0,
    train_kwargs: dict | None = None,
    **fit_kwargs,
) -> OutlierRejection:
    """Training-set outlier rejection as in SLAM (Zhang, Liu & Deng 2020, §4.2).

    Labels of every training star are predicted by a model trained without it (k-fold,
    leave-1/10-out by default); stars whose prediction deviates from the reference label by
    more than ``nsigma`` robust standard deviations (1.4826 × MAD of the deviations) in any
    label are dropped. Stars whose fit failed (non-finite labels) are kept: a failed fit is
    not evidence of a bad label. Retrain on ``result.clean``.
    """
    cv = cross_validate(ds, emulator=emulator, k=k, seed=seed, train_kwargs=train_kwargs, **fit_kwargs)
    d = cv.result.labels - cv.true
    med = np.nanmedian(d, axis=0)
    sig = 1.4826 * np.nanmedian(np.abs(d - med[None, :]), axis=0)
    dev = (d - med[None, :]) / np.where(sig > 0, sig, np.inf)[None, :]
    bad = np.any(np.abs(np.nan_to_num(dev)) > nsigma, axis=1)
    idx = np.flatnonzero(bad)
    if idx.size == ds.n_spectra:
        raise ValueError("every star would be rejected; check labels and nsigma")
    logger.info("reject_outliers: dropping %d of %d stars: %s", idx.size, ds.n_spectra, list(ds.ids[idx]))
    return OutlierRejection(
        clean=ds[~bad],
        dropped_ids=ds.ids[idx],
        dropped_index=idx,
        deviation=dev,
        sigma=dict(zip(cv.label_names, sig.tolist())),
        cv=cv,
    )
