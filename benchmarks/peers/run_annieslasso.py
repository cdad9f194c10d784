"""Train and test with annieslasso 0.2.96 (A. R. Casey's The Cannon; module ``thecannon``).

    .venv-peers/bin/python run_annieslasso.py IN.npz OUT.npz      (protocol: _peer_io.py)

Calls: ``thecannon.vectorizer.PolynomialVectorizer(label_names, 2)``,
``thecannon.CannonModel(labels, flux, ivar, vectorizer, dispersion=wave, regularization=None)``,
``model.train(threads=None)`` and, per S/N group, ``model.test(flux, ivar, threads=None)``
(initial labels: the package default, the training-label medians). Both steps run serially.

Quirks handled here (documented in benchmarks/peers/README.md):
- ``test`` returns labels in physical units but the covariance of the *scaled* labels
  ((label - median) / scale, scale = 2.5-97.5 percentile range of the training labels); the
  errors are sqrt(diag(cov)) * ``model._scales``. This is the only non-public attribute read by
  any runner, and only to put the package's own covariance in physical units.
- ``train(threads=k)`` hands each pixel to ``pool.map`` one at a time, so it cannot use more
  than one core. ``test(threads=k > 1)`` hangs with numpy 1.23 / Python 3.9: unpickling the
  vectorizer in the pool workers fails (``BaseVectorizer.__setstate__``: UnboundLocalError
  'kwds'), the worker dies and ``pool.map`` waits for ever. So both run with ``threads=None``.
- a fit that ends exactly at its start is returned as NaN by the package (ok = False here).
"""

import sys
import warnings

import numpy as np
from _peer_io import Timer, read_input, versions, write_output


def main(argv):
    data, cfg = read_input(argv[1])
    warnings.simplefilter("ignore")
    import thecannon as tc

    names = list(cfg["label_names"])
    L = len(names)
    te_flux, te_ivar, group = data["test_flux"], data["test_ivar"], data["test_group"]
    vec = tc.vectorizer.PolynomialVectorizer(names, 2)
    model = tc.CannonModel(
        data["train_labels"], data["train_flux"], data["train_ivar"], vec, dispersion=data["wave"], regularization=None
    )
    with Timer() as t_train:
        model.train(threads=None)

    labels = np.full((len(te_flux), L), np.nan)
    errs = np.full((len(te_flux), L), np.nan)
    groups = np.unique(group)
    fit_s = []
    repeats = int(cfg.get("test_repeats", 1))
    for g in groups:
        sel = group == g
        times = []
        for _ in range(repeats):  # the median of `repeats` calls
            with Timer() as t_fit:
                lab, cov, _meta = model.test(te_flux[sel], te_ivar[sel], threads=None)
            times.append(t_fit.seconds)
        fit_s.append(float(np.median(times)))
        lab = np.asarray(lab, dtype=float)
        scales = np.asarray(model._scales, dtype=float)
        err = np.array(
            [np.full(L, np.nan) if c is None else np.sqrt(np.diag(np.asarray(c, dtype=float))) * scales for c in cov]
        )
        labels[sel], errs[sel] = lab, err
    ok = np.all(np.isfinite(labels), axis=1)
    info = {
        "versions": versions("annieslasso"),
        "calls": "thecannon.CannonModel(labels, flux, ivar, PolynomialVectorizer(names, 2)).train(); "
        ".test(flux, ivar, threads=None)",
        "error_units_fix": "sqrt(diag(cov)) multiplied by model._scales (cov returned in scaled-label units)",
    }
    write_output(argv[2], labels, errs, ok, t_train.seconds, groups, fit_s, info)


if __name__ == "__main__":
    main(sys.argv)
