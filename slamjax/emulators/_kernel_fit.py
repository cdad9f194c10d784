"""The kernel emulator's layouts for ``fit_labels`` (never saved; built by
``KernelEmulator._fit_form``): the extended-coefficient form for float64 fits of models up to
``_kernel._EXTENDED_MAX_BYTES``, and the stacked-row form with one coefficient array per γ group
otherwise. Both give the model of :class:`slamjax.KernelEmulator` with the outputs in the
coefficients' column order."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._base import AbstractEmulator, LabelSpace

if TYPE_CHECKING:
    from ._kernel import KernelEmulator


class _KernelFitLayout(AbstractEmulator):
    """What the kernel emulator's fit layouts (:class:`_KernelFitForm`, :class:`_KernelGroupedForm`)
    share: the model of :class:`KernelEmulator`, evaluated with its outputs in the coefficients'
    column order ``order`` (``_flux_ordered``, ``_flux_and_jacobian_t``), and the same fit settings."""

    inverse: eqx.AbstractVar[Int[Array, " P"]]
    order: eqx.AbstractVar[Int[Array, " P"]]

    @abc.abstractmethod
    def _flux_ordered(self, z): ...

    @abc.abstractmethod
    def _flux_and_jacobian_t(self, z): ...

    @property
    def float32_ok(self) -> bool:
        return False

    @property
    def _check_starts_by_one_step(self) -> bool:
        return True

    @property
    def _pixel_order(self):
        return self.order

    def __call__(self, labels):
        return self._flux_ordered(self.space.standardise(labels))[self.inverse]

    def flux_and_jacobian(self, labels):
        flux, jt = self._flux_and_jacobian_t(self.space.standardise(labels))
        return flux[self.inverse], jt.T[self.inverse] / self.space.scale[None, :]


class _KernelFitForm(_KernelFitLayout):
    """A :class:`KernelEmulator` laid out for float64 fits (``fit_labels`` only; never saved).

    With e_i = exp(−γ‖x_i − z‖²) the flux is y = Σ_i α_i e_i and its derivative
    ∂y/∂z_l = 2γ (Σ_i α_i x_il e_i − z_l y). The coefficients [α, α·x_1, …, α·x_L] of each γ group
    are stored side by side, so one product of the exponentials [m] with them gives the flux and
    all L derivatives. ``KernelEmulator.flux_and_jacobian`` multiplies the stacked rows
    [e; e·(x − z)_1; …] [1 + L, m] by α instead: the same products, but it builds L + 1 rows of
    m values per spectrum and call. Measured per model + Jacobian evaluation, batches of 320,
    2 cores, float64: 400 centres × 100 px 12.9 → 9.4 µs, and whole fits (3 starts) on 400 × 100 px
    0.29-0.30 → 0.17-0.19 ms per spectrum, on MILES 347 × 215 px 0.69 → 0.46-0.58 ms. Once the
    extended coefficients outgrow the cache it stops paying: MILES 217 × 4300 px (30 MB) 5.1 vs
    4.9-6.4 ms, 2000 × 2000 px (128 MB) 370 → 380 µs per evaluation; and in float32 the subtraction
    − z_l y loses digits (the sums reach ~10⁴). Hence float64 and ``_EXTENDED_MAX_BYTES``.
    Squared distances are ‖x‖² − 2 x·z + ‖z‖²: over a batch one matrix product with the batch in
    rows (``x_train @ z`` had put the batch in columns, and every product after it was transposed).
    Each γ group's block, and its flux columns [α] alone, are arrays of their own (``coef_full``,
    ``coef_flux``): as column slices of one array, XLA copied the slice out before every product
    (the whole [m, (1 + L)·P] per evaluation, ~60 µs at 400 × 400 on this CPU): small against a
    batch of 150 spectra, but most of an LM step of the few slow fits that step on alone (one
    spectrum's 4 steps: 0.67 ms).
    """

    space: LabelSpace
    wave: Float[Array, " P"]
    pixel_variance: Float[Array, " P"]
    x_train: Float[Array, "m L"]
    x_sq: Float[Array, " m"]
    coef_full: tuple[Float[Array, "m Qg"], ...]  # per γ group: [α, α·x_1, …, α·x_L], [m, (1 + L)·P_g]
    coef_flux: tuple[Float[Array, "m Pg"], ...]  # per γ group: [α] alone, [m, P_g]
    inverse: Int[Array, " P"]
    order: Int[Array, " P"]
    gammas: Float[Array, " G"]
    flux_mean: Float[Array, " P"]
    flux_scale: Float[Array, " P"]
    flux_scale_ordered: Float[Array, " P"]
    flux_mean_ordered: Float[Array, " P"]
    groups: tuple[tuple[int, int], ...] = eqx.field(static=True)

    @classmethod
    def of(cls, em: KernelEmulator) -> _KernelFitForm:
        x = np.asarray(em.x_train, dtype=np.float64)
        coef = np.asarray(em.coef, dtype=np.float64)
        full, flux = [], []
        for start, stop in em.groups:
            c = coef[:, start:stop]
            full.append(jnp.asarray(np.concatenate([c] + [x[:, j : j + 1] * c for j in range(x.shape[1])], axis=1)))
            flux.append(jnp.asarray(c))
        return cls(
            space=em.space,
            wave=em.wave,
            pixel_variance=em.pixel_variance,
            x_train=em.x_train,
            x_sq=jnp.asarray(np.sum(x * x, axis=1)),
            coef_full=tuple(full),
            coef_flux=tuple(flux),
            inverse=em.inverse,
            order=em.order,
            gammas=em.gammas,
            flux_mean=em.flux_mean,
            flux_scale=em.flux_scale,
            flux_scale_ordered=em.flux_scale[em.order],
            flux_mean_ordered=em.flux_mean[em.order],
            groups=em.groups,
        )

    def _products(self, z, n_rows):
        d2 = jnp.maximum(self.x_sq - 2.0 * (z @ self.x_train.T) + z @ z, 0.0)  # [m]
        n_lab = z.shape[0]
        out = []
        if n_rows not in (1, 1 + n_lab):
            raise ValueError(f"n_rows must be 1 (flux) or {1 + n_lab} (flux and Jacobian), got {n_rows}")
        coefs = self.coef_flux if n_rows == 1 else self.coef_full
        for g, (start, stop) in enumerate(self.groups):
            e = jnp.exp(-self.gammas[g] * d2)
            out.append((e @ coefs[g]).reshape(n_rows, stop - start))
        return z, out

    def _flux_ordered(self, z):
        _, out = self._products(z, 1)
        return jnp.concatenate([o[0] for o in out]) * self.flux_scale_ordered + self.flux_mean_ordered

    def _flux_and_jacobian_t(self, z):
        """Flux and Jacobian transposed [L, P] (standardised labels) in the coefficients' column
        order ``order``: no gather of the outputs back into wavelength order, and the Jacobian
        comes out of the products with the labels in rows, as the normal matrix uses it."""
        z, out = self._products(z, 1 + self.x_train.shape[1])
        y = jnp.concatenate([o[0] for o in out])
        jt = jnp.concatenate(
            [(2.0 * self.gammas[g]) * (o[1:] - z[:, None] * o[0][None, :]) for g, o in enumerate(out)], axis=1
        )
        return y * self.flux_scale_ordered + self.flux_mean_ordered, jt * self.flux_scale_ordered[None, :]


class _KernelGroupedForm(_KernelFitLayout):
    """A :class:`KernelEmulator` laid out for fits in float32, or in float64 above
    ``_EXTENDED_MAX_BYTES`` (``fit_labels`` only; never saved): the stacked-row products of
    :meth:`KernelEmulator.flux_and_jacobian`, with each γ group's coefficients an array of its own
    and the outputs in their column order (``order``). As column slices of one coefficient array,
    XLA copied every group's block out before its product at every evaluation inside the fit loop:
    the whole [m, P] per evaluation."""

    space: LabelSpace
    wave: Float[Array, " P"]
    pixel_variance: Float[Array, " P"]
    x_train: Float[Array, "m L"]
    coef_groups: tuple[Float[Array, "m Pg"], ...]
    inverse: Int[Array, " P"]
    order: Int[Array, " P"]
    gammas: Float[Array, " G"]
    flux_scale_ordered: Float[Array, " P"]
    flux_mean_ordered: Float[Array, " P"]

    @classmethod
    def of(cls, em: KernelEmulator) -> _KernelGroupedForm:
        coef = np.asarray(em.coef)
        return cls(
            space=em.space,
            wave=em.wave,
            pixel_variance=em.pixel_variance,
            x_train=em.x_train,
            coef_groups=tuple(jnp.asarray(coef[:, start:stop]) for start, stop in em.groups),
            inverse=em.inverse,
            order=em.order,
            gammas=em.gammas,
            flux_scale_ordered=em.flux_scale[em.order],
            flux_mean_ordered=em.flux_mean[em.order],
        )

    def _flux_ordered(self, z):
        d2 = jnp.sum((self.x_train - z[None, :]) ** 2, axis=1)
        parts = [jnp.exp(-self.gammas[g] * d2) @ c for g, c in enumerate(self.coef_groups)]
        return jnp.concatenate(parts) * self.flux_scale_ordered + self.flux_mean_ordered

    def _flux_and_jacobian_t(self, z):
        """Flux and Jacobian transposed [L, P] (standardised labels), outputs in ``order``."""
        diff = self.x_train - z[None, :]  # [m, L]
        d2 = jnp.sum(diff * diff, axis=1)
        ys, js = [], []
        for g, c in enumerate(self.coef_groups):
            e = jnp.exp(-self.gammas[g] * d2)
            out = jnp.concatenate([e[None, :], (e[:, None] * diff).T], axis=0) @ c  # [1 + L, P_g]
            ys.append(out[0])
            js.append((2.0 * self.gammas[g]) * out[1:])
        y = jnp.concatenate(ys)
        jt = jnp.concatenate(js, axis=1)
        return y * self.flux_scale_ordered + self.flux_mean_ordered, jt * self.flux_scale_ordered[None, :]
