"""Input and output of the peer runners; runs under Python 3.9 inside benchmarks/peers/.venv-peers.

The protocol between ``benchmarks/compare_peers.py`` and a runner ``run_<peer>.py``::

    <peer python> run_<peer>.py IN.npz OUT.npz

IN.npz holds ``wave`` [P], ``train_flux``/``train_ivar`` [m, P], ``train_labels`` [m, L],
``test_flux``/``test_ivar`` [n, P], ``test_group`` [n] (int: one group per S/N level; each group
is fitted by its own, timed, call of the peer's test step) and ``config``: a JSON string with
``label_names``, ``n_jobs`` and the peer's settings. OUT.npz holds ``labels`` and ``labels_err``
[n, L] (physical units; NaN where the peer gave none), ``ok`` [n] (the peer reported success),
``train_s`` (wall seconds of the training call(s)), ``groups`` [G] and ``fit_s`` [G] (wall seconds
of the test-step call for each group) and ``info`` (JSON: versions and settings actually used).
Nothing here imports slamjax: the runners see the peer packages and their pins only.
"""

import importlib.metadata as md
import json
import platform
import sys
import time

import numpy as np

__all__ = ["Timer", "read_input", "versions", "write_output"]


def read_input(path):
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    config = json.loads(str(data.pop("config")))
    return data, config


def versions(*names):
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-learn", "joblib") + tuple(names):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


class Timer:
    """Wall-clock seconds of a ``with`` block (``time.perf_counter``)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def write_output(path, labels, labels_err, ok, train_s, groups, fit_s, info):
    labels = np.asarray(labels, dtype=np.float64)
    labels_err = np.asarray(labels_err, dtype=np.float64)
    if labels.shape != labels_err.shape or labels.ndim != 2:
        raise ValueError("labels and labels_err must both be [n, L]")
    np.savez(
        path,
        labels=labels,
        labels_err=labels_err,
        ok=np.asarray(ok, dtype=bool),
        train_s=np.float64(train_s),
        groups=np.asarray(groups, dtype=np.int64),
        fit_s=np.asarray(fit_s, dtype=np.float64),
        info=json.dumps(info),
    )
    print("runner wrote", path, file=sys.stderr)
