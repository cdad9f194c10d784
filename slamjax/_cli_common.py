"""Shared pieces of the ``slamjax`` command line: usage errors, value parsers, file checks and
printing helpers (used by :mod:`slamjax.cli` and its per-command modules)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from . import plot as _plot

PROG = "slamjax"
_EMULATORS = ("kernel", "cannon", "payne")
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


def _npz_record(path, key: str, flux_key: str = "flux") -> str | None:
    """A provenance entry of a spectra npz, where it has one: ``slamjax prep`` writes ``normalization``
    (spline, median or none) and ``medium`` (air or vacuum); else None.

    The ``normalization`` entry describes the npz's ``flux`` array only: for flux read from another
    ``flux_key`` it says nothing (None). The ``medium`` describes the wavelength grid, shared by every
    flux array of the file."""
    if key == "normalization" and flux_key != "flux":
        return None
    with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
            return None
        value = data[key]
    return str(value) if value.ndim == 0 and value.dtype.kind in "US" else None


def _prep_columns(path, n: int) -> dict[str, np.ndarray]:
    """The per-spectrum quality entries ``slamjax prep`` writes (``ok``, ``n_bad``), as catalog
    columns ``prep_ok``, ``prep_n_bad``, where the npz has them for its ``n`` spectra."""
    with np.load(path, allow_pickle=False) as data:
        return {f"prep_{k}": np.asarray(data[k]) for k in ("ok", "n_bad") if k in data.files and data[k].shape == (n,)}


def _normalized(ds, method: str):
    """``ds`` with its flux normalised again by ``method`` (spline or median), as ``slamjax prep`` does."""
    from . import preprocess as pp
    from ._spectra import SpectrumSet

    norm = {"spline": pp.normalize_spline, "median": pp.normalize_median_poly}[method]
    flux, ivar, _ = norm(ds.wave, ds.flux, ds.ivar)
    return SpectrumSet(ds.wave, flux, ivar, labels=ds.labels, label_names=ds.label_names, ids=ds.ids, meta=ds.meta)


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
    """``n / seconds`` with 3 significant digits, without an exponent (``0.0123``, ``4.56``, ``1234``)."""
    rate = n / seconds if seconds > 0 else float("nan")
    if not np.isfinite(rate):
        return "n/a"
    if rate == 0:
        return "0 spectra/s"
    dec = max(0, 2 - int(np.floor(np.log10(rate))))
    return f"{rate:.{dec}f} spectra/s"


# ---------------------------------------------------------------------- commands
