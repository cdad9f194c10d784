"""`FitResult`, status codes, and the FITS catalog."""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import equinox as eqx
import numpy as np

from ._version import __version__

logger = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


def check_fits_ids(ids, path) -> None:
    """Before a catalog is written to a FITS ``path``: ids must be ASCII (FITS strings are), and ids
    with trailing spaces are named in a warning (FITS drops them: they come back without)."""
    if not str(path).lower().endswith(FITS_SUFFIXES):
        return
    try:
        ids = [str(i) for i in np.asarray(ids).astype(str)]
    except UnicodeDecodeError as err:
        raise ValueError(f"ids must be ASCII text for FITS ({err})") from None
    non_ascii = [i for i in ids if not i.isascii()]
    if non_ascii:
        raise ValueError(
            f"{len(non_ascii)} ids are not ASCII (e.g. {non_ascii[0]!r}); FITS stores ASCII strings only: "
            "rename them or write another format"
        )
    trailing = [i for i in ids if i != i.rstrip(" ")]
    if trailing:
        logger.warning(
            "%d ids end in spaces (e.g. %r); FITS drops trailing spaces, so %s reads them back without",
            len(trailing),
            trailing[0],
            path,
        )


__all__ = ["FitResult", "Status"]


class Status(enum.IntEnum):
    """Per-spectrum outcome of :func:`slamjax.fit_labels` (the ``status`` column).

    CONVERGED (0): the Gauss-Newton decrement (predicted χ² decrease, i.e. the squared
        distance to the minimum in units of the label errors) fell below tolerance.
    MAX_STEPS (1): the step limit was reached first; labels are the best point found.
    HIT_BOUND (2): the best point lies on the edge of the allowed label box (training
        box widened by ``box_margin``); the true optimum is probably outside it.
    BAD_INPUT (3): fewer than L + 1 usable pixels (all masked, NaN flux ...); labels NaN.
    NON_FINITE (4): the fit produced non-finite labels, χ² or covariance (e.g. an overflowing model
        or flux); not a fit: labels, covariance and model flux NaN (χ² as computed).
    """

    CONVERGED = 0
    MAX_STEPS = 1
    HIT_BOUND = 2
    BAD_INPUT = 3
    NON_FINITE = 4


# Catalog columns other than the labels: a label may not take these names (nor ``<label>_err``
# another label's name), or to_table would overwrite one column with another.
CATALOG_COLUMNS = (
    "id",
    "cov",
    "chi2",
    "rchi2",
    "n_pixels",
    "n_steps",
    "snr",
    "status",
    "rv",
    "rv_err",
    "continuum",
    "continuum_err",
    "cov_full",
    "model_flux",
)


def check_label_names(names) -> None:
    """Raise ValueError for label names that cannot be catalog columns: empty, duplicate,
    containing a comma (the LABELS keyword lists them comma-separated), a name of another
    catalog column (:data:`CATALOG_COLUMNS`), or ``<label>_err`` of another label."""
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not n or "," in n]
    if bad:
        raise ValueError(f"label names must be non-empty strings without commas, got {bad}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate label names {dup}: each label can be used once")
    taken = sorted(set(names) & set(CATALOG_COLUMNS))
    if taken:
        cols = ", ".join(CATALOG_COLUMNS)
        raise ValueError(f"label names {taken} are catalog columns of their own ({cols}); rename them")
    clash = sorted(n for n in names if n.endswith("_err") and n[: -len("_err")] in names)
    if clash:
        raise ValueError(f"label names {clash} clash with the error columns of the labels {[c[:-4] for c in clash]}")


class FitResult(eqx.Module):
    """Labels fitted to N spectra (numpy arrays; labels in physical units).

    Attributes:
        labels: best-fit (MAP if a prior was given) labels [N, L].
        cov: covariance [N, L, L]: the formal (JᵀWJ + prior precision)⁻¹ at the solution, plus
            the emulator's systematic label covariance at the fitted labels where the fit added it
            (``fit_labels(systematics=True)``, the default, for an emulator that has one).
        chi2: data χ² [N] = Σ w (f - model)², w = 1/(σ_obs² + σ_model²) (prior excluded).
        n_pixels: pixels used [N] (ivar > 0, finite flux, finite model variance).
        n_steps: Levenberg-Marquardt steps of the selected start [N].
        status: :class:`Status` codes [N].
        snr: median per-pixel S/N of the input over used pixels [N].
        model_flux: best-fit model [N, P] (None when read back from a catalog).
        ids: identifiers [N].
        label_names: the L label names.
        rv, rv_err: fitted radial velocity and its 1σ error [N] (km/s; ``fit_labels(rv=...)``).
        continuum, continuum_err: continuum Chebyshev coefficients [N, segments, degree + 1]
            (``fit_labels(continuum=...)``); NaN for a segment where a spectrum had too few
            weighted pixels.
        continuum_segments: the (start, stop) pixel ranges of those segments on the model's
            grid (x runs from −1 to 1 over each segment's wavelengths); the catalog keeps them
            in the ``CONTSEG`` keyword.
        cov_full: covariance of all fitted parameters [N, D, D] (labels, rv, continuum
            coefficients, in that order) when nuisance parameters were fitted; ``cov`` is its
            label block (labels marginalised over the nuisance parameters).
    """

    labels: np.ndarray
    cov: np.ndarray
    chi2: np.ndarray
    n_pixels: np.ndarray
    n_steps: np.ndarray
    status: np.ndarray
    snr: np.ndarray
    model_flux: np.ndarray | None
    ids: np.ndarray
    label_names: tuple[str, ...] = eqx.field(static=True)
    rv: np.ndarray | None = None
    rv_err: np.ndarray | None = None
    continuum: np.ndarray | None = None
    continuum_err: np.ndarray | None = None
    cov_full: np.ndarray | None = None
    continuum_segments: tuple[tuple[int, int], ...] | None = eqx.field(static=True, default=None)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def labels_err(self) -> np.ndarray:
        """1σ errors [N, L]: sqrt of the diagonal of ``cov`` (formal errors, plus the emulator's
        systematics where the fit added them)."""
        return np.sqrt(np.diagonal(self.cov, axis1=1, axis2=2))

    @property
    def rchi2(self) -> np.ndarray:
        """Reduced χ² [N] = χ² / (n_pixels - D) (D fitted parameters, not counting continuum
        coefficients held in a segment without data; NaN where n_pixels <= D)."""
        n_par = len(self.label_names) if self.cov_full is None else self.cov_full.shape[1]
        if self.continuum is not None:  # continuum coefficients held (NaN) in a segment without data
            n_par = n_par - np.isnan(self.continuum).reshape(len(self), -1).sum(axis=1)
        dof = self.n_pixels.astype(np.float64) - n_par
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(dof > 0, self.chi2 / dof, np.nan)

    @property
    def converged(self) -> np.ndarray:
        return self.status == Status.CONVERGED

    def summary(self) -> dict[str, int]:
        """Counts per status name."""
        return {s.name: int(np.sum(self.status == s)) for s in Status}

    def to_table(self, ids=None, snr=None, *, model_flux: bool = False):
        """The catalog as an :class:`astropy.table.Table`.

        Columns: ``id``; per label ``<name>`` and ``<name>_err`` (physical units: Teff
        in K); ``cov`` [L, L]; ``chi2``, ``rchi2``, ``n_pixels``, ``n_steps``, ``snr``,
        ``status`` (see :class:`Status`; the legend is in the table meta); and, when
        fitted, ``rv``, ``rv_err`` (km/s), ``continuum``, ``continuum_err``, ``cov_full``. ``ids``/``snr``
        override the stored ones; ``model_flux=True`` adds a ``model_flux`` column.
        """
        from astropy.table import Table

        n = len(self)
        ids = self.ids if ids is None else np.asarray(ids)
        snr = self.snr if snr is None else np.asarray(snr, dtype=np.float64)
        if ids.shape != (n,) or snr.shape != (n,):
            raise ValueError(f"ids and snr must have shape ({n},)")
        check_label_names(self.label_names)
        tab = Table()
        tab["id"] = np.asarray(ids).astype(str)
        err = self.labels_err
        for j, name in enumerate(self.label_names):
            tab[name] = self.labels[:, j]
            tab[f"{name}_err"] = err[:, j]
        tab["cov"] = self.cov
        tab["chi2"] = self.chi2
        tab["rchi2"] = self.rchi2
        tab["n_pixels"] = self.n_pixels
        tab["n_steps"] = self.n_steps
        tab["snr"] = snr
        tab["status"] = self.status.astype(np.int16)
        for name in ("rv", "rv_err", "continuum", "continuum_err", "cov_full"):
            if getattr(self, name) is not None:
                tab[name] = getattr(self, name)
        # FITS TUNITn where the unit is certain: effective temperatures in K, velocities in km/s
        for name in self.label_names:
            if name.lower() in ("teff", "t_eff"):
                tab[name].unit = tab[f"{name}_err"].unit = "K"
        for name in ("rv", "rv_err"):
            if name in tab.colnames:
                tab[name].unit = "km / s"
        if model_flux:
            if self.model_flux is None:
                raise ValueError("this result holds no model flux")
            tab["model_flux"] = self.model_flux
        tab.meta["LABELS"] = ",".join(self.label_names)
        if self.continuum_segments is not None:
            tab.meta["CONTSEG"] = ",".join(f"{a}-{b}" for a, b in self.continuum_segments)
        tab.meta["SLAMJAX"] = __version__
        for s in Status:
            tab.meta[f"STATUS{int(s)}"] = s.name
        return tab

    def write(self, path, *, overwrite: bool = False, model_flux: bool = False) -> Path:
        """Write the catalog (see :meth:`to_table`) to a FITS (or any astropy) file."""
        path = Path(path)
        tab = self.to_table(model_flux=model_flux)
        check_fits_ids(tab["id"], path)
        tab.write(path, overwrite=overwrite)
        return path

    @classmethod
    def read(cls, path) -> FitResult:
        """Read a catalog written by :meth:`write` back into a FitResult."""
        from astropy.table import Table

        tab = Table.read(path)
        if "LABELS" not in tab.meta:
            raise ValueError(f"{path} is not a slamjax catalog (no LABELS keyword)")
        names = tuple(tab.meta["LABELS"].split(","))
        labels = np.stack([np.asarray(tab[name], dtype=np.float64) for name in names], axis=1)
        return cls(
            labels=labels,
            cov=np.asarray(tab["cov"], dtype=np.float64).reshape(len(tab), len(names), len(names)),
            chi2=np.asarray(tab["chi2"], dtype=np.float64),
            n_pixels=np.asarray(tab["n_pixels"]),
            n_steps=np.asarray(tab["n_steps"]),
            status=np.asarray(tab["status"]).astype(np.int32),
            snr=np.asarray(tab["snr"], dtype=np.float64),
            model_flux=np.asarray(tab["model_flux"]) if "model_flux" in tab.colnames else None,
            ids=np.asarray(tab["id"]).astype(str),
            label_names=names,
            continuum_segments=(
                tuple(tuple(int(v) for v in seg.split("-")) for seg in tab.meta["CONTSEG"].split(","))
                if "CONTSEG" in tab.meta
                else None
            ),
            **{
                k: np.asarray(tab[k], dtype=np.float64)
                for k in ("rv", "rv_err", "continuum", "continuum_err", "cov_full")
                if k in tab.colnames
            },
        )
