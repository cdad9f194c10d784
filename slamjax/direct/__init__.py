"""Discriminative baselines from the literature: spectrum -> labels directly.

Every model is trained with ``Model.train(ds, key=0, label_names=None, ...)`` on a labelled
:class:`slamjax.SpectrumSet` and predicts with ``model.predict(flux, ivar=None)`` -> [N, L]
labels in physical units, ordered as ``model.label_names``. Bad pixels (``ivar == 0``) are
replaced by the per-pixel median of the training fluxes before standardisation. Models are
saved with ``model.save(path)`` and read with :func:`load_model` (versioned npz + JSON
header, format ``"slamjax-direct"``, no pickle).

* :class:`LassoMLP`: LASSO pixel selection + per-label MLP (Li, Wang, Zeng et al., LAMOST DR8);
* :class:`ResidualMLP`: multitask residual MLP (Barreto & Eisencraft 2026, arXiv:2606.13868);
* :class:`SpectrumCNN`: 1-D / folded 2-D CNN (Bu et al.); :func:`vmp_report` for very metal-poor stars.

A direct model can seed the generative fit: ``sj.fit_labels(em, flux, ivar, init=model)``.
"""

from ._cnn import SpectrumCNN as SpectrumCNN
from ._cnn import vmp_report as vmp_report
from ._common import AbstractDirectModel as AbstractDirectModel
from ._common import load_model as load_model
from ._common import read_header as read_header
from ._lasso_mlp import LassoMLP as LassoMLP
from ._lasso_mlp import lasso_path as lasso_path
from ._residual_mlp import ResidualMLP as ResidualMLP
