"""Optional plots. matplotlib is imported lazily; install it with ``pip install -e ".[plot]"``.

Figures are drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``,
rendered by the non-interactive Agg backend), so no display is needed and the caller's
pyplot state and backend are left untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["cod_spectrum", "cv_mse_spectra", "label_unit", "one_to_one", "scatter_vs_snr"]

_PRETTY = {"teff": r"$T_\mathrm{eff}$", "logg": r"$\log g$", "fe_h": "[Fe/H]"}
_INSTALL_HINT = 'install it with `pip install matplotlib` (or `pip install -e ".[plot]"` in a slamjax checkout)'


def label_unit(name: str) -> str:
    """Unit of a label by slamjax's conventions: ``"K"`` for Teff, ``"dex"`` for log g and abundances."""
    low = name.lower()
    if low in ("teff", "t_eff"):
        return "K"
    if low == "logg" or low.endswith(("_h", "_fe")) or low.startswith("["):
        return "dex"
    return ""


def _decimals(name: str) -> int:
    return 0 if label_unit(name) == "K" else 3


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f"slamjax.plot needs matplotlib, which is not installed; {_INSTALL_HINT}") from err
    return matplotlib


def one_to_one(pred, true, label_names, path, err=None, status=None) -> Path:
    """Fitted versus true labels, one panel per label, with the 1:1 line; saved as a PNG.

    Arguments:
        pred: fitted labels [N, L] (physical units: Teff in K).
        true: reference labels [N, L].
        label_names: the L label names.
        path: output file (PNG; the format follows the extension).
        err: optional 1σ errors of ``pred`` [N, L], drawn as error bars.
        status: optional :class:`slamjax.Status` codes [N]; spectra whose fit did not
            converge are marked separately.

    Each panel's title gives the bias (mean of pred − true) and scatter (standard
    deviation of pred − true) over the finite pairs.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: on inconsistent shapes.
    """
    _require_matplotlib()
    from matplotlib.figure import Figure

    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    true = np.atleast_2d(np.asarray(true, dtype=np.float64))
    names = [str(s) for s in label_names]
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} != true shape {true.shape}")
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} label names for {pred.shape[1]} label columns")
    if err is not None:
        err = np.atleast_2d(np.asarray(err, dtype=np.float64))
        if err.shape != pred.shape:
            raise ValueError(f"err shape {err.shape} != pred shape {pred.shape}")
    n = pred.shape[0]
    if status is not None:
        status = np.asarray(status).reshape(-1)
        if status.shape != (n,):
            raise ValueError(f"status must have shape ({n},), got {status.shape}")
        converged = status == 0
    else:
        converged = np.ones(n, dtype=bool)

    n_lab = len(names)
    fig = Figure(figsize=(4.3 * n_lab, 4.5), layout="constrained")
    axes = fig.subplots(1, n_lab, squeeze=False)[0]
    for j, (name, ax) in enumerate(zip(names, axes)):
        x, y = true[:, j], pred[:, j]
        finite = np.isfinite(x) & np.isfinite(y)
        d = (y - x)[finite]
        unit = label_unit(name)
        dec = _decimals(name)
        pretty = _PRETTY.get(name, name)
        good = finite & converged
        flagged = finite & ~converged
        if err is not None and good.any():
            e = np.where(np.isfinite(err[:, j]), err[:, j], 0.0)
            ax.errorbar(x[good], y[good], yerr=e[good], fmt="none", ecolor="0.75", elinewidth=0.6, zorder=1)
        ax.scatter(x[good], y[good], s=9, c="C0", zorder=2, label="converged" if status is not None else None)
        if flagged.any():
            ax.scatter(
                x[flagged], y[flagged], s=16, c="C3", marker="x", zorder=3, label=f"not CONVERGED ({flagged.sum()})"
            )
        if finite.any():
            lo = min(x[finite].min(), y[finite].min())
            hi = max(x[finite].max(), y[finite].max())
            pad = 0.04 * (hi - lo) if hi > lo else 1.0
            lim = (lo - pad, hi + pad)
            ax.plot(lim, lim, color="k", linestyle="--", linewidth=0.8, zorder=4)
            ax.set_xlim(lim)
            ax.set_ylim(lim)
        if d.size:
            bias = f"{np.mean(d):+.{dec}f}"
            scatter = f"{np.std(d, ddof=1):.{dec}f}" if d.size > 1 else "n/a"
            ax.set_title(f"{pretty}: bias {bias} {unit}, scatter {scatter} {unit}".replace(" ,", ","), fontsize=10)
        else:
            ax.set_title(f"{pretty}: no finite fits", fontsize=10)
        suffix = f" [{unit}]" if unit else ""
        ax.set_xlabel(f"{pretty} reference{suffix}")
        ax.set_ylabel(f"{pretty} fitted{suffix}")
        if status is not None and flagged.any():
            ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _figure(n_rows: int, width: float = 12.0, height: float = 2.6):
    _require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def cod_spectrum(wave, cod, path, label_names=None, full=None) -> Path:
    """Coefficients of dependence versus wavelength (SLAM Fig. 8 style), one panel per label.

    Arguments:
        wave: wavelengths [P] (Å).
        cod: per-label CODs [P, L], or the dict returned by :func:`slamjax.diagnostics.cod`
            (then ``label_names`` and ``full`` are taken from it).
        path: output file (PNG).
        label_names: the L label names.
        full: optional full COD [P], drawn in grey behind each panel.
    """
    if isinstance(cod, dict):
        label_names = cod["label_names"] if label_names is None else label_names
        full = cod["full"] if full is None else full
        cod = cod["per_label"]
    wave, cod = np.asarray(wave), np.asarray(cod)
    if cod.ndim != 2 or cod.shape[0] != wave.shape[0]:
        raise ValueError(f"cod must be [P={wave.shape[0]}, L], got {cod.shape}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(cod.shape[1])]
    fig, axes = _figure(cod.shape[1])
    for j, ax in enumerate(axes):
        if full is not None:
            ax.plot(wave, np.asarray(full), color="0.8", lw=0.6, label="full COD")
        ax.plot(wave, cod[:, j], lw=0.6, color=f"C{j}", label=f"COD({_PRETTY.get(names[j], names[j])})")
        ax.set_ylabel("COD")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("wavelength [Å]")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def cv_mse_spectra(wave, mse: dict, path) -> Path:
    """Per-pixel CV MSE (standardised flux) of several emulators, e.g. ``{"kernel": ..., "cannon": ...}``."""
    wave = np.asarray(wave)
    fig, axes = _figure(1, height=3.2)
    ax = axes[0]
    for i, (name, values) in enumerate(mse.items()):
        values = np.asarray(values)
        if values.shape != wave.shape:
            raise ValueError(f"{name}: CV MSE must be [P={wave.shape[0]}], got {values.shape}")
        ax.plot(wave, values, lw=0.6, color=f"C{i}", label=f"{name} (median {np.nanmedian(values):.3f})")
    ax.set_ylabel("CV MSE (standardised flux)")
    ax.set_xlabel("wavelength [Å]")
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def scatter_vs_snr(snr, scatter: dict, label_names, path, bias: dict | None = None, models: dict | None = None) -> Path:
    """Label scatter (and bias) versus S/N, one panel per label, one line per emulator; saved as a PNG.

    Arguments:
        snr: the S/N values [K] (e.g. the rungs of :func:`slamjax.validate.snr_ladder`).
        scatter: ``{name: [K, L]}`` scatter (std of fitted − true) per S/N and label, one entry
            per emulator (physical units: Teff in K).
        label_names: the L label names.
        path: output file (PNG; the format follows the extension).
        bias: optional ``{name: [K, L]}`` bias (mean of fitted − true); drawn in a second row
            of panels, with the zero line.
        models: optional ``{name: callable}`` mapping S/N [M] to σ [M, L], e.g. the
            :class:`slamjax.diagnostics.ErrorModel` of ``LadderResult.error_model()``; drawn as
            dotted curves over the measured scatter in the colour of that emulator.

    The S/N axis is logarithmic, with a tick at every S/N value.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: on inconsistent shapes or non-positive S/N.
    """
    _require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    snr = np.asarray(snr, dtype=np.float64).reshape(-1)
    names = [str(s) for s in label_names]
    if snr.size == 0 or not np.all(np.isfinite(snr) & (snr > 0)):
        raise ValueError(f"snr must be finite and > 0 with at least one value, got {snr}")
    if not scatter:
        raise ValueError("scatter has no entries")

    def checked(what, table):
        out = {}
        for key, values in table.items():
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (snr.size, len(names)):
                raise ValueError(f"{what}[{key!r}] must be [K={snr.size}, L={len(names)}], got {values.shape}")
            out[key] = values
        return out

    scatter = checked("scatter", scatter)
    bias = checked("bias", bias) if bias is not None else None
    colours = {key: f"C{i}" for i, key in enumerate(scatter)}
    order = np.argsort(snr)
    grid = np.geomspace(snr.min(), snr.max(), 100) if snr.size > 1 else snr
    n_rows = 1 if bias is None else 2
    n_lab = len(names)
    fig = Figure(figsize=(4.3 * n_lab, 3.4 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_lab, squeeze=False, sharex=True)
    for j, name in enumerate(names):
        unit = label_unit(name)
        suffix = f" [{unit}]" if unit else ""
        pretty = _PRETTY.get(name, name)
        ax = axes[0, j]
        for key, values in scatter.items():
            ax.plot(snr[order], values[order, j], "o-", color=colours[key], ms=4, lw=1.2, label=key)
            if models is not None and key in models and snr.size > 1:
                curve = np.asarray(models[key](grid), dtype=np.float64)[:, j]
                ax.plot(grid, curve, ":", color=colours[key], lw=1.0, label=f"{key}: a·exp(−b·S/N) + c")
        ax.set_title(pretty, fontsize=10)
        ax.set_ylabel(f"scatter{suffix}")
        ax.set_ylim(bottom=0)
        if j == 0:
            ax.legend(loc="best", fontsize=8)
        if bias is not None:
            ax = axes[1, j]
            ax.axhline(0.0, color="k", lw=0.8, ls="--")
            for key, values in bias.items():
                ax.plot(snr[order], values[order, j], "s-", color=colours.get(key, "0.4"), ms=4, lw=1.2, label=key)
            ax.set_ylabel(f"bias{suffix}")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(snr[order], labels=[f"{s:g}" for s in snr[order]])
        axes[-1, j].set_xlabel("S/N per pixel")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
