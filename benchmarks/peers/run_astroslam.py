"""Train and test with astroslam 1.2022.1228.1 (SLAM, Zhang, Liu & Deng 2020; module ``slam``).

    .venv-peers/bin/python run_astroslam.py IN.npz OUT.npz        (protocol: _peer_io.py)

Calls, SLAM's documented workflow:
``Slam(wave, tr_flux, tr_ivar, tr_labels)`` (standardises flux and labels by mean and std),
``s.train_pixels(model="svr", method="grid", param_grid={C, gamma, epsilon}, cv=k, n_jobs=n_jobs)``
(one scikit-learn ``GridSearchCV(SVR)`` per pixel, k-fold CV on the MSE, refit on all stars),
``s.training_nmse()`` (the per-pixel model error that the test step uses; SLAM computes it
lazily on the first prediction, it is counted as training here), then per S/N group
``X0 = s.predict_labels_quick(flux, ivar)`` (nearest training spectrum in chi2) and
``s.predict_labels_multi(X0, flux, ivar, ivar_eps=...)`` (scipy ``least_squares``, trf, soft_l1;
errors from the Jacobian, ``pstd``).

Settings from IN.npz's config: ``C_grid``, ``gamma_grid``, ``epsilon_grid``, ``cv``, ``n_jobs``,
``ivar_eps``. Quirks (see README.md): SLAM drops test pixels whose *standardised* ivar
(ivar * flux_std²) is below ``ivar_eps`` (default 1, which removes real pixels at S/N ~ 20);
the config passes a tiny value so that all good pixels are used. Its model inverse variance is
MSE⁻² rather than MSE⁻¹ (used as the package does).
"""

import sys
import warnings

import numpy as np
from _peer_io import Timer, read_input, versions, write_output


def main(argv):
    data, cfg = read_input(argv[1])
    warnings.simplefilter("ignore")
    from slam import Slam

    names = list(cfg["label_names"])
    L = len(names)
    n_jobs = int(cfg.get("n_jobs", 1))
    grid = {
        "C": [float(c) for c in cfg["C_grid"]],
        "gamma": [float(g) for g in cfg["gamma_grid"]],
        "epsilon": [float(e) for e in cfg["epsilon_grid"]],
    }
    cv = int(cfg["cv"])
    ivar_eps = float(cfg.get("ivar_eps", 1e-12))
    te_flux, te_ivar, group = data["test_flux"], data["test_ivar"], data["test_group"]

    s = Slam(data["wave"], data["train_flux"].copy(), data["train_ivar"].copy(), data["train_labels"].copy())
    with Timer() as t_train:
        s.train_pixels(
            model="svr", method="grid", param_grid=grid, cv=cv, n_jobs=n_jobs, verbose=0, backend="multiprocessing"
        )
        s.training_nmse(n_jobs=n_jobs, verbose=0)

    labels = np.full((len(te_flux), L), np.nan)
    errs = np.full((len(te_flux), L), np.nan)
    ok = np.zeros(len(te_flux), bool)
    groups = np.unique(group)
    fit_s = []
    for g in groups:
        sel = group == g
        flux, ivar = te_flux[sel].copy(), te_ivar[sel].copy()
        with Timer() as t_fit:
            x0 = s.predict_labels_quick(flux, ivar, n_jobs=n_jobs)
            res = s.predict_labels_multi(x0, flux, ivar, ivar_eps=ivar_eps, n_jobs=n_jobs)
        fit_s.append(t_fit.seconds)
        labels[sel] = np.array([r["x"] for r in res], dtype=float)
        errs[sel] = np.array([r["pstd"] for r in res], dtype=float)
        ok[sel] = np.array([bool(r["success"]) for r in res])
    params = [sm.regressor.best_params_ for sm in s.sms]
    chosen = {k: [float(p[k]) for p in params] for k in ("C", "gamma", "epsilon")}
    info = {
        "versions": versions("astroslam"),
        "calls": f"Slam(...).train_pixels(model='svr', method='grid', cv={cv}); training_nmse(); "
        f"predict_labels_quick(); predict_labels_multi(ivar_eps={ivar_eps:g})",
        "param_grid": grid,
        "cv": cv,
        "n_jobs": n_jobs,
        "chosen_hyperparameters": {
            k: {str(u): int(c) for u, c in zip(*np.unique(v, return_counts=True))} for k, v in chosen.items()
        },
    }
    write_output(argv[2], labels, errs, ok, t_train.seconds, groups, fit_s, info)


if __name__ == "__main__":
    main(sys.argv)
