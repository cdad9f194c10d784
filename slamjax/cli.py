"""The ``slamjax`` command line: ``demo``, ``train``, ``fit``, ``info``, ``prep`` and ``diagnose``.

``main(argv)`` returns the exit status and never raises ``SystemExit`` itself: 0 on
success, 1 for a runtime error (missing or unreadable file, bad data), 2 for a usage
error (argparse's own errors included). Errors are reported as one line
``slamjax: error: <message>`` on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

from . import plot as _plot
from ._version import __version__

__all__ = ["main"]

logger = logging.getLogger(__name__)

PROG = "slamjax"
_EMULATORS = ("kernel", "cannon", "payne")
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
_SELECT_TERM = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_OPS = {"<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal}
_NORMALIZERS = ("spline", "median", "none")
_MAX_GRID_PIXELS = 1_000_000


class UsageError(Exception):
    """A bad command-line value detected after parsing (exit status 2)."""


# ---------------------------------------------------------------------- helpers
def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _parse_grid(text: str) -> tuple[float, float, float]:
    """``"W0,W1,DLOG"``: first and last wavelength [Å] and the log10 step of a log-linear grid."""
    parts = [s.strip() for s in text.split(",")]
    try:
        w0, w1, dlog = (float(s) for s in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected W0,W1,DLOG (three numbers, e.g. 3900,9000,1e-4), got {text!r}"
        ) from None
    if not all(np.isfinite(v) for v in (w0, w1, dlog)) or not 0 < w0 < w1:
        raise argparse.ArgumentTypeError(f"need 0 < W0 < W1 (Å), got {text!r}")
    if not 0 < dlog < 1:
        raise argparse.ArgumentTypeError(f"DLOG is the log10 wavelength step and must be in (0, 1), got {dlog:g}")
    n = (np.log10(w1) - np.log10(w0)) / dlog + 1
    if n < 2 or n > _MAX_GRID_PIXELS:
        raise argparse.ArgumentTypeError(f"grid {text!r} has {n:.0f} pixels; need 2 to {_MAX_GRID_PIXELS}")
    return w0, w1, dlog


def _split_names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no label names in {text!r}")
    return names


def _parse_emulators(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"no emulator names in {text!r}")
    unknown = [s for s in names if s not in _EMULATORS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown emulator(s) {', '.join(unknown)}; choose from {', '.join(_EMULATORS)}"
        )
    return names


def _parse_snr(text: str) -> tuple[float, ...]:
    """``"10,20,40,80"``; an empty string means no S/N ladder."""
    values = []
    for part in (s.strip() for s in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid S/N value {part!r} in {text!r}") from None
        if not (np.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"S/N values must be finite and > 0, got {part!r}")
        values.append(value)
    return tuple(values)


def parse_selection(text: str) -> list[tuple[str, str, float]]:
    """Parse ``"teff>4000,teff<7000"`` into ``[(label, op, value), ...]`` (comma = and).

    Raises:
        UsageError: on a term that is not ``<label><op><number>`` with op in ``< > <= >=``.
    """
    terms = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _SELECT_TERM.match(part)
        if m is None:
            raise UsageError(
                f"cannot parse --select term {part.strip()!r}; use e.g. 'teff>4000,logg<=4.5' (operators < > <= >=)"
            )
        terms.append((m.group(1), m.group(2), float(m.group(3))))
    if not terms:
        raise UsageError(f"empty --select expression {text!r}")
    return terms


def apply_selection(ds, terms):
    """Subset a labelled SpectrumSet by ``parse_selection`` terms (NaN labels never pass)."""
    if ds.labels is None:
        raise ValueError("--select needs a data file with labels")
    keep = np.ones(ds.n_spectra, dtype=bool)
    for name, op, value in terms:
        keep &= _OPS[op](ds.label(name), value)
    if not keep.any():
        text = ", ".join(f"{n}{o}{v:g}" for n, o, v in terms)
        raise ValueError(f"--select {text!r} keeps none of the {ds.n_spectra} spectra")
    return ds[keep]


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    return path


def _check_npz(path, what: str) -> Path:
    """An existing file that looks like an npz archive (checked by its first bytes)."""
    path = _existing_file(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise ValueError(f"{path} is not an npz archive (expected {what})")
    return path


def _load_spectra(path, flux_key: str = "flux"):
    import slamjax as sj

    path = _check_npz(path, "spectra: an npz with wave, flux, ivar")
    if _is_model(path):
        raise ValueError(f"{path} is a slamjax model file, not spectra")
    return sj.load_npz(path, flux_key=flux_key)


def _is_model(path: Path) -> bool:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy and zipfile raise several types for corrupt input
        raise ValueError(f"{path} is not a readable npz archive ({err})") from err
    is_model = hasattr(data, "files") and "__header__" in data.files
    if hasattr(data, "close"):
        data.close()
    return is_model


def _fmt(name: str, value: float, sign: bool = False) -> str:
    if not np.isfinite(value):
        return "nan"
    dec = 0 if _plot.label_unit(name) == "K" else 3
    return f"{value:+.{dec}f}" if sign else f"{value:.{dec}f}"


def _print_stats(stats: dict, names) -> None:
    print(f"  {'label':<8} {'unit':<4} {'bias':>9} {'scatter':>9} {'MAE':>9} {'n':>6} {'n_bad':>6}")
    for name in names:
        s = stats[name]
        print(
            f"  {name:<8} {_plot.label_unit(name):<4} {_fmt(name, s['bias'], True):>9} "
            f"{_fmt(name, s['scatter']):>9} {_fmt(name, s['mae']):>9} {s['n']:>6d} {s['n_bad']:>6d}"
        )


def _status_line(summary: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in summary.items())


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.0f} spectra/s" if seconds > 0 else "n/a"


# ---------------------------------------------------------------------- commands
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
        f"({_rate(ds.n_spectra, cv.fit_seconds)}; {ds.flux.dtype}; includes JIT compilation)"
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
    path = em.save(args.out)

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
    if sys_line:
        print(sys_line)
    if args.emulator == "cannon":
        print(f"  coefficients   {len(em.terms)} per pixel")
        what = "intrinsic pixel scatter"
    elif args.emulator == "payne":
        what = "model error from validation residuals"
    else:
        print(f"  median CV MSE  {np.median(np.asarray(em.cv_mse)):.4g} (standardised flux, exact LOO)")
        what = "model error from LOO CV"
    if usable.any():
        print(f"  median sigma   {np.median(np.sqrt(s2[usable])):.4g} ({what}, flux units)")
    print(f"model written to {path}")
    return 0


def _check_catalog_path(out: Path, overwrite: bool) -> None:
    if not out.name.lower().endswith(_FITS_SUFFIXES):
        raise UsageError(f"--out must be a FITS file name ({', '.join(_FITS_SUFFIXES)}), got {out}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; use --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory {out.parent} does not exist")


def cmd_fit(args) -> int:
    import slamjax as sj

    out = Path(args.out)
    _check_catalog_path(out, args.overwrite)
    em = sj.load_emulator(_check_npz(args.model, "a slamjax model file written by 'slamjax train'"))
    ds = _load_spectra(args.data, args.flux_key)
    dtype = np.float32 if args.float32 else np.float64
    t0 = time.perf_counter()
    res = sj.fit_labels(em, ds, n_starts=args.n_starts, chunk_size=args.chunk_size, dtype=dtype, progress=args.progress)
    seconds = time.perf_counter() - t0
    res.write(out, overwrite=args.overwrite)

    print(
        f"fitted {len(res)} spectra ({', '.join(em.label_names)}) in {seconds:.2f} s "
        f"({_rate(len(res), seconds)}; {np.dtype(dtype).name}; includes JIT compilation)"
    )
    print(f"status: {_status_line(res.summary())}")
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
        path = _diagnose.diagnose(
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
    files = sorted(p.name for p in out.glob("*.png"))
    print(f"wrote {path} and {', '.join(files)} in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        return "npz"
    if head.startswith(b"SIMPLE"):
        return "fits"
    if head.startswith(b"\x1f\x8b") and path.name.lower().endswith((".fits.gz", ".fit.gz")):
        return "fits"
    raise ValueError(
        f"{path}: unrecognised file type (expected a slamjax model .npz, a spectra .npz or a FITS catalog)"
    )


def _info_model(path: Path) -> None:
    from .emulators import read_header

    h = read_header(path)
    static = h.get("static", {})
    order = f" (order {static['order']})" if "order" in static else ""
    wave = h.get("wave", {})
    names = h.get("label_names", [])
    print(f"{path}: slamjax model file")
    print(f"  emulator   {h.get('emulator')}{order}")
    print(f"  format     {h.get('format')} v{h.get('format_version')}, written by slamjax {h.get('slamjax_version')}")
    print(f"  labels     {', '.join(names)}")
    print(f"  pixels     {wave.get('n_pixels')}")
    if "min" in wave:
        print(f"  wave       {wave['min']:.2f}-{wave['max']:.2f} {wave.get('unit', '')}")
    scal = h.get("label_scaling", {})
    if scal:
        print("  label scaling (physical units; z = (label - mean) / scale):")
        cols = ("mean", "scale", "train_min", "train_max")
        print(f"    {'label':<8} " + " ".join(f"{c:>10}" for c in cols))
        for j, name in enumerate(names):
            values = " ".join(f"{scal[c][j]:>10.4g}" for c in cols if c in scal)
            print(f"    {name:<8} {values}")


def _info_data(path: Path) -> None:
    import slamjax as sj

    ds = sj.load_npz(path)
    bad = ds.ivar == 0
    print(f"{path}: spectra (npz)")
    print(f"  spectra    {ds.n_spectra}")
    print(f"  pixels     {ds.n_pixels}")
    print(f"  wave       {ds.wave[0]:.2f}-{ds.wave[-1]:.2f} Å")
    print(f"  flux dtype {ds.flux.dtype}")
    print(
        f"  bad pixels {int(bad.sum())} (ivar = 0, in {int(bad.any(axis=1).sum())} spectra; "
        f"{ds.meta.get('n_nonfinite_flux', 0)} of them from non-finite flux)"
    )
    snr = ds.snr
    if np.isfinite(snr).any():
        print(f"  median S/N {np.median(snr[np.isfinite(snr)]):.1f}")
    if ds.labels is None:
        print("  labels     none")
        return
    print(f"  labels     {', '.join(ds.label_names)}")
    for name in ds.label_names:
        col = ds.label(name)
        ok = np.isfinite(col)
        unit = _plot.label_unit(name)
        missing = f" ({int((~ok).sum())} NaN)" if not ok.all() else ""
        if ok.any():
            lo, hi = col[ok].min(), col[ok].max()
            print(f"    {name:<8} {_fmt(name, lo)} .. {_fmt(name, hi)} {unit}{missing}")
        else:
            print(f"    {name:<8} all NaN")
    extra = sorted(k for k in ds.meta if k not in ("source", "n_nonfinite_flux"))
    if extra:
        print(f"  other      {', '.join(extra)}")


def _info_fits(path: Path) -> None:
    from astropy.io import fits
    from astropy.table import Table

    from ._result import Status

    with fits.open(path) as hdul:
        tables = [i for i, hdu in enumerate(hdul) if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))]
    if not tables:
        raise ValueError(f"{path} is a FITS file without a table (not a slamjax catalog)")
    tab = Table.read(path, hdu=tables[0])
    kind = "slamjax catalog" if "LABELS" in tab.meta else "FITS table"
    version = f", written by slamjax {tab.meta['SLAMJAX']}" if "SLAMJAX" in tab.meta else ""
    print(f"{path}: {kind}{version}")
    print(f"  rows       {len(tab)}")
    if "LABELS" in tab.meta:
        print(f"  labels     {tab.meta['LABELS'].replace(',', ', ')}")
    cols = [name if tab[name].ndim == 1 else f"{name}{list(tab[name].shape[1:])}" for name in tab.colnames]
    print(f"  columns    {', '.join(cols)}")
    if "status" in tab.colnames:
        status = np.asarray(tab["status"])
        counts = {s.name: int(np.sum(status == s)) for s in Status}
        other = len(tab) - sum(counts.values())
        line = _status_line(counts) + (f", unknown {other}" if other else "")
        print(f"  status     {line}")


def cmd_info(args) -> int:
    path = _existing_file(args.path)
    kind = _sniff(path)
    if kind == "fits":
        _info_fits(path)
        return 0
    if _is_model(path):
        _info_model(path)
    else:
        _info_data(path)
    return 0


def _grid_from_npz(path) -> np.ndarray:
    path = _check_npz(path, "an npz with a 'wave' array, e.g. a training set")
    with np.load(path, allow_pickle=False) as data:
        if "wave" not in data.files:
            raise ValueError(f"{path} has no 'wave' array (keys: {', '.join(sorted(data.files))})")
        wave = np.asarray(data["wave"], dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2 or not np.all(np.isfinite(wave)) or not np.all(np.diff(wave) > 0):
        raise ValueError(f"'wave' in {path} is not a finite, strictly increasing 1-D grid (shape {wave.shape})")
    return wave


def _survey_snr(spectra) -> dict[str, np.ndarray]:
    """The surveys' own S/N as ``snr_survey`` (scalars) or ``snr_<band>`` arrays, when all files agree on its form."""
    values = [s.snr for s in spectra]
    if all(isinstance(v, float) for v in values):
        return {"snr_survey": np.array(values)}
    if all(isinstance(v, dict) for v in values) and all(set(v) == set(values[0]) for v in values):
        return {f"snr_{band}": np.array([v[band] for v in values]) for band in values[0]}
    return {}


def _to_medium(wave, is_vacuum: bool, vacuum: bool) -> np.ndarray:
    from .preprocess import air_to_vacuum, vacuum_to_air

    if is_vacuum == vacuum:
        return wave
    return air_to_vacuum(wave) if vacuum else vacuum_to_air(wave)


def cmd_prep(args) -> int:
    from . import preprocess as pp
    from ._spectra import SpectrumSet, snr_of
    from .io import read_spectrum

    out = Path(args.out)
    if not out.name.lower().endswith(".npz"):
        raise UsageError(f"--out must be an .npz file name, got {out}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; use --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory {out.parent} does not exist")
    t0 = time.perf_counter()
    target = _grid_from_npz(args.grid_from) if args.grid_from is not None else None

    spectra = []
    for name in args.files:
        s = read_spectrum(_existing_file(name))
        if isinstance(s, SpectrumSet):
            raise ValueError(f"{name} is an npz set of spectra, not a survey spectrum file")
        spectra.append(s)

    vacuum = args.medium == "vacuum"
    shifts = np.full(len(spectra), np.nan)  # velocity removed from each file's wavelengths (NaN: none known)
    waves = []
    for i, (name, s) in enumerate(zip(args.files, spectra)):
        wave = s.wave
        if args.rest_frame:
            shift = s.meta.get("doppler_shift")
            if shift is None or not np.isfinite(shift):
                logger.warning("%s: no known Doppler shift (frame %s); left unshifted", name, s.meta.get("frame"))
            else:
                shifts[i] = shift
                wave = pp.to_rest_frame(wave, shift) if shift != 0 else wave
        waves.append(_to_medium(wave, s.vacuum, vacuum))

    if args.grid is not None:
        grid = pp.log_lambda_grid(*args.grid)
        grid_text = f"log10 step {args.grid[2]:g} (--grid)"
    elif target is not None:
        grid = target
        grid_text = f"from {args.grid_from}"
    else:
        grid = _to_medium(spectra[0].wave, spectra[0].vacuum, vacuum)
        grid_text = f"native grid of {args.files[0]}"

    n, p = len(spectra), grid.size
    flux = np.empty((n, p))
    ivar = np.empty((n, p))
    for i, (s, wave) in enumerate(zip(spectra, waves)):
        if np.array_equal(wave, grid):
            flux[i], ivar[i] = s.flux, s.ivar
        else:
            flux[i], ivar[i] = pp.resample(wave, s.flux, s.ivar, grid)

    if args.normalize == "spline":
        flux, ivar, _ = pp.normalize_spline(grid, flux, ivar)
    elif args.normalize == "median":
        flux, ivar, _ = pp.normalize_median_poly(grid, flux, ivar)
    ok = np.atleast_1d(pp.quality_flags(flux, ivar, max_bad=args.max_bad))
    n_bad = (ivar <= 0).sum(axis=1)
    snr = snr_of(flux, ivar)

    arrays = dict(
        wave=grid,
        flux=flux,
        ivar=ivar,
        ids=np.array([s.id for s in spectra]).astype(str),
        rv=np.array([np.nan if s.rv is None else s.rv for s in spectra]),
        doppler_shift=shifts,
        snr=snr,
        ok=ok,
        n_bad=n_bad,
        paths=np.array([str(f) for f in args.files]),
        products=np.array([str(s.product) for s in spectra]),
        **_survey_snr(spectra),
        medium=np.array(args.medium),
        normalization=np.array(args.normalize),
    )
    np.savez_compressed(out, **arrays)
    seconds = time.perf_counter() - t0

    n_shift = int(np.isfinite(shifts).sum())
    if not args.rest_frame:
        frame = "no rest-frame shift (--no-rest-frame)"
    elif n_shift < n:
        frame = f"{n_shift} of {n} shifted to the rest frame ({n - n_shift} without a known shift left unshifted)"
    else:
        frame = f"all {n} shifted to the rest frame"
    good_snr = snr[np.isfinite(snr)]
    snr_text = f", median S/N {np.median(good_snr):.1f}" if good_snr.size else ""
    products = ", ".join(sorted({str(s.product) for s in spectra}))
    print(
        f"prepared {n} spectra from {n} files ({products}) in {seconds:.2f} s: {frame}; {args.medium} wavelengths; "
        f"resampled onto {p} pixels, {grid[0]:.2f}-{grid[-1]:.2f} Å ({grid_text}); "
        f"normalisation {args.normalize}; {int((~ok).sum())} flagged with more than {args.max_bad} bad pixels "
        f"(kept, ok = False){snr_text}; written to {out}"
    )
    return 0


# ---------------------------------------------------------------------- parser
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
    p.add_argument("--out", default="slamjax_demo", help="output directory (default ./slamjax_demo)")
    p.add_argument("--emulator", choices=_EMULATORS, default="kernel", help="emulator (default kernel)")
    p.add_argument("--quick", action="store_true", help="every 3rd star and k=3 (a fast smoke test)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train",
        help="train an emulator on labelled spectra",
        description="Train an emulator on a labelled spectra .npz and save it as a model file.",
    )
    p.add_argument("data", metavar="DATA.npz", help="training spectra (npz with wave, flux, ivar, labels, label_names)")
    p.add_argument("--out", required=True, metavar="MODEL.npz", help="model file to write")
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "fit",
        help="fit labels to spectra with a trained model",
        description="Fit labels to the spectra in DATA.npz with MODEL.npz and write a FITS catalog.",
    )
    p.add_argument("model", metavar="MODEL.npz", help="model file written by 'slamjax train'")
    p.add_argument("data", metavar="DATA.npz", help="spectra on the model's wavelength grid")
    p.add_argument("--out", required=True, metavar="CATALOG.fits", help="catalog to write")
    p.add_argument("--n-starts", type=_int_at_least(1), default=3, help="starting points per spectrum (default 3)")
    p.add_argument("--chunk-size", type=_int_at_least(1), default=1024, help="spectra per batch (default 1024)")
    p.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    p.add_argument("--flux-key", default="flux", help="npz key of the flux array (default flux)")
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
    p.add_argument("--out", required=True, metavar="SET.npz", help="spectra .npz to write")
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
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
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
    p.add_argument("--float32", action="store_true", help="fit in float32 (default: the dtype of the flux)")
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
