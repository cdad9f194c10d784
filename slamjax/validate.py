"""Cross-validation: every star is fitted by a model that never saw it."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ._fit import _is_pair, fit_labels
from ._nuisance import segments_of
from ._result import FitResult
from ._spectra import SpectrumSet
from ._systematics import estimate as estimate_systematics
from .emulators import CannonEmulator, KernelEmulator, LabelSystematics, PayneEmulator

__all__ = [
    "CVResult",
    "LadderResult",
    "OutlierRejection",
    "SpreadResult",
    "cross_validate",
    "cv_systematics",
    "degrade",
    "kfold_indices",
    "label_systematics",
    "reject_outliers",
    "snr_ladder",
    "training_spread",
]

logger = logging.getLogger(__name__)

_EMULATORS = {"cannon": CannonEmulator, "kernel": KernelEmulator, "payne": PayneEmulator}


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
    systematics_k: int | None = None,
    **fit_kwargs,
) -> CVResult:
    """k-fold cross-validation of an emulator + :func:`slamjax.fit_labels` on a labelled set.

    For each fold, the emulator is trained on the other k − 1 folds and the held-out
    spectra are fitted (``fit_kwargs`` go to ``fit_labels``; per-star arrays among them, an
    ``init`` [N, L] or a ``prior`` of [N, L] arrays or per-star label means, give one row per
    star of ``ds`` and are cut to each fold). Returns a :class:`CVResult` whose ``result``
    lists the held-out fits in the original order of ``ds``.

    ``systematics_k``: also estimate each fold model's systematic label errors by an inner
    ``systematics_k``-fold CV on that fold's training stars only (:func:`cv_systematics`) and
    attach them, so the held-out errors include them: a nested test of whether the reported
    errors are calibrated (about ``systematics_k + 1`` times the cost).
    """
    if emulator not in _EMULATORS:
        raise ValueError(f"unknown emulator {emulator!r}; available: {sorted(_EMULATORS)}")
    if ds.labels is None:
        raise ValueError("cross-validation needs a labelled SpectrumSet")
    fold = kfold_indices(ds.n_spectra, k, seed)
    if systematics_k is not None and systematics_k < 2:
        raise ValueError(f"systematics_k must be >= 2, got {systematics_k}")
    t0 = time.perf_counter()
    models = _fold_models(ds, fold, k, emulator, train_kwargs, systematics_k, seed, fit_kwargs)
    t_train = time.perf_counter() - t0
    parts = []
    n_max = int(np.bincount(fold).max())
    t0 = time.perf_counter()
    if fit_kwargs.get("continuum") is not None:
        # the continuum segments depend on each model's unusable pixels (see fit_labels)
        segments = {segments_of(np.asarray(em.wave), np.isfinite(np.asarray(em.pixel_variance))) for em in models}
        if len(segments) > 1:
            raise ValueError(
                f"the fold models split the fitted continuum into different segments {sorted(segments, key=str)}: "
                "their coefficients cannot share one catalog; fit without continuum="
            )
    for i, em in enumerate(models):
        idx = np.flatnonzero(fold == i)
        parts.append((idx, _fit_padded(em, ds, idx, n_max, fit_kwargs)))
    t_fit = time.perf_counter() - t0
    order = np.concatenate([idx for idx, _ in parts])
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)

    def cat(name):  # a per-star field in the input order (None where the fits have none: rv, continuum, ...)
        values = [getattr(r, name) for _, r in parts]
        return None if values[0] is None else np.concatenate(values)[inv]

    # every per-star field, also those of rv and continuum fits (fit_kwargs rv=..., continuum=...)
    static = ("ids", "label_names", "continuum_segments")
    fields = {f.name: cat(f.name) for f in dataclasses.fields(FitResult) if f.name not in static}
    segments = {r.continuum_segments for _, r in parts}
    result = FitResult(**fields, ids=ds.ids, label_names=parts[0][1].label_names, continuum_segments=segments.pop())
    true = np.stack([ds.label(n) for n in result.label_names], axis=1)
    info = {"emulator": emulator, "k": k, "systematics_k": systematics_k}
    return CVResult(result, true, fold, result.label_names, t_train, t_fit, info)


def label_systematics(
    em, ds: SpectrumSet, *, snr: float | None = None, model: str = "auto", k: int | None = None, **fit_kwargs
) -> LabelSystematics:
    """The emulator's systematic label errors, measured on held-out spectra of known labels.

    Fits ``ds`` (spectra the emulator was not trained on) with formal errors only; with
    d_n = fitted − true labels over the fits with finite labels (status CONVERGED, MAX_STEPS
    or HIT_BOUND), the excess second moment per spectrum is

    * noisy spectra (``snr=None``): E_n = d_n d_nᵀ − C_n, C_n the formal covariance (the part
      of the scatter the noise explains);
    * noise-free spectra (``snr`` given): they are fitted with weights of that S/N (ivar =
      snr² on the good pixels of ``ds``; the flux is left noise-free) and E_n = d_n d_nᵀ.
      For an emulator error δf the label error (JᵀWJ)⁻¹JᵀWδf does not depend on the overall
      noise level, only on the relative weights, so any S/N at which the noise exceeds the
      model variance gives the same answer. Fitting noise-free spectra with their own (huge)
      ivar would instead weight pixels by the inverse model variance, unlike real spectra.

    How the systematic covariance depends on the labels x (see
    :class:`slamjax.emulators.LabelSystematics`), by ``model``:

    * ``"neighbours"``: the mean of E_n over the ``k`` held-out spectra (default 30) whose fitted
      labels lie nearest to x (``k`` = number of spectra: one global matrix);
    * ``"smooth"``: per label, a log-variance polynomial (degree 2) in the fitted labels fitted by
      maximum likelihood to all d_n, with correlations from the ``k`` nearest;
    * ``"auto"`` (default): the one of the smooth form and the neighbours form with k in 15, 30,
      60 (or the given ``k``) whose variances give the highest likelihood of held-out d_n (5
      folds of the spectra; the smooth form needs ≥ 4T + 20 usable fits, T = its number of
      polynomial terms, 10 for 3 labels). On the synthetic peer benchmark (issue 5) it picks
      the smooth form for the kernel and Payne emulators and 15 neighbours for the Cannon.

    The raw second moment keeps mean offsets. Attach
    it with ``em.with_systematics(...)``: :func:`slamjax.fit_labels` then adds it to the
    formal covariance of every fit. It describes spectra like ``ds`` (label range, pixel mask).

    Raises:
        ValueError: if ``ds`` lacks the emulator's labels, ``snr <= 0``, ``model`` is unknown,
            fewer than 2 fits give finite labels, or ``model="smooth"`` has too few.
    """
    if ds.labels is None:
        raise ValueError("label_systematics needs spectra with known labels")
    missing = [n for n in em.label_names if n not in ds.label_names]
    if missing:
        raise ValueError(f"held-out spectra lack labels {missing}")
    spectra = ds
    if snr is not None:
        if not snr > 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        ivar = np.where(ds.ivar > 0, float(snr) ** 2, 0.0)
        spectra = SpectrumSet(ds.wave, ds.flux, ivar, ids=ds.ids)
    # as a SpectrumSet: fit_labels checks its wavelength grid against the emulator's
    res = fit_labels(em, spectra, systematics=False, return_model=False, **fit_kwargs)
    true = np.stack([ds.label(n) for n in em.label_names], axis=1)
    # Every fit with finite labels counts (also MAX_STEPS and HIT_BOUND: their errors are real).
    return estimate_systematics(res, true, snr is None, em.space.scale, "held-out", model=model, k=k)


def _fit_padded(em, ds, idx, n_rows, fit_kwargs) -> FitResult:
    """``fit_labels(em, ds[idx])`` run as a batch of ``n_rows`` spectra (``idx`` padded with repeats
    of its first star, whose fits are dropped). Folds differ in size by one star, and every batch
    size would compile its own fit; padded to the largest fold they share one compilation."""
    padded = np.concatenate([idx, np.full(n_rows - idx.size, idx[0])])
    res = fit_labels(em, ds[padded], **_per_star(fit_kwargs, ds.n_spectra, padded))
    if n_rows == idx.size:
        return res
    trimmed = {}
    for f in dataclasses.fields(res):
        v = getattr(res, f.name)
        trimmed[f.name] = v[: idx.size] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n_rows else v
    return FitResult(**trimmed)


def _per_star(fit_kwargs: dict, n: int, rows: np.ndarray) -> dict:
    """``fit_kwargs`` with the arrays that hold one row per star of a set of ``n`` cut to ``rows``
    (as ``fit_labels`` reads them): ``init`` [N, L] or [N, S, L]; a ``prior`` pair of [N, ·]
    arrays (2-D; a 1-D array is one value per label); a mapping prior's per-star (1-D, length
    N) means or sigmas. Everything else is passed on as it is."""
    out = dict(fit_kwargs)
    init = out.get("init")
    if isinstance(init, (np.ndarray, list, tuple)) and np.ndim(init) >= 2 and np.shape(init)[0] == n:
        out["init"] = np.asarray(init)[rows]
    prior = out.get("prior")

    def cut(v, ndim):
        return np.asarray(v)[rows] if np.ndim(v) == ndim and np.shape(v)[0] == n else v

    if isinstance(prior, Mapping):
        out["prior"] = {
            name: tuple(cut(v, 1) for v in pair) if _is_pair(pair) else pair for name, pair in prior.items()
        }
    elif _is_pair(prior):  # as fit_labels reads a prior (also a [2, N, L] array)
        out["prior"] = tuple(cut(v, 2) for v in prior)
    return out


def _fold_models(ds, fold, k, emulator, train_kwargs, systematics_k, seed, fit_kwargs):
    """The k fold models (each trained without its fold) in one array layout: one compiled fit
    serves them all (the kernel emulator's γ groups and centre count differ between folds, and
    compiling once per fold dominated its cross-validation)."""
    models = [
        _fold_model(ds[train], emulator, train_kwargs, systematics_k, seed, _per_star(fit_kwargs, ds.n_spectra, train))
        for train in (np.flatnonzero(fold != i) for i in range(k))
    ]
    return type(models[0])._common_shapes(models)


def _fold_model(train, emulator, train_kwargs, systematics_k, seed, fit_kwargs):
    """An emulator trained on ``train``; with ``systematics_k``, carrying systematics from an
    inner ``systematics_k``-fold CV on ``train`` alone (:func:`cv_systematics`)."""
    kwargs = dict(train_kwargs or {})
    if systematics_k is not None and emulator == "payne":  # replaced by the inner-CV estimate
        kwargs.setdefault("systematics", False)
    em = _EMULATORS[emulator].train(train, **kwargs)
    if systematics_k is not None:
        inner = {key: v for key, v in fit_kwargs.items() if key not in ("systematics", "return_model")}
        sys_err, _ = cv_systematics(train, emulator, systematics_k, seed=seed + 1, train_kwargs=train_kwargs, **inner)
        em = em.with_systematics(sys_err)
    return em


def cv_systematics(
    ds: SpectrumSet,
    emulator: str = "kernel",
    k: int = 5,
    *,
    model: str = "auto",
    neighbours: int | None = None,
    seed: int = 0,
    train_kwargs: dict | None = None,
    **fit_kwargs,
) -> tuple[LabelSystematics, CVResult]:
    """Systematic label errors of an emulator type, from k-fold cross-validation on its training set.

    Every star of ``ds`` is fitted (formal errors only) by a model trained on the other folds;
    the excess E_n = d_n d_nᵀ − C_n (d_n = fitted − true, C_n the formal covariance) of every
    fit with finite labels (status ≤ HIT_BOUND) enters a :class:`LabelSystematics`
    (see :func:`label_systematics`, noisy mode; ``model`` and ``neighbours`` are its ``model``
    and ``k``). Attach it to the model trained on all of ``ds``::

        em = sj.KernelEmulator.train(ds)
        sys_err, cv = sj.validate.cv_systematics(ds, "kernel")
        em = em.with_systematics(sys_err)

    The fold models see (k − 1)/k of the stars, so the estimate is slightly pessimistic for
    the full model. It describes spectra like ``ds`` (S/N, label range, pixel mask); the
    noise part is removed, so it transfers to other S/N, approximately: the fit weights
    1/(σ² + s²) change with S/N, and with them how the emulator's flux errors map into labels.
    Synthetic benchmark (400 training stars at S/N 100, test stars at S/N 20, 50, 200 in the
    inner 60 % of the label box): with the default ``model="auto"`` the pull std is 0.91-1.02
    for the kernel, 0.96-1.17 for the Payne and 0.93-1.17 for the Cannon emulator. A local
    mean of 30 neighbours (the only form before) gave the kernel 0.82-0.99: its neighbourhoods
    span a wide region of label space (400 stars in 3 labels) and took in the larger errors
    near the edges of the training set. Returns the systematics and the :class:`CVResult`
    they came from.

    Raises:
        ValueError: as :func:`cross_validate` and :func:`label_systematics`.
    """
    train_kwargs = dict(train_kwargs or {})
    if emulator == "payne":  # its own validation-split estimate is not needed by the fold models
        train_kwargs.setdefault("systematics", False)
    fit_kwargs = {"return_model": False, **fit_kwargs, "systematics": False}
    cv = cross_validate(ds, emulator, k, seed=seed, train_kwargs=train_kwargs, **fit_kwargs)
    res = cv.result
    scale = np.std(cv.true, axis=0)
    return estimate_systematics(res, cv.true, True, scale, "cross-validated", model=model, k=neighbours), cv


@dataclass
class OutlierRejection:
    """Result of :func:`reject_outliers`: the cleaned set and who was dropped and why."""

    clean: SpectrumSet
    dropped_ids: np.ndarray
    dropped_index: np.ndarray
    deviation: np.ndarray  # [N, L] (fit − reference − median offset) / robust σ per label
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
    leave-1/10-out by default); stars whose prediction deviates from the reference label, less
    the median deviation, by more than ``nsigma`` robust standard deviations (1.4826 × MAD of
    the deviations) in any label are dropped. Stars whose fit failed (non-finite labels) are kept: a failed fit is
    not evidence of a bad label. Retrain on ``result.clean``.

    One pass, as in SLAM: a few grossly wrong labels also pull the fold models that include them,
    so some good stars near them can be dropped too (120 synthetic stars, 3 corrupted labels, k = 5:
    the 3 and 16 good ones). Where that matters, call it again on ``result.clean`` with a larger
    ``nsigma`` or compare the two passes.
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


def degrade(ds: SpectrumSet, snr: float, *, seed: int = 0) -> SpectrumSet:
    """Add Gaussian noise so that each spectrum has per-pixel S/N ``snr``.

    The target noise is constant across a spectrum, σ = median(flux over good pixels)/snr
    (the usual per-pixel S/N of a normalised spectrum). The noise added to pixel p has
    variance σ² − 1/ivar_p, so the result has exactly variance σ² and ``ivar = 1/σ²``;
    pixels already noisier than σ keep their noise and ivar (counted in
    ``meta["n_noisier_than_target"]``). Bad pixels stay bad.
    """
    if not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be finite and > 0, got {snr}")
    rng = np.random.default_rng(seed)
    good = (ds.ivar > 0) & np.isfinite(ds.flux)
    level = np.array([np.median(f[g]) if g.any() else np.nan for f, g in zip(ds.flux, good)])
    sigma2 = (np.abs(level) / snr)[:, None] ** 2
    with np.errstate(divide="ignore"):
        var0 = np.where(good, 1.0 / np.where(good, ds.ivar, 1.0), np.inf)
    add = np.where(good, np.clip(sigma2 - var0, 0.0, None), 0.0)
    flux = np.where(good, ds.flux + rng.normal(size=ds.flux.shape) * np.sqrt(add), ds.flux)
    ivar = np.where(good, 1.0 / np.maximum(sigma2, var0), 0.0)
    meta = dict(ds.meta) | {"degraded_snr": float(snr), "n_noisier_than_target": int(np.sum(good & (var0 > sigma2)))}
    return SpectrumSet(ds.wave, flux, ivar, labels=ds.labels, label_names=ds.label_names, ids=ds.ids, meta=meta)


@dataclass
class LadderResult:
    """Label accuracy versus S/N from :func:`snr_ladder`."""

    snrs: tuple[float, ...]
    labels: np.ndarray  # [K, N, L] fitted labels at each S/N
    errors: np.ndarray  # [K, N, L] 1σ errors as fit_labels reports them (+ fold models' systematics, if any)
    status: np.ndarray  # [K, N]
    true: np.ndarray  # [N, L]
    label_names: tuple[str, ...]
    emulator: str

    def stats(self) -> list[dict]:
        """Per S/N rung: bias, scatter, MAE, pull mean/std per label (converged fits only)."""
        from .diagnostics import label_stats

        out = []
        for k, snr in enumerate(self.snrs):
            ok = self.status[k] == 0
            st = label_stats(self.labels[k][ok], self.true[ok], label_names=self.label_names, err=self.errors[k][ok])
            out.append({"snr": snr, "n_converged": int(ok.sum()), **st})
        return out

    def error_model(self):
        """σ(S/N) = a·exp(−b·S/N) + c fitted to the scatter of the rungs (SLAM Table 1 form)."""
        from .diagnostics import fit_error_model

        st = self.stats()
        scatter = np.array([[s[n]["scatter"] for n in self.label_names] for s in st])
        return fit_error_model(np.asarray(self.snrs), scatter, self.label_names)


def snr_ladder(
    ds: SpectrumSet,
    emulator: str = "kernel",
    snrs=(5, 10, 20, 40, 80, 160),
    k: int = 5,
    *,
    seed: int = 0,
    train_kwargs: dict | None = None,
    systematics_k: int | None = None,
    **fit_kwargs,
) -> LadderResult:
    """Accuracy versus S/N: k-fold, each fold's model (trained on the original spectra) fits the
    held-out spectra degraded (:func:`degrade`) to every S/N in ``snrs``.

    Stars whose original S/N is below a rung keep their own noise at that rung (see
    :func:`degrade`); use high-S/N spectra. ``systematics_k``: each fold model carries
    systematic label errors from an inner CV on its own training stars (as in
    :func:`cross_validate`), so the errors (and pulls) include them. Without it the errors are
    formal, except for ``emulator="payne"``, whose fold models attach their own systematics from
    their validation split (``train_kwargs={"systematics": False}`` for formal errors).
    """
    if emulator not in _EMULATORS:
        raise ValueError(f"unknown emulator {emulator!r}; available: {sorted(_EMULATORS)}")
    if ds.labels is None:
        raise ValueError("snr_ladder needs a labelled SpectrumSet")
    snrs = tuple(float(s) for s in snrs)
    if systematics_k is not None and systematics_k < 2:
        raise ValueError(f"systematics_k must be >= 2, got {systematics_k}")
    fold = kfold_indices(ds.n_spectra, k, seed)
    n = ds.n_spectra
    n_max = int(np.bincount(fold).max())
    labels = errors = status = None
    models = _fold_models(ds, fold, k, emulator, train_kwargs, systematics_k, seed, fit_kwargs)
    for i, em in enumerate(models):
        idx = np.flatnonzero(fold == i)
        for r, snr in enumerate(snrs):
            test = degrade(ds[idx], snr, seed=seed + 1000 * r + i)
            res = _fit_padded(em, test, np.arange(idx.size), n_max, _per_star(fit_kwargs, n, idx))
            if labels is None:
                labels = np.full((len(snrs), n, res.labels.shape[1]), np.nan)
                errors = np.full_like(labels, np.nan)
                status = np.full((len(snrs), n), -1, dtype=np.int32)
            labels[r, idx], errors[r, idx], status[r, idx] = res.labels, res.labels_err, res.status
    names = em.label_names
    true = np.stack([ds.label(nm) for nm in names], axis=1)
    return LadderResult(snrs, labels, errors, status, true, names, emulator)


@dataclass
class SpreadResult:
    """Fold-model spread of fitted labels (training-set uncertainty), from :func:`training_spread`."""

    mean: np.ndarray  # [N, L] mean over the inner models
    spread: np.ndarray  # [N, L] jackknife std over the inner models
    formal: np.ndarray  # [N, L] mean formal error
    true: np.ndarray
    label_names: tuple[str, ...]

    @property
    def combined(self) -> np.ndarray:
        """sqrt(formal² + spread²) [N, L]."""
        return np.sqrt(self.formal**2 + self.spread**2)

    def pulls(self) -> dict:
        """Pull std per label with the formal errors alone and with the combined errors."""
        d = self.mean - self.true
        out = {}
        for j, name in enumerate(self.label_names):
            ok = np.isfinite(d[:, j]) & (self.formal[:, j] > 0)
            out[name] = {
                "formal": float(np.std(d[ok, j] / self.formal[ok, j], ddof=1)),
                "combined": float(np.std(d[ok, j] / self.combined[ok, j], ddof=1)),
                "median_spread_over_formal": float(np.median(self.spread[ok, j] / self.formal[ok, j])),
            }
        return out


def training_spread(
    ds: SpectrumSet,
    emulator: str = "kernel",
    k: int = 5,
    k_inner: int = 4,
    *,
    seed: int = 0,
    train_kwargs: dict | None = None,
    **fit_kwargs,
) -> SpreadResult:
    """Training-set uncertainty (SLAM §5.2): the spread of labels fitted by fold models.

    For each outer fold, ``k_inner`` models are trained on the inner k-fold training subsets of
    the other stars (each sees (k_inner − 1)/k_inner of them); every held-out star is fitted by
    all of them. ``mean`` is their mean, ``spread`` the delete-a-group jackknife standard
    deviation sqrt((k_inner − 1)/k_inner Σ_j (θ_j − θ̄)²) (the inner models overlap, so their
    plain standard deviation would underestimate it), ``formal`` the mean formal error (noise and
    per-pixel model variance only: the fold models' own systematics are not added, which would
    count the model error twice in ``combined``). No model ever saw the star it fits.
    """
    if emulator not in _EMULATORS:
        raise ValueError(f"unknown emulator {emulator!r}; available: {sorted(_EMULATORS)}")
    if ds.labels is None or k_inner < 2:
        raise ValueError("training_spread needs a labelled SpectrumSet and k_inner >= 2")
    if fit_kwargs.get("systematics", False):
        raise ValueError("training_spread reports formal errors: fit_kwargs may not set systematics=True")
    fit_kwargs = {**fit_kwargs, "systematics": False}
    train_kwargs = dict(train_kwargs or {})
    if emulator == "payne":  # its own validation-split estimate is not needed by the fold models
        train_kwargs.setdefault("systematics", False)
    fold = kfold_indices(ds.n_spectra, k, seed)
    n = ds.n_spectra
    n_max = int(np.bincount(fold).max())
    mean = spread = formal = None
    models = []
    for i in range(k):
        train_idx = np.flatnonzero(fold != i)
        inner = kfold_indices(train_idx.size, k_inner, seed + 1 + i)
        for j in range(k_inner):
            models.append(_EMULATORS[emulator].train(ds[train_idx[inner != j]], **train_kwargs))
    models = type(models[0])._common_shapes(models)  # one compiled fit for all k · k_inner models
    for i in range(k):
        test_idx = np.flatnonzero(fold == i)
        fits = [_fit_padded(em, ds, test_idx, n_max, fit_kwargs) for em in models[i * k_inner : (i + 1) * k_inner]]
        lab = np.stack([f.labels for f in fits])
        err = np.stack([f.labels_err for f in fits])
        if mean is None:
            mean = np.full((n, lab.shape[2]), np.nan)
            spread, formal = np.full_like(mean, np.nan), np.full_like(mean, np.nan)
        mean[test_idx] = lab.mean(axis=0)
        # delete-a-group jackknife: the models share (k_inner − 2)/(k_inner − 1) of their stars, so
        # their raw spread s underestimates the variance of a model trained on all of them; the
        # jackknife variance (k − 1)/k Σ (θ_j − θ̄)² = (k − 1)²/k · s² estimates it.
        spread[test_idx] = np.sqrt((k_inner - 1) / k_inner * np.sum((lab - lab.mean(axis=0)) ** 2, axis=0))
        formal[test_idx] = err.mean(axis=0)
    names = models[0].label_names
    true = np.stack([ds.label(nm) for nm in names], axis=1)
    return SpreadResult(mean, spread, formal, true, names)
