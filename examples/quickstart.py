"""Train The Cannon on half of the bundled MILES sample and fit the other half.

Run: python examples/quickstart.py
"""

import numpy as np

import slamjax as sj

ds = sj.data.load_sample()
train, test = ds[::2], ds[1::2]
em = sj.CannonEmulator.train(train)
res = sj.fit_labels(em, test)
stats = sj.diagnostics.label_stats(res.labels, test.labels, label_names=test.label_names)
for name in test.label_names:
    s = stats[name]
    print(f"{name:6s} bias {s['bias']:+9.3f}  scatter {s['scatter']:8.3f}  (n = {s['n']})")
print("status counts:", res.summary())
print("median formal errors:", dict(zip(res.label_names, np.nanmedian(res.labels_err, axis=0).round(3))))
res.write("quickstart_catalog.fits", overwrite=True)
