"""The Payne: neural-network spectral emulators (Ting, Conroy, Rix & Cargile 2019, ApJ 879, 69).

Two architectures share one class, :class:`PayneEmulator`:

* ``"dense"`` — one multilayer perceptron from the scaled labels to all P pixels at once
  (``L -> H1 -> H2 -> P``), the fully connected form of The Payne;
* ``"per_pixel"`` — an independent tiny network per pixel (``L -> H sigmoid units -> 1``),
  the form of the original Payne and of the networks published by Ting et al. (2018) and
  El-Badry et al. (2018a, MNRAS 473, 5043; 2018b, MNRAS 476, 528) in ``binspec``
  (``NN_*_spectra.npz``); :meth:`PayneEmulator.from_arrays` loads those.

Both take the labels scaled to the training box, ``s = (labels - x_min)/(x_max - x_min) - 0.5``.
Network weights are stored as plain arrays (tuples of per-layer arrays), so model files need no
pickle; the per-pixel arrays keep the published layout ``w_array_0 [P, H, L]``, ``b_array_0
[P, H]``, ``w_array_1 [P, H]``, ``b_array_1 [P]``.

Training (:meth:`PayneEmulator.train`) minimises, with Adam(W) on mini-batches, the weighted
mean squared flux residual

    loss = Σ_np w_np (f_np − model_p(labels_n))² / Σ_np w_np,   w_np = [ivar_np > 0] / (1/ivar_np + ε²)

i.e. χ² per pixel with the noise variance floored by ε² (``noise_floor``). Bad pixels (ivar = 0)
count zero. Why this loss: fitting with the emulator weights pixels by their noise, so errors
should be small where the data are precise; the floor stops a few very-high-S/N pixels from
dominating and makes noise-free training sets (huge ivar) reduce to a plain flux MSE, which
is what "accurate to 0.002 in flux" asks for. The network predicts per-pixel standardised
flux (mean/scale over the good training pixels; better conditioned), and the standardisation
is folded into the last layer afterwards. A random ``validation_fraction`` is held out; training
stops after ``patience`` epochs without a validation improvement and keeps the best weights.

The per-pixel model variance (``pixel_variance``, flux² units, used by ``fit_labels``) comes from
the validation residuals r: E r² = s² + σ² for an unbiased model, and s² is the maximum-likelihood
value over the good validation pixels with each star's own σ² = 1/ivar (floored at 0;
``_variance.model_variance``). With equal noise it is the moment estimate mean(r²) − σ²; unlike
mean(r² − σ²) it is not decided by one validation star with a huge σ. A pixel with fewer than
three good validation spectra has no measured model error and gets s² = inf (zero weight).
"""

from __future__ import annotations

import logging
import math
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from .._spectra import SpectrumSet
from ._base import AbstractEmulator, LabelSpace, register, training_labels
from ._variance import model_variance

logger = logging.getLogger(__name__)

__all__ = ["PayneEmulator"]

ARCHITECTURES = ("dense", "per_pixel")
ACTIVATIONS = ("silu", "leaky_relu", "tanh", "sigmoid")
DEFAULT_LABEL_NAMES = ("teff", "logg", "fe_h", "alpha_fe")
_LEAKY_SLOPE = 0.01
_MIN_VALIDATION = 3  # good validation spectra a pixel needs for a model variance (else inf: unusable)


def _act(name: str, a):
    """Activation and its derivative at pre-activation ``a``."""
    if name == "silu":
        sig = jax.nn.sigmoid(a)
        return a * sig, sig * (1.0 + a * (1.0 - sig))
    if name == "sigmoid":
        sig = jax.nn.sigmoid(a)
        return sig, sig * (1.0 - sig)
    if name == "tanh":
        t = jnp.tanh(a)
        return t, 1.0 - t * t
    if name == "leaky_relu":
        pos = a > 0
        return jnp.where(pos, a, _LEAKY_SLOPE * a), jnp.where(pos, 1.0, _LEAKY_SLOPE).astype(a.dtype)
    raise ValueError(f"unknown activation {name!r}; use one of {ACTIVATIONS}")


@register
class PayneEmulator(AbstractEmulator):
    """The Payne (Ting et al. 2019): a neural network from labels to flux, dense or per pixel.

    Build one with :meth:`train` or, from published per-pixel networks, :meth:`from_arrays`.
    ``em(labels)`` evaluates ONE spectrum (labels [L] in physical units) and returns flux [P];
    ``em.flux_and_jacobian(labels)`` adds the analytic Jacobian [P, L].

    Attributes:
        space: label names, standardisation and label box (``space.train`` seeds the
            multi-start initial guesses of :func:`slamjax.fit_labels`).
        wave: wavelength grid [P] (Å).
        pixel_variance: model variance per pixel [P] (flux² units; ``inf``: unusable pixel).
        x_min, x_max: the input scaling box [L]: ``s = (labels - x_min)/(x_max - x_min) - 0.5``.
        weights, biases: per-layer arrays. ``"dense"``: weights ``([H1, L], [H2, H1], ...,
            [P, Hk])``, biases ``([H1], ..., [P])``, output directly in flux units.
            ``"per_pixel"``: weights ``(w_array_0 [P, H, L], w_array_1 [P, H])``, biases
            ``(b_array_0 [P, H], b_array_1 [P])``.
        architecture: ``"dense"`` or ``"per_pixel"``.
        activation: hidden activation of the dense network (``"sigmoid"`` for per-pixel).
    """

    space: LabelSpace
    wave: Float[Array, " P"]
    pixel_variance: Float[Array, " P"]
    x_min: Float[Array, " L"]
    x_max: Float[Array, " L"]
    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    architecture: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __check_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; use one of {ARCHITECTURES}")
        if self.architecture == "per_pixel" and len(self.weights) != 2:
            raise ValueError("a per-pixel network has exactly two weight arrays (w_array_0, w_array_1)")

    # ------------------------------------------------------------------ evaluation
    def _scaled(self, labels):
        labels = self._one_spectrum(labels)
        return (labels - self.x_min) / (self.x_max - self.x_min) - 0.5

    def __call__(self, labels):
        s = self._scaled(labels)
        if self.architecture == "per_pixel":
            w0, w1 = self.weights
            b0, b1 = self.biases
            h = jax.nn.sigmoid(jnp.einsum("phl,l->ph", w0, s) + b0)
            return jnp.sum(w1 * h, axis=1) + b1
        h = s
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h, _ = _act(self.activation, w @ h + b)
        return self.weights[-1] @ h + self.biases[-1]

    def flux_and_jacobian(self, labels):
        """Model flux [P] and d flux / d labels [P, L], by forward propagation of the
        [H, L] tangents through the hidden layers (the last layer is one [P, H]·[H, L+1]
        product for flux and Jacobian together)."""
        s = self._scaled(labels)
        ds = 1.0 / (self.x_max - self.x_min)  # d s / d labels (diagonal)
        if self.architecture == "per_pixel":
            w0, w1 = self.weights
            b0, b1 = self.biases
            h = jax.nn.sigmoid(jnp.einsum("phl,l->ph", w0, s) + b0)
            flux = jnp.sum(w1 * h, axis=1) + b1
            jac = jnp.einsum("ph,phl->pl", w1 * h * (1.0 - h), w0) * ds[None, :]
            return flux, jac
        w, b = self.weights[0], self.biases[0]
        h, dact = _act(self.activation, w @ s + b)
        dh = dact[:, None] * w * ds[None, :]  # [H1, L]
        for w, b in zip(self.weights[1:-1], self.biases[1:-1]):
            h, dact = _act(self.activation, w @ h + b)
            dh = dact[:, None] * (w @ dh)
        # [1 + L, H] @ [H, P]: vmapped over spectra this is ONE [B(1 + L), H] x [H, P] GEMM
        # (the [P, H] @ [H, 1 + L] form ran as batched matrix-vector products, 2x slower).
        out = jnp.concatenate([h[None, :], dh.T], axis=0) @ self.weights[-1].T
        return out[0] + self.biases[-1], out[1:].T

    @property
    def hidden(self) -> tuple[int, ...]:
        """Hidden-layer widths (per pixel for ``"per_pixel"``)."""
        if self.architecture == "per_pixel":
            return (int(self.weights[0].shape[1]),)
        return tuple(int(w.shape[0]) for w in self.weights[:-1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """A per-pixel network as the published arrays (inverse of :meth:`from_arrays`)."""
        if self.architecture != "per_pixel":
            raise ValueError("to_arrays is defined for per-pixel networks only")
        return {
            "w_array_0": np.asarray(self.weights[0]),
            "b_array_0": np.asarray(self.biases[0]),
            "w_array_1": np.asarray(self.weights[1]),
            "b_array_1": np.asarray(self.biases[1]),
            "x_min": np.asarray(self.x_min),
            "x_max": np.asarray(self.x_max),
        }

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        *,
        w_array_0,
        b_array_0,
        w_array_1,
        b_array_1,
        x_min,
        x_max,
        label_names=None,
        wave=None,
        pixel_variance=None,
        train_labels=None,
    ) -> PayneEmulator:
        """A per-pixel Payne network from published weight arrays.

        ``PayneEmulator.from_arrays(**np.load("NN_unnormalized_spectra.npz"), wave=...)`` loads
        the networks of Ting et al. (2018) / El-Badry et al. (2018a,b) distributed with
        ``binspec``. Evaluation: ``s = (labels − x_min)/(x_max − x_min) − 0.5``,
        ``h = sigmoid(w_array_0·s + b_array_0)`` per pixel, ``flux = Σ_h w_array_1·h + b_array_1``.

        Arguments:
            w_array_0: [P, H, L] first-layer weights; b_array_0: [P, H].
            w_array_1: [P, H] output weights; b_array_1: [P].
            x_min, x_max: [L] the label box of the input scaling (physical units).
            label_names: names of the L labels; default ``("teff", "logg", "fe_h",
                "alpha_fe")`` for L = 4 (required otherwise).
            wave: wavelength grid [P] (Å). Without it the pixel index is used, with a
                warning (fitting SpectrumSets then fails the grid check; pass the grid).
            pixel_variance: model variance [P] (flux², ≥ 0; inf gives a pixel zero weight);
                default 0 (the network is exact for its own spectra).
            train_labels: [K, L] label vectors used as multi-start seeds by
                :func:`slamjax.fit_labels` (``init="training"``). Default: a regular grid of
                ``k^L`` points (k = 4 for L = 4, 256 points) at the cell centres of the box
                ``x_min``–``x_max``.

        The label standardisation (``space``) is the box midpoint and half-width; ``space.lo``
        and ``space.hi`` are ``x_min`` and ``x_max`` (``fit_labels`` keeps labels within them,
        widened by its ``box_margin``).
        """
        w0 = np.asarray(w_array_0, dtype=np.float64)
        b0 = np.asarray(b_array_0, dtype=np.float64)
        w1 = np.asarray(w_array_1, dtype=np.float64)
        b1 = np.asarray(b_array_1, dtype=np.float64)
        lo = np.asarray(x_min, dtype=np.float64).reshape(-1)
        hi = np.asarray(x_max, dtype=np.float64).reshape(-1)
        if w0.ndim != 3:
            raise ValueError(f"w_array_0 must be [P, H, L], got shape {w0.shape}")
        n_pix, n_hid, n_lab = w0.shape
        for name, arr, shape in (
            ("b_array_0", b0, (n_pix, n_hid)),
            ("w_array_1", w1, (n_pix, n_hid)),
            ("b_array_1", b1, (n_pix,)),
            ("x_min", lo, (n_lab,)),
            ("x_max", hi, (n_lab,)),
        ):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (from w_array_0 {w0.shape}), got {arr.shape}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError("x_min and x_max must be finite")
        if not np.all(hi > lo):
            raise ValueError("x_max must exceed x_min for every label")
        for name, arr in (("w_array_0", w0), ("b_array_0", b0), ("w_array_1", w1), ("b_array_1", b1)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains non-finite values")
        if label_names is None:
            if n_lab != len(DEFAULT_LABEL_NAMES):
                raise ValueError(f"label_names are required for a network of {n_lab} labels")
            label_names = DEFAULT_LABEL_NAMES
        label_names = tuple(str(n) for n in label_names)
        if len(label_names) != n_lab:
            raise ValueError(f"{len(label_names)} label names for a network of {n_lab} labels")
        if wave is None:
            warnings.warn(
                "PayneEmulator.from_arrays: no wavelength grid given; using the pixel index", UserWarning, stacklevel=2
            )
            wave = np.arange(n_pix, dtype=np.float64)
        wave = np.asarray(wave, dtype=np.float64)
        if wave.shape != (n_pix,):
            raise ValueError(f"wave must have shape ({n_pix},), got {wave.shape}")
        if pixel_variance is None:
            pixel_variance = np.zeros(n_pix)
        pixel_variance = np.asarray(pixel_variance, dtype=np.float64)
        if pixel_variance.shape != (n_pix,):
            raise ValueError(f"pixel_variance must have shape ({n_pix},), got {pixel_variance.shape}")
        if not np.all(pixel_variance >= 0):  # NaN and negative values; inf (pixel unused) is allowed
            raise ValueError("pixel_variance must be >= 0 (inf for an unusable pixel), not negative or NaN")
        if train_labels is None:
            train_labels = _box_grid(lo, hi)
        train_labels = np.asarray(train_labels, dtype=np.float64)
        if train_labels.ndim != 2 or train_labels.shape[1] != n_lab or train_labels.shape[0] == 0:
            raise ValueError(f"train_labels must be [K, {n_lab}] with K >= 1, got shape {train_labels.shape}")
        if not np.all(np.isfinite(train_labels)):
            raise ValueError("train_labels contains non-finite values")
        space = LabelSpace(
            names=label_names,
            mean=jnp.asarray(0.5 * (lo + hi)),
            scale=jnp.asarray(0.5 * (hi - lo)),
            lo=jnp.asarray(lo),
            hi=jnp.asarray(hi),
            train=jnp.asarray(train_labels),
        )
        return cls(
            space=space,
            wave=jnp.asarray(wave),
            pixel_variance=jnp.asarray(pixel_variance),
            x_min=jnp.asarray(lo),
            x_max=jnp.asarray(hi),
            weights=(jnp.asarray(w0), jnp.asarray(w1)),
            biases=(jnp.asarray(b0), jnp.asarray(b1)),
            architecture="per_pixel",
            activation="sigmoid",
        )

    @classmethod
    def train(
        cls,
        ds: SpectrumSet,
        hidden: tuple[int, ...] | None = None,
        *,
        architecture: str = "dense",
        activation: str = "silu",
        key=0,
        learning_rate=1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        max_epochs: int = 1000,
        patience: int = 100,
        validation_fraction: float = 0.1,
        noise_floor: float = 0.01,
        label_names=None,
        dtype=np.float32,
        progress: bool = False,
        log_every: int = 50,
        systematics: bool = True,
    ) -> PayneEmulator:
        """Train a Payne network on a labelled :class:`SpectrumSet`.

        Arguments:
            ds: training spectra with labels (physical units); ``ivar == 0`` pixels count zero.
            hidden: hidden-layer widths. Default ``(300, 300)`` for ``"dense"`` and ``(5,)``
                (sigmoid units per pixel) for ``"per_pixel"``.
            architecture: ``"dense"`` (one MLP for all pixels) or ``"per_pixel"``.
            activation: dense hidden activation: ``"silu"`` (default; smooth, so the
                Jacobian used by the fitter is continuous), ``"leaky_relu"``, ``"tanh"``,
                ``"sigmoid"``. Per-pixel networks always use sigmoid units.
            key: an int seed or a ``jax.random`` key (None: seed 0); the result is deterministic
                for a key (weights initialisation, validation split and batch order).
            learning_rate: a float (peak of a linear warm-up + cosine decay to 1 % over
                ``max_epochs``) or an optax schedule ``step -> rate``.
            weight_decay: AdamW decoupled weight decay (0: plain Adam).
            batch_size: spectra per mini-batch (capped at the training-set size).
            max_epochs: maximum passes over the training spectra.
            patience: stop after this many epochs without a lower validation loss; the
                weights of the best epoch are kept.
            validation_fraction: fraction of spectra held out (at least three; a pixel with
                fewer than three good validation spectra gets ``pixel_variance = inf``, so with
                a small validation set one bad entry can make a pixel unusable, and in fits
                with ``rv`` every unusable pixel also takes the ~20 data pixels whose
                interpolation would reach it).
            noise_floor: ε in the loss weights ``1/(1/ivar + ε²)`` (flux units).
            label_names: optional subset (and order) of ``ds.label_names``.
            dtype: training precision (float32 default: ~2x faster; weights are returned
                as float64 arrays).
            progress: show a tqdm progress bar (if tqdm is installed).
            log_every: log losses (``logging`` INFO) every this many epochs.
            systematics: fit the validation spectra and attach the systematic label
                covariance (:func:`slamjax.validate.label_systematics`, needs at least 2
                usable fits) that :func:`slamjax.fit_labels` adds to the formal errors.
                The network's flux errors are correlated across pixels, so at high S/N they
                bias labels by more than the formal errors; without this term pulls grow with
                S/N. The validation set also chose the early-stopping epoch, so the estimate
                is slightly optimistic.

        Returns:
            the trained :class:`PayneEmulator`.

        Raises:
            ValueError: for bad arguments, missing / non-finite labels, a constant label, too
                few spectra.
            FloatingPointError: if the training loss becomes non-finite (lower the
                learning rate or check the training data).
        """
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; use one of {ARCHITECTURES}")
        if architecture == "dense":
            _act(activation, jnp.zeros(()))  # validates the name
        hidden = ((300, 300) if architecture == "dense" else (5,)) if hidden is None else tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden}")
        if architecture == "per_pixel" and len(hidden) != 1:
            raise ValueError(f"a per-pixel network has one hidden layer; got hidden={hidden}")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        if batch_size < 1 or max_epochs < 1 or patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be >= 1")
        if noise_floor <= 0:
            raise ValueError(f"noise_floor must be > 0, got {noise_floor}")
        names, labels = training_labels(ds, label_names)
        n, n_pix, n_lab = ds.n_spectra, ds.n_pixels, len(names)
        n_val = max(_MIN_VALIDATION, int(round(validation_fraction * n)))
        if n - n_val < 2:
            raise ValueError(f"{n} training spectra are too few to train and validate a network")
        space = LabelSpace.from_labels(labels, names)
        lo, hi = labels.min(axis=0), labels.max(axis=0)

        dtype = np.dtype(dtype)
        flux = np.asarray(ds.flux, dtype=np.float64)
        ivar = np.asarray(ds.ivar, dtype=np.float64)
        good = ivar > 0
        if not np.all(np.isfinite(flux[good])):
            raise ValueError("training flux has non-finite values at pixels with ivar > 0")
        n_good = good.sum(axis=0)
        unusable = n_good == 0
        flux0 = np.where(good, flux, 0.0)
        mu = np.where(unusable, 0.0, flux0.sum(axis=0) / np.maximum(n_good, 1))
        sd = np.sqrt(np.where(good, (flux0 - mu) ** 2, 0.0).sum(axis=0) / np.maximum(n_good, 1))
        positive = sd[sd > 0]
        sd = np.maximum(sd, 1e-3 * (np.median(positive) if positive.size else 1.0))
        sd = np.where(unusable, 1.0, sd)
        with np.errstate(divide="ignore"):
            w = np.where(good, 1.0 / (1.0 / np.where(good, ivar, 1.0) + noise_floor**2), 0.0)
        w = w * noise_floor**2  # ~1 for precise pixels (float32-friendly); the loss is Σ w r² / Σ w
        y = np.where(good, (flux0 - mu) / sd, 0.0)
        s = (labels - lo) / (hi - lo) - 0.5

        key = 0 if key is None else key  # None: the default seed
        key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
        k_split, k_init, k_train = jax.random.split(key, 3)
        perm = np.asarray(jax.random.permutation(k_split, n))
        i_val, i_tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        batch = min(batch_size, i_tr.size)
        steps_per_epoch = i_tr.size // batch

        if architecture == "dense":
            params = _init_dense(k_init, (n_lab, *hidden, n_pix), dtype)
        else:
            params = _init_per_pixel(k_init, n_pix, hidden[0], n_lab, dtype)
        if callable(learning_rate):
            schedule = learning_rate
        else:
            lr = float(learning_rate)
            total = max_epochs * steps_per_epoch
            warmup = min(100, max(1, total // 20))
            schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), end_value=0.01 * lr)
        opt = optax.adamw(schedule, weight_decay=weight_decay) if weight_decay > 0 else optax.adam(schedule)
        opt_state = opt.init(params)
        arch = (architecture, activation)

        def put(a):
            return jnp.asarray(a, dtype=dtype)

        data_tr = (put(s[i_tr]), put(y[i_tr]), put(w[i_tr]))
        data_val = (put(s[i_val]), put(y[i_val]), put(w[i_val]))
        sd_d = put(sd)

        best_val, best_params, best_epoch, history = np.inf, params, -1, []
        t0 = time.perf_counter()
        bar = _progress_bar(max_epochs, progress)
        try:
            for epoch in range(max_epochs):
                k_epoch = jax.random.fold_in(k_train, epoch)
                params, opt_state, loss = _epoch(
                    params, opt_state, data_tr, sd_d, k_epoch, opt=opt, arch=arch, batch=batch, steps=steps_per_epoch
                )
                val = _val_loss(params, *data_val, sd_d, arch)
                loss, val = float(loss), float(val)
                if not (math.isfinite(loss) and math.isfinite(val)):
                    raise FloatingPointError(
                        f"PayneEmulator.train: non-finite loss at epoch {epoch} (train {loss}, validation {val}); "
                        "lower learning_rate or check the training data"
                    )
                history.append((loss, val))
                if val < best_val:
                    best_val, best_params, best_epoch = val, params, epoch
                rms, vrms = math.sqrt(loss), math.sqrt(val)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rms:.2e}", val=f"{vrms:.2e}")
                if log_every and epoch % log_every == 0:
                    logger.info("PayneEmulator epoch %d: rms loss %.3e, validation %.3e", epoch, rms, vrms)
                if epoch - best_epoch >= patience:
                    logger.info("PayneEmulator: early stop at epoch %d (best %d)", epoch, best_epoch)
                    break
        finally:
            if bar is not None:
                bar.close()
        logger.info(
            "PayneEmulator trained: %d epochs in %.1f s; best validation rms %.3e at epoch %d",
            len(history),
            time.perf_counter() - t0,
            math.sqrt(best_val),
            best_epoch,
        )

        # Fold the flux standardisation into the output layer; store float64 arrays.
        weights = [np.asarray(a, dtype=np.float64) for a in best_params[0]]
        biases = [np.asarray(a, dtype=np.float64) for a in best_params[1]]
        weights[-1] = weights[-1] * sd[:, None]
        biases[-1] = biases[-1] * sd + mu
        em = cls(
            space=space,
            wave=jnp.asarray(ds.wave, dtype=jnp.float64),
            pixel_variance=jnp.zeros(n_pix),
            x_min=jnp.asarray(lo),
            x_max=jnp.asarray(hi),
            weights=tuple(jnp.asarray(a) for a in weights),
            biases=tuple(jnp.asarray(a) for a in biases),
            architecture=architecture,
            activation=activation if architecture == "dense" else "sigmoid",
        )
        # Model variance from the validation residuals: E r² = s² + σ² for an unbiased model.
        model = em.predict(labels[i_val])
        g_val = good[i_val]
        # Maximum likelihood with each validation star's own noise (_variance.model_variance).
        sig2 = 1.0 / np.where(g_val, ivar[i_val], 1.0)
        # Fewer than _MIN_VALIDATION good validation spectra: the model's error there is unknown (not
        # zero, as an empty sum gave, nor what one or two residuals happen to say: the likelihood
        # of one residual smaller than its noise peaks at s² = 0, a "perfect" pixel).
        unvalidated = ~unusable & (g_val.sum(axis=0) < _MIN_VALIDATION)
        s2 = model_variance(flux0[i_val] - model, sig2, g_val, ~(unusable | unvalidated))
        if unusable.any():
            logger.warning("PayneEmulator: %d pixels have no good training data; given zero weight", unusable.sum())
        if unvalidated.any():
            logger.warning(
                "PayneEmulator: %d pixels have fewer than %d good validation spectra (model variance unknown); "
                "given zero weight",
                unvalidated.sum(),
                _MIN_VALIDATION,
            )
        em = eqx.tree_at(lambda e: e.pixel_variance, em, jnp.asarray(s2))
        if systematics:
            from ..validate import label_systematics

            val = ds[i_val]
            # Noise-free training spectra (noise below the loss floor ε): fit them with the
            # weights of S/N 1/ε instead of their own huge ivar (see label_systematics).
            var_val = 1.0 / ivar[i_val][g_val] if g_val.any() else np.array([np.inf])
            snr = 1.0 / noise_floor if np.median(var_val) < (0.1 * noise_floor) ** 2 else None
            try:
                sys_err = label_systematics(em, val, snr=snr)
            except ValueError as err:
                logger.warning("PayneEmulator: no systematic label covariance (%s)", err)
            else:
                em = em.with_systematics(sys_err)
                logger.info(
                    "PayneEmulator: systematic label errors (rms over %d validation spectra) %s",
                    val.n_spectra,
                    np.sqrt(np.diag(sys_err.global_cov())).round(4).tolist(),
                )
        return em


# ---------------------------------------------------------------------- training internals
def _box_grid(lo, hi, target: int = 256):
    """A regular grid of k^L cell centres in the box (k^L <= target, k >= 2)."""
    n_lab = lo.size
    k = max(2, int(math.floor(target ** (1.0 / n_lab) + 1e-9)))
    frac = (np.arange(k) + 0.5) / k
    mesh = np.meshgrid(*([frac] * n_lab), indexing="ij")
    return lo + np.stack([m.reshape(-1) for m in mesh], axis=1) * (hi - lo)


def _init_dense(key, sizes, dtype):
    """Weights N(0, 1/fan_in); the first layer compensates the small spread of s (std 0.29)."""
    weights, biases = [], []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        kw, kb = jax.random.split(k)
        gain = 3.5 if i == 0 else (0.1 if i == len(sizes) - 2 else 1.0)
        weights.append(gain * jax.random.normal(kw, (n_out, n_in), dtype) / np.sqrt(n_in))
        biases.append(0.1 * jax.random.normal(kb, (n_out,), dtype) if i < len(sizes) - 2 else jnp.zeros(n_out, dtype))
    return tuple(weights), tuple(biases)


def _init_per_pixel(key, n_pix, n_hid, n_lab, dtype):
    k0, kb, k1 = jax.random.split(key, 3)
    w0 = 3.0 * jax.random.normal(k0, (n_pix, n_hid, n_lab), dtype)
    b0 = 0.5 * jax.random.normal(kb, (n_pix, n_hid), dtype)
    w1 = jax.random.normal(k1, (n_pix, n_hid), dtype) / np.sqrt(n_hid)
    return (w0, w1), (b0, jnp.zeros(n_pix, dtype))


def _apply(params, s, arch):
    """Standardised flux [B, P] of the network for scaled labels s [B, L]."""
    architecture, activation = arch
    weights, biases = params
    if architecture == "per_pixel":
        h = jax.nn.sigmoid(jnp.einsum("phl,bl->bph", weights[0], s) + biases[0][None])
        return jnp.einsum("bph,ph->bp", h, weights[1]) + biases[1][None, :]
    h = s
    for w, b in zip(weights[:-1], biases[:-1]):
        h, _ = _act(activation, h @ w.T + b[None, :])
    return h @ weights[-1].T + biases[-1][None, :]


def _loss(params, s, y, w, sd, arch):
    r = (_apply(params, s, arch) - y) * sd[None, :]
    return jnp.sum(w * r * r) / jnp.maximum(jnp.sum(w), 1e-30)


_val_loss = eqx.filter_jit(_loss)


@eqx.filter_jit
def _epoch(params, opt_state, data, sd, key, *, opt, arch, batch, steps):
    s, y, w = data
    idx = jax.random.permutation(key, s.shape[0])[: batch * steps].reshape(steps, batch)
    grad_fn = jax.value_and_grad(_loss)

    def step(carry, ib):
        params, opt_state = carry
        loss, grads = grad_fn(params, s[ib], y[ib], w[ib], sd, arch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state, jnp.mean(losses)


def _progress_bar(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency: no bar
        return None
    return tqdm(total=total, desc="PayneEmulator", unit="epoch")
