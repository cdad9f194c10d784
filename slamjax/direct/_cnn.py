"""Convolutional regressor (1-D, or 2-D on a folded spectrum) and a very-metal-poor report.

After Bu et al. (convolutional and residual neural networks for stellar parameters and
abundances, and the search for very metal-poor stars in LAMOST spectra): a stack of
convolution + ReLU + max-pooling layers followed by a dense head that outputs every label.
Implementation here (not a port of any code):

* ``fold2d=False``: 1-D convolutions (odd ``kernel_size``, 'same' padding) on the
  standardised spectrum, each followed by max pooling by ``pool``;
* ``fold2d=True``: the standardised spectrum is zero-padded (0 = training mean) or
  truncated at the red end to 4096 pixels and folded row by row into a 64 x 64 image;
  3 x 3 convolutions, 2 x 2 max pooling;
* dense head: Linear -> ReLU -> dropout -> Linear to all labels; MSE on standardised
  targets (log10 Teff), AdamW, early stopping keeping the best-validation weights.

Inputs: bad pixels filled with the per-pixel training median, then per-pixel standardisation.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._common import (
    DTYPE,
    AbstractDirectModel,
    InputScaler,
    LabelScaler,
    TrainSettings,
    as_key,
    noise_sigma,
    register,
    split_train_val,
    train_network,
    training_arrays,
    tuplify,
)

__all__ = ["SpectrumCNN", "vmp_report"]

FOLD_SIDE = 64
FOLD_PIXELS = FOLD_SIDE * FOLD_SIDE


def _flat_size(n_pixels, channels, pool, fold2d):
    if fold2d:
        side = FOLD_SIDE // 2 ** len(channels)
        if side < 1:
            raise ValueError(f"too many conv layers ({len(channels)}) for a {FOLD_SIDE}x{FOLD_SIDE} image")
        return channels[-1] * side * side
    length = n_pixels
    for _ in channels:
        length //= pool
    if length < 1:
        raise ValueError(f"{n_pixels} pixels are too few for {len(channels)} pooling layers of {pool}")
    return channels[-1] * length


class _ConvNet(eqx.Module):
    convs: tuple[eqx.Module, ...]
    pool: int = eqx.field(static=True)
    dense: eqx.nn.Linear
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear
    fold2d: bool = eqx.field(static=True)

    def __init__(self, n_pixels, n_out, channels, kernel_size, pool, dense, dropout, fold2d, key):
        ks = jax.random.split(key, len(channels) + 2)
        convs, c_in = [], 1
        for i, c in enumerate(channels):
            if fold2d:
                convs.append(eqx.nn.Conv2d(c_in, c, 3, padding=1, key=ks[i], dtype=DTYPE))
            else:
                convs.append(eqx.nn.Conv1d(c_in, c, kernel_size, padding=kernel_size // 2, key=ks[i], dtype=DTYPE))
            c_in = c
        self.convs = tuple(convs)
        self.pool = 2 if fold2d else pool
        self.dense = eqx.nn.Linear(_flat_size(n_pixels, channels, pool, fold2d), dense, key=ks[-2], dtype=DTYPE)
        self.drop = eqx.nn.Dropout(dropout)
        self.out = eqx.nn.Linear(dense, n_out, key=ks[-1], dtype=DTYPE)
        self.fold2d = fold2d

    def __call__(self, x, key=None, inference=True):
        if self.fold2d:
            n = x.shape[0]
            x = jnp.pad(x, (0, FOLD_PIXELS - n)) if n < FOLD_PIXELS else x[:FOLD_PIXELS]
            h = x.reshape(1, FOLD_SIDE, FOLD_SIDE)
        else:
            h = x[None, :]
        for conv in self.convs:
            h = self._max_pool(jax.nn.relu(conv(h)))
        h = jax.nn.relu(self.dense(h.reshape(-1)))
        h = self.drop(h, key=key, inference=inference)
        return self.out(h)

    def _max_pool(self, h):
        # Non-overlapping max pooling as reshape + max (a trailing remainder is dropped): on
        # XLA:CPU the gradient of this is much faster than reduce_window's select-and-scatter.
        p = self.pool
        if self.fold2d:
            c, a, b = h.shape
            h = h[:, : a // p * p, : b // p * p].reshape(c, a // p, p, b // p, p)
            return jnp.max(h, axis=(2, 4))
        c, n = h.shape
        return jnp.max(h[:, : n // p * p].reshape(c, n // p, p), axis=2)


@register
class SpectrumCNN(AbstractDirectModel):
    """Convolutional spectrum -> labels regressor (after Bu et al.); create with :meth:`train`.

    Attributes:
        wave: wavelength grid [P].
        inputs: bad-pixel filling and per-pixel standardisation.
        targets: label scaling (log10 Teff, mean/std).
        net: conv + pool stack and dense head (``fold2d``: on a 64 x 64 folded spectrum).
    """

    wave: Float[Array, " P"]
    inputs: InputScaler
    targets: LabelScaler
    net: _ConvNet
    channels: tuple[int, ...] = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)
    pool: int = eqx.field(static=True)
    dense: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    fold2d: bool = eqx.field(static=True)

    @classmethod
    def train(
        cls,
        ds,
        key=0,
        label_names=None,
        *,
        fold2d: bool = False,
        channels: tuple[int, ...] = (8, 16, 16),
        kernel_size: int = 7,
        pool: int = 4,
        dense: int = 64,
        dropout: float = 0.1,
        noise_augment: float = 0.0,
        val_fraction: float = 0.15,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 150,
        patience: int = 20,
        log_teff: bool = True,
    ) -> SpectrumCNN:
        """Train on a labelled SpectrumSet.

        Arguments:
            ds: SpectrumSet with labels; bad pixels (``ivar == 0``) are replaced by the
                per-pixel median of the good training fluxes before standardisation.
            key: int seed or jax PRNG key; training is deterministic given it.
            label_names: labels to learn (default: all of ``ds``), in output order.
            fold2d: 2-D variant on the spectrum folded into 64 x 64 (padded/truncated to
                4096 pixels; pixels beyond 4096 are not used).
            channels: output channels of the conv layers (one pooling after each).
            kernel_size: 1-D kernel width (odd); the 2-D variant uses 3 x 3.
            pool: 1-D pooling factor (2-D: 2 x 2).
            dense, dropout: width and dropout of the dense head.
            noise_augment: maximum extra Gaussian noise per training spectrum in units of
                its own sigma (from ``ivar``); 0 (default) = no augmentation.
            val_fraction, learning_rate, weight_decay, batch_size, max_epochs, patience:
                validation split, AdamW and early stopping.
            log_teff: learn log10 of a label named ``teff``.
        """
        key = as_key(key)
        names, labels, flux, good = training_arrays(ds, label_names)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if pool < 1 or not 0.0 <= dropout < 1.0 or noise_augment < 0:
            raise ValueError("need pool >= 1, 0 <= dropout < 1 and noise_augment >= 0")
        settings = TrainSettings(learning_rate, weight_decay, batch_size, max_epochs, patience)
        settings.check()
        inputs = InputScaler.from_training(flux, good, "pixel")
        targets = LabelScaler.from_training(labels, names, log_teff=log_teff, robust=False)
        filled = np.where(good, flux, np.asarray(inputs.fill)[None, :]).astype(np.float32)
        sigma = noise_sigma(flux, good, ds.ivar) * np.float32(noise_augment)
        z = np.asarray(jax.vmap(targets.to_target)(jnp.asarray(labels, DTYPE)))

        k_split, k_init, k_train = jax.random.split(key, 3)
        tr, va = split_train_val(filled.shape[0], val_fraction, k_split)
        net = _ConvNet(filled.shape[1], len(names), channels, kernel_size, pool, dense, dropout, fold2d, k_init)

        def loss(net, batch, key, inference):
            fb, sb, zb = batch
            if not inference:
                k_noise, k_amp, k_drop = jax.random.split(key, 3)
                if noise_augment > 0:
                    amp = jax.random.uniform(k_amp, (fb.shape[0], 1), DTYPE)
                    fb = fb + amp * sb * jax.random.normal(k_noise, fb.shape, DTYPE)
                keys = jax.random.split(k_drop, fb.shape[0])
                pred = jax.vmap(lambda f, k: net(inputs.standardise(f), k, False))(fb, keys)
            else:
                pred = jax.vmap(lambda f: net(inputs.standardise(f)))(fb)
            return jnp.mean((pred - zb) ** 2)

        net, _ = train_network(
            net,
            loss,
            (filled[tr], sigma[tr], z[tr]),
            (filled[va], sigma[va], z[va]),
            settings,
            k_train,
            name="SpectrumCNN",
        )
        return cls(
            wave=jnp.asarray(ds.wave, jnp.float64),
            inputs=inputs,
            targets=targets,
            net=net,
            channels=channels,
            kernel_size=int(kernel_size),
            pool=int(pool),
            dense=int(dense),
            dropout=float(dropout),
            fold2d=bool(fold2d),
        )

    def _target(self, filled):
        return self.net(self.inputs.standardise(filled))

    @classmethod
    def _skeleton(cls, config):
        t = config["targets"]
        channels = tuplify(config["channels"])
        net = _ConvNet(
            config["n_pixels"],
            len(t["names"]),
            channels,
            config["kernel_size"],
            config["pool"],
            config["dense"],
            config["dropout"],
            bool(config["fold2d"]),
            jax.random.PRNGKey(0),
        )
        return cls(
            wave=jnp.zeros(config["n_pixels"], jnp.float64),
            inputs=InputScaler.skeleton(config["n_pixels"], config["inputs"]["mode"]),
            targets=LabelScaler.skeleton(t["names"], t["log10"], t["robust"]),
            net=net,
            channels=channels,
            kernel_size=int(config["kernel_size"]),
            pool=int(config["pool"]),
            dense=int(config["dense"]),
            dropout=float(config["dropout"]),
            fold2d=bool(config["fold2d"]),
        )


def vmp_report(true_feh, pred_feh, threshold: float = -2.0) -> dict:
    """Very-metal-poor (VMP) classification quality of predicted [Fe/H].

    A star is VMP when [Fe/H] < ``threshold`` (Bu et al. use -2.0).

    Arguments:
        true_feh, pred_feh: [N] true (reference) and predicted [Fe/H] in dex, finite.
        threshold: VMP boundary in dex.

    Returns:
        dict with ``confusion`` (2x2 int array, rows = true [not VMP, VMP], columns =
        predicted [not VMP, VMP]), ``tp``, ``fp``, ``fn``, ``tn``, ``completeness``
        = TP / (TP + FN) (fraction of true VMP stars recovered), ``contamination``
        = FP / (TP + FP) (fraction of predicted VMP stars that are not), ``n_true_vmp``,
        ``n_pred_vmp``, ``threshold``. A ratio with a zero denominator is NaN.

    Raises:
        ValueError: on shape mismatch, empty or non-finite input.
    """
    t = np.asarray(true_feh, dtype=np.float64)
    p = np.asarray(pred_feh, dtype=np.float64)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"true_feh and pred_feh must be 1-D of equal length, got {t.shape} and {p.shape}")
    if t.size == 0:
        raise ValueError("no stars given")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise ValueError("true_feh and pred_feh must be finite (drop failed predictions first)")
    tv, pv = t < threshold, p < threshold
    tp = int(np.sum(tv & pv))
    fp = int(np.sum(~tv & pv))
    fn = int(np.sum(tv & ~pv))
    tn = int(np.sum(~tv & ~pv))
    return {
        "confusion": np.array([[tn, fp], [fn, tp]]),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "completeness": tp / (tp + fn) if tp + fn else float("nan"),
        "contamination": fp / (tp + fp) if tp + fp else float("nan"),
        "n_true_vmp": tp + fn,
        "n_pred_vmp": tp + fp,
        "threshold": float(threshold),
    }
