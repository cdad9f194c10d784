"""Helpers shared by the survey readers: opening, describing, masking, joining segments."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

logger = logging.getLogger(__name__)

C_KMS = 299792.458  # speed of light in km/s


@contextlib.contextmanager
def open_fits(source) -> Iterator[tuple[fits.HDUList, str | None]]:
    """Yield ``(hdul, path)`` for a path (opened read-only, closed afterwards) or an open HDUList."""
    if isinstance(source, fits.HDUList):
        yield source, getattr(source, "filename", lambda: None)()
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Survey headers carry non-standard cards (blank keywords, long strings) that astropy's
            # verifier reports; the readers use only a few well-defined keywords, so these are noise.
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            # astropy only warns about a truncated file (and fails later with an obscure reshape
            # error); record that warning so it can become a clear error below.
            warnings.filterwarnings("always", message="File may have been truncated", category=AstropyUserWarning)
            hdul = fits.open(path, mode="readonly", memmap=False)
            try:
                len(hdul)  # astropy parses headers lazily; read them all here, under these filters
            except Exception:
                hdul.close()
                raise
    except OSError as err:  # astropy raises OSError for empty / corrupt / non-FITS input
        raise ValueError(f"{path} is not a readable FITS file ({err})") from err
    truncated = [w for w in caught if "truncated" in str(w.message)]
    if truncated:
        hdul.close()
        raise ValueError(f"{path} is not a readable FITS file ({truncated[0].message})")
    with hdul:
        for w in caught:  # anything else recorded is passed on unchanged
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        yield hdul, str(path)


def column_names(hdu) -> list[str]:
    """Column names of a binary table HDU (empty list for anything else)."""
    if not isinstance(hdu, fits.BinTableHDU):
        return []
    return list(hdu.columns.names)


def has_columns(hdu, names: Sequence[str], *, case_sensitive: bool = False) -> bool:
    cols = column_names(hdu)
    if not case_sensitive:
        cols = [c.upper() for c in cols]
        names = [n.upper() for n in names]
    return all(n in cols for n in names)


def image_shape(hdu) -> tuple[int, ...] | None:
    """Shape of an image HDU's data from its header (without reading the data), or None."""
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)):
        return None
    naxis = hdu.header.get("NAXIS", 0)
    if not naxis:
        return ()
    return tuple(int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))


def describe(hdul: fits.HDUList) -> str:
    """A one-line summary of an HDUList for error messages: names, types, shapes, key header values."""
    parts = []
    for i, hdu in enumerate(hdul):
        kind = type(hdu).__name__
        if isinstance(hdu, fits.BinTableHDU):
            shape = f"{hdu.header.get('NAXIS2', '?')} rows, columns {column_names(hdu)[:8]}"
        else:
            shape = f"shape {image_shape(hdu)}"
        parts.append(f"HDU {i} {hdu.name!r} {kind} {shape}")
    hdr = hdul[0].header
    keys = {k: hdr[k] for k in ("TELESCOP", "DATA_V", "SURVEY", "OBJID", "OBSID", "NVISITS") if k in hdr}
    return "; ".join(parts) + (f"; primary header {keys}" if keys else "")


def header_float(header, key: str) -> float | None:
    """``header[key]`` as a float, or None when absent, empty or non-numeric."""
    value = header.get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


_TRUE = frozenset({"T", "TRUE"})
_FALSE = frozenset({"F", "FALSE"})


def header_bool(header, key: str, default: bool, where=None) -> bool:
    """``header[key]`` as a bool: a FITS logical, or a string ``T``/``F``/``TRUE``/``FALSE`` (any case).

    Returns ``default`` when the key is absent or has no value. Raises ValueError on any other
    value (a number, another string): guessing would silently flip e.g. the air/vacuum medium.
    """
    value = header.get(key)
    if value is None or isinstance(value, fits.card.Undefined):
        return default
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().upper()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    prefix = f"{where}: " if where else ""
    raise ValueError(f"{prefix}header keyword {key} = {value!r} is not a logical value (T/F, TRUE/FALSE)")


def ivar_from_error(err: np.ndarray) -> np.ndarray:
    """``1 / err**2`` where ``err`` is finite and > 0, else 0."""
    err = np.asarray(err, dtype=np.float64)
    good = np.isfinite(err) & (err > 0)
    ivar = np.zeros_like(err)
    np.divide(1.0, np.square(err, where=good, out=np.ones_like(err)), out=ivar, where=good)
    return ivar


def clean_ivar(ivar: np.ndarray) -> np.ndarray:
    """Float64 copy of ``ivar`` with non-finite or negative values set to 0 (bad pixel)."""
    ivar = np.array(ivar, dtype=np.float64)
    ivar[~np.isfinite(ivar) | (ivar < 0)] = 0.0
    return ivar


def join_segments(segments: Sequence[tuple[np.ndarray, ...]]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Concatenate chips / arms into one spectrum with strictly increasing wavelength.

    Each segment is a tuple of equal-length arrays whose first entry is the wavelength.
    A segment stored with decreasing wavelength is reversed; segments are ordered by their
    first wavelength. Returns the concatenated arrays and the (start, stop) pixel range of
    each segment in the result.

    Raises:
        ValueError: if there are no segments, a segment is empty or not monotonic, or two
            segments overlap in wavelength.
    """
    if not segments:
        raise ValueError("no segments to join")
    fixed = []
    for seg in segments:
        wave = seg[0]
        if wave.size == 0:
            raise ValueError("a segment has no pixels")
        if wave.size > 1 and np.all(np.diff(wave) < 0):
            seg = tuple(a[::-1] for a in seg)
        elif wave.size > 1 and not np.all(np.diff(wave) > 0):
            raise ValueError(f"a segment's wavelengths ({wave[0]:.2f}..{wave[-1]:.2f} Å) are not monotonic")
        fixed.append(seg)
    fixed.sort(key=lambda s: s[0][0])
    for a, b in zip(fixed[:-1], fixed[1:]):
        if b[0][0] <= a[0][-1]:
            raise ValueError(
                f"segments overlap in wavelength ({a[0][0]:.2f}..{a[0][-1]:.2f} Å and {b[0][0]:.2f}..{b[0][-1]:.2f} Å)"
            )
    bounds, start = [], 0
    for seg in fixed:
        bounds.append((start, start + seg[0].size))
        start += seg[0].size
    arrays = [np.concatenate([seg[i] for seg in fixed]) for i in range(len(fixed[0]))]
    return arrays, bounds
