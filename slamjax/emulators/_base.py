"""Emulator interface, label standardisation and the versioned model-file format."""

from __future__ import annotations

import abc
import dataclasses
import itertools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy.spatial import cKDTree

from .._result import check_label_names
from .._version import __version__

__all__ = ["AbstractEmulator", "AbstractLinearEmulator", "LabelSpace", "LabelSystematics", "load_emulator"]

FORMAT_NAME = "slamjax-emulator"
FORMAT_VERSION = 1
_CLASS_KEY = "__emulator__"


class LabelSpace(eqx.Module):
    """Label names, the standardisation used internally, and the training label box.

    ``z = (labels - mean) / scale`` is what emulators see; ``lo``/``hi`` are the
    per-label minimum and maximum of the training labels (physical units) and
    ``train`` the training labels themselves (used for multi-start initial guesses).

    ``systematics`` (optional, a :class:`LabelSystematics`) describes the emulator's
    systematic label errors measured on held-out spectra of known labels
    (:func:`slamjax.validate.label_systematics`). Emulator errors are correlated across
    pixels, so they bias the labels of a spectrum coherently; the formal covariance (noise
    and per-pixel model variance only) cannot show that, and at high S/N it dominates.
    :func:`slamjax.fit_labels` adds it to the formal covariance.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    mean: Float[Array, " L"]
    scale: Float[Array, " L"]
    lo: Float[Array, " L"]
    hi: Float[Array, " L"]
    train: Float[Array, "K L"]
    systematics: LabelSystematics | None = None

    @classmethod
    def from_labels(cls, labels, names) -> LabelSpace:
        labels = np.asarray(labels, dtype=np.float64)
        scale = labels.std(axis=0)
        flat = [n for n, s, m in zip(names, scale, labels.mean(axis=0)) if not s > 1e-12 * max(abs(m), 1.0)]
        if flat:
            raise ValueError(f"training labels {flat} are constant; they cannot be learned")
        return cls(
            names=tuple(names),
            mean=jnp.asarray(labels.mean(axis=0)),
            scale=jnp.asarray(scale),
            lo=jnp.asarray(labels.min(axis=0)),
            hi=jnp.asarray(labels.max(axis=0)),
            train=jnp.asarray(labels),
        )

    def standardise(self, labels):
        return (labels - self.mean) / self.scale

    def physical(self, z):
        return z * self.scale + self.mean


class LabelSystematics(eqx.Module):
    """Systematic label errors of an emulator, measured on V held-out spectra of known labels.

    ``points`` [V, L] are their fitted labels (physical units; a catalogue star is looked up by
    its fitted labels) and ``excess`` [V, L, L] the per-spectrum second moment of the label
    error not explained by the formal covariance, d dᵀ − C (d = fitted − true). Emulators are
    usually worse in some corners of label space (e.g. cool dwarfs) than in the bulk, so the
    systematic covariance depends on the labels x; two descriptions:

    * neighbours (``log_var`` None): the mean excess of the ``k`` held-out spectra whose fits
      lie nearest to x (Euclidean in labels divided by ``scale``), projected onto the positive
      semi-definite matrices (in labels divided by ``scale``, so the projection does not
      depend on the units);
    * smooth (``log_var`` [L, T] given): the variance of label l is scale_l² exp(q_l(u)), q_l a
      polynomial of degree ``degree`` (T terms, :func:`_poly_terms`) in u = x / ``scale``
      minus the mean of the held-out u, evaluated inside their box (u clipped to it); the
      coefficients are fitted by maximum likelihood (d_nl ~ N(0, C_nll + scale_l² exp(q_l(u_n)))).
      The correlations between labels come from the mean excess of the ``k`` nearest.

    A local mean of a few tens of noisy excesses averages over a wide region of label space
    and is biased where the errors grow steeply towards the edges of the training set; the
    smooth form uses every held-out spectrum.
    :func:`slamjax.validate.cv_systematics` picks between them by held-out likelihood.

    ``label_names``: the labels, in order, they were measured for (None in files written before
    they were recorded); ``em.with_systematics`` refuses an emulator with other labels or order.
    """

    points: Float[Array, "V L"]
    excess: Float[Array, "V L L"]
    scale: Float[Array, " L"]
    k: int = eqx.field(static=True)
    log_var: Float[Array, "L T"] | None = None
    degree: int = eqx.field(static=True, default=2)
    label_names: tuple[str, ...] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        v, n_lab = self.points.shape
        if self.label_names is not None and len(self.label_names) != n_lab:
            raise ValueError(f"LabelSystematics: {len(self.label_names)} label names for {n_lab} labels")
        if self.excess.shape != (v, n_lab, n_lab) or self.scale.shape != (n_lab,):
            raise ValueError("LabelSystematics: points [V, L], excess [V, L, L] and scale [L] do not match")
        if not 1 <= self.k <= v:
            raise ValueError(f"LabelSystematics: k must be in 1..{v}, got {self.k}")
        if self.log_var is not None and self.log_var.shape != (n_lab, _n_poly_terms(n_lab, self.degree)):
            raise ValueError(
                f"LabelSystematics: log_var must be [{n_lab}, {_n_poly_terms(n_lab, self.degree)}] for degree "
                f"{self.degree}, got {tuple(self.log_var.shape)}"
            )

    def global_cov(self) -> np.ndarray:
        """The average systematic covariance [L, L] over all held-out spectra."""
        if self.log_var is not None:
            return self.cov(np.asarray(self.points)).mean(axis=0)
        return _psd(np.asarray(self.excess).mean(axis=0), np.asarray(self.scale))

    def cov(self, labels, chunk: int = 4096) -> np.ndarray:
        """Systematic covariance [N, L, L] at labels [N, L] (physical units; NaN rows give NaN)."""
        labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
        scale = np.asarray(self.scale)
        if labels.ndim != 2 or labels.shape[1] != scale.size:
            raise ValueError(f"labels must be [N, {scale.size}] (or [{scale.size}]), got shape {labels.shape}")
        pts = np.asarray(self.points) / scale
        exc = np.asarray(self.excess)
        smooth = None if self.log_var is None else np.asarray(self.log_var)
        out = np.full((labels.shape[0],) + exc.shape[1:], np.nan)
        ok = np.all(np.isfinite(labels), axis=1)
        idx_ok = np.flatnonzero(ok)
        tree = cKDTree(pts)  # O(log V) per star: a distance matrix cost 274 µs per star at V = 17,000
        for i0 in range(0, idx_ok.size, chunk):
            rows = idx_ok[i0 : i0 + chunk]
            x = labels[rows] / scale
            near = tree.query(x, k=self.k)[1].reshape(len(rows), self.k)
            local = _psd(exc[near].mean(axis=1), scale)
            if smooth is None:
                out[rows] = local
                continue
            sd = scale * np.sqrt(smooth_variance(x, pts, smooth, self.degree))  # [n, L]
            d = np.sqrt(np.diagonal(local, axis1=1, axis2=2))
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = local / (d[:, :, None] * d[:, None, :])
            corr = np.where(np.isfinite(corr), corr, 0.0)
            corr[:, np.arange(corr.shape[1]), np.arange(corr.shape[1])] = 1.0
            out[rows] = sd[:, :, None] * corr * sd[:, None, :]
        return out


def smooth_variance(u, u_points, log_var, degree: int):
    """Variances [N, L] (units of scale²) of the smooth form at scaled labels ``u`` [N, L]: the
    polynomials ``log_var`` [L, T] in u minus the mean of the held-out ``u_points`` [V, L], with u
    clipped to their box."""
    lo, hi = u_points.min(axis=0), u_points.max(axis=0)
    return np.exp(_poly_terms(np.clip(u, lo, hi) - u_points.mean(axis=0), degree) @ np.asarray(log_var).T)


def monomials(n_labels: int, order: int) -> tuple[tuple[int, ...], ...]:
    """The monomials up to ``order`` in ``n_labels`` labels, as tuples of label indices
    (``()`` is the constant; then the linear terms, the products i ≤ j, ...)."""
    terms: list[tuple[int, ...]] = [()]
    for degree in range(1, order + 1):
        terms.extend(itertools.combinations_with_replacement(range(n_labels), degree))
    return tuple(terms)


def _n_poly_terms(n_lab: int, degree: int) -> int:
    return len(monomials(n_lab, degree))


def _poly_terms(u, degree: int):
    """The monomials (:func:`monomials`) of the rows of ``u`` [N, L] up to ``degree``: [N, T]."""
    return np.stack([np.prod(u[:, list(t)], axis=1) for t in monomials(u.shape[1], degree)], axis=1)


def _psd(c, scale=None):
    """Symmetric positive semi-definite part of (a stack of) square matrices; with ``scale`` [L],
    the projection is made on c / (scale scaleᵀ), so that it does not depend on the units."""
    c = 0.5 * (c + np.swapaxes(c, -1, -2))
    s = None if scale is None else np.asarray(scale)[:, None] * np.asarray(scale)[None, :]
    if s is not None:
        c = c / s
    evals, evecs = np.linalg.eigh(c)
    out = (evecs * np.maximum(evals, 0.0)[..., None, :]) @ np.swapaxes(evecs, -1, -2)
    return out if s is None else out * s


def training_labels(ds, label_names=None) -> tuple[tuple[str, ...], np.ndarray]:
    """Validated (names, labels [N, L]) of a labelled training SpectrumSet (optionally a subset)."""
    from .._spectra import SpectrumSet

    if not isinstance(ds, SpectrumSet):
        raise TypeError(f"train expects a SpectrumSet, got {type(ds).__name__}")
    if ds.labels is None:
        raise ValueError("training set has no labels")
    if isinstance(label_names, str):
        raise TypeError(f"label_names must be a sequence of names, got the string {label_names!r}")
    names = tuple(label_names) if label_names is not None else ds.label_names
    if not names:
        raise ValueError("no labels to train on (label_names is empty)")
    check_label_names(names)
    labels = np.stack([ds.label(n) for n in names], axis=1)
    if not np.all(np.isfinite(labels)):
        bad = np.flatnonzero(~np.all(np.isfinite(labels), axis=1))
        first = ", ".join(str(i) for i in ds.ids[bad[:5]])
        raise ValueError(f"{bad.size} training stars have non-finite labels (first ids: {first})")
    return names, labels


class AbstractEmulator(eqx.Module):
    """A map from ONE label vector (physical units) to ONE normalised spectrum [P].

    Concrete emulators carry a :class:`LabelSpace` (``space``), the wavelength grid
    ``wave`` [P] and ``pixel_variance`` [P], the per-pixel model variance in flux²
    units that :func:`slamjax.fit_labels` adds to the observational variance
    (``inf`` marks a pixel the model cannot predict; it then gets zero weight).
    """

    space: eqx.AbstractVar[LabelSpace]
    wave: eqx.AbstractVar[Float[Array, " P"]]
    pixel_variance: eqx.AbstractVar[Float[Array, " P"]]

    @abc.abstractmethod
    def __call__(self, labels: Float[Array, " L"]) -> Float[Array, " P"]:
        """Model flux [P] at ``labels`` [L] in physical units."""

    def _one_spectrum(self, labels):
        """``labels`` as an array [L], the labels of ONE spectrum; a clear error for any other shape
        (shapes are static, so under ``jit`` and ``vmap`` this costs nothing at run time)."""
        labels = jnp.asarray(labels)
        if labels.shape != (self.n_labels,):
            raise ValueError(
                f"{type(self).__name__} takes the labels of ONE spectrum, shape ({self.n_labels},) in the order "
                f"{list(self.label_names)}; got shape {labels.shape}. For a batch [N, L] use em.predict(labels) "
                "or jax.vmap(em)(labels)."
            )
        return labels

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.space.names

    @property
    def n_labels(self) -> int:
        return len(self.space.names)

    @property
    def n_pixels(self) -> int:
        return self.wave.shape[0]

    @property
    def float32_ok(self) -> bool:
        """Whether the model keeps its accuracy when evaluated in float32 (``fit_labels`` then
        fits float32 flux in float32 by default). True unless an emulator says otherwise."""
        return True

    @property
    def _check_starts_by_one_step(self) -> bool:
        """How ``fit_labels`` uses the starts after the best-ranked one when the templates' Jacobians
        are cached. False (default): every start gets two LM steps and the best one continues
        (``_lm._screen``). True: the best-ranked start is fitted alone; each other start gets one
        LM step from its cached normal equations, and only a start whose point after that step
        has a lower objective than the fit's minimum is fitted too (``_lm.start_alternatives``).
        Chosen per emulator from cross-validated fits of real spectra (benchmarks/HISTORY.md, "Checked starts")."""
        return False

    def flux_and_jacobian(self, labels):
        """Model flux [P] and its Jacobian d flux / d labels [P, L] (physical units)."""
        return self(labels), jax.jacfwd(self)(labels)

    def predict(self, labels) -> np.ndarray:
        """Model fluxes [N, P] for labels [N, L] (physical units); a numpy array."""
        labels = jnp.asarray(np.atleast_2d(np.asarray(labels, dtype=np.float64)))
        if labels.shape[1] != self.n_labels:
            raise ValueError(f"labels must be [N, {self.n_labels}] ({self.label_names}), got {labels.shape}")
        return np.asarray(_predict(self, labels))

    def save(self, path, meta: dict | None = None) -> Path:
        """Write the emulator to ``path`` (an ``.npz`` with a JSON header; no pickle).

        ``meta``: provenance to keep in the header (JSON-serialisable), e.g. how the training
        flux was normalised (``{"normalization": "spline"}``, as ``slamjax train`` records and
        ``slamjax fit`` checks); :func:`read_header` returns it as ``header["meta"]``."""
        return _save(self, path, meta)

    def with_systematics(self, systematics) -> AbstractEmulator:
        """A copy whose fits add the systematic label covariance described by
        ``systematics`` (a :class:`LabelSystematics` from
        :func:`slamjax.validate.label_systematics`; ``None`` removes it) to their formal
        covariance."""
        if systematics is not None:
            if not isinstance(systematics, LabelSystematics):
                raise TypeError(f"systematics must be a LabelSystematics or None, got {type(systematics).__name__}")
            if systematics.points.shape[1] != self.n_labels:
                raise ValueError(
                    f"systematics are for {systematics.points.shape[1]} labels, the emulator has {self.n_labels}"
                )
            names = systematics.label_names
            if names is not None and tuple(names) != tuple(self.label_names):
                raise ValueError(
                    f"systematics were measured for the labels {list(names)}, the emulator has "
                    f"{list(self.label_names)}: measure them with an emulator of the same labels in the same order"
                )
        return _replace_systematics(self, systematics)

    @property
    def _pixel_order(self):
        """``None``, or the pixel of each output column [Q] (Q >= P; −1: a padding column, no pixel):
        then :meth:`_flux_and_jacobian_t` gives its outputs in that order, and ``fit_labels``
        permutes the data once instead of the model at every step."""
        return None

    def _flux_ordered(self, z):
        """Model flux at the standardised labels ``z`` [L], outputs in the order :attr:`_pixel_order`."""
        return self(self.space.physical(z))

    def _flux_and_jacobian_t(self, z):
        """Model flux and Jacobian transposed [L, ·] with respect to the standardised labels ``z``
        [L], outputs in the order :attr:`_pixel_order` (used by ``fit_labels`` when that is set)."""
        flux, jac = self.flux_and_jacobian(self.space.physical(z))
        return flux, (jac * self.space.scale[None, :]).T

    def _fit_form(self, dtype) -> AbstractEmulator:
        """An equivalent emulator laid out for repeated ``flux_and_jacobian`` calls in ``dtype``
        (``fit_labels`` uses it; never saved). Default: ``self``."""
        return self

    @classmethod
    def _common_shapes(cls, ems):
        """Equivalent emulators whose arrays and static fields have the same shapes, so that one
        compiled fit serves all (cross-validation folds); the default is ``ems`` unchanged, right for
        emulators whose shapes do not depend on the training set."""
        return list(ems)


class AbstractLinearEmulator(AbstractEmulator):
    """An emulator linear in a small feature vector: ``flux = design @ features(z)``.

    ``z`` are the standardised labels and ``features(z)[0] == 1`` for all ``z``. Fitting
    such a model reduces, per spectrum, to a quadratic form in the features, which
    :func:`slamjax.fit_labels` exploits (cost per LM step independent of P).
    """

    design: eqx.AbstractVar[Float[Array, "P T"]]

    @abc.abstractmethod
    def features(self, z: Float[Array, " L"]) -> Float[Array, " T"]:
        """Feature vector [T] of standardised labels ``z`` [L]; ``features(z)[0] == 1``."""

    def __call__(self, labels):
        return self.design @ self.features(self.space.standardise(self._one_spectrum(labels)))


def _fit_view(em, dtype=None):
    """``em`` as the compiled fit sees it: without the training labels and the systematics, which
    only the host-side code uses. Emulators trained on different sets of stars (cross-validation
    folds) then differ only in arrays whose shapes they share, and one compilation serves them all.
    With ``dtype``, also in the emulator's fit layout (:meth:`AbstractEmulator._fit_form`)."""
    if dtype is not None:
        em = em._fit_form(dtype)

    def is_space(x):
        return isinstance(x, LabelSpace)

    def slim(x):
        return dataclasses.replace(x, train=x.train[:1], systematics=None) if is_space(x) else x

    return jax.tree.map(slim, em, is_leaf=is_space)


def _replace_systematics(em, cov):
    # Wrappers (e.g. ContinuumNormalized) share the inner emulator's LabelSpace: set it everywhere.
    def is_space(x):
        return isinstance(x, LabelSpace)

    def swap(x):
        return dataclasses.replace(x, systematics=cov) if is_space(x) else x

    return jax.tree.map(swap, em, is_leaf=is_space)


@eqx.filter_jit
def _predict(em, labels):
    return jax.vmap(em)(labels)


# ---------------------------------------------------------------------- model files
_REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: make a concrete emulator loadable by :func:`load_emulator`."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _split_fields(module: eqx.Module, prefix: str = ""):
    """Flatten a (nested) Module into JSON-able static fields and named arrays."""
    static, arrays = {}, {}
    for f in dataclasses.fields(module):
        value = getattr(module, f.name)
        key = prefix + f.name
        if isinstance(value, eqx.Module):
            if isinstance(value, AbstractEmulator):
                # A wrapped emulator (e.g. ContinuumNormalized.inner): record its class.
                static[key + "." + _CLASS_KEY] = _registered_name(value)
            s, a = _split_fields(value, key + ".")
            static.update(s)
            arrays.update(a)
        elif isinstance(value, (jax.Array, np.ndarray)):
            arrays[key] = np.asarray(value)
        elif isinstance(value, tuple) and value and all(isinstance(v, (jax.Array, np.ndarray)) for v in value):
            # A tuple of arrays (e.g. the layers of a network) is stored as key.0, key.1, ...
            arrays.update({f"{key}.{i}": np.asarray(v) for i, v in enumerate(value)})
        elif isinstance(value, tuple):
            static[key] = list(value)
        else:
            static[key] = value
    return static, arrays


def _save(em: AbstractEmulator, path, meta: dict | None = None) -> Path:
    cls = type(em)
    if meta is not None:
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        try:
            meta = json.loads(json.dumps(meta))
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from err
    _registered_name(em)
    static, arrays = _split_fields(em)
    space = em.space
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "slamjax_version": __version__,
        "emulator": cls.__name__,
        "label_names": list(space.names),
        "label_scaling": {
            "mean": np.asarray(space.mean).tolist(),
            "scale": np.asarray(space.scale).tolist(),
            "train_min": np.asarray(space.lo).tolist(),
            "train_max": np.asarray(space.hi).tolist(),
        },
        "wave": {
            "n_pixels": int(em.wave.shape[0]),
            "min": float(em.wave[0]),
            "max": float(em.wave[-1]),
            "unit": "Angstrom",
        },
        "static": static,
        "arrays": sorted(arrays),
    }
    if meta is not None:
        header["meta"] = meta
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with open(path, "wb") as fh:
        np.savez_compressed(fh, __header__=np.array(json.dumps(header)), **arrays)
    return path


def read_header(path) -> dict:
    """The JSON header of a slamjax model file (raises ValueError if it is not one)."""
    with _open_model(path) as data:
        return json.loads(str(data["__header__"]))


def _open_model(path):
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


def load_emulator(path) -> AbstractEmulator:
    """Load an emulator written by ``em.save(path)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a slamjax model file, was written by a newer format
            version, or names an unknown emulator class.
    """
    with _open_model(path) as data:
        header = json.loads(str(data["__header__"]))
        if header.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: unknown model format {header.get('format')!r}")
        if int(header.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: model format version {header['format_version']} is newer than this "
                f"slamjax ({__version__}) supports ({FORMAT_VERSION}); upgrade slamjax"
            )
        name = header.get("emulator")
        if name not in _REGISTRY:
            raise ValueError(f"{path}: unknown emulator class {name!r}; known: {sorted(_REGISTRY)}")
        arrays = {k: np.asarray(data[k]) for k in header["arrays"]}
    values = dict(header["static"])
    values.update(arrays)
    return _build(_REGISTRY[name], values)


def _build(cls, values: dict, prefix: str = ""):
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in values:
            v = values[key]
            if isinstance(v, np.ndarray):
                v = jnp.asarray(v)
            elif isinstance(v, list):
                v = _tuplify(v)
            kwargs[f.name] = v
        elif f"{key}.0" in values and isinstance(values[f"{key}.0"], np.ndarray):
            n = 0
            while f"{key}.{n}" in values:
                n += 1
            kwargs[f.name] = tuple(jnp.asarray(values[f"{key}.{i}"]) for i in range(n))
        elif f.default is not dataclasses.MISSING and not any(k.startswith(key + ".") for k in values):
            continue  # an optional field absent from the file (e.g. written before it existed): its default
        else:
            sub = _field_type(cls, f.name, values.get(f"{key}.{_CLASS_KEY}"))
            kwargs[f.name] = _build(sub, values, key + ".")
    return cls(**kwargs)


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def _registered_name(em) -> str:
    name = type(em).__name__
    if name not in _REGISTRY:
        raise TypeError(f"{name} is not a registered emulator and cannot be saved")
    return name


def _field_type(cls, name, emulator_class=None):
    # Nested modules in model files are a LabelSpace or a registered emulator (a wrapped
    # model, its class named in the static entry '<field>.__emulator__'); keep the format explicit.
    if emulator_class is not None:
        if emulator_class not in _REGISTRY:
            raise ValueError(f"unknown emulator class {emulator_class!r} (field {name!r}); known: {sorted(_REGISTRY)}")
        return _REGISTRY[emulator_class]
    if name == "space":
        return LabelSpace
    if name == "systematics":
        return LabelSystematics
    raise ValueError(f"model file lacks field {name!r} of {cls.__name__}")
