"""Train The Cannon on half of the bundled MILES sample and fit the other half.

Run: python examples/quickstart.py

The error bars include the model's systematic label errors, measured by 5-fold cross-validation on
the training half: on real spectra the formal (χ²-curvature) errors alone are ~15 times too small,
and the last line shows both.
"""

import numpy as np

import slamjax as sj

ds = sj.data.load_sample()
train, test = ds[::2], ds[1::2]
em = sj.CannonEmulator.train(train)
systematics, _ = sj.validate.cv_systematics(train, "cannon", k=5)
em = em.with_systematics(systematics)
res = sj.fit_labels(em, test)
formal = sj.fit_labels(em, test, systematics=False)
stats = sj.diagnostics.label_stats(res.labels, test.labels, label_names=test.label_names)
pull = (res.labels - test.labels) / res.labels_err
for j, name in enumerate(test.label_names):
    s = stats[name]
    err, err_formal = np.nanmedian(res.labels_err[:, j]), np.nanmedian(formal.labels_err[:, j])
    print(
        f"{name:6s} bias {s['bias']:+9.3f}  scatter {s['scatter']:8.3f}  (n = {s['n']})  "
        f"median error {err:8.3f}  (formal alone {err_formal:.3f})  pull std {np.nanstd(pull[:, j]):.2f}"
    )
print("status counts:", res.summary())
res.write("quickstart_catalog.fits", overwrite=True)
