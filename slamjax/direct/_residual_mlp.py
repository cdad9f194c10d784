"""Multitask residual MLP: one network, one head per label.

After Barreto & Eisencraft (2026, arXiv:2606.13868): a linear stem, pre-norm residual
blocks (LayerNorm -> Linear -> GELU -> dropout -> Linear, added to the input), and a
small head per label. Implementation here (not a port of any code):

* inputs: bad pixels filled with the per-pixel training median, then every spectrum
  standardised by its own mean and standard deviation;
* targets: robust scaling, (y - median) / IQR, with log10 Teff for a label ``teff``;
* loss: Huber on the scaled targets, label l weighted by 1/var(scaled target l)
  (normalised to mean 1), so a label with a wide scaled spread does not dominate;
* AdamW with linear warm-up and cosine decay (optax); early stopping keeps the weights of
  the best validation loss;
* augmentation: every training spectrum in every minibatch gets Gaussian noise
  ``u * noise_augment * sigma`` with ``sigma = 1/sqrt(ivar)`` of that spectrum (0 at bad
  pixels) and ``u ~ U(0, 1)`` per spectrum, i.e. a random extra noise level up to the
  spectrum's own.
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
)

__all__ = ["ResidualMLP"]


class _Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, width, dropout, key):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.lin1 = eqx.nn.Linear(width, width, key=k1, dtype=DTYPE)
        self.lin2 = eqx.nn.Linear(width, width, key=k2, dtype=DTYPE)
        self.drop = eqx.nn.Dropout(dropout)

    def __call__(self, x, key, inference):
        h = jax.nn.gelu(self.lin1(self.norm(x)))
        h = self.drop(h, key=key, inference=inference)
        return x + self.lin2(h)


class _ResNet(eqx.Module):
    stem: eqx.nn.Linear
    blocks: tuple[_Block, ...]
    norm: eqx.nn.LayerNorm
    heads: tuple[eqx.nn.MLP, ...]

    def __init__(self, n_in, n_out, width, n_blocks, head_width, dropout, key):
        ks = jax.random.split(key, 2 + n_blocks + n_out)
        self.stem = eqx.nn.Linear(n_in, width, key=ks[0], dtype=DTYPE)
        self.blocks = tuple(_Block(width, dropout, ks[1 + i]) for i in range(n_blocks))
        self.norm = eqx.nn.LayerNorm(width, dtype=DTYPE)
        self.heads = tuple(
            eqx.nn.MLP(width, "scalar", head_width, 1, activation=jax.nn.gelu, key=ks[1 + n_blocks + i], dtype=DTYPE)
            for i in range(n_out)
        )

    def __call__(self, x, key=None, inference=True):
        h = self.stem(x)
        keys = [None] * len(self.blocks) if key is None else list(jax.random.split(key, len(self.blocks)))
        for block, k in zip(self.blocks, keys, strict=True):
            h = block(h, k, inference)
        h = self.norm(h)
        return jnp.stack([head(h) for head in self.heads])


def _huber(r, delta):
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@register
class ResidualMLP(AbstractDirectModel):
    """Multitask residual MLP (Barreto & Eisencraft 2026, arXiv:2606.13868); create with :meth:`train`.

    Attributes:
        wave: wavelength grid [P].
        inputs: bad-pixel filling and per-spectrum standardisation.
        targets: robust label scaling (median/IQR; log10 Teff).
        net: the network (stem, residual blocks, one head per label).
    """

    wave: Float[Array, " P"]
    inputs: InputScaler
    targets: LabelScaler
    net: _ResNet
    width: int = eqx.field(static=True)
    n_blocks: int = eqx.field(static=True)
    head_width: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    @classmethod
    def train(
        cls,
        ds,
        key=0,
        label_names=None,
        *,
        width: int = 256,
        n_blocks: int = 2,
        head_width: int = 64,
        dropout: float = 0.1,
        huber_delta: float = 1.0,
        noise_augment: float = 1.0,
        val_fraction: float = 0.15,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        batch_size: int = 64,
        max_epochs: int = 150,
        patience: int = 20,
        log_teff: bool = True,
    ) -> ResidualMLP:
        """Train on a labelled SpectrumSet.

        Arguments:
            ds: SpectrumSet with labels; bad pixels (``ivar == 0``) are replaced by the
                per-pixel median of the good training fluxes before standardisation.
            key: int seed or jax PRNG key; training is deterministic given it.
            label_names: labels to learn (default: all of ``ds``), in output order.
            width, n_blocks, head_width, dropout: architecture.
            huber_delta: Huber transition, in units of the robustly scaled target.
            noise_augment: maximum extra noise, in units of each spectrum's own sigma
                (from ``ivar``); 0 switches augmentation off.
            val_fraction: random fraction held out for early stopping.
            learning_rate, weight_decay, warmup_fraction, batch_size, max_epochs, patience:
                AdamW with linear warm-up (``warmup_fraction`` of all steps) and cosine
                decay over ``max_epochs``; stop after ``patience`` epochs without improvement.
            log_teff: learn log10 of a label named ``teff``.
        """
        key = as_key(key)
        names, labels, flux, good = training_arrays(ds, label_names)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if noise_augment < 0 or not huber_delta > 0:
            raise ValueError("need noise_augment >= 0 and huber_delta > 0")
        settings = TrainSettings(learning_rate, weight_decay, batch_size, max_epochs, patience, warmup_fraction)
        settings.check()
        inputs = InputScaler.from_training(flux, good, "spectrum")
        targets = LabelScaler.from_training(labels, names, log_teff=log_teff, robust=True)
        filled = np.where(good, flux, np.asarray(inputs.fill)[None, :]).astype(np.float32)
        sigma = noise_sigma(flux, good, ds.ivar) * np.float32(noise_augment)
        z = np.asarray(jax.vmap(targets.to_target)(jnp.asarray(labels, DTYPE)))
        lw = 1.0 / np.maximum(z.var(axis=0), 1e-12)
        lw = jnp.asarray(lw / lw.mean(), DTYPE)

        k_split, k_init, k_train = jax.random.split(key, 3)
        tr, va = split_train_val(filled.shape[0], val_fraction, k_split)
        net = _ResNet(filled.shape[1], len(names), width, n_blocks, head_width, dropout, k_init)

        def loss(net, batch, key, inference):
            fb, sb, zb = batch
            if not inference:
                k_noise, k_amp, k_drop = jax.random.split(key, 3)
                amp = jax.random.uniform(k_amp, (fb.shape[0], 1), DTYPE)
                fb = fb + amp * sb * jax.random.normal(k_noise, fb.shape, DTYPE)
                keys = jax.random.split(k_drop, fb.shape[0])
                pred = jax.vmap(lambda f, k: net(inputs.standardise(f), k, False))(fb, keys)
            else:
                pred = jax.vmap(lambda f: net(inputs.standardise(f)))(fb)
            return jnp.mean(jnp.sum(lw[None, :] * _huber(pred - zb, huber_delta), axis=1))

        net, _ = train_network(
            net,
            loss,
            (filled[tr], sigma[tr], z[tr]),
            (filled[va], sigma[va], z[va]),
            settings,
            k_train,
            name="ResidualMLP",
        )
        return cls(
            wave=jnp.asarray(ds.wave, jnp.float64),
            inputs=inputs,
            targets=targets,
            net=net,
            width=width,
            n_blocks=n_blocks,
            head_width=head_width,
            dropout=float(dropout),
        )

    def _target(self, filled):
        return self.net(self.inputs.standardise(filled))

    @classmethod
    def _skeleton(cls, config):
        t = config["targets"]
        targets = LabelScaler.skeleton(t["names"], t["log10"], t["robust"])
        net = _ResNet(
            config["n_pixels"],
            len(t["names"]),
            config["width"],
            config["n_blocks"],
            config["head_width"],
            config["dropout"],
            jax.random.PRNGKey(0),
        )
        return cls(
            wave=jnp.zeros(config["n_pixels"], jnp.float64),
            inputs=InputScaler.skeleton(config["n_pixels"], config["inputs"]["mode"]),
            targets=targets,
            net=net,
            width=int(config["width"]),
            n_blocks=int(config["n_blocks"]),
            head_width=int(config["head_width"]),
            dropout=float(config["dropout"]),
        )
