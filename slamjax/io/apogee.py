"""SDSS-IV APOGEE readers: apStar (combined), apVisit (one visit, three chips), aspcapStar (normalised).

Wavelengths are vacuum (APOGEE works in vacuum throughout; the headers do not say so).
apStar and aspcapStar are on the common log-linear grid ``10**(CRVAL1 + CDELT1 * (i + 1 - CRPIX1))``
(8575 pixels, 15100.8-16999.8 Å in DR17) and already shifted to the stellar rest frame;
apVisit keeps the observed (topocentric) frame with a wavelength array per chip.
``meta["segments"]`` gives the three detector chips' pixel ranges in every product: apVisit
stores them separately; on the apStar / aspcapStar grid they are split at the middle of the
two chip gaps (``APOGEE_CHIP_GAPS``), whose pixels are bad in every file, so that per-chip
continuum fits (``normalize_chebyshev(..., segments=spec.meta["segments"])``) work alike on
all three products.

Masks: ``ivar = 1 / err**2``, set to 0 (bad) where ``err`` is not finite or <= 0, the
flux is not finite, or the pixel bitmask has any of the APOGEE ``PIXMASK`` bits
BADPIX (0), CRPIX (1), SATPIX (2), UNFIXABLE (3), BADDARK (4), BADFLAT (5), BADERR (6),
NOSKY (7). The higher bits (LITTROW_GHOST, PERSIST_*, SIG_SKYLINE, SIG_TELLURIC, ...)
are warnings, not bad pixels, and are left to the user (chip gaps have NaN flux in DR17
apStar files and are masked through that).

RV and S/N from the primary header: apStar ``VHELIO`` (S/N-weighted mean over visits) and
``SNR``; apVisit ``VHELIO`` (rv) with ``VRAD`` (the topocentric Doppler shift of the
stored wavelengths, ``meta["doppler_shift"]``) and ``SNR`` (middle chip); aspcapStar
``VHELIO``/``VHELIO_AVG`` and ``SNR`` from the primary header or the ASPCAP table, when present.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from ._common import has_columns, header_float, image_shape, ivar_from_error, join_segments, open_fits
from ._spectrum import Spectrum

__all__ = [
    "APOGEE_CHIP_GAPS",
    "PIXMASK_BAD",
    "chip_segments",
    "identify_apstar",
    "load_apstar",
    "identify_apvisit",
    "load_apvisit",
    "identify_aspcapstar",
    "load_aspcapstar",
]

#: APOGEE PIXMASK bits treated as bad: BADPIX, CRPIX, SATPIX, UNFIXABLE, BADDARK, BADFLAT, BADERR, NOSKY.
PIXMASK_BAD = sum(1 << bit for bit in range(8))

_FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"

#: Vacuum wavelengths (Å) in the middle of the gaps between the blue and green and the green and red
#: APOGEE chips (chip coverage ~15140-15810, 15860-16430, 16470-16960 Å: Wilson et al. 2019, PASP
#: 131, 055001; in the DR17 apStar files read here the chip data stop at 15809 / 16433 Å and resume
#: at 15858 / 16473 Å).
APOGEE_CHIP_GAPS = (15833.5, 16453.0)


def chip_segments(wave: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) pixel ranges of the APOGEE chips on one combined grid, split at ``APOGEE_CHIP_GAPS``
    (a gap outside the grid adds no split)."""
    cuts = [int(np.searchsorted(wave, gap)) for gap in APOGEE_CHIP_GAPS]
    edges = [0] + [c for c in cuts if 0 < c < wave.size] + [wave.size]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def _loglinear_wave(header, n: int) -> np.ndarray:
    crval, cdelt = float(header["CRVAL1"]), float(header["CDELT1"])
    crpix = float(header.get("CRPIX1", 1.0))
    return 10.0 ** (crval + cdelt * (np.arange(n, dtype=np.float64) + 1.0 - crpix))


def _bad(flux, err, pixmask=None) -> tuple[np.ndarray, np.ndarray]:
    """(ivar, bad) from flux, error and (optionally) the APOGEE pixel bitmask."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = ivar_from_error(err)
    bad = (ivar == 0) | ~np.isfinite(flux)
    if pixmask is not None:
        bad |= (np.asarray(pixmask).astype(np.int64) & PIXMASK_BAD) != 0
    return ivar, bad


def _is_image(hdu, ndim: tuple[int, ...]) -> bool:
    shape = image_shape(hdu)
    return shape is not None and len(shape) in ndim


# ---------------------------------------------------------------------------------------- apStar
def identify_apstar(hdul: fits.HDUList) -> bool:
    """apStar: NVISITS in the primary header; HDU 1-3 images (flux, error, bitmask) with CRVAL1/CDELT1."""
    return (
        len(hdul) > 3
        and "NVISITS" in hdul[0].header
        and all(_is_image(hdul[i], (1, 2)) for i in (1, 2, 3))
        and "CRVAL1" in hdul[1].header
        and "CDELT1" in hdul[1].header
    )


def load_apstar(source) -> Spectrum:
    """Read an APOGEE ``apStar-*.fits`` file: the combined spectrum (row 0).

    Row 0 is the combined spectrum when NVISITS > 1 and the single visit otherwise (DR17
    single-visit files carry a second, all-zero row, which is ignored).
    """
    with open_fits(source) as (hdul, path):
        if not identify_apstar(hdul):
            raise ValueError(f"{path or 'HDUList'} is not an APOGEE apStar file")
        header = hdul[0].header
        flux, err, pixmask = (np.atleast_2d(hdul[i].data)[0] for i in (1, 2, 3))
        ivar, bad = _bad(flux, err, pixmask)
        wave = _loglinear_wave(hdul[1].header, flux.size)
        keys = ("OBJID", "FIELD", "NVISITS", "SNR", "VHELIO", "VSCATTER", "VERR", "STARFLAG", "RA", "DEC")
        meta = {
            "survey": "APOGEE",
            "product": "apstar",
            "path": path,
            "header": {k: header[k] for k in keys if k in header},
            "nvisits": int(header.get("NVISITS", 1)),
            "flux_unit": _FLUX_UNIT,
            "frame": "rest",
            "doppler_shift": 0.0,
            "segments": chip_segments(wave),
        }
        return Spectrum(
            wave,
            flux,
            ivar,
            bad,
            vacuum=True,
            rv=header_float(header, "VHELIO"),
            snr=header_float(header, "SNR"),
            id=str(header.get("OBJID", "")).strip(),
            meta=meta,
        )


# --------------------------------------------------------------------------------------- apVisit
def identify_apvisit(hdul: fits.HDUList) -> bool:
    """apVisit: HDU 1-4 are 2-D images of equal shape (chips, pixels); HDU 4 holds wavelengths."""
    if len(hdul) < 5 or not all(_is_image(hdul[i], (2,)) for i in (1, 2, 3, 4)):
        return False
    shapes = {image_shape(hdul[i]) for i in (1, 2, 3, 4)}
    return (
        len(shapes) == 1
        and str(hdul[1].header.get("BUNIT", "")).startswith("Flux")
        and str(hdul[4].header.get("BUNIT", "")).startswith("Wavelength")
    )


def load_apvisit(source) -> Spectrum:
    """Read an APOGEE ``apVisit-*.fits`` file: the three chips joined into one spectrum.

    The file stores chips red to blue with wavelength decreasing along each chip; the
    result runs blue to red with strictly increasing wavelength, and ``meta["segments"]``
    gives each chip's pixel range (``meta["chips"]`` the chip index in the file: 2, 1, 0).
    """
    with open_fits(source) as (hdul, path):
        if not identify_apvisit(hdul):
            raise ValueError(f"{path or 'HDUList'} is not an APOGEE apVisit file")
        header = hdul[0].header
        flux, err, pixmask, wave = (np.asarray(hdul[i].data) for i in (1, 2, 3, 4))
        segments = []
        for chip in range(flux.shape[0]):
            ivar, bad = _bad(flux[chip], err[chip], pixmask[chip])
            segments.append(
                (
                    np.asarray(wave[chip], dtype=np.float64),
                    np.asarray(flux[chip], dtype=np.float64),
                    ivar,
                    bad,
                    np.full(ivar.size, chip),
                )
            )
        (w, f, iv, bad, chip_of), bounds = join_segments(segments)
        keys = ("OBJID", "PLATE", "MJD5", "FIBERID", "TELESCOP", "SNR", "VRAD", "VRADERR", "VHELIO", "BC", "STARFLAG")
        meta = {
            "survey": "APOGEE",
            "product": "apvisit",
            "path": path,
            "header": {k: header[k] for k in keys if k in header},
            "flux_unit": _FLUX_UNIT,
            "frame": "observed",
            "doppler_shift": header_float(header, "VRAD"),
            "segments": bounds,
            "chips": [int(chip_of[start]) for start, _ in bounds],
        }
        if all(k in header for k in ("PLATE", "MJD5", "FIBERID")):
            meta["visit"] = f"{str(header['PLATE']).strip()}-{header['MJD5']}-{header['FIBERID']}"
        return Spectrum(
            w,
            f,
            iv,
            bad,
            vacuum=True,
            rv=header_float(header, "VHELIO"),
            snr=header_float(header, "SNR"),
            id=str(header.get("OBJID", "")).strip(),
            meta=meta,
        )


# ------------------------------------------------------------------------------------ aspcapStar
def _aspcap_table(hdul: fits.HDUList):
    for hdu in hdul[1:]:
        if has_columns(hdu, ("ASPCAPFLAG",)):
            return hdu
    return None


def identify_aspcapstar(hdul: fits.HDUList) -> bool:
    """aspcapStar: HDU 1-2 1-D images of equal length (flux, error) with CRVAL1/CDELT1 and an ASPCAP table."""
    return (
        len(hdul) > 3
        and _is_image(hdul[1], (1,))
        and image_shape(hdul[1]) == image_shape(hdul[2])
        and "CRVAL1" in hdul[1].header
        and "CDELT1" in hdul[1].header
        and _aspcap_table(hdul) is not None
    )


def _first_of(header, table, keys):
    """First finite value of ``keys`` from the header, else from the table's first row."""
    for key in keys:
        value = header_float(header, key)
        if value is not None:
            return value
    if table is not None and len(table.data):
        names = [c.upper() for c in table.columns.names]
        for key in keys:
            if key in names:
                value = np.asarray(table.data[key][0])
                if value.ndim == 0 and value.dtype.kind in "fiu" and np.isfinite(value):
                    return float(value)
    return None


def load_aspcapstar(source) -> Spectrum:
    """Read an APOGEE ``aspcapStar-*.fits`` file: the continuum-normalised combined spectrum.

    Pixels with zero flux (ASPCAP's chip gaps, whatever their error), zero error, or non-finite
    error or flux are bad; there is no pixel bitmask in this product. ``meta["normalised"]`` is True.
    """
    with open_fits(source) as (hdul, path):
        if not identify_aspcapstar(hdul):
            raise ValueError(f"{path or 'HDUList'} is not an APOGEE aspcapStar file")
        header = hdul[0].header
        table = _aspcap_table(hdul)
        flux = np.asarray(hdul[1].data, dtype=np.float64)
        ivar, bad = _bad(flux, hdul[2].data)
        bad |= flux == 0  # ASPCAP writes zero flux (with or without an error) outside its chip ranges
        wave = _loglinear_wave(hdul[1].header, flux.size)
        ident = str(header.get("OBJID", "")).strip()
        if not ident and table is not None and has_columns(table, ("APOGEE_ID",)):
            ident = str(table.data["APOGEE_ID"][0]).strip()
        meta = {
            "survey": "APOGEE",
            "product": "aspcapstar",
            "path": path,
            "header": {k: header[k] for k in ("OBJID", "FIELD", "SNR", "VHELIO", "TELESCOP") if k in header},
            "normalised": True,
            "frame": "rest",
            "doppler_shift": 0.0,
            "segments": chip_segments(wave),
        }
        return Spectrum(
            wave,
            flux,
            ivar,
            bad,
            vacuum=True,
            rv=_first_of(header, table, ("VHELIO", "VHELIO_AVG")),
            snr=_first_of(header, table, ("SNR",)),
            id=ident,
            meta=meta,
        )
