"""`SpectrumSet`: the validated container every other part of slamjax consumes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["SpectrumSet", "load_npz"]


def _as_float_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


class SpectrumSet:
    """A set of spectra on one common wavelength grid, with optional labels.

    Arguments:
        wave: wavelength grid [P] in Å, strictly increasing.
        flux: flux [N, P] (a single spectrum [P] is promoted to [1, P]).
        ivar: inverse variance of ``flux`` [N, P], >= 0. ``ivar == 0`` marks a bad pixel.
        labels: optional labels [N, L] in physical units (Teff in K, log g and
            abundances in dex). NaN labels are allowed only for spectra that will not
            be used for training.
        label_names: names of the L labels (required with ``labels``; unique).
        ids: optional identifiers [N] (defaults to ``"0"``, ``"1"``, ...).
        meta: free-form dictionary (provenance, S/N, ...), copied. Arrays in it whose first
            axis has length N are per-spectrum: a subset (``ds[index]``) takes their rows too.

    Non-finite flux values are never kept silently: such pixels get ``ivar = 0`` and
    ``flux = 1``; the number of pixels changed is logged and stored in
    ``meta["n_nonfinite_flux"]``. The caller's arrays are never modified (copies are
    made where anything changes).

    Raises:
        ValueError: on shape mismatches, a non-monotonic or non-finite wavelength grid,
            negative or NaN inverse variances, label/name count mismatch or duplicate
            label names, or an empty set.
    """

    def __init__(
        self,
        wave,
        flux,
        ivar,
        labels=None,
        label_names: Sequence[str] | None = None,
        ids: Sequence | None = None,
        meta: dict[str, Any] | None = None,
    ):
        wave = _as_float_array(wave, "wave")
        flux = _as_float_array(flux, "flux")
        ivar = _as_float_array(ivar, "ivar")
        if wave.ndim != 1:
            raise ValueError(f"wave must be 1-D [P], got shape {wave.shape}")
        if flux.ndim == 1:
            flux = flux[None, :]
        if ivar.ndim == 1:
            ivar = ivar[None, :]
        if flux.ndim != 2:
            raise ValueError(f"flux must be [N, P], got shape {flux.shape}")
        n, p = flux.shape
        if n == 0 or p == 0:
            raise ValueError(f"empty SpectrumSet: flux has shape {flux.shape}")
        if wave.shape[0] != p:
            raise ValueError(f"wave has {wave.shape[0]} pixels but flux has {p} (flux shape {flux.shape})")
        if ivar.shape != flux.shape:
            raise ValueError(f"ivar shape {ivar.shape} does not match flux shape {flux.shape}")
        if not np.all(np.isfinite(wave)):
            raise ValueError("wave contains non-finite values")
        if p > 1 and not np.all(np.diff(wave) > 0):
            bad = int(np.argmin(np.diff(wave) > 0))
            raise ValueError(
                f"wave must be strictly increasing; it is not between pixels {bad} and {bad + 1} "
                f"({float(wave[bad]):.10g} -> {float(wave[bad + 1]):.10g})"
            )
        if np.any(np.isnan(ivar)):
            raise ValueError(f"ivar contains {int(np.isnan(ivar).sum())} NaN values (use ivar = 0 for bad pixels)")
        if np.any(ivar < 0):
            raise ValueError(f"ivar contains {int((ivar < 0).sum())} negative values")
        if np.any(np.isinf(ivar)):
            raise ValueError(f"ivar contains {int(np.isinf(ivar).sum())} infinite values")

        meta = dict(meta or {})
        bad_flux = ~np.isfinite(flux)
        n_bad = int(bad_flux.sum())
        if n_bad:
            flux = np.where(bad_flux, 1.0, flux).astype(flux.dtype)
            ivar = np.where(bad_flux, 0.0, ivar).astype(ivar.dtype)
            logger.warning(
                "SpectrumSet: %d non-finite flux values in %d spectra set to ivar = 0",
                n_bad,
                int(bad_flux.any(axis=1).sum()),
            )
        meta["n_nonfinite_flux"] = meta.get("n_nonfinite_flux", 0) + n_bad

        if labels is not None:
            labels = _as_float_array(labels, "labels")
            if labels.ndim == 1:
                # [N] with one label name -> [N, 1]; [L] for a single spectrum -> [1, L]
                one_label = label_names is not None and len(label_names) == 1
                labels = labels[:, None] if (one_label or n > 1) else labels[None, :]
            if labels.ndim != 2 or labels.shape[0] != n:
                raise ValueError(f"labels must be [N={n}, L], got shape {labels.shape}")
            if label_names is None:
                raise ValueError("label_names are required when labels are given")
            if np.any(np.isinf(labels)):
                raise ValueError("labels contain infinite values")
        if label_names is not None:
            label_names = tuple(str(s) for s in label_names)
            if len(set(label_names)) != len(label_names):
                dup = sorted({s for s in label_names if label_names.count(s) > 1})
                raise ValueError(f"duplicate label names: {dup}")
            if labels is not None and len(label_names) != labels.shape[1]:
                raise ValueError(f"{len(label_names)} label names for {labels.shape[1]} label columns")
        if ids is None:
            ids = np.array([str(i) for i in range(n)])
        else:
            ids = np.asarray(ids)
            if ids.shape != (n,):
                raise ValueError(f"ids must have shape ({n},), got {ids.shape}")

        self.wave = wave
        self.flux = flux
        self.ivar = ivar
        self.labels = labels
        self.label_names = label_names
        self.ids = ids
        self.meta = meta

    # ------------------------------------------------------------------ properties
    @property
    def n_spectra(self) -> int:
        return self.flux.shape[0]

    @property
    def n_pixels(self) -> int:
        return self.flux.shape[1]

    @property
    def n_labels(self) -> int:
        return 0 if self.label_names is None else len(self.label_names)

    def __len__(self) -> int:
        return self.n_spectra

    def __repr__(self) -> str:
        lab = f", labels={list(self.label_names)}" if self.label_names else ""
        return (
            f"SpectrumSet(n_spectra={self.n_spectra}, n_pixels={self.n_pixels}, "
            f"wave=[{self.wave[0]:.2f}, {self.wave[-1]:.2f}]{lab})"
        )

    @property
    def snr(self) -> np.ndarray:
        """Median per-pixel S/N (flux·sqrt(ivar)) over good pixels [N]; NaN if none."""
        return snr_of(self.flux, self.ivar)

    def __getitem__(self, index) -> SpectrumSet:
        """Subset by integer index array, slice or boolean mask (always returns a SpectrumSet)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        index = np.asarray(np.arange(self.n_spectra)[index])
        if index.size == 0:
            raise ValueError("selection is empty")
        # per-spectrum arrays in meta (load_npz puts e.g. snr, names, flux_true there) follow the rows
        n = self.n_spectra
        meta = {
            k: v[index] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v
            for k, v in self.meta.items()
        }
        meta["n_nonfinite_flux"] = 0
        return SpectrumSet(
            self.wave,
            self.flux[index],
            self.ivar[index],
            labels=None if self.labels is None else self.labels[index],
            label_names=self.label_names,
            ids=self.ids[index],
            meta=meta,
        )

    def label(self, name: str) -> np.ndarray:
        """Column of the label called ``name`` [N]."""
        if self.labels is None:
            raise ValueError("this SpectrumSet has no labels")
        if name not in self.label_names:
            raise ValueError(f"unknown label {name!r}; have {list(self.label_names)}")
        return self.labels[:, self.label_names.index(name)]

    def save_npz(self, path) -> None:
        """Write the set in the npz layout read by :func:`load_npz`."""
        arrays = dict(wave=self.wave, flux=self.flux, ivar=self.ivar, ids=self.ids.astype(str))
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.label_names is not None:
            arrays["label_names"] = np.array(self.label_names)
        np.savez_compressed(path, **arrays)


def snr_of(flux, ivar) -> np.ndarray:
    """Median S/N per spectrum, median of |flux|·sqrt(ivar) over good pixels [N] (NaN where none).

    Good pixels have ``ivar > 0`` and finite flux. Exact median via one in-place
    ``partition`` per group of rows with the same number of good pixels (bad pixels are
    pushed to +inf); this is ~3x faster than ``np.nanmedian`` and matters at fit time.
    """
    flux = np.atleast_2d(np.asarray(flux))
    ivar = np.atleast_2d(np.asarray(ivar))
    with np.errstate(invalid="ignore"):
        s = np.abs(flux) * np.sqrt(ivar)
    good = (ivar > 0) & np.isfinite(s)
    n_good = good.sum(axis=1)
    all_good = bool((n_good == s.shape[1]).all())
    if not all_good:
        s[~good] = np.inf
    out = np.full(s.shape[0], np.nan)
    for n in np.unique(n_good[n_good > 0]):
        rows = n_good == n
        sub = s if all_good else s[rows]
        m = int(n) // 2
        sub.partition(m, axis=1)
        upper = sub[:, m].astype(np.float64)
        out[rows] = upper if n % 2 else 0.5 * (upper + sub[:, :m].max(axis=1))
    return out


def load_npz(path, *, flux_key: str = "flux", label_names: Sequence[str] | None = None) -> SpectrumSet:
    """Read a SpectrumSet from an ``.npz`` file in the layout of the shared data sets.

    Required keys: ``wave`` [P], ``flux`` [N, P] (or the key named by ``flux_key``, e.g.
    ``"flux_unnorm"``), ``ivar`` [N, P]. Optional: ``labels`` [N, L] with ``label_names``
    [L], ``ids`` [N]. Any other array whose first axis has length N (``snr``, ``names``,
    ``flux_true`` ...) goes into ``meta``. ``label_names`` selects (and orders) a subset
    of the labels.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not an npz archive or lacks a required key.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for non-npz input
        raise ValueError(f"{path} is not a readable npz archive ({err})") from err
    if not hasattr(data, "files"):
        raise ValueError(f"{path} holds a single array, not an npz archive of spectra")
    with data:
        keys = set(data.files)
        missing = [k for k in ("wave", flux_key, "ivar") if k not in keys]
        if missing:
            raise ValueError(f"{path} lacks required keys {missing}; found {sorted(keys)}")
        wave, flux, ivar = data["wave"], data[flux_key], data["ivar"]
        labels = data["labels"] if "labels" in keys else None
        names = [str(s) for s in data["label_names"]] if "label_names" in keys else None
        if labels is not None and names is None:
            raise ValueError(f"{path} has 'labels' but no 'label_names'")
        ids = data["ids"] if "ids" in keys else None
        n = flux.shape[0] if flux.ndim == 2 else 1
        meta = {"source": str(path)}
        for k in sorted(keys - {"wave", flux_key, "ivar", "labels", "label_names", "ids"}):
            arr = data[k]
            if arr.ndim >= 1 and arr.shape[0] == n:
                meta[k] = arr
    if label_names is not None:
        if labels is None:
            raise ValueError(f"{path} has no labels to select {list(label_names)} from")
        unknown = [s for s in label_names if s not in names]
        if unknown:
            raise ValueError(f"labels {unknown} not in {path} (have {names})")
        labels = labels[:, [names.index(s) for s in label_names]]
        names = list(label_names)
    return SpectrumSet(wave, flux, ivar, labels=labels, label_names=names, ids=ids, meta=meta)
