"""Label bias, scatter and MAE, optionally per S/N bin."""

from __future__ import annotations

import numpy as np

__all__ = ["ErrorModel", "fit_error_model", "label_distance", "label_stats"]


def label_stats(pred, true, snr=None, bins=None, label_names=None, err=None) -> dict:
    """Bias (mean of pred − true), scatter (std of pred − true), MAE and count per label.

    Non-finite predictions (e.g. failed fits) are excluded and counted in ``n_bad``.

    Arguments:
        pred, true: labels [N, L].
        snr: optional S/N [N]; with ``bins`` (edges) the statistics are also given per bin
            (``snr`` alone changes nothing).
        label_names: names for the L columns (default ``"0"``, ``"1"``, ...).
        err: optional 1σ errors [N, L] (not <= 0 where pred and true are finite); adds
            ``pull_mean`` and ``pull_std`` of (pred − true)/err over the ``n_pull`` finite pulls.

    Returns:
        ``{name: {"bias", "scatter", "mae", "n", "n_bad"[, "pull_mean", "pull_std", "n_pull"]}}``, and with bins a key
        ``"bins"``: a list of ``{"lo", "hi", <name>: {...}}``.
    """
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    true = np.atleast_2d(np.asarray(true, dtype=np.float64))
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} != true shape {true.shape}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(pred.shape[1])]
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} label names for {pred.shape[1]} columns")
    if err is not None:
        err = np.asarray(err, dtype=np.float64)
        if err.shape != pred.shape:
            raise ValueError(f"err shape {err.shape} != pred shape {pred.shape}")
        zero = np.isfinite(pred - true) & (err <= 0)
        if zero.any():  # a pull of ±inf would be dropped silently (NaN errors: excluded, see n_pull)
            raise ValueError(f"err must be > 0 where pred and true are finite; {int(zero.sum())} values are <= 0")

    def stats(sel):
        out = {}
        for j, name in enumerate(names):
            d = pred[sel, j] - true[sel, j]
            ok = np.isfinite(d)
            d = d[ok]
            out[name] = {
                "bias": float(np.mean(d)) if d.size else float("nan"),
                "scatter": float(np.std(d, ddof=1)) if d.size > 1 else float("nan"),
                "mae": float(np.mean(np.abs(d))) if d.size else float("nan"),
                "n": int(d.size),
                "n_bad": int((~ok).sum()),
            }
            if err is not None:
                pull = (pred[sel, j] - true[sel, j]) / err[sel, j]
                pull = pull[np.isfinite(pull)]
                out[name]["pull_mean"] = float(np.mean(pull)) if pull.size else float("nan")
                out[name]["pull_std"] = float(np.std(pull, ddof=1)) if pull.size > 1 else float("nan")
                out[name]["n_pull"] = int(pull.size)
        return out

    result = stats(np.ones(pred.shape[0], bool))
    if bins is not None:
        if snr is None:
            raise ValueError("bins need snr")
        snr = np.asarray(snr, dtype=np.float64)
        edges = np.asarray(bins, dtype=np.float64)
        result["bins"] = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (snr >= lo) & (snr < hi)
            if sel.any():
                result["bins"].append({"lo": float(lo), "hi": float(hi), **stats(sel)})
    return result


class ErrorModel:
    """Empirical label error versus S/N, σ(S/N) = a·exp(−b·S/N) + c per label (SLAM Table 1 form).

    ``coef[name] = (a, b, c)``; ``model(snr)`` gives σ [N, L] in the order of ``label_names``.
    """

    def __init__(self, coef: dict, label_names):
        self.coef = dict(coef)
        self.label_names = tuple(label_names)

    def __call__(self, snr) -> np.ndarray:
        snr = np.asarray(snr, dtype=np.float64)
        return np.stack([a * np.exp(-b * snr) + c for a, b, c in (self.coef[n] for n in self.label_names)], axis=-1)

    def __repr__(self) -> str:
        terms = ", ".join(f"{n}: {a:.4g}·exp(−{b:.4g}·S/N) + {c:.4g}" for n, (a, b, c) in self.coef.items())
        return f"ErrorModel({terms})"


def fit_error_model(snr, scatter, label_names) -> ErrorModel:
    """Fit σ(S/N) = a·exp(−b·S/N) + c (a, b, c >= 0) to label scatter measured at several S/N.

    Arguments:
        snr: S/N values [K] (e.g. the rungs of an S/N ladder or bin centres), K >= 3.
        scatter: measured scatter [K, L] at those S/N.
        label_names: the L names.
    """
    from scipy.optimize import curve_fit

    snr = np.asarray(snr, dtype=np.float64)
    scatter = np.asarray(scatter, dtype=np.float64)
    if snr.ndim != 1:
        raise ValueError(f"snr must be 1-D [K], got shape {snr.shape}")
    if snr.size < 3:
        raise ValueError("need scatter at >= 3 S/N values to fit a, b, c")
    names = (label_names,) if isinstance(label_names, str) else tuple(label_names)
    if scatter.ndim == 1 and len(names) == 1:
        scatter = scatter[:, None]
    if scatter.shape != (snr.size, len(names)):
        raise ValueError(
            f"scatter must be [K, L] = ({snr.size}, {len(names)}) for {snr.size} S/N values and the labels "
            f"{list(names)}, got shape {scatter.shape}"
        )

    def f(x, a, b, c):
        return a * np.exp(-b * x) + c

    coef = {}
    for j, name in enumerate(names):
        y = scatter[:, j]
        ok = np.isfinite(y)
        if ok.sum() < 3:
            raise ValueError(f"label {name!r}: fewer than 3 finite scatter values")
        x, y = snr[ok], y[ok]
        p0 = (max(y.max() - y.min(), 1e-12), 2.0 / np.median(x), max(y.min(), 0.0))
        popt, _ = curve_fit(f, x, y, p0=p0, bounds=([0, 0, 0], [np.inf, np.inf, np.inf]), maxfev=20000)
        coef[name] = tuple(float(v) for v in popt)
    return ErrorModel(coef, names)


def label_distance(a, b, scale) -> np.ndarray:
    """Distance between two label sets [N, L]: D = sqrt(Σ_l ((a_l − b_l)/s_l)²) per star.

    This is the label distance used by SLAM (eq. 11, after Ho et al. 2017) to compare two
    pipelines; ``scale`` [L] sets each label's unit (e.g. the typical precision of each label,
    100 K, 0.1 dex, 0.05 dex — the caller states which).
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    scale = np.asarray(scale, dtype=np.float64)
    if a.shape != b.shape or scale.shape != (a.shape[1],):
        raise ValueError(f"need a, b [N, L] of equal shape and scale [L]; got {a.shape}, {b.shape}, {scale.shape}")
    if not np.all(scale > 0):
        raise ValueError("scale must be > 0")
    return np.sqrt(np.sum(((a - b) / scale) ** 2, axis=1))
