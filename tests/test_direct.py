"""Direct (spectrum -> labels) baselines: learning, pixel selection, files, input checks, VMP report.

Sizes are tiny (a few hundred spectra of 128-256 pixels, few epochs); each model is
trained once per module and shared between tests.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slamjax as sj
import slamjax.direct as sd
from slamjax.direct._common import FORMAT_VERSION, TrainSettings, train_network

N_TRAIN = 240


def lines_problem(n=300, p=192, seed=0, snr=100.0):
    """Four Gaussian absorption lines whose depths depend linearly on (teff, logg); white noise."""
    rng = np.random.default_rng(seed)
    lab = np.stack([rng.uniform(4500, 6500, n), rng.uniform(1.0, 5.0, n)], axis=1)
    t = (lab[:, 0] - 5500) / 1000
    g = (lab[:, 1] - 3) / 2
    x = np.arange(p)
    flux = np.ones((n, p))
    for c, dt, dg in [(30, 0.3, 0.0), (70, 0.2, 0.1), (110, 0.0, 0.3), (160, -0.2, 0.2)]:
        flux -= (0.4 + dt * t + dg * g)[:, None] * np.exp(-0.5 * ((x[None, :] - c) / 2.0) ** 2)
    flux += rng.normal(size=flux.shape) / snr
    ivar = np.full_like(flux, snr**2)
    ivar[:5, :20] = 0.0  # some bad pixels in training and test spectra
    ivar[-3:, 100:120] = 0.0
    ivar[:, -1] = 0.0  # a pixel bad in every spectrum
    wave = np.linspace(5000.0, 5000.0 + 0.5 * p, p, endpoint=False)
    return sj.SpectrumSet(wave, flux, ivar, lab, ["teff", "logg"])


@pytest.fixture(scope="module")
def lines():
    return lines_problem()


def _mae_ratio(model, ds):
    """MAE of the model on held-out stars / MAE of predicting the training mean, per label."""
    test = ds[N_TRAIN:]
    pred = model.predict(test.flux, test.ivar)
    assert pred.shape == (test.n_spectra, 2) and pred.dtype == np.float64
    mean = ds.labels[:N_TRAIN].mean(axis=0)
    return np.mean(np.abs(pred - test.labels), axis=0) / np.mean(np.abs(test.labels - mean), axis=0)


@pytest.fixture(scope="module")
def lasso(lines):
    return sd.LassoMLP.train(lines[:N_TRAIN], key=jax.random.PRNGKey(0), max_epochs=80, patience=20, n_alphas=12)


@pytest.fixture(scope="module")
def resmlp(lines):
    return sd.ResidualMLP.train(lines[:N_TRAIN], key=1, width=32, head_width=16, max_epochs=60, batch_size=32)


@pytest.fixture(scope="module")
def cnn(lines):
    return sd.SpectrumCNN.train(lines[:N_TRAIN], key=2, channels=(4, 8), max_epochs=40, batch_size=32)


@pytest.fixture(scope="module")
def models(lasso, resmlp, cnn):
    return {"lasso": lasso, "resmlp": resmlp, "cnn": cnn}


# ---------------------------------------------------------------------- learning
@pytest.mark.parametrize(("name", "bound"), [("lasso", 0.35), ("resmlp", 0.5), ("cnn", 0.5)])
def test_learns_better_than_mean(models, lines, name, bound):
    ratio = _mae_ratio(models[name], lines)
    assert np.all(ratio < bound), ratio


def test_label_names_and_wave(models, lines):
    for m in models.values():
        assert m.label_names == ("teff", "logg")
        np.testing.assert_array_equal(np.asarray(m.wave), lines.wave)


def test_lasso_selects_informative_pixels():
    rng = np.random.default_rng(5)
    n, p = 200, 60
    lab = np.stack([rng.uniform(4500, 6500, n), rng.uniform(1, 5, n)], axis=1)
    flux = 1.0 + 0.01 * rng.normal(size=(n, p))
    flux[:, 12] += 0.1 * (lab[:, 0] - 5500) / 1000
    flux[:, 40] += 0.1 * (lab[:, 1] - 3) / 2
    flux[:, 41] -= 0.05 * (lab[:, 1] - 3) / 2
    ds = sj.SpectrumSet(np.arange(p) + 5000.0, flux, np.full_like(flux, 1e4), lab, ["teff", "logg"])
    m = sd.LassoMLP.train(ds, key=0, max_epochs=2, n_alphas=15, max_selected=5)
    sel = m.selected
    assert 12 in sel["teff"] and {40, 41} <= set(sel["logg"].tolist())
    assert sel["teff"].size <= 5 and sel["logg"].size <= 5
    np.testing.assert_array_equal(m.selected_wavelengths("logg"), ds.wave[sel["logg"]])
    with pytest.raises(ValueError, match="unknown label"):
        m.selected_wavelengths("fe_h")


def test_lasso_path_matches_coordinate_descent():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 20))
    x = (x - x.mean(0)) / x.std(0)
    y = (x[:, [3]] - 0.5 * x[:, [7]]) + 0.1 * rng.normal(size=(120, 1))
    path = sd.lasso_path(x, y, n_alphas=6, n_iter=400, cv=3)
    a, xc, yc = path["alphas"][3, 0], x - x.mean(0), y[:, 0] - y[:, 0].mean()
    b = np.zeros(20)
    for _ in range(300):  # reference: cyclic coordinate descent
        for j in range(20):
            rho = xc[:, j] @ (yc - xc @ b + xc[:, j] * b[j]) / 120
            b[j] = np.sign(rho) * max(abs(rho) - a, 0.0) / (xc[:, j] @ xc[:, j] / 120)
    np.testing.assert_allclose(path["coef"][3, :, 0], b, atol=1e-4)
    assert path["cv_mse"].shape == (6, 1) and path["n_nonzero"][0, 0] == 0


def test_ensemble_and_label_order(lines):
    m = sd.LassoMLP.train(lines[:N_TRAIN], key=4, label_names=("logg", "teff"), ensemble=2, max_epochs=30, n_alphas=8)
    assert m.n_members == 2 and m.label_names == ("logg", "teff")
    assert all(int(jax.tree_util.tree_leaves(net)[0].shape[0]) == 2 for net in m.nets)
    test = lines[N_TRAIN:]
    pred = m.predict(test.flux, test.ivar)[:, ::-1]  # back to (teff, logg)
    base = np.mean(np.abs(test.labels - lines.labels[:N_TRAIN].mean(axis=0)), axis=0)
    assert np.all(np.mean(np.abs(pred - test.labels), axis=0) / base < 0.5)


def test_fold2d_runs(lines, tmp_path):
    m = sd.SpectrumCNN.train(lines[:40], key=0, fold2d=True, channels=(2,), max_epochs=2, dense=4)
    pred = m.predict(lines.flux[:5], lines.ivar[:5])
    assert pred.shape == (5, 2) and np.all(np.isfinite(pred))
    np.testing.assert_array_equal(
        sd.load_model(m.save(tmp_path / "cnn2d")).predict(lines.flux[:5]), m.predict(lines.flux[:5])
    )


def test_deterministic_given_key(lines, cnn):
    again = sd.SpectrumCNN.train(lines[:N_TRAIN], key=2, channels=(4, 8), max_epochs=40, batch_size=32)
    np.testing.assert_array_equal(again.predict(lines.flux[N_TRAIN:]), cnn.predict(lines.flux[N_TRAIN:]))


# ---------------------------------------------------------------------- prediction input
def test_predict_handles_bad_pixels(lasso, lines):
    flux, ivar = lines.flux[-3:].copy(), lines.ivar[-3:].copy()
    ref = lasso.predict(flux, ivar)
    flux[:, 100:120] = np.nan  # already ivar = 0 there: the value must not matter
    np.testing.assert_array_equal(lasso.predict(flux, ivar), ref)
    one = lasso.predict(lines.flux[-1], lines.ivar[-1])  # a single spectrum [P]
    np.testing.assert_array_equal(one, ref[-1:])
    ivar[0] = 0.0
    out = lasso.predict(flux, ivar)
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1:]))


def test_predict_spectrumset(cnn, lines):
    np.testing.assert_array_equal(cnn.predict(lines[:7]), cnn.predict(lines.flux[:7], lines.ivar[:7]))
    other = sj.SpectrumSet(lines.wave + 1.0, lines.flux[:3], lines.ivar[:3])
    with pytest.raises(ValueError, match="wavelength grid"):
        cnn.predict(other)


@pytest.mark.parametrize(
    ("flux_shape", "ivar_fn", "match"),
    [
        ((4, 100), None, r"flux must be \[N, 192\]"),
        ((4, 192), lambda f: np.ones((4, 191)), "does not match"),
        ((4, 192), lambda f: np.where(np.arange(192) == 3, np.nan, 1.0) * np.ones((4, 1)), "NaN"),
        ((4, 192), lambda f: -np.ones_like(f), "negative"),
        ((2, 4, 192), None, r"flux must be \[N, 192\]"),
    ],
)
def test_predict_bad_input(resmlp, flux_shape, ivar_fn, match):
    flux = np.ones(flux_shape)
    ivar = None if ivar_fn is None else ivar_fn(flux)
    with pytest.raises(ValueError, match=match):
        resmlp.predict(flux, ivar)


def test_train_bad_input(lines):
    with pytest.raises(TypeError, match="SpectrumSet"):
        sd.ResidualMLP.train(lines.flux, key=0)
    unlabelled = sj.SpectrumSet(lines.wave, lines.flux, lines.ivar)
    with pytest.raises(ValueError, match="no labels"):
        sd.SpectrumCNN.train(unlabelled, key=0)
    labels = lines.labels.copy()
    labels[3, 0] = np.nan
    nan_lab = sj.SpectrumSet(lines.wave, lines.flux, lines.ivar, labels, lines.label_names)
    with pytest.raises(ValueError, match="non-finite labels"):
        sd.LassoMLP.train(nan_lab, key=0)
    with pytest.raises(ValueError, match="unknown label"):
        sd.LassoMLP.train(lines, key=0, label_names=["fe_h"])
    with pytest.raises(ValueError, match="not the string"):  # was read as the labels 't', 'e', 'f', 'f'
        sd.LassoMLP.train(lines, key=0, label_names="teff")
    with pytest.raises(ValueError, match="kernel_size"):
        sd.SpectrumCNN.train(lines, key=0, kernel_size=4)
    with pytest.raises(TypeError, match="key"):
        sd.SpectrumCNN.train(lines, key="seed")


def test_robust_label_scale_of_a_label_most_stars_share():
    """robust=True scales by the IQR; a label with most stars at one value (an [α/M] = 0 grid)
    has IQR 0 but a real spread: it falls back to the standard deviation instead of refusing."""
    from slamjax.direct._common import LabelScaler

    alpha = np.r_[np.zeros(80), np.linspace(0.1, 0.4, 20)]
    labels = np.column_stack([np.linspace(4000, 7000, 100), alpha])
    sc = LabelScaler.from_training(labels, ("teff", "alpha_m"), log_teff=True, robust=True)
    assert float(sc.scale[1]) == pytest.approx(alpha.std(), rel=1e-6) and float(sc.center[1]) == 0.0
    with pytest.raises(ValueError, match="zero spread"):
        LabelScaler.from_training(labels * [1, 0], ("teff", "alpha_m"), log_teff=True, robust=True)


def test_nan_loss_raises():
    net = eqx_linear()
    settings = TrainSettings(max_epochs=3, batch_size=4)
    x = jnp.ones((8, 3), jnp.float32)

    def loss(net, batch, key, inference):
        return jnp.mean(jax.vmap(net)(batch[0])) * jnp.nan

    with pytest.raises(FloatingPointError, match="diverged at epoch 0"):
        train_network(net, loss, (x,), (x,), settings, jax.random.PRNGKey(0))


def eqx_linear():
    import equinox as eqx

    return eqx.nn.Linear(3, 1, key=jax.random.PRNGKey(0), dtype=jnp.float32)


def test_huge_learning_rate_stops_with_error(lines):
    with pytest.raises(FloatingPointError, match="diverged"):
        sd.SpectrumCNN.train(lines[:40], key=0, channels=(2,), learning_rate=1e30, weight_decay=0.0, max_epochs=3)


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("name", ["lasso", "resmlp", "cnn"])
def test_save_load_round_trip(models, lines, tmp_path, name):
    m = models[name]
    path = m.save(tmp_path / name)
    assert path.suffix == ".npz"
    m2 = sd.load_model(path)
    assert type(m2) is type(m) and m2.label_names == m.label_names
    np.testing.assert_array_equal(m2.predict(lines.flux, lines.ivar), m.predict(lines.flux, lines.ivar))
    for a, b in zip(jax.tree_util.tree_leaves(m), jax.tree_util.tree_leaves(m2), strict=True):
        if isinstance(a, jax.Array):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    header = sd.read_header(path)
    assert header["format"] == "slamjax-direct" and header["model"] == type(m).__name__
    assert header["label_names"] == ["teff", "logg"] and header["wave"]["n_pixels"] == lines.n_pixels
    with np.load(path, allow_pickle=False) as data:  # no object arrays anywhere
        assert all(data[k].dtype != object for k in data.files)


def test_load_refuses_newer_and_foreign(lasso, tmp_path, cannon):
    path = lasso.save(tmp_path / "m.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays["__header__"]))
    header["format_version"] = FORMAT_VERSION + 1
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(ValueError, match="newer"):
        sd.load_model(tmp_path / "newer.npz")
    with pytest.raises(ValueError, match="load_emulator"):
        sd.load_model(cannon.save(tmp_path / "cannon.npz"))
    with pytest.raises(FileNotFoundError):
        sd.load_model(tmp_path / "missing.npz")
    header["format_version"] = FORMAT_VERSION
    arrays["__header__"] = np.array(json.dumps(header))
    del arrays["leaf_0000"]
    np.savez(tmp_path / "missing_leaf.npz", **arrays)
    with pytest.raises(ValueError, match="missing from the file"):
        sd.load_model(tmp_path / "missing_leaf.npz")
    header["arrays"].remove("leaf_0000")
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(ValueError, match="arrays stored"):
        sd.load_model(tmp_path / "short.npz")


# ---------------------------------------------------------------------- VMP report
def test_vmp_report_hand_made():
    true = np.array([-2.5, -2.2, -2.1, -1.9, -1.0, -0.5, -2.4, -1.5])
    pred = np.array([-2.4, -1.8, -2.3, -2.1, -1.2, -0.4, -2.6, -1.4])
    # true VMP: 0, 1, 2, 6 ; predicted VMP: 0, 2, 3, 6 -> TP = 3 (0, 2, 6), FN = 1 (1), FP = 1 (3), TN = 3
    r = sd.vmp_report(true, pred)
    np.testing.assert_array_equal(r["confusion"], [[3, 1], [1, 3]])
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 1, 1, 3)
    assert r["completeness"] == pytest.approx(0.75) and r["contamination"] == pytest.approx(0.25)
    r = sd.vmp_report(true, pred, threshold=-3.0)
    assert np.isnan(r["completeness"]) and np.isnan(r["contamination"]) and r["tn"] == 8
    with pytest.raises(ValueError, match="equal length"):
        sd.vmp_report(true, pred[:-1])
    with pytest.raises(ValueError, match="finite"):
        sd.vmp_report(true, np.where(pred > -1, np.nan, pred))
