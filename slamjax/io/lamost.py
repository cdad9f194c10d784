"""LAMOST readers: low-resolution (LRS) DR5-DR8 image layout, LRS DR9+ table layout, medium-resolution (MRS).

Masks: LAMOST's 1-D pipeline follows SDSS idlspec2d: ``ANDMASK`` flags a condition present in
all exposures, ``ORMASK`` in any exposure. We mark a pixel bad where ``ORMASK != 0`` (the
conservative choice: a problem in any exposure taints the coadd) or ``IVAR <= 0`` or the
flux is not finite; ``ANDMASK`` is a subset of ``ORMASK`` so it adds nothing.

Radial velocity: ``HELIO_RV`` in LAMOST headers is the heliocentric *correction* already
applied to the wavelengths (``HELIO = T``), not the star's velocity. For LRS the star's
heliocentric RV is ``c * Z`` (the pipeline redshift); MRS files carry no RV (``rv = None``).
Both keep their wavelengths in the heliocentric frame (``meta["frame"]``).

Air / vacuum: taken from the ``VACUUM`` header keyword (``T`` in all LAMOST files seen; LAMOST
documents vacuum wavelengths for both LRS and MRS); vacuum when the keyword is absent. ``VACUUM``
and ``HELIO`` may be FITS logicals or the strings ``T``/``F``/``TRUE``/``FALSE``; any other value
is an error.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from astropy.io import fits

from ._common import (
    C_KMS,
    clean_ivar,
    column_names,
    has_columns,
    header_bool,
    header_float,
    image_shape,
    join_segments,
    open_fits,
)
from ._spectrum import Spectrum

logger = logging.getLogger(__name__)

__all__ = [
    "identify_lrs",
    "load_lrs",
    "identify_lrs_table",
    "load_lrs_table",
    "identify_mrs",
    "load_mrs",
]

_LRS_HEADER_KEYS = ("OBSID", "DESIG", "DATA_V", "CLASS", "SUBCLASS", "Z", "Z_ERR", "HELIO_RV", "VACUUM", "MJD", "RA")
_MRS_HEADER_KEYS = ("OBSID", "DESIG", "DATA_V", "HELIO_RV", "VACUUM", "MJD", "RA", "DEC", "NEXP_B", "NEXP_R")


def _header_meta(header, keys) -> dict:
    return {k: header[k] for k in keys if k in header}


def _lrs_spectrum(header, flux, ivar, wave, ormask, *, product: str, path) -> Spectrum:
    flux = np.asarray(flux, dtype=np.float64)
    ivar = clean_ivar(ivar)
    wave = np.asarray(wave, dtype=np.float64)
    mask = (np.asarray(ormask) != 0) | (ivar == 0) | ~np.isfinite(flux)
    z = header_float(header, "Z")
    rv = None if z is None or z <= -1 else C_KMS * z  # LAMOST writes -9999 where the redshift failed
    snr = {band: header_float(header, f"SNR{band.upper()}") for band in "ugriz"}
    snr = {band: value for band, value in snr.items() if value is not None}
    meta = {
        "survey": "LAMOST",
        "product": product,
        "path": path,
        "header": _header_meta(header, _LRS_HEADER_KEYS),
        "frame": "heliocentric" if header_bool(header, "HELIO", True, path) else "observed",
        "doppler_shift": rv,
        "segments": [(0, wave.size)],
    }
    return Spectrum(
        wave,
        flux,
        ivar,
        mask,
        vacuum=header_bool(header, "VACUUM", True, path),
        rv=rv,
        snr=snr or None,
        id=str(header.get("OBSID", "")),
        meta=meta,
    )


def identify_lrs(hdul: fits.HDUList) -> bool:
    """LAMOST LRS DR5-DR8: a float primary image of shape (5, P) with the log-linear ``COEFF0/1`` keys."""
    shape = image_shape(hdul[0])
    hdr = hdul[0].header
    return shape is not None and len(shape) == 2 and shape[0] == 5 and "COEFF0" in hdr and "COEFF1" in hdr


def load_lrs(source) -> Spectrum:
    """Read a LAMOST LRS DR5-DR8 ``spec-*.fits[.gz]`` file (path or open HDUList).

    The primary image rows are flux, ivar, wavelength (Å, vacuum), andmask, ormask. The
    wavelength row is used as stored (``10**(COEFF0 + COEFF1 * i)`` agrees to < 0.003 Å; the
    header coefficients are rounded).
    """
    with open_fits(source) as (hdul, path):
        if not identify_lrs(hdul):
            raise ValueError(f"{path or 'HDUList'} is not a LAMOST LRS (DR5-DR8) spectrum")
        header = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float64)
        return _lrs_spectrum(header, data[0], data[1], data[2], data[4], product="lamost_lrs", path=path)


_MRS_ARMS = ("COADD_B", "COADD_R")
# MRS extensions: the coadded arms and the single exposures (B-<lmjm>, R-<lmjm>)
_MRS_EXTNAME = re.compile(r"^(COADD_[BR]|[BR]-\d+)$")


def _has_mrs_extensions(hdul: fits.HDUList) -> bool:
    return any(_MRS_EXTNAME.match(hdu.name.strip().upper()) for hdu in hdul[1:])


def identify_lrs_table(hdul: fits.HDUList) -> bool:
    """LAMOST LRS DR9+: HDU 1 is a one-row binary table with FLUX, IVAR, WAVELENGTH columns.

    A file with MRS extensions (EXTNAME ``COADD_B``, ``COADD_R``, ``B-<lmjm>``, ``R-<lmjm>``) is
    not LRS, whatever its table layout (it is read by :func:`load_mrs`).
    """
    return (
        len(hdul) > 1
        and not _has_mrs_extensions(hdul)
        and isinstance(hdul[1], fits.BinTableHDU)
        and hdul[1].header.get("NAXIS2") == 1
        and has_columns(hdul[1], ("FLUX", "IVAR", "WAVELENGTH"))
    )


def load_lrs_table(source) -> Spectrum:
    """Read a LAMOST LRS DR9+ file: header keys in the primary HDU, arrays in a one-row table in HDU 1.

    ``ORMASK`` is optional (without it only ``IVAR <= 0`` and non-finite flux mark bad pixels).
    """
    with open_fits(source) as (hdul, path):
        if not identify_lrs_table(hdul):
            raise ValueError(f"{path or 'HDUList'} is not a LAMOST LRS (DR9+) table spectrum")
        header = hdul[0].header
        row = hdul[1].data[0]
        names = [c.upper() for c in hdul[1].columns.names]
        flux = np.asarray(row["FLUX"], dtype=np.float64)
        ormask = np.asarray(row["ORMASK"]) if "ORMASK" in names else np.zeros(flux.size)
        return _lrs_spectrum(
            header, flux, row["IVAR"], row["WAVELENGTH"], ormask, product="lamost_lrs_table", path=path
        )


def _arm_has_columns(hdu) -> bool:
    return has_columns(hdu, ("FLUX", "IVAR")) and (has_columns(hdu, ("LOGLAM",)) or has_columns(hdu, ("WAVELENGTH",)))


def identify_mrs(hdul: fits.HDUList) -> bool:
    """LAMOST MRS: binary-table HDUs named COADD_B and/or COADD_R with FLUX, IVAR and LOGLAM (or WAVELENGTH)."""
    names = [hdu.name.upper() for hdu in hdul]
    arms = [arm for arm in _MRS_ARMS if arm in names]
    return bool(arms) and all(_arm_has_columns(hdul[arm]) for arm in arms)


def _arm_arrays(hdu) -> dict[str, np.ndarray]:
    """An arm's columns as 1-D arrays: one row per pixel (the MRS layout), or one row of array cells."""
    d = hdu.data
    cols = [c.upper() for c in column_names(hdu)]
    n_rows = 0 if d is None else len(d)
    one_row = n_rows == 1 and np.asarray(d["FLUX"][0]).ndim == 1
    out = {}
    for name in ("FLUX", "IVAR", "LOGLAM", "WAVELENGTH", "ORMASK"):
        if name in cols:
            out[name] = np.asarray(d[name][0] if one_row else d[name]) if n_rows else np.zeros(0)
    return out


def load_mrs(source) -> Spectrum:
    """Read the coadded arms of a LAMOST MRS ``med-*.fits`` file into one spectrum.

    The blue (COADD_B, ~4950-5350 Å) and red (COADD_R, ~6300-6800 Å) arms are concatenated
    in increasing wavelength, ``meta["segments"]`` holding their pixel ranges and
    ``meta["arms"]`` their names. Wavelength is ``10**LOGLAM`` (LOGLAM computed in float64
    from the stored float32), or the ``WAVELENGTH`` column where there is no LOGLAM. An arm
    table has one row per pixel, or one row whose cells are the arrays. S/N is
    ``{"B": SNR, "R": SNR}`` from the arm headers. An arm with no pixels is skipped with a
    logged warning. The single-exposure extensions (``B-<lmjm>``, ``R-<lmjm>``) are not read.

    Raises:
        ValueError: if the file is not MRS or none of its arms has any pixels.
    """
    with open_fits(source) as (hdul, path):
        if not identify_mrs(hdul):
            raise ValueError(f"{path or 'HDUList'} is not a LAMOST MRS spectrum")
        header = hdul[0].header
        names = [hdu.name.upper() for hdu in hdul]
        segments, snr, arm_names = [], {}, []
        for arm in _MRS_ARMS:
            if arm not in names:
                continue
            hdu = hdul[arm]
            d = _arm_arrays(hdu)
            flux = np.asarray(d["FLUX"], dtype=np.float64)
            if flux.size == 0:
                logger.warning("%s: MRS arm %s has no pixels; skipped", path or "HDUList", arm)
                continue
            if "LOGLAM" in d:
                wave = 10.0 ** np.asarray(d["LOGLAM"], dtype=np.float64)
            else:
                wave = np.asarray(d["WAVELENGTH"], dtype=np.float64)
            ivar = clean_ivar(d["IVAR"])
            ormask = d.get("ORMASK", np.zeros(flux.size))
            if not wave.shape == ivar.shape == ormask.shape == flux.shape:
                raise ValueError(f"{path or 'HDUList'}: arm {arm} has columns of different lengths")
            bad = (ormask != 0) | (ivar == 0) | ~np.isfinite(flux)
            label = np.full(flux.size, len(segments))
            segments.append((wave, flux, ivar, bad, label))
            arm_names.append(arm)
            arm_snr = header_float(hdu.header, "SNR")
            if arm_snr is not None:
                snr[arm[-1]] = arm_snr
        if not segments:
            raise ValueError(f"{path or 'HDUList'}: no MRS arm has any pixels")
        (wave, flux, ivar, bad, label), bounds = join_segments(segments)
        order = [arm_names[int(label[start])] for start, _ in bounds]
        meta = {
            "survey": "LAMOST",
            "product": "lamost_mrs",
            "path": path,
            "header": _header_meta(header, _MRS_HEADER_KEYS),
            "frame": "heliocentric" if header_bool(header, "HELIO", True, path) else "observed",
            "doppler_shift": None,
            "segments": bounds,
            "arms": order,
        }
        return Spectrum(
            wave,
            flux,
            ivar,
            bad.astype(bool),
            vacuum=header_bool(header, "VACUUM", True, path),
            rv=None,
            snr=snr or None,
            id=str(header.get("OBSID", "")),
            meta=meta,
        )
