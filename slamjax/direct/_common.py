"""Shared machinery of the direct (spectrum -> labels) models.

* :class:`InputScaler` fills bad pixels and standardises fluxes;
* :class:`LabelScaler` maps physical labels to network targets and back;
* :func:`train_network` is the minibatch training loop (optax, early stopping on a
  validation set, best weights kept, NaN detection);
* :class:`AbstractDirectModel` gives every model the same ``predict``/``save`` and the
  versioned model-file format read by :func:`load_model`.

Bad pixels (``ivar == 0`` or non-finite flux) are replaced by the per-pixel median of the
good training fluxes *before* standardisation, in training and in prediction alike, so
that a masked pixel looks like a typical star there and carries no information.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from .._version import __version__

__all__ = [
    "AbstractDirectModel",
    "InputScaler",
    "LabelScaler",
    "as_key",
    "load_model",
    "read_header",
    "register",
    "train_network",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "slamjax-direct"
FORMAT_VERSION = 1
DTYPE = jnp.float32  # networks train and predict in float32 (throughput); scalers are computed in float64
_PREDICT_CHUNK = 1024


def as_key(key) -> Array:
    """A PRNG key from an int seed or a key (``jax.random.PRNGKey``/``jax.random.key``)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    if isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)):
        return key
    raise TypeError(f"key must be an int seed or a jax PRNG key, got {type(key).__name__}")


# ---------------------------------------------------------------------- scalers
class InputScaler(eqx.Module):
    """Bad-pixel filling and flux standardisation, for ONE spectrum.

    ``fill`` [P] is the per-pixel median of the good training fluxes (1 where a pixel was
    never good). ``mode="pixel"``: ``x = (f - mean) / scale`` with the per-pixel training
    mean and standard deviation (pixels constant in training get scale 1).
    ``mode="spectrum"``: every spectrum is standardised by its own mean and standard
    deviation over all (filled) pixels; ``mean``/``scale`` are then unused.
    """

    fill: Float[Array, " P"]
    mean: Float[Array, " P"]
    scale: Float[Array, " P"]
    mode: str = eqx.field(static=True)

    @classmethod
    def from_training(cls, flux, good, mode: str) -> InputScaler:
        if mode not in ("pixel", "spectrum"):
            raise ValueError(f"mode must be 'pixel' or 'spectrum', got {mode!r}")
        fill = np.ones(flux.shape[1])
        seen = good.any(axis=0)  # pixels bad in every training spectrum keep fill = 1
        fill[seen] = np.nanmedian(np.where(good[:, seen], flux[:, seen], np.nan), axis=0)
        filled = np.where(good, flux, fill[None, :])
        mean = filled.mean(axis=0)
        scale = filled.std(axis=0)
        scale = np.where(scale > 1e-8 * np.maximum(np.abs(mean), 1e-3), scale, 1.0)
        if mode == "spectrum":
            mean, scale = np.zeros_like(mean), np.ones_like(scale)
        return cls(jnp.asarray(fill, DTYPE), jnp.asarray(mean, DTYPE), jnp.asarray(scale, DTYPE), mode)

    @classmethod
    def skeleton(cls, n_pixels: int, mode: str) -> InputScaler:
        z = jnp.zeros(n_pixels, DTYPE)
        return cls(z, z, z, mode)

    def filled(self, flux: Float[Array, " P"], good) -> Float[Array, " P"]:
        return jnp.where(good, flux, self.fill)

    def standardise(self, filled: Float[Array, " P"]) -> Float[Array, " P"]:
        if self.mode == "pixel":
            return (filled - self.mean) / self.scale
        mu = jnp.mean(filled)
        sd = jnp.std(filled)
        return (filled - mu) / jnp.where(sd > 0, sd, 1.0)

    def __call__(self, flux, good):
        return self.standardise(self.filled(flux, good))


class LabelScaler(eqx.Module):
    """Physical labels <-> network targets: optional log10 (Teff), then ``(y - center) / scale``.

    ``robust=False``: center/scale are the mean and standard deviation of the training
    targets; ``robust=True``: the median and the interquartile range (the standard deviation
    where the interquartile range is 0 but the label varies).
    """

    names: tuple[str, ...] = eqx.field(static=True)
    log10: tuple[bool, ...] = eqx.field(static=True)
    robust: bool = eqx.field(static=True)
    center: Float[Array, " L"]
    scale: Float[Array, " L"]

    @classmethod
    def from_training(cls, labels, names, *, log_teff: bool, robust: bool) -> LabelScaler:
        names = tuple(names)
        log10 = tuple(bool(log_teff and n.lower() == "teff") for n in names)
        labels = np.asarray(labels, np.float64)
        for j, use in enumerate(log10):
            if use and np.any(labels[:, j] <= 0):
                raise ValueError(f"label {names[j]!r} must be positive to be learned as log10")
        y = np.where(np.array(log10)[None, :], np.log10(np.abs(labels) + (labels == 0)), labels)
        if robust:
            q25, center, q75 = np.percentile(y, [25, 50, 75], axis=0)
            scale = q75 - q25
            # most stars at one value (e.g. [α/M] = 0 on a grid) but a real spread: the IQR is 0
            scale = np.where(scale > 0, scale, y.std(axis=0))
        else:
            center, scale = y.mean(axis=0), y.std(axis=0)
        flat = [n for n, s in zip(names, scale, strict=True) if not s > 0]
        if flat:
            raise ValueError(f"training labels {flat} have zero spread; they cannot be learned")
        return cls(names, log10, robust, jnp.asarray(center, DTYPE), jnp.asarray(scale, DTYPE))

    @classmethod
    def skeleton(cls, names, log10, robust) -> LabelScaler:
        z = jnp.zeros(len(names), DTYPE)
        return cls(tuple(names), tuple(log10), bool(robust), z, z)

    def to_target(self, labels: Float[Array, " L"]) -> Float[Array, " L"]:
        mask = jnp.asarray(self.log10)
        y = jnp.where(mask, jnp.log10(jnp.where(mask, labels, 1.0)), labels)
        return (y - self.center) / self.scale

    def to_physical(self, z: Float[Array, " L"]) -> Float[Array, " L"]:
        y = z * self.scale + self.center
        return jnp.where(jnp.asarray(self.log10), 10.0**y, y)


# ---------------------------------------------------------------------- input checks
def training_arrays(ds, label_names=None):
    """(names, labels [N, L] float64, flux [N, P], good [N, P]) of a labelled SpectrumSet."""
    from .._spectra import SpectrumSet

    if not isinstance(ds, SpectrumSet):
        raise TypeError(f"train expects a SpectrumSet, got {type(ds).__name__}")
    if ds.labels is None:
        raise ValueError("training set has no labels")
    if isinstance(label_names, str):
        raise ValueError(f"label_names must be a sequence of names, not the string {label_names!r}")
    names = tuple(label_names) if label_names is not None else tuple(ds.label_names)
    if not names:
        raise ValueError("no labels to learn")
    labels = np.stack([ds.label(n) for n in names], axis=1).astype(np.float64)
    bad = ~np.all(np.isfinite(labels), axis=1)
    if bad.any():
        first = ", ".join(str(i) for i in ds.ids[bad][:5])
        raise ValueError(
            f"{int(bad.sum())} training stars have non-finite labels (first ids: {first}); "
            "select the labelled stars first"
        )
    if ds.n_spectra < 10:
        raise ValueError(f"need at least 10 training spectra, got {ds.n_spectra}")
    good = (ds.ivar > 0) & np.isfinite(ds.flux)
    flux = np.where(good, ds.flux, 0.0)
    return names, labels, flux, good


def check_spectra(flux, ivar, wave) -> tuple[np.ndarray, np.ndarray]:
    """Validated (flux [N, P] float32 with bad pixels zeroed, good [N, P] bool) for prediction.

    ``flux`` may be a SpectrumSet (then ``ivar`` must be None and its grid must match).
    A pixel is bad where ``ivar == 0`` or the flux is not finite.
    """
    from .._spectra import SpectrumSet

    n_pix = int(np.shape(wave)[0])
    if isinstance(flux, SpectrumSet):
        if ivar is not None:
            raise ValueError("pass either a SpectrumSet or flux and ivar arrays, not both")
        if flux.n_pixels != n_pix or not np.allclose(flux.wave, np.asarray(wave), rtol=1e-9, atol=0.0):
            raise ValueError(
                f"the SpectrumSet's wavelength grid ({flux.n_pixels} px) differs from the model's ({n_pix} px); "
                "resample it onto model.wave first"
            )
        flux, ivar = flux.flux, flux.ivar
    flux = np.asarray(flux)
    if flux.dtype.kind not in "fiu":
        raise ValueError(f"flux must be numeric, got dtype {flux.dtype}")
    if flux.ndim == 1:
        flux = flux[None, :]
    if flux.ndim != 2 or flux.shape[1] != n_pix:
        raise ValueError(f"flux must be [N, {n_pix}] (the model's wavelength grid), got shape {np.shape(flux)}")
    if flux.shape[0] == 0:
        raise ValueError("no spectra given")
    if ivar is None:
        good = np.isfinite(flux)
    else:
        ivar = np.asarray(ivar)
        if ivar.ndim == 1:
            ivar = ivar[None, :]
        if ivar.shape != flux.shape:
            raise ValueError(f"ivar shape {ivar.shape} does not match flux shape {flux.shape}")
        if np.any(np.isnan(ivar)):
            raise ValueError(f"ivar contains {int(np.isnan(ivar).sum())} NaN values (use ivar = 0 for bad pixels)")
        if np.any(ivar < 0):
            raise ValueError(f"ivar contains {int((ivar < 0).sum())} negative values")
        good = (ivar > 0) & np.isfinite(flux)
    return np.where(good, flux, 0.0).astype(np.float32), good


# ---------------------------------------------------------------------- training loop
@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings shared by the networks (see each model's ``train``)."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20
    warmup_fraction: float = 0.0  # > 0: linear warm-up then cosine decay to 0 over max_epochs

    def check(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        if self.warmup_fraction > 0:
            total = self.max_epochs * steps_per_epoch
            warm = max(1, int(self.warmup_fraction * total))
            lr = optax.warmup_cosine_decay_schedule(0.0, self.learning_rate, warm, max(total, warm + 1))
        else:
            lr = self.learning_rate
        # AdamW: decoupled L2 weight decay (Loshchilov & Hutter 2019) on every weight array.
        return optax.adamw(lr, weight_decay=self.weight_decay)


def train_network(
    net: eqx.Module,
    loss_fn: Callable,
    train_data: tuple,
    val_data: tuple,
    settings: TrainSettings,
    key: Array,
    *,
    name: str = "network",
) -> tuple[eqx.Module, dict]:
    """Minibatch training with early stopping; returns the best-validation-loss network.

    ``loss_fn(net, batch, key, inference) -> scalar`` where ``batch`` is a tuple of arrays
    (leading axis = examples) like ``train_data``; ``key`` is None when ``inference``.
    Each epoch visits a fresh random permutation of the training set in full batches
    (the remainder of the permutation is left out, a different part each epoch).
    Stops after ``settings.patience`` epochs without improvement of the validation loss.

    Raises:
        FloatingPointError: if a training or validation loss becomes non-finite.
    """
    n = int(train_data[0].shape[0])
    bs = min(settings.batch_size, n)
    n_batches = n // bs
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt_state = settings.optimizer(n_batches).init(params)
    train_data = tuple(jnp.asarray(a) for a in train_data)
    val_data = tuple(jnp.asarray(a) for a in val_data)

    best_val, best_params, best_epoch = math.inf, params, -1
    history = {"train_loss": [], "val_loss": []}
    for ep in range(settings.max_epochs):
        key, sub = jax.random.split(key)
        params, opt_state, tl = _epoch(params, static, opt_state, train_data, sub, loss_fn, settings, n_batches, bs)
        vl = float(_chunked_val(params, static, val_data, loss_fn))
        tl = float(tl)
        history["train_loss"].append(tl)
        history["val_loss"].append(vl)
        if not (math.isfinite(tl) and math.isfinite(vl)):
            raise FloatingPointError(
                f"{name}: training diverged at epoch {ep} (train loss {tl}, validation loss {vl}); "
                "lower the learning rate or check the inputs for extreme values"
            )
        if vl < best_val:
            best_val, best_params, best_epoch = vl, params, ep
        elif ep - best_epoch >= settings.patience:
            break
    history.update(best_epoch=best_epoch, best_val_loss=best_val, n_epochs=len(history["val_loss"]))
    logger.info("%s: best validation loss %.4g at epoch %d of %d", name, best_val, best_epoch, history["n_epochs"])
    return eqx.combine(best_params, static), history


# Module-level and jitted with the loss function, settings and sizes as static arguments,
# so that repeated trainings with the same loss function and shapes (ensemble members,
# cross-validation folds) reuse one compilation.
@eqx.filter_jit
def _epoch(params, static, opt_state, data, key, loss_fn, settings, n_batches, bs):
    optim = settings.optimizer(n_batches)
    kperm, kstep = jax.random.split(key)
    perm = jax.random.permutation(kperm, data[0].shape[0])[: n_batches * bs].reshape(n_batches, bs)

    def step(carry, xs):
        params, opt_state = carry
        idx, k = xs
        batch = tuple(a[idx] for a in data)

        def f(p):
            return loss_fn(eqx.combine(p, static), batch, k, False)

        loss, grads = jax.value_and_grad(f)(params)
        updates, opt_state = optim.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(kstep, n_batches)
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (perm, keys))
    return params, opt_state, jnp.mean(losses)


@eqx.filter_jit
def _val_loss(params, static, batch, loss_fn):
    return loss_fn(eqx.combine(params, static), batch, None, True)


def _chunked_val(params, static, data, loss_fn, chunk: int = 512):
    n = int(data[0].shape[0])
    total = 0.0
    for s in range(0, n, chunk):
        part = tuple(a[s : s + chunk] for a in data)
        total += float(_val_loss(params, static, part, loss_fn)) * part[0].shape[0]
    return total / n


def split_train_val(n: int, val_fraction: float, key) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) index arrays; at least 2 examples in each."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(max(2, int(round(val_fraction * n))), n - 2)
    perm = np.asarray(jax.random.permutation(key, n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def noise_sigma(flux, good, ivar) -> np.ndarray:
    """Per-pixel noise sigma [N, P] float32 for augmentation (0 at bad pixels)."""
    with np.errstate(divide="ignore"):
        sigma = np.where(good & (ivar > 0), 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
    return sigma.astype(np.float32)


# ---------------------------------------------------------------------- models and files
_REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: make a concrete direct model loadable by :func:`load_model`."""
    _REGISTRY[cls.__name__] = cls
    return cls


class AbstractDirectModel(eqx.Module):
    """A discriminative model: ONE spectrum [P] -> labels [L] (physical units).

    Concrete models carry the wavelength grid ``wave`` [P], an :class:`InputScaler`
    (``inputs``) and a :class:`LabelScaler` (``targets``), and implement ``_target``:
    the network output (scaled targets) for one filled, un-standardised spectrum. All
    other fields that are not arrays are static and JSON-serialisable: they are the
    model's configuration, stored in the file header and enough (with ``_skeleton``) to
    rebuild a model of identical structure whose array leaves are then read from the file.
    """

    wave: eqx.AbstractVar[Float[Array, " P"]]
    inputs: eqx.AbstractVar[InputScaler]
    targets: eqx.AbstractVar[LabelScaler]

    @abc.abstractmethod
    def _target(self, filled: Float[Array, " P"]) -> Float[Array, " L"]:
        """Scaled targets [L] of one bad-pixel-filled spectrum (inference mode)."""

    @classmethod
    @abc.abstractmethod
    def _skeleton(cls, config: dict):
        """A model with the structure described by ``config`` (arrays of the right shapes)."""

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.targets.names

    @property
    def n_labels(self) -> int:
        return len(self.targets.names)

    @property
    def n_pixels(self) -> int:
        return int(self.wave.shape[0])

    def predict(self, flux, ivar=None) -> np.ndarray:
        """Labels [N, L] in physical units (order ``label_names``) for spectra ``flux``.

        Arguments:
            flux: [N, P] or [P] fluxes on ``model.wave`` (same normalisation as the
                training set), or a SpectrumSet on the same grid (then no ``ivar``).
            ivar: optional inverse variances, same shape; ``ivar == 0`` marks a bad pixel.
                Bad pixels (and non-finite fluxes) are replaced by the per-pixel training
                median, exactly as in training. Spectra without any good pixel get NaN.

        Returns:
            numpy float64 array [N, L].

        Raises:
            ValueError: on a shape mismatch with ``model.wave``, NaN or negative ``ivar``.
        """
        flux, good = check_spectra(flux, ivar, self.wave)
        out = np.empty((flux.shape[0], self.n_labels))
        for s in range(0, flux.shape[0], _PREDICT_CHUNK):
            f, g = flux[s : s + _PREDICT_CHUNK], good[s : s + _PREDICT_CHUNK]
            m = f.shape[0]
            # Pad to a power of two (>= 8): a handful of compiled sizes serve any N.
            b = max(8, 1 << (m - 1).bit_length())
            if b > m:
                f = np.concatenate([f, np.zeros((b - m, f.shape[1]), f.dtype)])
                g = np.concatenate([g, np.zeros((b - m, g.shape[1]), bool)])
            out[s : s + m] = np.asarray(_predict_batch(self, jnp.asarray(f), jnp.asarray(g)))[:m]
        out[~good.any(axis=1)] = np.nan
        return out

    def save(self, path) -> Path:
        """Write the model to ``path`` (``.npz`` + JSON header, no pickle); read it with :func:`load_model`."""
        return _save(self, path)


@eqx.filter_jit
def _predict_batch(model, flux, good):
    def one(f, g):
        return model.targets.to_physical(model._target(model.inputs.filled(f, g)))

    return jax.vmap(one)(flux, good)


def _static_config(module: eqx.Module) -> dict:
    out = {}
    for f in dataclasses.fields(module):
        if f.metadata.get("static", False):
            v = getattr(module, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _model_config(model: AbstractDirectModel) -> dict:
    cfg = _static_config(model)
    cfg["n_pixels"] = model.n_pixels
    cfg["inputs"] = _static_config(model.inputs)
    cfg["targets"] = _static_config(model.targets)
    return cfg


def _save(model: AbstractDirectModel, path) -> Path:
    cls = type(model)
    if cls.__name__ not in _REGISTRY:
        raise TypeError(f"{cls.__name__} is not a registered direct model and cannot be saved")
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    arrays = {f"leaf_{i:04d}": np.asarray(v) for i, v in enumerate(leaves)}
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "slamjax_version": __version__,
        "model": cls.__name__,
        "label_names": list(model.label_names),
        "wave": {
            "n_pixels": model.n_pixels,
            "min": float(model.wave[0]),
            "max": float(model.wave[-1]),
            "unit": "Angstrom",
        },
        "config": _model_config(model),
        "arrays": sorted(arrays),
    }
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with open(path, "wb") as fh:
        np.savez_compressed(fh, __header__=np.array(json.dumps(header)), **arrays)
    return path


def _open(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for non-npz input
        raise ValueError(f"{path} is not a slamjax model file (not an npz archive: {err})") from err
    if not hasattr(data, "files") or "__header__" not in data.files:
        raise ValueError(f"{path} is not a slamjax model file (no '__header__' entry)")
    return data


def read_header(path) -> dict:
    """The JSON header of a direct-model file."""
    with _open(path) as data:
        return json.loads(str(data["__header__"]))


def load_model(path) -> AbstractDirectModel:
    """Load a direct model written by ``model.save(path)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a direct-model file, was written by a newer format
            version, names an unknown model class, or its arrays do not match the
            structure its header describes.
    """
    with _open(path) as data:
        header = json.loads(str(data["__header__"]))
        if header.get("format") != FORMAT_NAME:
            hint = " (an emulator: use slamjax.load_emulator)" if header.get("format") == "slamjax-emulator" else ""
            raise ValueError(f"{path}: not a direct model, format {header.get('format')!r}{hint}")
        if int(header.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: model format version {header['format_version']} is newer than this "
                f"slamjax ({__version__}) supports ({FORMAT_VERSION}); upgrade slamjax"
            )
        name = header.get("model")
        if name not in _REGISTRY:
            raise ValueError(f"{path}: unknown direct model class {name!r}; known: {sorted(_REGISTRY)}")
        missing = sorted(set(header["arrays"]) - set(data.files))
        if missing:
            raise ValueError(f"{path}: arrays {missing[:5]} listed in the header are missing from the file")
        stored = [np.asarray(data[k]) for k in sorted(header["arrays"])]
    skeleton = _REGISTRY[name]._skeleton(header["config"])
    params, static = eqx.partition(skeleton, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if len(leaves) != len(stored):
        raise ValueError(f"{path}: {len(stored)} arrays stored but a {name} of this config has {len(leaves)}")
    for i, (a, b) in enumerate(zip(leaves, stored, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"{path}: array {i} is {b.dtype}{b.shape}, expected {a.dtype}{a.shape}")
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, [jnp.asarray(b) for b in stored]), static)


def tuplify(v):
    """JSON lists back to (nested) tuples."""
    return tuple(tuplify(x) for x in v) if isinstance(v, list) else v


def stack_modules(modules):
    """Stack identically-structured modules along a new leading axis (an ensemble)."""
    arrays = [eqx.filter(m, eqx.is_array) for m in modules]
    static = eqx.partition(modules[0], eqx.is_array)[1]
    return eqx.combine(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *arrays), static)


def ensemble_mean(stacked, x):
    """Mean output of a stacked ensemble (see :func:`stack_modules`) for one input."""
    out = eqx.filter_vmap(lambda m: m(x))(stacked)
    return jnp.mean(out, axis=0)
