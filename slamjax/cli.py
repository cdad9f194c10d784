"""The ``slamjax`` command line: ``demo``, ``train``, ``fit``, ``info``, ``prep`` and ``diagnose``.

``main(argv)`` returns the exit status and never raises ``SystemExit`` itself: 0 on
success, 1 for a runtime error (missing or unreadable file, bad data), 2 for a usage
error (argparse's own errors included). Errors are reported as one line
``slamjax: error: <message>`` on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import plot as _plot
from ._cli_common import (
    _EMULATORS,
    _NORMALIZERS,
    PROG,
    UsageError,
    _check_npz,
    _int_at_least,
    _load_spectra,
    _normalized,
    _npz_record,
    _parse_emulators,
    _parse_grid,
    _parse_snr,
    _prep_columns,
    _print_stats,
    _rate,
    _split_names,
    _status_line,
    apply_selection,
    parse_selection,
)
from ._cli_info import cmd_info
from ._cli_prep import cmd_prep
from ._result import FITS_SUFFIXES, check_fits_ids
from ._version import __version__

__all__ = ["main"]

logger = logging.getLogger(__name__)


def cmd_demo(args) -> int:
    import slamjax as sj

    k = args.k if args.k is not None else (3 if args.quick else 5)
    out = Path(args.out)
    ds = sj.data.load_sample()
    if args.quick:
        ds = ds[::3]
    if not 2 <= k <= ds.n_spectra:
        raise UsageError(f"--k must be between 2 and {ds.n_spectra}, got {k}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"slamjax {__version__} demo: {k}-fold cross-validation of the {args.emulator} emulator on the bundled "
        f"MILES FGK sample"
    )
    print(
        f"  {ds.n_spectra} stars{' (--quick: every 3rd star)' if args.quick else ''}, {ds.n_pixels} pixels "
        f"({ds.wave[0]:.1f}-{ds.wave[-1]:.1f} Å), labels {', '.join(ds.label_names)}"
    )
    cv = sj.validate.cross_validate(ds, emulator=args.emulator, k=k)
    res = cv.result

    tab = res.to_table()
    for j, name in enumerate(cv.label_names):
        tab[f"{name}_true"] = cv.true[:, j]
    tab["fold"] = cv.fold.astype(np.int16)
    tab.meta["CVFOLDS"] = k
    cat_path = out / "demo_catalog.fits"
    tab.write(cat_path, overwrite=True)

    print(f"\ncross-validated labels (fitted - reference, {ds.n_spectra} stars; Teff in K, others in dex):")
    _print_stats(cv.stats(), cv.label_names)
    print(f"status: {_status_line(res.summary())}")
    print(
        f"timing: train {cv.train_seconds:.2f} s ({k} models), fit {cv.fit_seconds:.2f} s "
        f"({_rate(ds.n_spectra, cv.fit_seconds)}; {_fit_dtype(res, ds)}; includes JIT compilation)"
    )

    png_path = out / "demo_one_to_one.png"
    try:
        _plot.one_to_one(res.labels, cv.true, cv.label_names, png_path, err=res.labels_err, status=res.status)
    except ImportError as err:
        png_path = None
        print(f"\nplot skipped: {err}")
    print("\noutputs:")
    print(f"  catalog  {cat_path}  ({len(tab)} rows: fitted labels, errors, <label>_true, fold, status)")
    if png_path is not None:
        print(f"  plot     {png_path}")
    return 0


def cmd_train(args) -> int:
    import slamjax as sj

    data = Path(args.data)
    terms = parse_selection(args.select) if args.select is not None else None
    out = Path(args.out)
    out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")  # as em.save names it
    _check_output_file(out, args.overwrite, data)  # before the training, not after it
    ds = _load_spectra(data, args.flux_key)
    if ds.labels is None:
        raise ValueError(f"{data} has no labels to train on")
    if args.labels is not None:
        unknown = [s for s in args.labels if s not in ds.label_names]
        if unknown:
            raise ValueError(f"labels {unknown} not in {data} (have {list(ds.label_names)})")
    n_all = ds.n_spectra
    if terms is not None:
        ds = apply_selection(ds, terms)
        print(f"selected {ds.n_spectra} of {n_all} spectra ({args.select})")
    wanted = args.labels or ds.label_names  # an unknown name is the emulator's error to report
    used = [i for i, name in enumerate(ds.label_names) if name in wanted]
    bad = np.flatnonzero(~np.isfinite(ds.labels[:, used]).all(axis=1))
    if bad.size:  # the emulators refuse them too, but after loading and with numpy reprs of the ids
        raise ValueError(
            f"{bad.size} of {ds.n_spectra} training stars have non-finite labels (first ids: "
            f"{', '.join(str(i) for i in ds.ids[bad[:5]])}); remove them first, e.g. --select 'teff>0' drops "
            "those with NaN teff"
        )
    if args.systematics is not None and args.systematics > ds.n_spectra:  # before the training, not after it
        raise UsageError(
            f"--systematics K must be at most the number of training stars ({ds.n_spectra}"
            f"{' selected' if terms is not None else ''}), got {args.systematics}"
        )
    # How the training flux was normalised goes into the model file; 'slamjax fit' compares it with
    # the data's (mixed normalisations bias the labels: README, "Never mix normalisations"). The npz's
    # record describes its 'flux' array only: flux read from another key is recorded as unknown.
    normalization = _npz_record(data, "normalization", args.flux_key)
    norm_text = f"{data.name} says so (slamjax prep)"
    if args.normalize is not None:
        ds = _normalized(ds, args.normalize)
        normalization, norm_text = args.normalize, "--normalize"
    medium = args.medium or _npz_record(data, "medium")
    t0 = time.perf_counter()
    if args.emulator == "cannon":
        em = sj.CannonEmulator.train(ds, order=args.order, label_names=args.labels)
    elif args.emulator == "payne":
        em = sj.PayneEmulator.train(ds, label_names=args.labels, key=args.seed)
    else:
        em = sj.KernelEmulator.train(ds, label_names=args.labels)
    seconds = time.perf_counter() - t0
    sys_line = None
    if args.systematics is not None:
        t1 = time.perf_counter()
        kw = {"label_names": args.labels}
        kw |= {"order": args.order} if args.emulator == "cannon" else {}
        kw |= {"key": args.seed} if args.emulator == "payne" else {}
        sys_err, _ = sj.validate.cv_systematics(ds, args.emulator, args.systematics, train_kwargs=kw)
        em = em.with_systematics(sys_err)
        rms = np.sqrt(np.diag(np.asarray(sys_err.global_cov())))
        sys_line = (
            f"  systematics    {args.systematics}-fold CV, rms "
            + ", ".join(f"{n} {v:.3g}" for n, v in zip(em.label_names, rms, strict=True))
            + f" ({time.perf_counter() - t1:.1f} s)"
        )
    meta = {"training_data": data.name} | {k: v for k, v in (("normalization", normalization), ("medium", medium)) if v}
    path = em.save(out, meta=meta)

    s2 = np.asarray(em.pixel_variance)
    usable = np.isfinite(s2)
    detail = {
        "cannon": f"order {args.order}",
        "kernel": "exact LOO over a 5 x 6 (gamma, lambda) grid",
        "payne": f"dense MLP, hidden {em.hidden}, seed {args.seed}" if args.emulator == "payne" else "",
    }[args.emulator]
    print(f"trained {type(em).__name__} ({detail}) in {seconds:.2f} s")
    print(f"  stars          {ds.n_spectra}")
    print(f"  pixels         {em.n_pixels} ({ds.wave[0]:.2f}-{ds.wave[-1]:.2f} Å), {int((~usable).sum())} unusable")
    print(f"  labels         {', '.join(em.label_names)}")
    if normalization:
        print(f"  normalisation  {normalization} ({norm_text})")
    elif args.flux_key != "flux" and _npz_record(data, "normalization") is not None:
        print(
            f"  normalisation  not recorded (the npz's record describes its 'flux', not '{args.flux_key}'; "
            "--normalize spline|median sets it)"
        )
    else:
        print("  normalisation  not recorded (the training npz does not say; --normalize spline|median sets it)")
    print(f"  wavelengths    {medium or 'medium not recorded (--air or --vacuum declares it)'}")
    if sys_line:
        print(sys_line)
    if args.emulator == "cannon":
        print(f"  coefficients   {len(em.terms)} per pixel")
        what = "intrinsic pixel scatter"
    elif args.emulator == "payne":
        what = "model error from validation residuals"
    else:
        print(f"  median CV MSE  {np.nanmedian(np.asarray(em.cv_mse)):.4g} (standardised flux, exact LOO)")
        what = "model error from LOO CV"
    if usable.any():
        print(f"  median sigma   {np.median(np.sqrt(s2[usable])):.4g} ({what}, flux units)")
    print(f"model written to {path}")
    return 0


def _check_output_file(out: Path, overwrite: bool, *inputs) -> None:
    """Refuse, before any work, an output file that is one of the ``inputs``, that exists (without
    ``overwrite``), that is a directory, or whose directory does not exist."""
    for path in inputs:
        if out.exists() and Path(path).exists() and out.samefile(path):
            raise ValueError(f"--out {out} is the input file {path}; writing it would replace the input")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory, not a file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; use --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory {out.parent} does not exist")


def _check_catalog_path(out: Path, overwrite: bool, *inputs) -> None:
    if not out.name.lower().endswith(FITS_SUFFIXES):
        raise UsageError(f"--out must be a FITS file name ({', '.join(FITS_SUFFIXES)}), got {out}")
    _check_output_file(out, overwrite, *inputs)


def cmd_fit(args) -> int:
    import slamjax as sj

    out = Path(args.out)
    _check_catalog_path(out, args.overwrite, args.model, args.data)
    em = sj.load_emulator(_check_npz(args.model, "a slamjax model file written by 'slamjax train'"))
    ds = _load_spectra(args.data, args.flux_key)
    _check_records(args, ds)
    check_fits_ids(ds.ids, out)  # before the fit, not after hours of it
    dtype = np.float32 if args.float32 else np.float64
    t0 = time.perf_counter()
    res = sj.fit_labels(
        em,
        ds,
        n_starts=args.n_starts,
        chunk_size=args.chunk_size,
        workers=args.workers,
        dtype=dtype,
        progress=args.progress,
    )
    seconds = time.perf_counter() - t0
    tab = res.to_table()
    # provenance: which model fitted which spectra, and whether the errors include its systematics
    tab.meta["MODEL"] = Path(args.model).name
    tab.meta["DATA"] = Path(args.data).name
    tab.meta["ERRSYS"] = em.space.systematics is not None
    prep = _prep_columns(args.data, len(res))  # prep's quality flags travel with the fits
    for name, values in prep.items():
        tab[name] = values
    tab.write(out, overwrite=args.overwrite)

    print(
        f"fitted {len(res)} spectra ({', '.join(em.label_names)}) in {seconds:.2f} s "
        f"({_rate(len(res), seconds)}; {np.dtype(dtype).name}; includes JIT compilation)"
    )
    print(f"status: {_status_line(res.summary())}")
    if "prep_ok" in prep and not prep["prep_ok"].all():
        n_flag = int((~prep["prep_ok"].astype(bool)).sum())
        print(f"{n_flag} of {len(res)} spectra were flagged by slamjax prep (too many bad pixels; column prep_ok)")
    common = [name for name in res.label_names if ds.label_names and name in ds.label_names]
    if ds.labels is not None and common:
        from .diagnostics import label_stats

        idx = [res.label_names.index(name) for name in common]
        true = np.stack([ds.label(name) for name in common], axis=1)
        stats = label_stats(res.labels[:, idx], true, label_names=common)
        print(f"versus the labels in {args.data} (fitted - file; Teff in K, others in dex):")
        _print_stats(stats, common)
    print(f"catalog written to {out}")
    return 0


def _check_records(args, ds) -> None:
    """Refuse to fit spectra whose recorded wavelength medium (air or vacuum) differs from the model's,
    or whose continuum normalisation does (unless ``--allow-normalization-mismatch``), where both files
    say; a warning where only one of them says, and where the model's training flux was normalised but
    the spectra ``ds`` look unnormalised (median flux far from 1)."""
    from .emulators import read_header

    meta = read_header(args.model).get("meta", {})
    model = {key: meta.get(key) for key in ("normalization", "medium")}
    # the npz's normalisation record describes its 'flux' array: data read from another key are unrecorded
    data = {key: _npz_record(args.data, key, args.flux_key) for key in model}
    if model["medium"] and data["medium"] and model["medium"] != data["medium"]:
        raise ValueError(
            f"{args.model} was trained on {model['medium']} wavelengths, {args.data} holds {data['medium']} "
            f"wavelengths (~1.4 Å apart at 5000 Å); prepare the spectra with 'slamjax prep --{model['medium']}'"
        )
    norm_m, norm_d = model["normalization"], data["normalization"]
    if norm_m and norm_d and norm_m != norm_d and not args.allow_normalization_mismatch:
        raise ValueError(
            f"{args.model} was trained on flux normalised by {norm_m!r}, {args.data} holds flux normalised by "
            f"{norm_d!r}; mixed normalisations bias the labels (on MILES [Fe/H] by ~0.2 dex, see the README). "
            "Normalise both the same way (slamjax prep --normalize, slamjax train --normalize) or pass "
            "--allow-normalization-mismatch"
        )
    unknown = [f"{key} ({data[key]} in the spectra)" for key in model if data[key] and not model[key]]
    if unknown:
        logger.warning(
            "%s does not record its training spectra's %s: if they differ, the labels are biased ('slamjax train "
            "--normalize', '--air'/'--vacuum' record them)",
            args.model,
            " or ".join(unknown),
        )
    unknown = [f"{key} ({model[key]} in the model)" for key in model if model[key] and not data[key]]
    if unknown:
        other_key = args.flux_key != "flux" and _npz_record(args.data, "normalization") is not None
        logger.warning(
            "%s does not record the %s of its spectra%s: if they differ from the model's training spectra, the "
            "labels are biased ('slamjax prep' records them)",
            args.data,
            " or ".join(unknown),
            f" (flux read from '{args.flux_key}'; its 'normalization' entry describes 'flux')" if other_key else "",
        )
    if norm_m and norm_m != "none":
        n_odd, n_all = _unnormalized_count(ds)
        if n_all and n_odd > n_all / 2:
            logger.warning(
                "!!! %d of %d spectra (checked) in %s have a median flux outside [%g, %g]: they look UNNORMALISED, "
                "but %s was trained on flux normalised by %r. Mixed normalisations bias the labels (on MILES [Fe/H] by "
                "~0.2 dex, see the README): normalise the spectra the same way (slamjax prep --normalize %s)",
                n_odd,
                n_all,
                args.data,
                *_NORMALIZED_MEDIAN,
                args.model,
                norm_m,
                norm_m,
            )


_NORMALIZED_MEDIAN = (0.3, 3.0)  # the median of a continuum-normalised spectrum is near 1


def _unnormalized_count(ds, most: int = 2000) -> tuple[int, int]:
    """How many spectra of ``ds`` have a median flux (over their usable pixels) outside
    ``_NORMALIZED_MEDIAN``, and of how many with any usable pixel; of at most ``most`` spectra spread
    evenly over the file (a warning's evidence, not a full pass over a survey-sized set)."""
    rows = np.unique(np.linspace(0, ds.n_spectra - 1, min(most, ds.n_spectra)).astype(int))
    flux = np.asarray(ds.flux[rows], dtype=float)
    good = (np.asarray(ds.ivar[rows]) > 0) & np.isfinite(flux)
    has = good.any(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: spectra without usable pixels
        med = np.nanmedian(np.where(good, flux, np.nan)[has], axis=1)
    lo, hi = _NORMALIZED_MEDIAN
    return int(((med < lo) | (med > hi)).sum()), int(has.sum())


class _StepLog:
    """Shows the INFO progress lines of ``slamjax._diagnose`` on stdout while a command runs."""

    def __enter__(self):
        self.logger = logging.getLogger("slamjax._diagnose")
        self.handler = logging.StreamHandler(sys.stdout)
        self.handler.setFormatter(logging.Formatter("  %(message)s"))
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]
        return False


def cmd_diagnose(args) -> int:
    import slamjax as sj

    from . import _diagnose

    out = _diagnose.check_out_dir(args.out, args.overwrite)  # before any work
    try:
        _plot._require_matplotlib()
    except ImportError as err:  # the plots are the point of this command: no partial run without them
        _error(err)
        return 1
    terms = parse_selection(args.select) if args.select is not None else None
    if args.data is None:
        ds = sj.data.load_sample()
        what = "the bundled MILES FGK sample"
    else:
        ds = _load_spectra(args.data, args.flux_key)
        what = str(args.data)
        if ds.labels is None:
            raise ValueError(f"{args.data} has no labels; diagnose needs labelled spectra")
    if terms is not None:
        n_all = ds.n_spectra
        ds = apply_selection(ds, terms)
        what += f", {ds.n_spectra} of {n_all} selected ({args.select})"
    if args.k > ds.n_spectra:
        raise UsageError(f"--k must be between 2 and the number of stars ({ds.n_spectra}), got {args.k}")
    dtype = np.float32 if args.float32 else None
    print(
        f"slamjax {__version__} diagnose: {what}: {ds.n_spectra} stars, {ds.n_pixels} pixels, "
        f"labels {', '.join(ds.label_names)}"
    )
    print(
        f"  emulators {', '.join(args.emulators)}; {args.k}-fold CV; "
        f"S/N ladder {', '.join(f'{v:g}' for v in args.snr) if args.snr else 'none'}; seed {args.seed}"
    )
    t0 = time.perf_counter()
    with _StepLog():
        path, written = _diagnose._run(
            ds,
            out,
            emulators=args.emulators,
            k=args.k,
            snr=args.snr,
            seed=args.seed,
            n_starts=args.n_starts,
            dtype=dtype,
            cod=args.cod,
            overwrite=args.overwrite,
        )
    plots = [p.name for p in written if p != path]  # this run's files only, not those already in --out
    print(
        f"wrote {path}{' and ' + ', '.join(plots) + f' in {out}' if plots else ''} ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _fit_dtype(res, ds) -> str:
    """The dtype the fits ran in (the kernel emulator fits float32 flux in float64)."""
    return str(res.model_flux.dtype if res.model_flux is not None else ds.flux.dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stellar labels from spectra with data-driven emulators (JAX).",
        epilog="Run 'slamjax <command> -h' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="cross-validate an emulator on the bundled MILES sample",
        description="k-fold cross-validation on the bundled MILES FGK sample; writes a catalog and a 1:1 plot.",
    )
    p.add_argument("--k", type=_int_at_least(2), default=None, help="number of folds (default 5; 3 with --quick)")
    p.add_argument("-o", "--out", default="slamjax_demo", help="output directory (default ./slamjax_demo)")
    p.add_argument("--emulator", choices=_EMULATORS, default="kernel", help="emulator (default kernel)")
    p.add_argument("--quick", action="store_true", help="every 3rd star and k=3 (a fast smoke test)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train",
        help="train an emulator on labelled spectra",
        description="Train an emulator on a labelled spectra .npz and save it as a model file.",
    )
    p.add_argument("data", metavar="DATA.npz", help="training spectra (npz with wave, flux, ivar, labels, label_names)")
    p.add_argument("-o", "--out", required=True, metavar="MODEL.npz", help="model file to write")
    p.add_argument("--emulator", choices=_EMULATORS, default="kernel", help="emulator (default kernel)")
    p.add_argument("--order", type=_int_at_least(1), default=2, help="polynomial order (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (payne: initialisation and batches)")
    p.add_argument("--labels", type=_split_names, default=None, help="labels to train on, e.g. teff,logg,fe_h")
    p.add_argument("--flux-key", default="flux", help="npz key of the flux array (default flux)")
    p.add_argument(
        "--select", default=None, metavar="EXPR", help="keep stars matching e.g. 'teff>4000,teff<7000' (comma = and)"
    )
    p.add_argument(
        "--systematics",
        type=_int_at_least(2),
        default=None,
        metavar="K",
        help="estimate the systematic label errors by K-fold CV on the training set and store them in the model "
        "(fit then adds them to the formal errors; about K+1 times the training cost)",
    )
    p.add_argument(
        "--normalize",
        choices=("spline", "median"),
        default=None,
        help="normalise the training flux again with this method, as 'slamjax prep' normalises the spectra to "
        "fit, and record it in the model (default: keep the flux; record the npz's 'normalization' entry if any)",
    )
    train_medium = p.add_mutually_exclusive_group()
    for name in ("air", "vacuum"):
        train_medium.add_argument(
            f"--{name}",
            dest="medium",
            action="store_const",
            const=name,
            help=f"the training wavelengths are in {name}; recorded in the model, which 'slamjax fit' checks "
            "(default: the npz's 'medium' entry if any)",
        )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.set_defaults(func=cmd_train, medium=None)

    p = sub.add_parser(
        "fit",
        help="fit labels to spectra with a trained model",
        description="Fit labels to the spectra in DATA.npz with MODEL.npz and write a FITS catalog.",
    )
    p.add_argument("model", metavar="MODEL.npz", help="model file written by 'slamjax train'")
    p.add_argument("data", metavar="DATA.npz", help="spectra on the model's wavelength grid")
    p.add_argument("-o", "--out", required=True, metavar="CATALOG.fits", help="catalog to write")
    p.add_argument("--n-starts", type=_int_at_least(1), default=3, help="starting points per spectrum (default 3)")
    p.add_argument(
        "--chunk-size",
        type=_int_at_least(1),
        default=None,
        help="spectra per compiled batch (default: fit_labels' choice for the emulator and pixel count)",
    )
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        help="batches fitted at once by threads (default: 1 for the Cannon, whose large matrix products already use "
        "every core; otherwise the CPU cores available, at most 8; 1 on a GPU)",
    )
    p.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    p.add_argument("--flux-key", default="flux", help="npz key of the flux array (default flux)")
    p.add_argument(
        "--allow-normalization-mismatch",
        action="store_true",
        help="fit even when the model and the data record different continuum normalisations",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing catalog")
    p.add_argument("--progress", action="store_true", help="show a progress bar (needs tqdm)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "info",
        help="describe a model, spectra or catalog file",
        description="Describe a slamjax model file, a spectra .npz or a FITS catalog.",
    )
    p.add_argument("path", metavar="PATH", help="model .npz, spectra .npz or catalog .fits")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "prep",
        help="read survey spectrum files into one spectra .npz on a common grid",
        description=(
            "Read survey FITS spectra (LAMOST, APOGEE, SDSS), shift each to its rest frame where the survey gives the "
            "velocity, convert to air or vacuum wavelengths, resample onto one grid, normalise, flag spectra with many "
            "bad pixels and write a spectra .npz (wave, flux, ivar, ids, rv, snr, ok, ...)."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="survey spectrum files (.fits or .fits.gz)")
    p.add_argument("-o", "--out", required=True, metavar="SET.npz", help="spectra .npz to write")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--grid",
        type=_parse_grid,
        default=None,
        metavar="W0,W1,DLOG",
        help="log-linear grid from W0 to W1 Å with log10 step DLOG (e.g. 3900,9000,1e-4)",
    )
    grid.add_argument(
        "--grid-from",
        default=None,
        metavar="FILE.npz",
        help="use the 'wave' array of this npz (e.g. a training set); default: the grid of the first file",
    )
    p.add_argument(
        "--rest-frame",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shift each spectrum to its rest frame where its Doppler shift is known (default: yes)",
    )
    medium = p.add_mutually_exclusive_group()
    medium.add_argument("--air", dest="medium", action="store_const", const="air", help="air wavelengths")
    medium.add_argument(
        "--vacuum", dest="medium", action="store_const", const="vacuum", help="vacuum wavelengths (default)"
    )
    p.set_defaults(medium="vacuum")
    p.add_argument(
        "--normalize", choices=_NORMALIZERS, default="spline", help="continuum normalisation (default spline)"
    )
    p.add_argument(
        "--max-bad", type=_int_at_least(0), default=50, help="flag spectra with more bad pixels than this (default 50)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser(
        "diagnose",
        help="validation plots and a markdown summary for emulators on labelled spectra",
        description=(
            "k-fold cross-validation and an S/N ladder per emulator, per-pixel leave-one-out CV MSE (kernel vs "
            "Cannon) and coefficients of dependence: writes PNG plots and summary.md into --out. Without DATA.npz "
            "it uses the bundled MILES FGK sample. Needs matplotlib."
        ),
    )
    p.add_argument(
        "data", nargs="?", default=None, metavar="DATA.npz", help="labelled spectra (default: the bundled sample)"
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument(
        "--emulators",
        type=_parse_emulators,
        default=("kernel", "cannon"),
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(_EMULATORS)} (default kernel,cannon)",
    )
    p.add_argument("--k", type=_int_at_least(2), default=5, help="number of folds (default 5)")
    p.add_argument(
        "--snr",
        type=_parse_snr,
        default=(10.0, 20.0, 40.0, 80.0),
        metavar="S1,S2,...",
        help="S/N ladder rungs (default 10,20,40,80; '' for none; >= 3 values for the error model)",
    )
    p.add_argument(
        "--select", default=None, metavar="EXPR", help="keep stars matching e.g. 'teff>4000,teff<7000' (comma = and)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, the added noise and the Payne (default 0)")
    p.add_argument("--n-starts", type=_int_at_least(1), default=3, help="starting points per spectrum (default 3)")
    p.add_argument(
        "--float32",
        action="store_true",
        help="fit in float32 (default: the dtype of the flux; float64 for the kernel emulator)",
    )
    p.add_argument(
        "--cod",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute the coefficients of dependence (L + 1 trainings on all stars; default: yes)",
    )
    p.add_argument("--flux-key", default="flux", help="npz key of the flux array (default flux)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")
    p.set_defaults(func=cmd_diagnose)
    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.func(args)
    except UsageError as err:
        _error(err)
        return 2
    except (ValueError, FileNotFoundError, TypeError, OSError) as err:
        _error(err)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
