"""SLAM's per-pixel kernel model (Zhang, Liu & Deng 2020) as kernel ridge regression with exact LOO CV.

Each pixel p is modelled as y_p(z) = Σ_i α_ip exp(−γ_p ‖z − x_i‖²) on standardised labels z and
standardised flux y (the squared-loss counterpart of SLAM's ε-SVR; ridge λ ↔ 1/C). For one γ the
kernel matrix K is shared by all pixels: one eigendecomposition K = Q Λ Qᵀ gives, for every λ
and every pixel at once,

    α = Q diag(1/(Λ + λ)) Qᵀ y,      residual y − Kα = λ α,      H_ii = Σ_k Q_ik² Λ_k/(Λ_k + λ),

and the exact leave-one-out residual e_i = λ α_i / (1 − H_ii). Each pixel keeps the (γ, λ) of
lowest LOO MSE. Its model variance (used by ``fit_labels``) comes from the held-out residuals: each
is model error plus the held-out star's own noise, e_i ~ N(0, s² + 1/ivar_i), and s² is the
maximum-likelihood value over the pixel's good training entries (floored at 0; with equal noise it
is the LOO MSE × flux_scale² minus the noise variance). Only s² belongs to the model: counting the training
noise again would make error bars too large at high S/N.

Bad training entries (ivar = 0 or non-finite flux) are left out exactly: at a pixel with up to
``_kernel_cv.exact_bad_max(n, k)`` bad stars (64, or more for small sets: 356 of 434 stars), the
model and its held-out residuals are those of the fit to the good stars alone, from the full-data
eigendecomposition plus one small solve over the bad stars per pixel and λ (``_kernel_cv``). Good
pixels are equally weighted, as in SLAM. Pixels with more bad stars are imputed instead (bad
values set to the pixel's mean, then to the selected model's fitted value, ``n_impute`` rounds;
the fixed point is the good-only fit), which is close to it only where λ is large or the bad stars
have close neighbours. Their CV MSE and model variance are approximate too: the imputed values
were fitted with the held-out star (with 65 of 200 stars imputed at a pixel, a review measured the
CV MSE 2–3× and the model variance 9× too large). Training names such pixels. (Before the exact
form, two imputation rounds at a pixel with ONE bad star of 60 left the model 4× the noise from
the good-only fit at λ = 0.003.)

Large training sets (``n_inducing``): an n × n eigendecomposition per γ costs O(n³) (17,000
stars: ~10¹³ flops per γ). Then the model is restricted to kernels centred on r inducing stars
(a random subset): y(z) = Σ_j β_j k(z, x_j), fitted by min ‖y − K_nr β‖² + λ βᵀK_rr β (the
"subset of regressors" form of kernel ridge regression; same λ scale). With
K_rr = V S Vᵀ and features Φ = K_nr V S^(-1/2) [n, r] this is ridge regression on Φ; the thin
SVD Φ = U diag(σ) Wᵀ plays the role of Q, Λ above (hat matrix U diag(σ²/(σ²+λ)) Uᵀ), so the
same closed forms give exact LOO (or k-fold) residuals of that model for every λ and pixel, at
O(n r²) per γ. The inducing stars fix the basis functions only; the held-out flux never enters
the fit that predicts it.

k-fold CV (``cv=k``): for a linear smoother with hat matrix H the residual of fold F refitted
without F is e_F = (I − H_FF)⁻¹ r_F (r: full-fit residual), exact for any ridge problem with
fixed features, one |F| × |F| solve per fold, γ and λ shared by all pixels.
"""

from __future__ import annotations

import dataclasses
import logging

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._spectra import SpectrumSet
from ._base import AbstractEmulator, LabelSpace, register, training_labels
from ._kernel_cv import exact_bad_max, exact_pixels, select
from ._kernel_fit import _KernelFitForm, _KernelGroupedForm
from ._svr import epsilon_refit
from ._variance import model_variance

logger = logging.getLogger(__name__)

__all__ = ["KernelEmulator"]

DEFAULT_GAMMAS = (0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_LAMBDAS = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0)
EXACT_MAX = 3000  # above this many training stars, n_inducing defaults to DEFAULT_INDUCING
DEFAULT_INDUCING = 2000
# Largest extended-coefficient array [m, (1 + L)·P] (float64) for which fits use it (_KernelFitForm, which also
# keeps a copy of its flux columns [m, P]):
# 400 × 100 px takes 1.3 MB, MILES at every 20th pixel 2.4 MB; at 30 MB (MILES, 217 × 4300 px) it no longer paid.
_EXTENDED_MAX_BYTES = 8 * 2**20


@register
class KernelEmulator(AbstractEmulator):
    """Per-pixel RBF kernel ridge regression with per-pixel (γ, λ) chosen by exact LOO CV.

    Build one with :meth:`train`. ``em(labels)`` evaluates ONE spectrum (physical labels [L]).

    Attributes:
        space: label names, standardisation and training box.
        wave: wavelength grid [P].
        pixel_variance: model variance s² [P] in flux² units: the maximum-likelihood variance of
            the held-out residuals beyond each training star's own noise, floored at 0 (``inf`` for
            unusable pixels).
        x_train: standardised labels of the kernel centres [m, L]: all training stars, or the
            ``n_inducing`` inducing stars.
        coef: α [m, P] in standardised-flux units, pixel columns ordered by γ group.
        order: pixel permutation [P] that sorts pixels by γ group (``coef[:, j]`` is pixel
            ``order[j]``); ``inverse`` undoes it.
        gammas: the γ of each group [G]; ``groups``: static (start, stop) column slices.
        flux_mean, flux_scale: per-pixel flux standardisation [P].
        lam: chosen λ per pixel [P]; ``gamma``: chosen γ per pixel [P].
        cv_mse, cv_md: LOO mean squared and mean absolute deviation, standardised flux [P] (NaN
            at pixels with < 3 good training values or no flux variance).
    """

    space: LabelSpace
    wave: Float[Array, " P"]
    pixel_variance: Float[Array, " P"]
    x_train: Float[Array, "m L"]
    coef: Float[Array, "m P"]
    order: Int[Array, " P"]
    inverse: Int[Array, " P"]
    gammas: Float[Array, " G"]
    flux_mean: Float[Array, " P"]
    flux_scale: Float[Array, " P"]
    lam: Float[Array, " P"]
    gamma: Float[Array, " P"]
    cv_mse: Float[Array, " P"]
    cv_md: Float[Array, " P"]
    groups: tuple[tuple[int, int], ...] = eqx.field(static=True)

    def __call__(self, labels):
        z = self.space.standardise(self._one_spectrum(labels))
        d2 = jnp.sum((self.x_train - z[None, :]) ** 2, axis=1)  # [m]
        # One row of exponentials per γ group, then one contraction with that group's columns.
        parts = [
            jnp.exp(-self.gammas[g] * d2) @ self.coef[:, start:stop] for g, (start, stop) in enumerate(self.groups)
        ]
        y = jnp.concatenate(parts)[self.inverse]
        return y * self.flux_scale + self.flux_mean

    @property
    def float32_ok(self) -> bool:
        """False: the kernel sum Σ α_i exp(−γ‖x_i − z‖²) cancels. With small λ the coefficients reach
        |α| ~ 10⁴ (MILES, λ = 1e-3) while the flux is O(1), so float32 loses ~4 digits: model flux
        errors up to 2e-3 (99th percentile 1.6e-4; Cannon and Payne: < 1e-6), and fitted labels off
        by up to 0.4 σ at S/N 160 against float64 fits (MILES S/N ladder). ``fit_labels`` therefore
        fits this emulator in float64 unless ``dtype=float32`` is asked for explicitly."""
        return False

    @property
    def _check_starts_by_one_step(self) -> bool:
        """True: the best-ranked start is fitted alone and the others are checked by one LM step
        (``AbstractEmulator._check_starts_by_one_step``). Against the two-step screening of every
        start, in 5-fold CV fits (benchmarks/HISTORY.md, "Checked starts"): the same minima on the
        synthetic problem, the APOGEE-like spectra and MILES at 4300 px, one lower on MILES at
        215 px (Δχ² = −17.1); on the 403 real APOGEE toy stars 3 higher by Δχ² 0.08–0.89 and one
        lower (−0.24). The Payne emulator keeps the screening: it missed a minimum lower by
        Δχ² = 375 on MILES at 4300 px."""
        return True

    def flux_and_jacobian(self, labels):
        """Model flux [P] and its Jacobian d flux / d labels [P, L] (physical units).

        Analytic: with e_i = exp(−γ‖x_i − z‖²), ∂y/∂z = 2γ Σ_i α_i e_i (x_i − z), so one product of
        the stacked rows [e; e·(x − z)_1; …; e·(x − z)_L] with each group's coefficients gives the
        flux and all L derivatives, and every exponential is computed once (at a few hundred
        training stars the exponentials, not the products, dominate one evaluation).
        """
        z = self.space.standardise(self._one_spectrum(labels))
        diff = self.x_train - z[None, :]  # [m, L]
        d2 = jnp.sum(diff * diff, axis=1)  # [m]
        ys, js = [], []
        for g, (start, stop) in enumerate(self.groups):
            e = jnp.exp(-self.gammas[g] * d2)
            rows = jnp.concatenate([e[None, :], (e[:, None] * diff).T], axis=0)  # [1 + L, m]
            out = rows @ self.coef[:, start:stop]  # [1 + L, P_g]
            ys.append(out[0])
            js.append((2.0 * self.gammas[g]) * out[1:].T)  # [P_g, L]
        y = jnp.concatenate(ys)[self.inverse]
        jz = jnp.concatenate(js)[self.inverse]
        flux = y * self.flux_scale + self.flux_mean
        return flux, jz * self.flux_scale[:, None] / self.space.scale[None, :]

    def _fit_form(self, dtype):
        """The layout with extended coefficients (:class:`_KernelFitForm`) for float64 fits whose
        extended coefficients take at most ``_EXTENDED_MAX_BYTES``; otherwise the stacked-row form
        with each γ group's coefficients as an array of its own (:class:`_KernelGroupedForm`)."""
        m, p = self.coef.shape
        n_lab = self.x_train.shape[1]
        if jnp.dtype(dtype) != jnp.float64 or (1 + n_lab) * m * p * 8 > _EXTENDED_MAX_BYTES:
            return _KernelGroupedForm.of(self)
        return _KernelFitForm.of(self)

    @classmethod
    def _common_shapes(cls, ems):
        """Equivalent emulators with one static γ-group layout and one number of kernel centres.

        Emulators trained on different stars (cross-validation folds) pick different γ per pixel
        and have different numbers of centres, so each would compile its own fit. Here every model
        gets the union of the γ values, each group padded to its largest size over ``ems`` with
        zero-coefficient columns (``inverse`` never reads them back), and the centres padded with
        zero-coefficient rows. Predictions are unchanged; the padding costs a few columns.
        """
        ems = list(ems)
        if len(ems) < 2 or any(type(e) is not cls for e in ems):
            return ems
        gams = np.unique(np.concatenate([np.asarray(e.gammas) for e in ems]))
        sizes = np.zeros(gams.size, dtype=np.int64)
        for e in ems:
            for g, (start, stop) in zip(np.asarray(e.gammas), e.groups):
                j = int(np.searchsorted(gams, g))
                sizes[j] = max(sizes[j], stop - start)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        groups = tuple((int(offsets[j]), int(offsets[j + 1])) for j in range(gams.size))
        m = max(e.x_train.shape[0] for e in ems)
        out = []
        for e in ems:
            coef_old = np.asarray(e.coef)
            coef = np.zeros((m, int(offsets[-1])), coef_old.dtype)
            new_col = np.empty(coef_old.shape[1], dtype=np.int64)  # old column -> new column
            for g, (start, stop) in zip(np.asarray(e.gammas), e.groups):
                o = int(offsets[int(np.searchsorted(gams, g))])
                coef[: coef_old.shape[0], o : o + stop - start] = coef_old[:, start:stop]
                new_col[start:stop] = np.arange(o, o + stop - start)
            x = np.zeros((m, e.x_train.shape[1]), np.asarray(e.x_train).dtype)
            x[: e.x_train.shape[0]] = np.asarray(e.x_train)
            order = np.full(coef.shape[1], -1, dtype=np.asarray(e.order).dtype)  # -1: padding column
            order[new_col] = np.asarray(e.order)
            out.append(
                dataclasses.replace(
                    e,
                    x_train=jnp.asarray(x),
                    coef=jnp.asarray(coef),
                    order=jnp.asarray(order),
                    inverse=jnp.asarray(new_col[np.asarray(e.inverse)].astype(np.asarray(e.inverse).dtype)),
                    gammas=jnp.asarray(gams),
                    groups=groups,
                )
            )
        return out

    @classmethod
    def train(
        cls,
        ds: SpectrumSet,
        gamma_grid=None,
        lam_grid=None,
        cv: str | int = "loo",
        *,
        n_inducing: int | None = None,
        seed: int = 0,
        n_impute: int = 2,
        pixel_chunk: int = 2048,
        label_names=None,
        loss: str = "squared",
        epsilon: float = 0.05,
    ) -> KernelEmulator:
        """Train on a labelled :class:`SpectrumSet` with exact leave-one-out model selection.

        Arguments:
            ds: training spectra with labels.
            gamma_grid: RBF widths γ on standardised labels (default
                ``(0.01, 0.03, 0.1, 0.3, 1.0)``).
            lam_grid: ridge penalties λ on unit-variance flux (default
                ``(1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0)``).
            cv: ``"loo"`` (exact leave-one-out) or an integer k >= 2 (exact k-fold CV, folds
                from :func:`slamjax.validate.kfold_indices` with ``seed``).
            n_inducing: number r of inducing stars for large training sets (see the module
                docstring); ``None``: exact (all stars) up to 3,000 stars, else 2,000. Pass
                ``n_inducing >= n`` to force the exact model.
            seed: seed for the choice of inducing stars and of the k folds.
            n_impute: rounds of bad-entry imputation at pixels with more bad training stars than
                ``_kernel_cv.exact_bad_max`` (fewer are left out exactly).
            pixel_chunk: pixels per block (bounds memory at about 6·m·pixel_chunk floats).
            label_names: optional subset/order of labels.
            loss: ``"squared"`` (kernel ridge regression) or ``"epsilon"`` (SLAM's ε-SVR). With
                ``"epsilon"``, (γ, λ) are still chosen by the squared-loss LOO above; then each pixel is
                re-solved exactly as an ε-SVR with libsvm's intercept b (see ``_svr.solve_svr_dual``;
                converged to relative KKT residual 1e-6) at C = 1/λ, and α is replaced by the SVR's
                β = α⁺ − α⁻. C = 1/λ is exact for the loss weight: ridge λ is the L2-loss SVR
                ½‖w‖² + C Σ ½ξ² with C = 1/λ; only the loss changes to max(0, |ξ| − ε). b is folded
                into ``flux_mean`` (``flux_mean + b·flux_scale``). ``cv_mse``, ``cv_md`` and
                ``pixel_variance`` remain those of the squared-loss model (a warning is logged).
            epsilon: ε-tube half-width in standardised flux units (``loss="epsilon"`` only).
        """
        if loss not in ("squared", "epsilon"):
            raise ValueError(f"loss must be 'squared' or 'epsilon', got {loss!r}")
        if not (np.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
        names, labels = training_labels(ds, label_names)
        m = ds.n_spectra
        if m < 3:
            raise ValueError(f"need at least 3 training spectra, got {m}")
        if cv == "loo":
            folds = None
        elif isinstance(cv, (int, np.integer)) and not isinstance(cv, bool) and 2 <= cv <= m:
            from ..validate import kfold_indices

            fold = kfold_indices(m, int(cv), seed=seed)
            folds = [np.flatnonzero(fold == f) for f in range(int(cv))]
        else:
            raise ValueError(f"cv must be 'loo' or an integer k in [2, {m}], got {cv!r}")
        if n_inducing is None:
            n_inducing = m if m <= EXACT_MAX else DEFAULT_INDUCING
        if not (isinstance(n_inducing, (int, np.integer)) and n_inducing >= 3):
            raise ValueError(f"n_inducing must be an integer >= 3, got {n_inducing!r}")
        exact = n_inducing >= m
        if loss == "epsilon" and not exact:
            raise ValueError("loss='epsilon' needs the exact model (n_inducing >= number of training stars)")
        gammas = np.asarray(DEFAULT_GAMMAS if gamma_grid is None else gamma_grid, dtype=np.float64)
        lams = np.asarray(DEFAULT_LAMBDAS if lam_grid is None else lam_grid, dtype=np.float64)
        if gammas.ndim != 1 or lams.ndim != 1 or gammas.size == 0 or lams.size == 0:
            raise ValueError("gamma_grid and lam_grid must be non-empty 1-D sequences")
        if not (np.all(np.isfinite(gammas) & (gammas > 0)) and np.all(np.isfinite(lams) & (lams > 0))):
            raise ValueError("gamma_grid and lam_grid must be finite and > 0")
        if isinstance(pixel_chunk, bool) or not isinstance(pixel_chunk, (int, np.integer)) or pixel_chunk < 1:
            raise ValueError(f"pixel_chunk must be an integer >= 1, got {pixel_chunk!r}")

        space = LabelSpace.from_labels(labels, names)
        x = (labels - np.asarray(space.mean)) / np.asarray(space.scale)
        good = (ds.ivar > 0) & np.isfinite(ds.flux)
        n_good = good.sum(axis=0)
        usable = n_good >= 3
        flux = np.where(good, ds.flux, 0.0).astype(np.float64)
        mean = np.where(usable, flux.sum(axis=0) / np.maximum(n_good, 1), 1.0)
        var = np.where(good, (flux - mean[None, :]) ** 2, 0.0).sum(axis=0) / np.maximum(n_good - 1, 1)
        varies = usable & (var > (1e-10 * np.abs(mean)) ** 2)  # not constant (to rounding) over the stars
        scale = np.where(varies, np.sqrt(var), 1.0)
        y = np.where(good, (flux - mean[None, :]) / scale[None, :], 0.0)

        if exact:
            centres = np.arange(m)
        else:
            centres = np.sort(np.random.default_rng(seed).choice(m, int(n_inducing), replace=False))
            logger.info("KernelEmulator: %d inducing stars of %d", centres.size, m)
        spectral = [_spectral(x, centres, g) for g in gammas]
        # Pixels with up to exact_bad_max bad entries are fitted and cross-validated on their good entries
        # exactly (_kernel_cv); the others (and dead pixels) by imputation rounds.
        n_bad = m - n_good
        imputed = (n_bad > 0) & ~exact_pixels(good, spectral)
        cols = np.flatnonzero(imputed)
        rounds = 1 + (n_impute if cols.size else 0)
        patchy = usable & imputed
        if patchy.any():
            logger.warning(
                "KernelEmulator: %d pixels have more than %d bad training entries (up to %.0f%% of the stars); "
                "their model, CV MSE and model variance come from %d imputation rounds and are approximate there "
                "(see slamjax.emulators._kernel's docstring)",
                int(patchy.sum()),
                exact_bad_max(m, max(sp[0].shape[1] for sp in spectral)),
                100 * float(n_bad[patchy].max()) / m,
                rounds - 1,
            )
        sel = select(spectral, y, good, lams, pixel_chunk, folds)
        for _ in range(rounds - 1):
            y[:, cols] = np.where(good[:, cols], y[:, cols], y[:, cols] - sel["resid"][:, cols])  # impute the fit
            sub = select(spectral, y[:, cols], good[:, cols], lams, pixel_chunk, folds)
            for key, value in sub.items():
                sel[key][..., cols] = value

        gidx = sel["gidx"]
        coef = sel["coef"]
        if loss == "epsilon":
            eig = [(sp[1], sp[0]) for sp in spectral]  # exact model: (eigenvalues, eigenvectors)
            logger.warning("KernelEmulator: loss='epsilon': cv_mse/pixel_variance are those of the squared-loss model")
            y_fit = np.where(good, y, y - sel["resid"])  # bad entries at the good-only model (the ridge warm start)
            coef, b, conv = epsilon_refit(eig, y_fit, good, gidx, sel["lam"], epsilon, pixel_chunk)
            mean = mean + np.where(usable, b, 0.0) * scale  # the SVR intercept, in flux units (none at dead pixels)
            if not conv.all():
                logger.warning("KernelEmulator: ε-SVR not converged for %d pixels", int((~conv).sum()))
        order = np.argsort(gidx, kind="stable")
        inverse = np.argsort(order)
        groups, gam_used = [], []
        for g in range(gammas.size):
            idx = np.flatnonzero(gidx[order] == g)
            if idx.size:
                groups.append((int(idx[0]), int(idx[-1]) + 1))
                gam_used.append(gammas[g])
        # CV residual² = model error² + the held-out star's noise²: keep the model part only (maximum
        # likelihood over the held-out residuals, each with its own star's noise; _variance.model_variance).
        noise_var = 1.0 / np.where(good, ds.ivar, 1.0)
        pixel_var = model_variance(sel["e"] * scale[None, :], noise_var, good, usable)
        if not usable.all():
            logger.warning(
                "KernelEmulator: %d pixels have < 3 good training pixels; given zero weight", int((~usable).sum())
            )
        return cls(
            space=space,
            wave=jnp.asarray(ds.wave),
            pixel_variance=jnp.asarray(pixel_var),
            x_train=jnp.asarray(x[centres]),
            coef=jnp.asarray(coef[:, order]),
            order=jnp.asarray(order),
            inverse=jnp.asarray(inverse),
            gammas=jnp.asarray(np.asarray(gam_used)),
            flux_mean=jnp.asarray(mean),
            flux_scale=jnp.asarray(scale),
            lam=jnp.asarray(sel["lam"]),
            gamma=jnp.asarray(gammas[gidx]),
            # undefined where the pixel has < 3 good values or no variance (as the Cannon's cv_mse):
            # a 0 there read as a perfect model (COD 1) at dead pixels
            cv_mse=jnp.asarray(np.where(varies, sel["mse"], np.nan)),
            cv_md=jnp.asarray(np.where(varies, sel["md"], np.nan)),
            groups=tuple(groups),
        )


def _spectral(x, centres, gamma):
    """(U [n, k], σ² [k], C [r, k]) for one γ: hat matrix U diag(σ²/(σ²+λ)) Uᵀ, β = C diag(1/(σ²+λ)) Uᵀy.

    Exact model (all stars are centres): U = C = Q, σ² = Λ of K = QΛQᵀ. Inducing model: see the
    module docstring (directions with K_rr eigenvalues below 1e-10 of the largest are dropped).
    """
    xc = x[centres]
    if centres.size == x.shape[0]:
        k = np.exp(-gamma * np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=2))
        evals, q = np.linalg.eigh(k)
        return q, np.maximum(evals, 0.0), q
    d2 = np.sum(x**2, 1)[:, None] + np.sum(xc**2, 1)[None, :] - 2.0 * x @ xc.T
    k_nr = np.exp(-gamma * np.maximum(d2, 0.0))
    s, v = np.linalg.eigh(k_nr[centres])
    keep = s > 1e-10 * s[-1]
    v = v[:, keep] / np.sqrt(s[keep])[None, :]
    phi = k_nr @ v  # [n, k] features
    sig2, w = np.linalg.eigh(phi.T @ phi)
    keep = sig2 > 1e-12 * sig2[-1]
    sig2, w = sig2[keep], w[:, keep]
    sig = np.sqrt(sig2)
    u = (phi @ w) / sig[None, :]
    return u, sig2, (v @ w) * sig[None, :]
