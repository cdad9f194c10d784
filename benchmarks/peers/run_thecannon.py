"""Train and test with TheCannon 0.7.3 (A. Y. Q. Ho; module ``TheCannon``) through its public API.

    .venv-peers/bin/python run_thecannon.py IN.npz OUT.npz        (protocol: _peer_io.py)

Calls: ``dataset.Dataset(wl, tr_ID, tr_flux, tr_ivar, tr_label, test_ID, test_flux, test_ivar)``,
``ds.set_label_names``, ``model.CannonModel(order=2, useErrors=False).train(ds)`` and, per S/N group,
``md.infer_labels(ds_group, starting_guess=zeros)`` (zeros = the training-label medians, the
package's pivots; its default is ones, i.e. pivot + one scale); timed as the median of
``config["test_repeats"]`` calls (default 1).

Quirks handled here (documented in benchmarks/peers/README.md):
- ``infer_labels`` returns the errors of the *pivoted and scaled* labels (sqrt of the curve_fit
  covariance of (label - pivot)/scale); they are multiplied by ``md.scales`` (a public attribute
  set by ``train``) to put them in physical units, as the labels are.
- ``infer_labels`` overwrites flux where ivar == 0 in the arrays it is given, so it gets copies.
- a failed curve_fit gives labels of -9999 (after de-scaling: scale * -9999 + pivot); those
  spectra are returned as NaN with ok = False.
- only order 2 is implemented in the test step (``_get_lvec`` is specialised to quadratic).
"""

import sys
import warnings

import numpy as np
from _peer_io import Timer, read_input, versions, write_output


def main(argv):
    data, cfg = read_input(argv[1])
    warnings.simplefilter("ignore")
    from TheCannon import dataset, model

    names = list(cfg["label_names"])
    L = len(names)
    wave, tr_flux, tr_ivar, tr_labels = (data[k] for k in ("wave", "train_flux", "train_ivar", "train_labels"))
    te_flux, te_ivar, group = data["test_flux"], data["test_ivar"], data["test_group"]
    tr_id = np.array([str(i) for i in range(len(tr_flux))])

    def make_ds(sel):
        ds = dataset.Dataset(
            wave,
            tr_id,
            tr_flux.copy(),
            tr_ivar.copy(),
            tr_labels.copy(),
            np.array([str(i) for i in np.flatnonzero(sel)]),
            te_flux[sel].copy(),
            te_ivar[sel].copy(),
        )
        ds.set_label_names(names)
        return ds

    groups = np.unique(group)
    ds_train = make_ds(group == groups[0])
    md = model.CannonModel(2, useErrors=False)
    with Timer() as t_train:
        md.train(ds_train)

    labels = np.full((len(te_flux), L), np.nan)
    errs = np.full((len(te_flux), L), np.nan)
    ok = np.zeros(len(te_flux), bool)
    fit_s = []
    repeats = int(cfg.get("test_repeats", 1))
    for g in groups:
        sel = group == g
        times = []
        for _ in range(repeats):  # the median of `repeats` calls, each on a fresh Dataset
            ds = make_ds(sel)  # Dataset construction (copies, S/N per spectrum) is not timed
            with Timer() as t_fit:
                err_scaled, _chisq = md.infer_labels(ds, starting_guess=np.zeros(L))
            times.append(t_fit.seconds)
        fit_s.append(float(np.median(times)))
        lab = np.asarray(ds.test_label_vals, dtype=float)
        err = np.asarray(err_scaled, dtype=float) * np.asarray(md.scales)[None, :]
        failed = np.any(np.isclose(lab, np.asarray(md.scales) * -9999.0 + np.asarray(md.pivots)), axis=1)
        lab[failed] = np.nan
        err[failed] = np.nan
        labels[sel], errs[sel], ok[sel] = lab, err, ~failed
    info = {
        "versions": versions("thecannon"),
        "calls": "TheCannon.model.CannonModel(2, useErrors=False).train(ds); .infer_labels(ds, starting_guess=0)",
        "error_units_fix": "errors multiplied by model.scales (returned in scaled-label units)",
    }
    write_output(argv[2], labels, errs, ok, t_train.seconds, groups, fit_s, info)


if __name__ == "__main__":
    main(sys.argv)
