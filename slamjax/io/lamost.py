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
documents vacuum wavelengths for both LRS and MRS).
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from ._common import C_KMS, clean_ivar, has_columns, header_float, image_shape, join_segments, open_fits
from ._spectrum import Spectrum

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
        "frame": "heliocentric" if header.get("HELIO", True) else "observed",
        "doppler_shift": rv,
        "segments": [(0, wave.size)],
    }
    return Spectrum(
        wave,
        flux,
        ivar,
        mask,
        vacuum=bool(header.get("VACUUM", True)),
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


def identify_lrs_table(hdul: fits.HDUList) -> bool:
    """LAMOST LRS DR9+: HDU 1 is a one-row binary table with FLUX, IVAR, WAVELENGTH columns."""
    return (
        len(hdul) > 1
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


_MRS_ARMS = ("COADD_B", "COADD_R")


def identify_mrs(hdul: fits.HDUList) -> bool:
    """LAMOST MRS: binary-table HDUs named COADD_B and/or COADD_R with FLUX, IVAR, LOGLAM columns."""
    names = [hdu.name.upper() for hdu in hdul]
    arms = [arm for arm in _MRS_ARMS if arm in names]
    return bool(arms) and all(has_columns(hdul[arm], ("FLUX", "IVAR", "LOGLAM")) for arm in arms)


def load_mrs(source) -> Spectrum:
    """Read the coadded arms of a LAMOST MRS ``med-*.fits`` file into one spectrum.

    The blue (COADD_B, ~4950-5350 Å) and red (COADD_R, ~6300-6800 Å) arms are concatenated
    in increasing wavelength, ``meta["segments"]`` holding their pixel ranges and
    ``meta["arms"]`` their names. Wavelength is ``10**LOGLAM`` (LOGLAM computed in float64
    from the stored float32). S/N is ``{"B": SNR, "R": SNR}`` from the arm headers.
    The single-exposure extensions (``B-<lmjm>``, ``R-<lmjm>``) are not read.
    """
    with open_fits(source) as (hdul, path):
        if not identify_mrs(hdul):
            raise ValueError(f"{path or 'HDUList'} is not a LAMOST MRS spectrum")
        header = hdul[0].header
        names = [hdu.name.upper() for hdu in hdul]
        segments, snr = [], {}
        for arm in _MRS_ARMS:
            if arm not in names:
                continue
            hdu = hdul[arm]
            d = hdu.data
            cols = [c.upper() for c in hdu.columns.names]
            wave = 10.0 ** np.asarray(d["LOGLAM"], dtype=np.float64)
            flux = np.asarray(d["FLUX"], dtype=np.float64)
            ivar = clean_ivar(d["IVAR"])
            ormask = np.asarray(d["ORMASK"]) if "ORMASK" in cols else np.zeros(flux.size)
            bad = (ormask != 0) | (ivar == 0) | ~np.isfinite(flux)
            label = np.full(flux.size, len(segments))
            segments.append((wave, flux, ivar, bad, label))
            arm_snr = header_float(hdu.header, "SNR")
            if arm_snr is not None:
                snr[arm[-1]] = arm_snr
        (wave, flux, ivar, bad, label), bounds = join_segments(segments)
        arm_names = [a for a in _MRS_ARMS if a in names]
        order = [arm_names[int(label[start])] for start, _ in bounds]
        meta = {
            "survey": "LAMOST",
            "product": "lamost_mrs",
            "path": path,
            "header": _header_meta(header, _MRS_HEADER_KEYS),
            "frame": "heliocentric" if header.get("HELIO", True) else "observed",
            "doppler_shift": None,
            "segments": bounds,
            "arms": order,
        }
        return Spectrum(
            wave,
            flux,
            ivar,
            bad.astype(bool),
            vacuum=bool(header.get("VACUUM", True)),
            rv=None,
            snr=snr or None,
            id=str(header.get("OBSID", "")),
            meta=meta,
        )
