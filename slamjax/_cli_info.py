"""``slamjax info``: describe a model file, a spectra npz or a FITS catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plot as _plot
from ._cli_common import _existing_file, _fmt, _is_model, _status_line


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
    meta = h.get("meta", {})
    if "normalization" in meta:
        print(f"  normalisation {meta['normalization']} (of the training flux)")
    if "medium" in meta:
        print(f"  medium     {meta['medium']} wavelengths")
    if "training_data" in meta:
        print(f"  trained on {meta['training_data']}")
    arrays = h.get("arrays", [])
    if not any(a.endswith("systematics.excess") for a in arrays):
        print("  systematics none (errors are formal only)")
    else:
        k = next((v for key, v in static.items() if key.endswith("systematics.k")), "?")
        if any(a.endswith("systematics.log_var") for a in arrays):
            deg = next((v for key, v in static.items() if key.endswith("systematics.degree")), "?")
            print(f"  systematics smooth form (log-variance polynomial of degree {deg}; correlations: {k} neighbours)")
        else:
            print(f"  systematics mean excess of the {k} nearest held-out fits")
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
