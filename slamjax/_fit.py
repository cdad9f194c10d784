"""`fit_labels`: batched, jit-compiled Levenberg-Marquardt label fits with covariances.

Everything per spectrum is written for ONE spectrum and vmapped over the spectra of a
chunk; chunks of fixed size bound memory and keep one compiled shape.

The compiled fit of one chunk is ``_fit_core._fit_chunk``; this module prepares its inputs
(validation, templates, priors, chunking, caches) and assembles the :class:`FitResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import numpy as np

from ._chunking import _default_workers, _run_chunks
from ._fit_nuisance import _nuisance_outputs, _nuisance_setup
from ._fit_prepared import _prepared, _template_inputs, _training_templates
from ._result import FitResult, Status
from ._spectra import SpectrumSet
from .emulators._base import AbstractEmulator, AbstractLinearEmulator

logger = logging.getLogger(__name__)

__all__ = ["fit_labels"]

_TOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-3}
_FIRST_BUDGET = 10
_CHUNK_ELEMENTS = 1_100_000  # per [chunk, P] array: 256 spectra at 4300 px (fastest measured)
_GENERIC_CHUNK_MAX_CPU = 256  # default chunk ceiling on CPU for fits with model + Jacobian evaluations


def fit_labels(
    em: AbstractEmulator,
    flux,
    ivar=None,
    *,
    init="training",
    n_starts: int = 3,
    prior=None,
    box_margin: float = 0.05,
    max_steps: int = 50,
    tol: float | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    dtype=None,
    progress: bool = False,
    ids=None,
    return_model: bool = True,
    rv=False,
    continuum: int | None = None,
    systematics: bool = True,
) -> FitResult:
    """Fit labels to spectra: MAP labels, covariances, χ² and a status per spectrum.

    The objective per spectrum is χ² = Σ_p w_p (f_p − model_p)² with
    w_p = 1 / (1/ivar_p + σ²_model,p) (``em.pixel_variance``), plus Σ_l ((x_l − μ_l)/σ_l)²
    for an optional Gaussian prior. Pixels with ``ivar == 0``, non-finite flux or
    infinite model variance are ignored.

    Arguments:
        em: a trained emulator (e.g. :class:`slamjax.CannonEmulator`).
        flux: spectra [N, P] on ``em.wave`` (or a :class:`SpectrumSet`, which then
            supplies ``ivar`` and ``ids``; its grid must equal ``em.wave``).
        ivar: inverse variances [N, P] (``>= 0``; 0 = bad pixel).
        init: ``"training"`` — evaluate the model at every training label vector,
            take the ``n_starts`` lowest-objective ones as starting points (the best, then the
            best of the 16 best that lie at least 0.5 standard deviations of the training labels
            from the starts taken, where there are such; see ``_fit_core.diverse_starts``): each
            gets two LM steps and the lowest continues; for the kernel emulator (with the
            templates' Jacobians cached) the best-ranked start is fitted alone, each other start
            gets one LM step, and a spectrum is fitted again from a start whose step lands below
            the minimum found, keeping the lower one (``AbstractEmulator._check_starts_by_one_step``;
            the steps of both fits count in ``n_steps``); or an array of starts in
            physical units, [L], [N, L] or [N, S, L]; or a direct (discriminative) model
            from :mod:`slamjax.direct` (anything with ``predict(flux, ivar) -> [N, L']`` and
            ``label_names`` covering the emulator's labels): its prediction is the first start,
            joined by the ``n_starts − 1`` best training label vectors (``n_starts=1``: the
            prediction alone). Non-finite predictions (e.g. a spectrum with no good pixel)
            start from the centre of the training labels.
        n_starts: number of starts for ``init="training"`` (total starts with a direct model).
        prior: ``None``, a mapping ``{label: (mean, sigma)}``, or a pair
            ``(mean, sigma)`` of arrays broadcastable to [N, L] (``sigma = inf`` means
            no prior on that label). With a prior the labels are MAP estimates.
        box_margin: labels are kept inside the training label box widened by this
            fraction of its width on each side; a solution on that edge gets status
            ``HIT_BOUND`` (negative: a narrower box; > −0.5).
        max_steps: LM step limit per start (``MAX_STEPS`` status when reached); the two
            screening steps of each start in a multi-start fit are taken even when it is smaller.
        tol: convergence tolerance on the Gauss-Newton decrement (squared distance to
            the minimum in units of the label errors); default 1e-6 (float64) or 1e-3
            (float32). It is passed to the compiled fit as data, like ``max_steps``: changing
            either does not recompile.
        chunk_size: spectra per compiled batch. Default: about 1.1 million elements per
            [chunk, P] array for the Cannon's quadratic-form path (256 spectra at 4300 px; 64
            to 4096): bounded memory, cache-friendly, below glibc's 32 MiB mmap threshold
            (larger chunks were page-faulted in afresh every time); 256 beat 512 and 1024 in
            float32 and float64 (benchmarks/results/fit_throughput.md). Other emulators (model
            and Jacobian, [chunk, P, 1 + L]) and fits with nuisance parameters: 1.1 million /
            (P·(1 + L)), 16 to 4096; smaller chunks also stop fewer fast fits waiting for a
            slow one in the batch (Payne 7214 px × 4 labels: 32 spectra gave 661/s, 152 gave
            484/s; kernel 2000 × 2000 px, 3 starts: 137 gave 321/s, 550 gave 258/s; measured
            before the LM stepped a chunk's last unfinished fits apart, see ``slamjax._lm``);
            on the CPU backend at most 256 (kernel, 400 centres × 100 px, 3000 spectra, 1 worker:
            chunks of 160-384 took 66-71 µs per spectrum, 512-3000 took 91-97 µs).
        workers: chunks fitted at once, each by its own thread (the compiled fit releases the
            GIL). XLA spreads the small operations of one chunk over the cores poorly: on 2
            cores one kernel-emulator chunk (400 centres × 100 px) ran only ~1.5x faster than on
            1 core; with 2 workers the fit took 71 → 57 µs per spectrum (3000 spectra) and
            76 → 61 µs (300), MILES 347 centres × 215 px 0.169 → 0.156 ms, and made no
            difference at 4300 px (2.55 vs 2.53 ms). A batch is split into at least ``workers``
            chunks where each keeps at least 128 spectra (kernel, 2 workers: halves of 150 gained,
            halves of 20-100 spectra did not, in the noise). Default: the CPU cores available to
            this process, at most 8, on the CPU backend; 1 on accelerators (one large chunk
            keeps them busy) and for the quadratic-form path of linear-feature emulators (its
            large products already use every core: the Cannon on 4300 px, 2048 spectra, float32
            0.077 → 0.093 ms per spectrum with 2 workers). Results do not depend on it (to rounding).
        dtype: ``float32`` or ``float64`` for the computation; default: the dtype of
            ``flux`` (float64 for integer input), except float64 for emulators whose
            ``float32_ok`` is False (the kernel emulator: its float32 model flux errs by up to
            ~2e-3, labels by up to ~0.4 σ at S/N 160). An explicit float32 is honoured (with a
            warning for such emulators).
        progress: show a progress bar over chunks (needs ``tqdm``; silently off without).
        ids: identifiers [N] for the catalog.
        return_model: keep the best-fit model fluxes [N, P] in the result. Set False at
            survey scale: the output is then O(N·L²) instead of O(N·P).
        rv: fit a radial velocity (km/s) with the labels: ``True`` searches ±500 km/s, or
            give bounds ``(lo, hi)``. The model (rest frame, on ``em.wave``) is Doppler-shifted
            onto the data pixels inside the residual (cubic interpolation, see
            ``slamjax._nuisance``). A grid search over velocities (step 1.5 pixel velocities,
            6 template spectra spread over the training labels) gives the start; LM then fits
            v within ±8 pixel velocities of it. Pixels whose interpolation would cross a
            segment edge (grid end or gap) or touch an unusable model pixel (infinite
            ``pixel_variance``) within that window get zero weight.
        continuum: fit a multiplicative continuum, a Chebyshev polynomial of this degree per
            grid segment (segments: the grid split at wavelength gaps and in the middle of long
            runs of unusable model pixels, e.g. APOGEE's three chips on apVisit or apStar
            wavelengths; see ``slamjax._nuisance``). Start:
            the best constant scale per segment for each starting template.
            With ``rv`` or ``continuum`` every emulator uses the generic path, the covariance
            ``cov`` of the labels is marginalised over the nuisance parameters, and the
            result carries ``rv``, ``rv_err``, ``continuum``, ``continuum_err`` and the full
            covariance ``cov_full`` (order: labels, rv, continuum coefficients).
        systematics: add the emulator's systematic label covariance at the fitted labels
            (``em.space.systematics``, if it has one; see
            :func:`slamjax.validate.label_systematics`) to the formal covariance, in ``cov``,
            ``labels_err`` and the label block of ``cov_full``.
            ``False``: formal covariance only (noise and per-pixel model variance).

    Returns:
        :class:`slamjax.FitResult`.

    Raises:
        ValueError: for shape mismatches, NaN or negative ivar, a grid that differs from
            the emulator's, an unknown label in ``prior``, or bad ``init``.
    """
    if not isinstance(em, AbstractEmulator):
        raise TypeError(f"em must be a slamjax emulator, got {type(em).__name__}")
    if not np.all(np.asarray(em.pixel_variance) >= 0):  # fit weights ivar / (1 + ivar s²) need s² >= 0
        raise ValueError("the emulator's pixel_variance has negative or NaN values (inf marks an unusable pixel)")
    if isinstance(flux, SpectrumSet):
        ds = flux
        if ivar is not None:
            raise ValueError("pass either a SpectrumSet or flux and ivar, not both")
        if ds.n_pixels != em.n_pixels or not np.allclose(ds.wave, np.asarray(em.wave), rtol=1e-9, atol=0):
            raise ValueError(
                f"spectra are on a different wavelength grid ({ds.n_pixels} px, "
                f"{ds.wave[0]:.2f}-{ds.wave[-1]:.2f} Å) than the emulator ({em.n_pixels} px, "
                f"{float(em.wave[0]):.2f}-{float(em.wave[-1]):.2f} Å); resample first"
            )
        flux, ivar = ds.flux, ds.ivar
        ids = ds.ids if ids is None else ids
    if ivar is None:
        raise ValueError("ivar is required (use ivar = 0 for bad pixels)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    real = isinstance(box_margin, (int, float, np.integer, np.floating)) and not isinstance(box_margin, bool)
    if not real or not (np.isfinite(box_margin) and box_margin > -0.5):  # > -0.5: the box is not empty
        raise ValueError(f"box_margin must be a finite number > -0.5, got {box_margin!r}")
    if isinstance(continuum, bool):
        raise ValueError(f"continuum must be a polynomial degree (an integer >= 0) or None, got {continuum!r}")
    flux = np.asarray(flux)
    ivar = np.asarray(ivar)
    if np.iscomplexobj(flux) or np.iscomplexobj(ivar):
        raise ValueError("flux and ivar must be real")
    if flux.ndim == 1:
        flux, ivar = flux[None], ivar.reshape(1, -1)
    if flux.ndim != 2 or flux.shape[1] != em.n_pixels:
        raise ValueError(f"flux must be [N, P={em.n_pixels}], got shape {flux.shape}")
    if ivar.shape != flux.shape:
        raise ValueError(f"ivar shape {ivar.shape} does not match flux shape {flux.shape}")
    if flux.shape[0] == 0:
        raise ValueError("no spectra to fit")
    if not np.all(ivar >= 0):  # one pass catches NaN and negative values; details only on error
        if np.any(np.isnan(ivar)):
            raise ValueError("ivar contains NaN (use ivar = 0 for bad pixels)")
        raise ValueError("ivar contains negative values")
    if not np.isfinite(ivar.max()):  # no NaN here, so the maximum is inf only if some ivar is
        raise ValueError("ivar contains inf (a pixel without noise); give finite inverse variances")
    if not np.all(np.isfinite(flux)):
        n_nonfinite = int(np.sum(~np.isfinite(flux) & (ivar > 0)))
        if n_nonfinite:
            logger.warning("fit_labels: %d non-finite flux values with ivar > 0 are ignored", n_nonfinite)

    if dtype is None:
        dtype = flux.dtype if flux.dtype in (np.float32, np.float64) else np.float64
        if np.dtype(dtype) == np.float32 and not em.float32_ok:
            dtype = np.float64  # e.g. the kernel emulator: its float32 model flux is too inexact
    elif np.dtype(dtype) == np.float32 and not em.float32_ok:
        logger.warning(
            "fit_labels: %s in float32 loses accuracy (see its float32_ok); labels can be off by a few "
            "tenths of their errors at high S/N; use float64 for accurate labels",
            type(em).__name__,
        )
    dtype = np.dtype(dtype)
    if dtype not in _TOL:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    tol = _TOL[dtype] if tol is None else float(tol)
    n, n_lab = flux.shape[0], em.n_labels
    if ids is None:
        ids = np.arange(n).astype(str)
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")

    space = em.space
    mean, scale = np.asarray(space.mean), np.asarray(space.scale)
    width = np.asarray(space.hi) - np.asarray(space.lo)
    lo_z = (np.asarray(space.lo) - box_margin * width - mean) / scale
    hi_z = (np.asarray(space.hi) + box_margin * width - mean) / scale

    prior_m, prior_p = _prior_arrays(prior, em.label_names, n, mean, scale)

    direct_model = None
    if hasattr(init, "predict") and hasattr(init, "label_names"):
        direct_model, init = init, _direct_starts(init, flux, ivar, em)
        if n_starts < 1:
            raise ValueError("n_starts must be >= 1")
    if isinstance(init, str):
        if init != "training":
            raise ValueError(f"unknown init {init!r}; use 'training' or an array of labels")
        if n_starts < 1:
            raise ValueError("n_starts must be >= 1")
        starts = None
        generic = not isinstance(em, AbstractLinearEmulator) or bool(rv) or continuum is not None
        templates_z = _training_templates(space, subsample=generic)
        n_starts = min(n_starts, templates_z.shape[0])
    else:
        starts = np.asarray(init, dtype=np.float64)
        shape_ok = {1: starts.shape == (n_lab,), 2: starts.shape == (n, n_lab), 3: starts.shape[::2] == (n, n_lab)}
        if not shape_ok.get(starts.ndim, False) or starts.size == 0:
            raise ValueError(f"init array must be [L], [N, L] or [N, S, L] with N={n}, L={n_lab}; got {np.shape(init)}")
        if starts.ndim == 1:
            starts = np.broadcast_to(starts, (n, n_lab))
        if starts.ndim == 2:
            starts = starts[:, None, :]
        if not np.all(np.isfinite(starts)):
            raise ValueError("init contains non-finite labels")
        starts = (starts - mean) / scale
        templates_z = None
        if direct_model is not None and n_starts > 1:  # the direct start plus the best training labels
            templates_z = _training_templates(space, subsample=True)
            n_starts = min(n_starts - 1, templates_z.shape[0])

    prepared = _prepared(em, dtype)
    em_c = prepared["em"]
    common = dict(lo=lo_z.astype(dtype), hi=hi_z.astype(dtype))
    if templates_z is not None:
        common.update(_template_inputs(em, prepared, templates_z, lo_z, hi_z, starts is None, rv, continuum, dtype))
    if chunk_size is None:
        if isinstance(em, AbstractLinearEmulator) and (rv is False or rv is None) and continuum is None:
            chunk_size = int(np.clip(round(_CHUNK_ELEMENTS / em.n_pixels), 64, 4096))
        else:  # model + Jacobian per step: (1 + L) values per pixel and spectrum
            most = _GENERIC_CHUNK_MAX_CPU if jax.default_backend() == "cpu" else 4096
            chunk_size = int(np.clip(round(_CHUNK_ELEMENTS / (em.n_pixels * (1 + n_lab))), 16, most))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if workers is None:
        linear = isinstance(em, AbstractLinearEmulator) and (rv is False or rv is None) and continuum is None
        workers = 1 if linear else _default_workers()
    elif isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    settings = dict(
        dtype=dtype, chunk_size=chunk_size, tol=tol, return_model=return_model, progress=progress, workers=int(workers)
    )
    nuis = None
    if (rv is not False and rv is not None) or continuum is not None:
        nuis, nuis_arrays = _nuisance_setup(em, rv, continuum, dtype)
        common |= nuis_arrays
        settings["nuis"] = nuis
    # Phase 1: every start gets a short step budget. Under vmap a while-loop runs until the
    # slowest member of the batch stops, so the few slow fits continue in phase 2, in a batch
    # of their own, from their best point (single start).
    first = min(max_steps, _FIRST_BUDGET)
    rows = dict(flux=flux, ivar=ivar, prior_m=prior_m, prior_p=prior_p)
    if starts is not None:
        rows["starts"] = starts
    # The kernel emulator's starts after the best-ranked one are checked by one LM step in the
    # chunk (AbstractEmulator._check_starts_by_one_step); where one lands below the fit's minimum,
    # the spectrum is fitted again from there and the lower minimum kept.
    settings["check_starts"] = bool(
        starts is None and n_starts > 1 and "templates_jac" in common and em_c._check_starts_by_one_step
    )
    cat = _run_chunks(em_c, rows, common, n_starts, first, settings, snr=True)
    alt_z, alt_better = cat.pop("alt_z", None), cat.pop("alt_better", None)
    alt = np.flatnonzero(alt_better) if alt_better is not None else np.zeros(0, np.int64)
    redo = np.flatnonzero(
        ~cat["converged"] & (cat["status"] != Status.BAD_INPUT) & (cat["status"] != Status.NON_FINITE)
    )
    if max_steps <= first:
        redo = redo[:0]
    if nuis is None and (alt.size or redo.size):
        _second_phase(em_c, cat, rows, common, redo, alt, alt_z, first, max_steps, settings)
    elif redo.size:  # nuisance fits (no checked starts)
        extra = {"v0": cat["v0"][redo]}
        sub = _fit_subset(em_c, rows, common, redo, cat["x"][redo], max_steps - first, settings, extra)
        steps = cat["n_steps"][redo] + sub["n_steps"]
        for k, v in sub.items():
            cat[k][redo] = v
        cat["n_steps"][redo] = steps

    z = cat["z"].astype(np.float64)
    labels = z * scale + mean
    cov = cat["cov_z"].astype(np.float64) * scale[:, None] * scale[None, :]
    status = cat["status"].astype(np.int32)
    bad = status == Status.BAD_INPUT
    # Not a fit: no labels (a NON_FINITE fit's finite-looking labels are where it broke down)
    failed = bad | (status == Status.NON_FINITE)
    labels[failed] = np.nan
    cov[failed] = np.nan
    extra = {}
    if nuis is not None:
        extra = _nuisance_outputs(cat, nuis, n_lab, failed, scale)
    if systematics and space.systematics is not None:
        sys_cov = space.systematics.cov(labels)  # [N, L, L] at each fitted point; NaN for bad rows
        cov = cov + sys_cov
        if "cov_full" in extra:
            extra["cov_full"][:, :n_lab, :n_lab] += sys_cov  # rv and continuum errors unchanged
    return FitResult(
        labels=labels,
        cov=cov,
        chi2=np.where(bad, np.nan, cat["chi2"].astype(np.float64)),
        n_pixels=cat["n_pixels"].astype(np.int32),
        n_steps=cat["n_steps"].astype(np.int32),
        status=status,
        snr=cat["snr"].astype(np.float64),
        model_flux=_without_bad_rows(cat["model"], failed) if return_model else None,
        ids=ids,
        label_names=em.label_names,
        **extra,
    )


def _without_bad_rows(model, bad):
    """The model fluxes with NaN in the rows of spectra that were not fitted (BAD_INPUT, NON_FINITE)."""
    if bad.any():
        model = np.array(model, dtype=np.result_type(model.dtype, np.float32))
        model[bad] = np.nan
    return model


def _fit_subset(em, rows, common, idx, start, budget, settings, extra=None):
    """Fit the spectra ``idx`` of ``rows`` again, each from one start ``start`` [len(idx), ·]
    (``extra``: further per-row inputs), with ``budget`` steps (a number, or one per row) and no
    templates; the chunk outputs. Power-of-two batch shapes of at least 16: the number of such
    spectra varies from call to call, and each new shape would compile again; padding this small
    subset costs little."""
    sub_rows = {k: v[idx] for k, v in rows.items() if k != "starts"} | (extra or {})
    sub_rows["starts"] = start[:, None, :]
    if np.ndim(budget):
        sub_rows["max_steps"] = np.asarray(budget, np.int32)
        budget = int(np.max(budget))
    plain = {k: v for k, v in common.items() if not k.startswith("templates")}
    once = settings | {"progress": False, "pow2": True, "check_starts": False}
    return _run_chunks(em, sub_rows, plain, 1, budget, once, snr=False)


def _second_phase(em, cat, rows, common, redo, alt, alt_z, first, max_steps, settings):
    """The fits after the first ``first`` steps, in ONE compiled call: the spectra ``redo`` (not
    converged) continue from their point with the remaining ``max_steps − first`` steps, and the
    spectra ``alt`` are fitted afresh (``max_steps`` steps) from their checked alternative starts
    ``alt_z`` (standardised labels), keeping per spectrum the fit with the lower objective (χ² plus
    prior); the steps of every fit of a spectrum count. Updates ``cat`` (the chunk outputs of all
    spectra) in place. (Two calls, one per kind, cost ~1.5 ms more per ``fit_labels`` call: each
    small padded batch runs as many LM iterations as its slowest member.)"""
    idx = np.concatenate([redo, alt])
    start = np.concatenate([cat["z"][redo]] + ([alt_z[alt]] if alt.size else []))
    budget = np.concatenate([np.full(redo.size, max_steps - first), np.full(alt.size, max_steps)])
    sub = _fit_subset(em, rows, common, idx, start, budget, settings)
    n_redo = redo.size
    steps = cat["n_steps"][redo] + sub["n_steps"][:n_redo]
    for k, v in sub.items():
        cat[k][redo] = v[:n_redo]
    cat["n_steps"][redo] = steps
    if alt.size:
        new_steps = sub["n_steps"][n_redo:]

        def objective(z, chi2):
            return chi2 + np.sum(rows["prior_p"][alt] * (z - rows["prior_m"][alt]) ** 2, axis=1)

        new = objective(sub["z"][n_redo:], sub["chi2"][n_redo:])
        old = objective(cat["z"][alt], cat["chi2"][alt])
        lower = (new < old) | (np.isfinite(new) & ~np.isfinite(old))
        steps = cat["n_steps"][alt] + new_steps
        for k, v in sub.items():
            cat[k][alt[lower]] = v[n_redo:][lower]
        cat["n_steps"][alt] = steps


def _direct_starts(model, flux, ivar, em):
    """Starting labels [N, L] (emulator order) predicted by a direct model."""
    names = tuple(model.label_names)
    missing = [n for n in em.label_names if n not in names]
    if missing:
        raise ValueError(f"init model predicts {list(names)}, not the emulator's labels {missing}")
    wave = getattr(model, "wave", None)  # slamjax.direct models carry theirs
    if wave is not None:
        wave, em_wave = np.asarray(wave), np.asarray(em.wave)
        if wave.shape != em_wave.shape or not np.allclose(wave, em_wave, rtol=1e-9, atol=0):
            raise ValueError(
                f"init model was trained on another wavelength grid ({wave.size} px, {wave[0]:.2f}-{wave[-1]:.2f} Å) "
                f"than the emulator's ({em_wave.size} px, {em_wave[0]:.2f}-{em_wave[-1]:.2f} Å)"
            )
    pred = np.asarray(model.predict(flux, ivar), dtype=np.float64)
    if pred.shape != (flux.shape[0], len(names)):
        raise ValueError(f"init model returned shape {pred.shape}, expected ({flux.shape[0]}, {len(names)})")
    pred = pred[:, [names.index(n) for n in em.label_names]]
    bad = ~np.all(np.isfinite(pred), axis=1)
    if bad.any():
        logger.warning("fit_labels: %d direct-model predictions are not finite; start at the label mean", bad.sum())
        pred[bad] = np.asarray(em.space.mean)
    return pred


def _is_pair(x) -> bool:
    """A tuple, list or array of length 2 (a prior's (mean, sigma))."""
    return isinstance(x, (tuple, list)) and len(x) == 2 or isinstance(x, np.ndarray) and x.ndim >= 1 and len(x) == 2


def _prior_arrays(prior, names, n, mean, scale):
    """Prior mean and precision in standardised units, [N, L] each (precision 0 = none)."""
    n_lab = len(names)
    mu = np.zeros((n, n_lab))
    sig = np.full((n, n_lab), np.inf)
    if prior is None:
        pass
    elif isinstance(prior, Mapping):
        for name, pair in prior.items():
            if name not in names:
                raise ValueError(f"prior on unknown label {name!r}; labels are {list(names)}")
            if not _is_pair(pair):
                raise ValueError(f"prior[{name!r}] must be a pair (mean, sigma), got {pair!r}")
            j = names.index(name)
            mu[:, j], sig[:, j] = pair
    else:
        if not _is_pair(prior):
            raise ValueError(
                "prior must be None, a mapping {label: (mean, sigma)} or a pair (mean, sigma) of arrays "
                f"broadcastable to [N, L] = [{n}, {n_lab}]; got {type(prior).__name__}"
                + (f" of shape {prior.shape}" if isinstance(prior, np.ndarray) else "")
            )
        m, s = prior
        try:
            mu = np.broadcast_to(np.asarray(m, dtype=np.float64), (n, n_lab)).copy()
            sig = np.broadcast_to(np.asarray(s, dtype=np.float64), (n, n_lab)).copy()
        except ValueError as err:
            raise ValueError(
                f"prior (mean, sigma) must be broadcastable to [N, L] = [{n}, {n_lab}]; got shapes "
                f"{np.shape(m)} and {np.shape(s)}"
            ) from err
    if np.any(~(sig > 0)):
        raise ValueError("prior sigmas must be > 0 (use inf for no prior)")
    has = np.isfinite(sig)
    if np.any(has & ~np.isfinite(mu)):
        raise ValueError("prior means must be finite where a prior sigma is given")
    prec = np.where(has, (scale / np.where(has, sig, 1.0)) ** 2, 0.0)
    mz = np.where(has, (mu - mean) / scale, 0.0)
    return mz, prec
