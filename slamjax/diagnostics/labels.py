"""Label bias, scatter and MAE, optionally per S/N bin."""

from __future__ import annotations

import numpy as np

__all__ = ["label_stats"]


def label_stats(pred, true, snr=None, bins=None, label_names=None) -> dict:
    """Bias (mean of pred − true), scatter (std of pred − true), MAE and count per label.

    Non-finite predictions (e.g. failed fits) are excluded and counted in ``n_bad``.

    Arguments:
        pred, true: labels [N, L].
        snr: optional S/N [N]; with ``bins`` (edges) the statistics are also given per bin.
        label_names: names for the L columns (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{name: {"bias", "scatter", "mae", "n", "n_bad"}}``, and with bins a key
        ``"bins"``: a list of ``{"lo", "hi", <name>: {...}}``.
    """
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    true = np.atleast_2d(np.asarray(true, dtype=np.float64))
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} != true shape {true.shape}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(pred.shape[1])]
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} label names for {pred.shape[1]} columns")

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
