"""SDSS-III/IV optical (BOSS/eBOSS and SDSS legacy reprocessed) ``spec-*.fits`` reader.

Layout: HDU 1 ``COADD`` binary table, one row per pixel, with lower-case columns ``flux``
(1e-17 erg s⁻¹ cm⁻² Å⁻¹), ``loglam`` (log10 Å, vacuum, heliocentric), ``ivar``,
``and_mask``, ``or_mask``; optional HDU 2 ``SPALL`` one-row table (``Z``, ``SN_MEDIAN_ALL``,
``SPECOBJID``, ...). It is told apart from LAMOST DR9+ (``WAVELENGTH`` column, one row) and
LAMOST MRS (``COADD_B``/``COADD_R``, ``LOGLAM``) by the EXTNAME ``COADD`` and the ``loglam`` column.

Masks: a pixel is bad where ``and_mask != 0`` (the condition held in every exposure; SDSS
recommends the AND mask for science, the OR mask flags too much in multi-exposure coadds)
or ``ivar <= 0`` or the flux is not finite.

RV: ``c * Z`` from the SPALL table when present (``None`` otherwise); S/N: ``SN_MEDIAN_ALL``.
A non-zero ``ZWARNING`` (the pipeline's redshift is unreliable: small Δχ² between templates,
little wavelength coverage, ...) is kept in ``meta["zwarning"]`` and logged as a warning; the RV
is still given (fit it with the labels, ``fit_labels(..., rv=True)``, where it matters).
"""

from __future__ import annotations

import logging

import numpy as np
from astropy.io import fits

from ._common import C_KMS, clean_ivar, has_columns, header_float, open_fits
from ._spectrum import Spectrum

logger = logging.getLogger(__name__)

__all__ = ["identify", "load"]


def identify(hdul: fits.HDUList) -> bool:
    """HDU 1 is a binary table named COADD with flux, loglam and ivar columns."""
    return (
        len(hdul) > 1
        and isinstance(hdul[1], fits.BinTableHDU)
        and hdul[1].name.upper() == "COADD"
        and has_columns(hdul[1], ("flux", "loglam", "ivar"))
        and not has_columns(hdul[1], ("WAVELENGTH",))
    )


def _spall_value(hdul, column: str):
    if len(hdul) < 3 or not has_columns(hdul[2], (column,)) or len(hdul[2].data) == 0:
        return None
    return hdul[2].data[column][0]


def load(source) -> Spectrum:
    """Read an SDSS ``spec-PLATE-MJD-FIBER.fits`` file (path or open HDUList)."""
    with open_fits(source) as (hdul, path):
        if not identify(hdul):
            raise ValueError(f"{path or 'HDUList'} is not an SDSS spec file")
        header = hdul[0].header
        d = hdul[1].data
        cols = [c.lower() for c in hdul[1].columns.names]
        wave = 10.0 ** np.asarray(d["loglam"], dtype=np.float64)
        flux = np.asarray(d["flux"], dtype=np.float64)
        ivar = clean_ivar(d["ivar"])
        and_mask = np.asarray(d["and_mask"]) if "and_mask" in cols else np.zeros(flux.size, dtype=int)
        mask = (and_mask != 0) | (ivar == 0) | ~np.isfinite(flux)

        z = _spall_value(hdul, "Z")
        z = None if z is None or not np.isfinite(z) else float(z)
        rv = None if z is None else C_KMS * z
        snr = _spall_value(hdul, "SN_MEDIAN_ALL")
        zwarning = _spall_value(hdul, "ZWARNING")
        plate = header.get("PLATEID", header.get("PLATE"))
        mjd, fiber = header.get("MJD"), header.get("FIBERID")
        if plate is not None and mjd is not None and fiber is not None:
            ident = f"{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}"
        else:
            specobjid = _spall_value(hdul, "SPECOBJID")
            ident = "" if specobjid is None else str(specobjid).strip()
        keys = ("PLATEID", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "RUN2D", "TELESCOP")
        meta = {
            "survey": "SDSS",
            "product": "sdss_spec",
            "path": path,
            "header": {k: header[k] for k in keys if k in header},
            "flux_unit": "1e-17 erg / (s cm2 Angstrom)",
            "frame": "heliocentric",
            "doppler_shift": rv,
            "segments": [(0, wave.size)],
        }
        if zwarning is not None:
            meta["zwarning"] = int(zwarning)
            if zwarning != 0 and rv is not None:
                logger.warning(
                    "%s: ZWARNING = %d (SDSS flags its redshift as unreliable); RV %.1f km/s from Z used as given",
                    path or ident or "SDSS spectrum",
                    int(zwarning),
                    rv,
                )
        if header_float(header, "PLUG_RA") is not None:
            meta["ra"], meta["dec"] = header_float(header, "PLUG_RA"), header_float(header, "PLUG_DEC")
        return Spectrum(
            wave,
            flux,
            ivar,
            mask,
            vacuum=True,
            rv=rv,
            snr=None if snr is None else float(snr),
            id=ident,
            meta=meta,
        )
