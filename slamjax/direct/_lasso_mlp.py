"""LASSO feature selection + MLP regression, one network per label.

After Li, Wang, Zeng et al. (stellar parameters from LAMOST DR8 low-S/N spectra with a
LASSO-MLP): a LASSO regression of each label on the standardised fluxes selects the
informative pixels, and a small multilayer perceptron maps those pixels to the label.
Implementation here (not a port of any code):

* the L1 path ``min_b 1/(2n) |y - c - X b|² + α |b|₁`` is solved with FISTA (Beck &
  Teboulle 2009) on a decreasing log-spaced α grid, each α warm-started from the previous
  solution; the k cross-validation folds and the full fit run together (as 0/1 row
  weights under one ``vmap``), all labels at once;
* α is the grid value with the lowest k-fold CV mean squared error (among those that keep
  at least one pixel, and at most ``max_selected`` if given);
* the MLP (ReLU) is trained with AdamW (decoupled L2 weight decay), minibatches and early
  stopping on a validation split; ``ensemble=k`` trains k models, each validated on one of
  k folds, and averages their predictions.

The target for a label named ``teff`` is log10 Teff (``log_teff=True``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..validate import kfold_indices
from ._common import (
    DTYPE,
    AbstractDirectModel,
    InputScaler,
    LabelScaler,
    TrainSettings,
    as_key,
    ensemble_mean,
    register,
    split_train_val,
    stack_modules,
    train_network,
    training_arrays,
    tuplify,
)

__all__ = ["LassoMLP", "lasso_path"]


# ---------------------------------------------------------------------- LASSO
def _centred_ops(x, w):
    """Products with the row-weighted, column-centred design ``xc_f = W_f (x - 1 m_fᵀ)`` of every fold f.

    ``w`` [F, n] are 0/1 row weights, so ``W_f² = W_f``. ``x`` is never copied per fold:
    one [n, P] x [P, F·L] product serves all folds (the path is memory-bound on x).
    """
    nw = jnp.sum(w, axis=1)
    mx = (w @ x) / nw[:, None]  # [F, P]

    def mul(z):  # z [F, P, L] -> xc_f z_f [F, n, L]
        u = jnp.einsum("np,fpl->fnl", x, z) - jnp.einsum("fp,fpl->fl", mx, z)[:, None, :]
        return w[:, :, None] * u

    def mul_t(r):  # r [F, n, L] (zero where w = 0) -> xc_fᵀ r_f [F, P, L]
        return jnp.einsum("np,fnl->fpl", x, r) - mx[:, :, None] * jnp.sum(r, axis=1)[:, None, :]

    return nw, mx, mul, mul_t


def _lasso_paths(x, y, w, alphas, n_iter):
    """LASSO paths for F sets of 0/1 row weights ``w`` [F, n] and all labels at once.

    ``min_b 1/(2 n_f) Σ_i w_fi (y_i - c - x_i·b)² + α |b|₁`` with the intercept c profiled
    out by weighted centring; FISTA with a fixed step 1/Lip, warm-started along the
    decreasing ``alphas`` [A, L]. x [n, P], y [n, L]. Returns coefficients [F, A, P, L] and
    intercepts [F, A, L].
    """
    nw, mx, mul, mul_t = _centred_ops(x, w)
    my = (w @ y) / nw[:, None]  # [F, L]
    yc = w[:, :, None] * (y[None, :, :] - my[:, None, :])

    # Largest eigenvalue of xc_fᵀ xc_f by power iteration (converges from below, hence 1.1x).
    def power(_, v):
        u = mul_t(mul(v[:, :, None]))[:, :, 0]
        return u / jnp.maximum(jnp.linalg.norm(u, axis=1, keepdims=True), 1e-30)

    v = jax.lax.fori_loop(0, 60, power, jnp.ones(mx.shape, x.dtype) / jnp.sqrt(x.shape[1]))
    lip = 1.1 * jnp.sum(mul(v[:, :, None])[:, :, 0] ** 2, axis=1) / nw  # [F]
    step = (1.0 / lip)[:, None, None]

    def solve(b, alpha):
        thr = step * alpha[None, None, :]

        def body(_, state):
            b, z, t = state
            grad = mul_t(mul(z) - yc) / nw[:, None, None]
            v = z - step * grad
            b_new = jnp.sign(v) * jnp.maximum(jnp.abs(v) - thr, 0.0)
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            z = b_new + ((t - 1.0) / t_new) * (b_new - b)
            return b_new, z, t_new

        b, _, _ = jax.lax.fori_loop(0, n_iter, body, (b, b, jnp.ones((), x.dtype)))
        return b, b

    b0 = jnp.zeros((w.shape[0], x.shape[1], y.shape[1]), x.dtype)
    _, coefs = jax.lax.scan(solve, b0, alphas)  # [A, F, P, L]
    coefs = jnp.moveaxis(coefs, 0, 1)
    intercepts = my[:, None, :] - jnp.einsum("fp,fapl->fal", mx, coefs)
    return coefs, intercepts


@jax.jit
def _alpha_max(x, y):
    xc = x - jnp.mean(x, axis=0)[None, :]
    yc = y - jnp.mean(y, axis=0)[None, :]
    return jnp.max(jnp.abs(xc.T @ yc), axis=0) / x.shape[0]


_cv_paths = jax.jit(_lasso_paths, static_argnums=4)


def lasso_path(x, y, *, n_alphas: int = 20, alpha_min_ratio: float = 1e-3, n_iter: int = 100, cv: int = 3, seed=0):
    """LASSO paths of every column of ``y`` on ``x`` with k-fold CV errors.

    Arguments:
        x: [n, P] features (standardised fluxes), y: [n, L] targets (standardised).
        n_alphas, alpha_min_ratio: log-spaced grid from the smallest α that zeroes every
            coefficient (per label) down to ``alpha_min_ratio`` times it.
        n_iter: FISTA iterations per α (warm-started along the path).
        cv: number of folds; seed: fold assignment.

    Returns:
        dict with ``alphas`` [A, L], ``coef`` [A, P, L] and ``intercept`` [A, L] of the fit
        on all rows, ``cv_mse`` [A, L] (mean over folds of the held-out mean squared
        error) and ``n_nonzero`` [A, L].
    """
    x = jnp.asarray(x, DTYPE)
    y = jnp.asarray(y, DTYPE)
    n = x.shape[0]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"y must be [n={n}, L], got {y.shape}")
    if n_alphas < 2 or not 0 < alpha_min_ratio < 1:
        raise ValueError("need n_alphas >= 2 and 0 < alpha_min_ratio < 1")
    fold = kfold_indices(n, cv, seed)
    weights = np.stack([(fold != i) for i in range(cv)] + [np.ones(n, bool)]).astype(np.float32)
    amax = np.asarray(_alpha_max(x, y))
    grid = np.logspace(0.0, np.log10(alpha_min_ratio), n_alphas)
    alphas = (grid[:, None] * amax[None, :]).astype(np.float32)
    coefs, icpt = _cv_paths(x, y, jnp.asarray(weights), jnp.asarray(alphas), n_iter)
    coefs, icpt = np.asarray(coefs), np.asarray(icpt)
    xn, yn = np.asarray(x), np.asarray(y)
    mse = np.zeros((n_alphas, y.shape[1]))
    for i in range(cv):
        held = fold == i
        pred = np.einsum("np,apl->anl", xn[held], coefs[i]) + icpt[i][:, None, :]
        mse += np.mean((pred - yn[held][None]) ** 2, axis=1) / cv
    return {
        "alphas": alphas.astype(np.float64),
        "coef": coefs[cv],
        "intercept": icpt[cv],
        "cv_mse": mse,
        "n_nonzero": (coefs[cv] != 0).sum(axis=1),
    }


def _choose(path, max_selected, names):
    """Index of the chosen α per label and the selected pixel indices."""
    chosen, pixels = [], []
    for j, name in enumerate(names):
        nz = path["n_nonzero"][:, j]
        ok = nz >= 1
        if max_selected is not None and np.any(ok & (nz <= max_selected)):
            ok &= nz <= max_selected
        if not ok.any():
            raise ValueError(f"LASSO selected no pixel for label {name!r} at any alpha; it is not predictable here")
        a = int(np.argmin(np.where(ok, path["cv_mse"][:, j], np.inf)))
        chosen.append(a)
        pixels.append(np.flatnonzero(path["coef"][a, :, j] != 0))
    return chosen, pixels


# ---------------------------------------------------------------------- model
def _mse_loss(net, batch, key, inference):
    xb, yb = batch
    return jnp.mean((jax.vmap(net)(xb) - yb) ** 2)


def _mlp(n_in, width, depth, key):
    return eqx.nn.MLP(n_in, "scalar", width, depth, activation=jax.nn.relu, key=key, dtype=DTYPE)


@register
class LassoMLP(AbstractDirectModel):
    """LASSO-selected pixels -> MLP, one (ensemble of) network(s) per label.

    Method of Li, Wang, Zeng et al. (LAMOST DR8 low-S/N spectra, LASSO-MLP); see the
    module docstring for what is implemented. Create with :meth:`train`.

    Attributes:
        wave: wavelength grid [P].
        inputs: per-pixel standardisation with bad-pixel filling.
        targets: label scaling (log10 Teff, mean/std).
        pixels: per label, the indices of the LASSO-selected pixels.
        nets: per label, an MLP ensemble stacked along a leading axis of ``n_members``.
        alphas: the chosen LASSO α per label (on standardised flux and label).
    """

    wave: Float[Array, " P"]
    inputs: InputScaler
    targets: LabelScaler
    pixels: tuple[Int[Array, " S"], ...]
    nets: tuple[eqx.nn.MLP, ...]
    n_selected: tuple[int, ...] = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    n_members: int = eqx.field(static=True)
    alphas: tuple[float, ...] = eqx.field(static=True)

    @classmethod
    def train(
        cls,
        ds,
        key=0,
        label_names=None,
        *,
        width: int = 64,
        depth: int = 2,
        ensemble: int = 1,
        val_fraction: float = 0.2,
        n_alphas: int = 20,
        alpha_min_ratio: float = 1e-3,
        lasso_iter: int = 100,
        lasso_cv: int = 3,
        lasso_max_samples: int | None = 2000,
        max_selected: int | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 300,
        patience: int = 30,
        log_teff: bool = True,
    ) -> LassoMLP:
        """Train on a labelled SpectrumSet.

        Arguments:
            ds: SpectrumSet with labels; bad pixels (``ivar == 0``) are replaced by the
                per-pixel median of the good training fluxes before standardisation.
            key: int seed or jax PRNG key; training is deterministic given it.
            label_names: labels to learn (default: all of ``ds``), in output order.
            width, depth: MLP hidden width and number of hidden layers.
            ensemble: 1 = one network per label, validated on a random ``val_fraction``
                split; k >= 2 = k networks, network i validated on fold i of k, averaged.
            n_alphas, alpha_min_ratio, lasso_iter, lasso_cv: the LASSO path (see
                :func:`lasso_path`).
            lasso_max_samples: at most this many (random) training spectra for the LASSO
                path (its cost is linear in it); None = all.
            max_selected: prefer the best-CV α among those selecting at most this many pixels.
            learning_rate, weight_decay, batch_size, max_epochs, patience: AdamW and early stopping.
            log_teff: learn log10 of a label named ``teff``.

        Raises:
            ValueError: on an unusable training set or settings.
        """
        key = as_key(key)
        names, labels, flux, good = training_arrays(ds, label_names)
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        settings = TrainSettings(learning_rate, weight_decay, batch_size, max_epochs, patience)
        settings.check()
        inputs = InputScaler.from_training(flux, good, "pixel")
        targets = LabelScaler.from_training(labels, names, log_teff=log_teff, robust=False)
        x = np.asarray(jax.vmap(inputs)(jnp.asarray(flux, DTYPE), jnp.asarray(good)))
        z = np.asarray(jax.vmap(targets.to_target)(jnp.asarray(labels, DTYPE)))

        k_lasso, k_split, k_net = jax.random.split(key, 3)
        rows = np.arange(x.shape[0])
        if lasso_max_samples is not None and x.shape[0] > lasso_max_samples:
            rows = np.sort(np.asarray(jax.random.permutation(k_lasso, x.shape[0]))[:lasso_max_samples])
        seed = int(jax.random.randint(k_lasso, (), 0, 2**31 - 1))
        path = lasso_path(
            x[rows],
            z[rows],
            n_alphas=n_alphas,
            alpha_min_ratio=alpha_min_ratio,
            n_iter=lasso_iter,
            cv=lasso_cv,
            seed=seed,
        )
        chosen, pixels = _choose(path, max_selected, names)

        n = x.shape[0]
        if ensemble == 1:
            splits = [split_train_val(n, val_fraction, k_split)]
        else:
            fold = kfold_indices(n, ensemble, int(jax.random.randint(k_split, (), 0, 2**31 - 1)))
            splits = [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(ensemble)]
            # Equal sizes for all members (drops at most one star from some), so that one
            # compiled training step serves every member of a label.
            n_tr, n_va = min(len(t) for t, _ in splits), min(len(v) for _, v in splits)
            splits = [(t[:n_tr], v[:n_va]) for t, v in splits]

        nets = []
        for j, name in enumerate(names):
            xs = x[:, pixels[j]]
            members = []
            for m, (tr, va) in enumerate(splits):
                k_init, k_train = jax.random.split(jax.random.fold_in(k_net, j * 1000 + m))
                net = _mlp(xs.shape[1], width, depth, k_init)
                net, _ = train_network(
                    net,
                    _mse_loss,
                    (xs[tr], z[tr, j]),
                    (xs[va], z[va, j]),
                    settings,
                    k_train,
                    name=f"LassoMLP[{name}] member {m}",
                )
                members.append(net)
            nets.append(stack_modules(members))
        return cls(
            wave=jnp.asarray(ds.wave, jnp.float64),
            inputs=inputs,
            targets=targets,
            pixels=tuple(jnp.asarray(p, jnp.int32) for p in pixels),
            nets=tuple(nets),
            n_selected=tuple(int(p.size) for p in pixels),
            width=width,
            depth=depth,
            n_members=len(splits),
            alphas=tuple(float(path["alphas"][a, j]) for j, a in enumerate(chosen)),
        )

    def _target(self, filled):
        x = self.inputs.standardise(filled)
        return jnp.stack([ensemble_mean(net, x[pix]) for net, pix in zip(self.nets, self.pixels, strict=True)])

    @property
    def selected(self) -> dict[str, np.ndarray]:
        """Indices of the selected pixels per label name."""
        return {n: np.asarray(p) for n, p in zip(self.label_names, self.pixels, strict=True)}

    def selected_wavelengths(self, label: str) -> np.ndarray:
        """Wavelengths (Å) of the pixels selected for ``label``."""
        if label not in self.label_names:
            raise ValueError(f"unknown label {label!r}; have {list(self.label_names)}")
        return np.asarray(self.wave)[self.selected[label]]

    @classmethod
    def _skeleton(cls, config):
        t = config["targets"]
        targets = LabelScaler.skeleton(t["names"], t["log10"], t["robust"])
        key = jax.random.PRNGKey(0)
        n_members = int(config["n_members"])
        nets = tuple(
            eqx.filter_vmap(lambda k, s=s: _mlp(s, config["width"], config["depth"], k))(
                jax.random.split(key, n_members)
            )
            for s in config["n_selected"]
        )
        return cls(
            wave=jnp.zeros(config["n_pixels"], jnp.float64),
            inputs=InputScaler.skeleton(config["n_pixels"], config["inputs"]["mode"]),
            targets=targets,
            pixels=tuple(jnp.zeros(s, jnp.int32) for s in config["n_selected"]),
            nets=nets,
            n_selected=tuplify(config["n_selected"]),
            width=int(config["width"]),
            depth=int(config["depth"]),
            n_members=n_members,
            alphas=tuplify(config["alphas"]),
        )
