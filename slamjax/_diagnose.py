"""``diagnose``: one call (or ``slamjax diagnose``) that writes the standard validation plots and a summary.

For a labelled :class:`~slamjax.SpectrumSet` it runs k-fold cross-validation and an S/N ladder
per emulator, the per-pixel leave-one-out CV MSE of the kernel and Cannon emulators trained on
all stars and the coefficients of dependence, and writes PNG plots plus ``summary.md`` (tables of
every number behind the plots, the time of each step and the software versions).
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plot as _plot
from ._spectra import SpectrumSet
from ._version import __version__

__all__ = ["EMULATORS", "check_out_dir", "diagnose"]

logger = logging.getLogger(__name__)

EMULATORS = ("kernel", "cannon", "payne")
_FLOAT64_EMULATORS = ("kernel",)  # emulators whose float32_ok is False (fit in float64 by default)
_PIXEL_EMULATORS = ("kernel", "cannon")  # those with an exact per-pixel LOO CV MSE (diagnostics.cv_mse)
SUMMARY = "summary.md"
# every file diagnose may write: with overwrite they are removed first, so that no file of an earlier run
# (e.g. one_to_one_kernel.png when this run has only the Cannon) stays mixed with this run's outputs
OUTPUT_FILES = (
    SUMMARY,
    *(f"one_to_one_{em}.png" for em in EMULATORS),
    "scatter_vs_snr.png",
    "cod_spectra.png",
    "cv_mse_spectra.png",
)


def check_out_dir(out_dir, overwrite: bool = False) -> Path:
    """The output directory as a Path; refuses an existing file or, without ``overwrite``, a non-empty directory.

    Raises:
        ValueError: if ``out_dir`` exists and is not a directory.
        FileExistsError: if it is a non-empty directory and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out} is not empty; use --overwrite to write into it")
    return out


def _check_inputs(ds: SpectrumSet, emulators, k: int, snr) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if isinstance(emulators, str):
        emulators = (emulators,)
    names = tuple(dict.fromkeys(str(e).strip().lower() for e in emulators))  # de-duplicated, order kept
    if not names:
        raise ValueError("no emulators given")
    unknown = [e for e in names if e not in EMULATORS]
    if unknown:
        raise ValueError(f"unknown emulator(s) {unknown}; available: {', '.join(EMULATORS)}")
    if not isinstance(ds, SpectrumSet):
        raise TypeError(f"diagnose needs a SpectrumSet, got {type(ds).__name__}")
    if ds.labels is None:
        raise ValueError("diagnose needs a data set with labels (labels and label_names)")
    n_nan = int((~np.isfinite(ds.labels)).any(axis=1).sum())
    if n_nan:
        raise ValueError(
            f"{n_nan} of {ds.n_spectra} stars have NaN labels; remove them first "
            "(e.g. --select 'teff>0' drops those with NaN teff)"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if ds.n_spectra < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} stars, the data set has {ds.n_spectra}")
    rungs = tuple(float(s) for s in snr)
    bad = [s for s in rungs if not (np.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"S/N values must be finite and > 0, got {bad}")
    return names, tuple(sorted(set(rungs)))


def _train_kwargs(emulator: str, seed: int) -> dict:
    return {"key": seed} if emulator == "payne" else {}


def _cls(emulator: str):
    from .emulators import CannonEmulator, KernelEmulator, PayneEmulator

    return {"kernel": KernelEmulator, "cannon": CannonEmulator, "payne": PayneEmulator}[emulator]


# ---------------------------------------------------------------------- markdown helpers
def _num(name: str, value: float, sign: bool = False) -> str:
    """A label-valued number: Teff to 1 K, everything else to 0.001 dex."""
    if not np.isfinite(value):
        return "nan"
    dec = 0 if _plot.label_unit(name) == "K" else 3
    return f"{value:+.{dec}f}" if sign else f"{value:.{dec}f}"


def _pull(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "nan"


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _status_text(summary: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in summary.items() if count) or "none"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import jax

    out = {"slamjax": __version__, "jax": jax.__version__}
    for pkg in ("jaxlib", "equinox", "numpy", "scipy", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    out["jax backend"] = f"{jax.default_backend()} ({jax.device_count()} device(s))"
    return out


@dataclass
class _Steps:
    """Wall time of each step, logged as it finishes."""

    rows: list = field(default_factory=list)
    written: list = field(default_factory=list)  # paths of the plots written

    def run(self, what: str, fn, *args, **kwargs):
        logger.info("%s ...", what)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        self.rows.append((what, seconds))
        logger.info("%s: %.1f s", what, seconds)
        return out

    def plot(self, path: Path, fn, *args, **kwargs) -> None:
        """Run the plotting step ``fn(*args, path, **kwargs)`` and remember ``path`` as written."""
        self.run(f"plot {path.name}", fn, *args, path, **kwargs)
        self.written.append(path)


# ---------------------------------------------------------------------- the diagnosis
def diagnose(
    ds: SpectrumSet,
    out_dir,
    *,
    emulators=("kernel", "cannon"),
    k: int = 5,
    snr=(10, 20, 40, 80),
    seed: int = 0,
    n_starts: int = 3,
    dtype=None,
    cod: bool = True,
    overwrite: bool = False,
) -> Path:
    """Validation plots and a markdown summary for emulators on a labelled data set.

    Steps (each timed; progress is logged at INFO level on ``slamjax._diagnose``):

    1. per emulator, k-fold :func:`slamjax.validate.cross_validate` → ``one_to_one_<emulator>.png``
       (fitted versus reference labels with formal errors; non-converged fits marked) and a
       table of bias, scatter, MAE and pull std per label;
    2. per emulator, :func:`slamjax.validate.snr_ladder` at the S/N values ``snr`` (same folds)
       → ``scatter_vs_snr.png`` (scatter and bias per label, one line per emulator) and a table
       per rung; with 3 or more rungs also the error model σ(S/N) = a·exp(−b·S/N) + c per label
       (:meth:`slamjax.validate.LadderResult.error_model`);
    3. the kernel and Cannon emulators (those of ``emulators``) trained on all stars →
       ``cv_mse_spectra.png``, their exact leave-one-out CV MSE per pixel
       (:func:`slamjax.diagnostics.cv_mse`, standardised flux);
    4. with ``cod`` and at least 2 labels, the coefficients of dependence
       (:func:`slamjax.diagnostics.cod`) of the kernel emulator (the Cannon if the kernel is not
       among ``emulators``; none for the Payne alone) → ``cod_spectra.png``;

    and writes ``summary.md`` linking the plots. With ``overwrite``, every file of these names
    (``OUTPUT_FILES``, also those this run does not write) is first removed from ``out_dir``, so
    no output of an earlier run remains; other files there are left alone.

    Arguments:
        ds: labelled spectra (labels finite for every star; Teff in K, others in dex).
        out_dir: output directory, created if missing (parents too).
        emulators: names among ``"kernel"``, ``"cannon"``, ``"payne"`` (Payne: cross-validation
            and S/N ladder only, trained with ``key=seed``).
        k: number of cross-validation folds (2 <= k <= number of stars).
        snr: S/N per pixel of the ladder rungs; empty for no ladder. Spectra whose own S/N is
            below a rung keep their own noise there (see :func:`slamjax.validate.degrade`).
        seed: seed of the fold assignment, the added noise and the Payne's initialisation.
        n_starts, dtype: passed to :func:`slamjax.fit_labels` for every fit (``dtype=None``: float32
            for float32 flux, else float64, and float64 for the kernel emulator, whose float32 fits
            lose accuracy; also for the ladder's degraded spectra).
        cod: compute the coefficients of dependence (L + 1 trainings on all stars).
        overwrite: write into a non-empty ``out_dir``.

    Returns:
        The path of ``summary.md``.

    Raises:
        ValueError: on an unknown emulator, a data set without labels or with NaN labels, fewer
            stars than folds, a non-positive S/N, or an ``out_dir`` that is a file.
        FileExistsError: if ``out_dir`` is not empty and ``overwrite`` is False.
        ImportError: if matplotlib is not installed (checked before any work).
    """
    return _run(
        ds,
        out_dir,
        emulators=emulators,
        k=k,
        snr=snr,
        seed=seed,
        n_starts=n_starts,
        dtype=dtype,
        cod=cod,
        overwrite=overwrite,
    )[0]


def _run(
    ds: SpectrumSet, out_dir, *, emulators, k, snr, seed, n_starts, dtype, cod, overwrite
) -> tuple[Path, list[Path]]:
    """:func:`diagnose`; returns the path of ``summary.md`` and the paths of all files written, in order."""
    from . import diagnostics
    from .validate import cross_validate, snr_ladder

    names, rungs = _check_inputs(ds, emulators, k, snr)
    out = check_out_dir(out_dir, overwrite)
    _plot._require_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    # One dtype for all fits of an emulator: the ladder's degraded spectra are float64 whatever the
    # input, so with dtype=None the CV (float32 for float32 data) and the ladder would be computed
    # differently. By default that of the flux, except float64 for the kernel emulator (its float32_ok
    # is False: fit_labels fits float32 flux in float64 for it too).
    base = ds.flux.dtype if ds.flux.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    fit_kw = {
        em: {
            "n_starts": n_starts,
            "dtype": np.dtype(dtype if dtype is not None else np.float64 if em in _FLOAT64_EMULATORS else base),
        }
        for em in names
    }
    labels = tuple(ds.label_names)
    steps = _Steps()
    t_start = time.perf_counter()

    cv = {}
    for em in names:
        cv[em] = steps.run(
            f"{k}-fold cross-validation, {em}",
            cross_validate,
            ds,
            emulator=em,
            k=k,
            seed=seed,
            train_kwargs=_train_kwargs(em, seed),
            **fit_kw[em],
        )
        res = cv[em].result
        steps.plot(
            out / f"one_to_one_{em}.png",
            _plot.one_to_one,
            res.labels,
            cv[em].true,
            cv[em].label_names,
            err=res.labels_err,
            status=res.status,
        )

    ladders, ladder_stats, error_models, error_model_notes = {}, {}, {}, {}
    for em in names if rungs else ():
        ladders[em] = steps.run(
            f"S/N ladder ({', '.join(f'{s:g}' for s in rungs)}), {em}",
            snr_ladder,
            ds,
            emulator=em,
            snrs=rungs,
            k=k,
            seed=seed,
            train_kwargs=_train_kwargs(em, seed),
            **fit_kw[em],
        )
        ladder_stats[em] = ladders[em].stats()
        if len(rungs) < 3:
            error_model_notes[em] = f"needs at least 3 S/N values, got {len(rungs)}"
            continue
        try:
            with warnings.catch_warnings():
                # curve_fit warns when it cannot estimate the covariance of (a, b, c), e.g. with
                # exactly 3 rungs; only the best-fit values are used here.
                from scipy.optimize import OptimizeWarning

                warnings.simplefilter("ignore", OptimizeWarning)
                error_models[em] = ladders[em].error_model()
        except (RuntimeError, ValueError) as err:  # no convergence, or too few finite scatter values
            error_model_notes[em] = f"fit failed: {err}"
    if ladders:
        steps.plot(
            out / "scatter_vs_snr.png",
            _plot.scatter_vs_snr,
            rungs,
            {em: [[st[n]["scatter"] for n in labels] for st in ladder_stats[em]] for em in ladders},
            labels,
            bias={em: [[st[n]["bias"] for n in labels] for st in ladder_stats[em]] for em in ladders},
            models=error_models,
        )

    cod_em = next((em for em in _PIXEL_EMULATORS if em in names), None) if cod and len(labels) >= 2 else None
    cod_res = None
    if cod_em is not None:
        cod_res = steps.run(
            f"coefficients of dependence, {cod_em} ({len(labels) + 1} trainings on all stars)",
            diagnostics.cod,
            ds,
            cod_em,
        )
        steps.plot(out / "cod_spectra.png", _plot.cod_spectrum, ds.wave, cod_res)

    mse = {}
    for em in (e for e in names if e in _PIXEL_EMULATORS):
        if cod_res is not None and em == cod_em:
            mse[em] = np.asarray(cod_res["cv_mse"])  # the COD's full model is this emulator trained on all stars
            continue

        def train_and_score(em=em):
            model = _cls(em).train(ds)
            return diagnostics.cv_mse(model, ds)["mse"]

        mse[em] = steps.run(f"{em} on all stars + LOO CV MSE per pixel", train_and_score)
    if mse:
        steps.plot(out / "cv_mse_spectra.png", _plot.cv_mse_spectra, ds.wave, mse)

    total = time.perf_counter() - t_start
    text = _summary(
        ds,
        names=names,
        k=k,
        rungs=rungs,
        seed=seed,
        fit_kwargs=fit_kw,
        cv=cv,
        ladder_stats=ladder_stats,
        error_models=error_models,
        error_model_notes=error_model_notes,
        mse=mse,
        cod_em=cod_em,
        cod_res=cod_res,
        cod_requested=cod,
        steps=steps.rows,
        total=total,
    )
    path = out / SUMMARY
    path.write_text(text, encoding="utf-8")
    logger.info("summary written to %s (%.1f s in all)", path, total)
    return path, [*steps.written, path]


def _summary(
    ds,
    *,
    names,
    k,
    rungs,
    seed,
    fit_kwargs,
    cv,
    ladder_stats,
    error_models,
    error_model_notes,
    mse,
    cod_em,
    cod_res,
    cod_requested,
    steps,
    total,
) -> str:
    labels = tuple(ds.label_names)
    units = {n: _plot.label_unit(n) for n in labels}
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# slamjax diagnose",
        "",
        f"Written by slamjax {__version__} on {when}. Label differences are fitted − reference "
        "(Teff in K, others in dex); pull = (fitted − reference) / formal 1σ error.",
        "",
        "## Data",
        "",
    ]
    snr = ds.snr
    median_snr = f"{np.median(snr[np.isfinite(snr)]):.1f}" if np.isfinite(snr).any() else "n/a"
    source = ds.meta.get("source")
    if source:
        lines.append(f"- source: {source}")
    lines += [
        f"- stars: {ds.n_spectra}",
        f"- pixels: {ds.n_pixels} ({ds.wave[0]:.2f}–{ds.wave[-1]:.2f} Å), flux dtype {ds.flux.dtype}",
        "- labels: " + ", ".join(f"{n} [{units[n]}]" if units[n] else n for n in labels),
        "- label ranges: "
        + ", ".join(f"{n} {_num(n, ds.label(n).min())}..{_num(n, ds.label(n).max())}" for n in labels),
        f"- median S/N per pixel: {median_snr}",
        f"- settings: emulators {', '.join(names)}; {k}-fold CV, seed {seed}; "
        f"fits n_starts {next(iter(fit_kwargs.values()))['n_starts']}, "
        + ", ".join(f"{em} {kw['dtype'].name}" for em, kw in fit_kwargs.items())
        + "; "
        f"S/N ladder {', '.join(f'{s:g}' for s in rungs) if rungs else 'none'}",
        "",
        f"## Cross-validation ({k}-fold)",
        "",
        "Every star is fitted by a model trained on the other folds.",
    ]
    for em in names:
        c = cv[em]
        st = _cv_stats(c)
        res = c.result
        lines += ["", f"### {em}", "", f"![{em}: fitted versus reference labels](one_to_one_{em}.png)", ""]
        rows = [
            (
                n,
                units[n],
                _num(n, st[n]["bias"], sign=True),
                _num(n, st[n]["scatter"]),
                _num(n, st[n]["mae"]),
                _pull(st[n]["pull_std"]),
                st[n]["n"],
                st[n]["n_bad"],
            )
            for n in labels
        ]
        lines += _table(("label", "unit", "bias", "scatter", "MAE", "pull std", "n", "n_bad"), rows)
        lines += [
            "",
            f"Status: {_status_text(res.summary())}. Training {c.train_seconds:.1f} s ({k} models), "
            f"fitting {c.fit_seconds:.1f} s (includes JIT compilation).",
        ]

    lines += ["", "## Label precision versus S/N", ""]
    if not rungs:
        lines.append("Skipped: no S/N values given.")
    else:
        lines += [
            f"Each fold's model (trained on the original spectra) fits the held-out spectra degraded to S/N "
            f"{', '.join(f'{s:g}' for s in rungs)} (`slamjax.validate.snr_ladder`, seed {seed}); statistics over "
            "converged fits.",
            "",
            "![scatter and bias versus S/N](scatter_vs_snr.png)",
        ]
        for em, stats in ladder_stats.items():
            rows = [
                (
                    n,
                    f"{st['snr']:g}",
                    st["n_converged"],
                    _num(n, st[n]["bias"], sign=True),
                    _num(n, st[n]["scatter"]),
                    _pull(st[n]["pull_std"]),
                )
                for n in labels
                for st in stats
            ]
            lines += ["", f"### {em}", ""]
            lines += _table(("label", "S/N", "converged", "bias", "scatter", "pull std"), rows)
        lines += ["", "### Error model σ(S/N) = a·exp(−b·S/N) + c", ""]
        rows = []
        for em in ladder_stats:
            if em in error_models:
                coef = error_models[em].coef
                rows += [(em, n, units[n], *(f"{v:.4g}" for v in coef[n])) for n in labels]
        if rows:
            lines += _table(("emulator", "label", "unit", "a", "b", "c"), rows)
            lines += [
                "",
                "a and c in the label's unit, b per unit S/N; c is the precision floor at high S/N. Where the "
                "scatter barely changes over the rungs, a and b are poorly constrained (only the curve matters).",
            ]
        for em, note in error_model_notes.items():
            lines.append(f"- {em}: not fitted ({note})")

    lines += ["", "## Per-pixel model error (leave-one-out CV MSE)", ""]
    if mse:
        lines += [
            f"Trained on all {ds.n_spectra} stars; exact leave-one-out CV MSE per pixel in standardised flux "
            "(`slamjax.diagnostics.cv_mse`; 1 − MSE is the fraction of the flux variance the labels explain).",
            "",
            "![CV MSE per pixel](cv_mse_spectra.png)",
            "",
        ]
        rows = [(em, f"{np.nanmedian(v):.4f}", f"{np.nanmean(v):.4f}") for em, v in mse.items()]
        lines += _table(("emulator", "median CV MSE", "mean CV MSE"), rows)
        if len(mse) == 2:
            a, b = (np.asarray(v) for v in mse.values())
            ok = np.isfinite(a) & np.isfinite(b)
            first, second = mse
            if ok.any():
                lines += ["", f"{first} is lower than {second} on {100 * np.mean(a[ok] < b[ok]):.0f} % of pixels."]
    else:
        lines.append("Skipped: needs the kernel or Cannon emulator.")

    lines += ["", "## Coefficients of dependence", ""]
    if cod_res is not None:
        per = np.asarray(cod_res["per_label"])
        full = np.asarray(cod_res["full"])
        lines += [
            f"{cod_em} emulator, leave-one-label-out retraining on all stars (`slamjax.diagnostics.cod`): the full COD "
            "is 1 − CV MSE; the per-label CODs split it by how much the CV MSE grows without each label.",
            "",
            "![COD spectra](cod_spectra.png)",
            "",
        ]
        columns = [("full", full)] + [(n, per[:, j]) for j, n in enumerate(labels)]
        rows = [
            (n, f"{np.nanmedian(v):.3f}", f"{np.nanmax(v):.3f}", f"{ds.wave[np.nanargmax(v)]:.1f}")
            if np.isfinite(v).any()
            else (n, "nan", "nan", "n/a")
            for n, v in columns
        ]
        lines += _table(("COD", "median", "max", "wavelength of max [Å]"), rows)
    elif not cod_requested:
        lines.append("Skipped (not requested).")
    elif len(labels) < 2:
        lines.append("Skipped: needs at least 2 labels.")
    else:
        lines.append("Skipped: needs the kernel or Cannon emulator.")

    lines += ["", "## Timing", "", f"Wall-clock seconds, {total:.1f} s in all (JIT compilation included).", ""]
    lines += _table(("step", "seconds"), [(what, f"{s:.1f}") for what, s in steps])
    lines += ["", "## Versions", ""]
    lines += _table(("package", "version"), list(_versions().items()))
    return "\n".join(lines) + "\n"


def _cv_stats(c) -> dict:
    """CV bias, scatter, MAE and pulls per label (``CVResult.stats`` gives no pulls)."""
    from .diagnostics import label_stats

    return label_stats(c.result.labels, c.true, label_names=c.label_names, err=c.result.labels_err)
