"""Survey file readers: one spectrum per file into a :class:`Spectrum`, many files into a SpectrumSet.

Supported products (one module per survey, each a set of ``identify(hdul) -> bool`` and
``load(path or hdul) -> Spectrum`` pairs; :func:`read_spectrum` tries them in this order):

=====================  ================================================  ======================
product                file                                              reader
=====================  ================================================  ======================
``apvisit``            APOGEE ``apVisit-*.fits`` (three chips)           :mod:`.apogee`
``aspcapstar``         APOGEE ``aspcapStar-*.fits`` (normalised)         :mod:`.apogee`
``apstar``             APOGEE ``apStar-*.fits`` (combined, row 0)        :mod:`.apogee`
``lamost_lrs``         LAMOST LRS DR5-DR8 ``spec-*.fits[.gz]``           :mod:`.lamost`
``lamost_lrs_table``   LAMOST LRS DR9+ (one-row table in HDU 1)          :mod:`.lamost`
``lamost_mrs``         LAMOST MRS ``med-*.fits`` (COADD_B + COADD_R)     :mod:`.lamost`
``sdss_spec``          SDSS-III/IV optical ``spec-*.fits`` (COADD)       :mod:`.sdss`
(npz)                  slamjax ``.npz`` layout -> ``SpectrumSet``        :mod:`.npz`
=====================  ================================================  ======================
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from astropy.io import fits

from .._spectra import SpectrumSet
from . import apogee as apogee
from . import lamost as lamost
from . import npz as npz
from . import sdss as sdss
from ._common import describe, open_fits
from ._spectrum import Spectrum as Spectrum

logger = logging.getLogger(__name__)

__all__ = ["READERS", "Spectrum", "read_many", "read_spectrum"]

#: (product, identify, load) in the order :func:`read_spectrum` tries them. More specific layouts come
#: first (aspcapStar before apStar: an aspcapStar primary header may carry apStar keywords).
READERS: tuple[tuple[str, Callable[[fits.HDUList], bool], Callable[..., Spectrum]], ...] = (
    ("apvisit", apogee.identify_apvisit, apogee.load_apvisit),
    ("aspcapstar", apogee.identify_aspcapstar, apogee.load_aspcapstar),
    ("apstar", apogee.identify_apstar, apogee.load_apstar),
    ("lamost_lrs", lamost.identify_lrs, lamost.load_lrs),
    ("lamost_lrs_table", lamost.identify_lrs_table, lamost.load_lrs_table),
    ("lamost_mrs", lamost.identify_mrs, lamost.load_mrs),
    ("sdss_spec", sdss.identify, sdss.load),
)


def read_spectrum(path) -> Spectrum | SpectrumSet:
    """Read one survey spectrum file, detecting its layout from the HDUs and header keywords.

    Arguments:
        path: path to a FITS file (``.fits`` or ``.fits.gz``; an open ``astropy.io.fits.HDUList``
            is also accepted), or to a slamjax ``.npz`` file.

    Returns:
        A :class:`Spectrum` (float64 arrays on the survey's own grid, with ``meta["product"]``
        naming the detected layout) for FITS input; a :class:`slamjax.SpectrumSet` for an
        ``.npz`` file (see :mod:`slamjax.io.npz`). Nothing on disk is modified.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not FITS (or npz), or its layout is none of the supported
            ones (the message lists the HDUs found and key header values).
    """
    if not isinstance(path, fits.HDUList):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        if npz.identify(path):
            return npz.load(path)
    with open_fits(path) as (hdul, name):
        if len(hdul) == 0:
            raise ValueError(f"{name} contains no HDUs")
        for product, identify, load in READERS:
            if identify(hdul):
                logger.debug("%s identified as %s", name, product)
                return load(hdul)
        raise ValueError(f"{name}: unknown spectrum file layout; found {describe(hdul)}")


def _per_file_snr(spectra):
    """S/N per file: a float array if scalar, a dict of float arrays if dicts with common keys, else a list."""
    values = [s.snr for s in spectra]
    if all(v is None or isinstance(v, float) for v in values):
        return np.array([np.nan if v is None else v for v in values])
    if all(isinstance(v, dict) for v in values):
        keys = set(values[0])
        if all(set(v) == keys for v in values):
            return {k: np.array([v[k] for v in values]) for k in values[0]}
    return values


def _accepts_segments(fn) -> bool:
    try:
        return "segments" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # callables without an inspectable signature
        return False


def _between_segments(wave: np.ndarray, segments, grid: np.ndarray) -> np.ndarray:
    """Pixels of ``grid`` strictly between two consecutive segments of ``wave`` (no data there)."""
    out = np.zeros(grid.shape, dtype=bool)
    bounds = sorted((int(a), int(b)) for a, b in segments or ())
    for (_, stop), (start, _) in zip(bounds[:-1], bounds[1:]):
        if 0 < stop <= start < wave.size:
            out |= (grid > wave[stop - 1]) & (grid < wave[start])
    return out


def read_many(
    paths: Iterable,
    wave=None,
    resample: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> SpectrumSet:
    """Read survey files into one :class:`slamjax.SpectrumSet` on a common wavelength grid.

    Arguments:
        paths: paths of FITS spectrum files (any layout :func:`read_spectrum` knows; not npz).
        wave: target wavelength grid [P_out] in Å. Needed unless all files share one grid.
        resample: ``resample(wave_in [P_in], flux [P_in], ivar [P_in], wave_out [P_out]) ->
            (flux_out [P_out], ivar_out [P_out])``, e.g. ``slamjax.preprocess.resample``; used for
            every file whose grid differs from ``wave``. Bad pixels reach it as ``ivar == 0``.
            If it takes a ``segments`` keyword, it gets the file's ``meta["segments"]`` (chip /
            arm pixel ranges). Whatever it returns, output pixels between two segments (in a
            chip or arm gap) get ``ivar = 0`` and ``flux = 1``: there is no data there.

    Returns:
        A SpectrumSet with ``ids`` from the files and ``meta`` holding per-file ``paths``,
        ``products``, ``rv`` (km/s, NaN where unknown), ``doppler_shift``, ``frame``, ``snr`` (an
        array, or a dict of arrays for per-band S/N), ``vacuum`` (one bool for all) and
        ``resampled`` (bool per file).

    Raises:
        ValueError: for no paths, an npz path, a mix of air and vacuum wavelengths, a mix of
            wavelength frames (``meta["frame"]``: e.g. rest-frame apStar and observed-frame
            apVisit; shift them to one frame first, as ``slamjax prep`` does), files on
            different grids without ``wave``, or a grid mismatch without ``resample``.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("read_many needs at least one path")
    spectra = []
    for p in paths:
        s = read_spectrum(p)
        if isinstance(s, SpectrumSet):
            raise ValueError(f"{p} is an npz SpectrumSet, not a single spectrum; use slamjax.load_npz for it")
        spectra.append(s)
    vacuum = {s.vacuum for s in spectra}
    if len(vacuum) > 1:
        air = [str(p) for p, s in zip(paths, spectra) if not s.vacuum]
        raise ValueError(f"files mix air and vacuum wavelengths (air: {air}); convert before combining")
    frames: dict[str, list[str]] = {}
    for p, s in zip(paths, spectra):
        frames.setdefault(str(s.meta.get("frame") or "unknown"), []).append(str(p))
    if len(frames) > 1:
        listing = "; ".join(f"{frame}: {files}" for frame, files in frames.items())
        raise ValueError(
            f"files mix wavelength frames ({listing}); shift them to one frame before combining, e.g. "
            "slamjax.preprocess.to_rest_frame(wave, meta['doppler_shift']) or 'slamjax prep'"
        )

    if wave is None:
        grid = spectra[0].wave
        for p, s in zip(paths, spectra):
            if not np.array_equal(s.wave, grid):
                raise ValueError(
                    f"{p} ({s.n_pixels} pixels, {s.wave[0]:.2f}-{s.wave[-1]:.2f} Å) is not on the wavelength grid of "
                    f"{paths[0]} ({grid.size} pixels, {grid[0]:.2f}-{grid[-1]:.2f} Å); a common grid is needed: "
                    "pass wave=<target grid> and resample=<callable>, e.g. slamjax.preprocess.resample"
                )
        flux = np.stack([s.flux for s in spectra])
        ivar = np.stack([s.ivar for s in spectra])
        resampled = [False] * len(spectra)
    else:
        grid = np.asarray(wave, dtype=np.float64)
        if grid.ndim != 1:
            raise ValueError(f"wave must be a 1-D grid [P], got shape {grid.shape}")
        flux = np.empty((len(spectra), grid.size))
        ivar = np.empty((len(spectra), grid.size))
        resampled = []
        for i, (p, s) in enumerate(zip(paths, spectra)):
            if np.array_equal(s.wave, grid):
                flux[i], ivar[i] = s.flux, s.ivar
                resampled.append(False)
                continue
            if resample is None:
                raise ValueError(
                    f"{p} ({s.wave[0]:.2f}-{s.wave[-1]:.2f} Å, {s.n_pixels} pixels) is not on the requested grid and "
                    "no resample callable was given; pass resample=, e.g. slamjax.preprocess.resample"
                )
            segments = s.meta.get("segments")
            if segments is not None and _accepts_segments(resample):
                f_out, iv_out = resample(s.wave, s.flux, s.ivar, grid, segments=segments)
            else:
                f_out, iv_out = resample(s.wave, s.flux, s.ivar, grid)
            f_out, iv_out = np.array(f_out, dtype=np.float64), np.array(iv_out, dtype=np.float64)
            if f_out.shape != grid.shape or iv_out.shape != grid.shape:
                raise ValueError(
                    f"resample returned shapes {f_out.shape}, {iv_out.shape} for {p}; expected {grid.shape}"
                )
            gap = _between_segments(s.wave, segments, grid)
            f_out[gap], iv_out[gap] = 1.0, 0.0
            flux[i], ivar[i] = f_out, iv_out
            resampled.append(True)

    meta = {
        "paths": [str(s.meta.get("path") or p) for p, s in zip(paths, spectra)],
        "products": [s.product for s in spectra],
        "rv": np.array([np.nan if s.rv is None else s.rv for s in spectra]),
        "doppler_shift": np.array(
            [np.nan if s.meta.get("doppler_shift") is None else s.meta["doppler_shift"] for s in spectra]
        ),
        "frame": [s.meta.get("frame") for s in spectra],
        "snr": _per_file_snr(spectra),
        "vacuum": vacuum.pop(),
        "resampled": np.array(resampled),
    }
    ids = np.array([s.id for s in spectra])
    return SpectrumSet(np.array(grid), flux, ivar, ids=ids, meta=meta)
