"""``slamjax prep``: survey FITS files to a SpectrumSet npz on a common grid."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ._cli_common import UsageError, _check_npz, _existing_file

logger = logging.getLogger("slamjax.cli")


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


#: a file covering less than this fraction of the output grid is reported (a warning naming it)
MIN_COVERAGE = 0.5


def _write_npz(out: Path, arrays: dict) -> None:
    """Write ``arrays`` to exactly ``out`` (numpy appends ``.npz`` to a name not ending in lower-case
    ``.npz``; an open file avoids that), via a temporary file so a failure leaves no partial output."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    coverage = np.ones(n)  # fraction of the grid on which each file has data (good or bad pixels)
    for i, (s, wave) in enumerate(zip(spectra, waves)):
        if np.array_equal(wave, grid):
            flux[i], ivar[i] = s.flux, s.ivar
        else:
            segments = s.meta.get("segments")
            flux[i], ivar[i] = pp.resample(wave, s.flux, s.ivar, grid, segments=segments)
            # the grid pixels inside the file's wavelength range and not in a chip / arm gap
            ones = np.ones_like(wave)
            coverage[i] = np.mean(pp.resample(wave, ones, ones, grid, segments=segments)[1] > 0)
    for name, s, c in zip(args.files, spectra, coverage):
        if c < MIN_COVERAGE:
            logger.warning(
                "%s (%s, %.2f-%.2f Å) %s of the output grid (%.2f-%.2f Å)",
                name,
                s.product,
                s.wave[0],
                s.wave[-1],
                "covers none" if c == 0 else f"covers only {100 * c:.1f}%",
                grid[0],
                grid[-1],
            )
    if not np.any(coverage > 0):
        raise ValueError(
            f"no input file overlaps the output grid ({grid[0]:.2f}-{grid[-1]:.2f} Å, {grid_text}); nothing written"
        )

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
    _write_npz(out, arrays)
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
