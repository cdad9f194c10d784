"""Diagnostics: label statistics, per-pixel CV model errors and coefficients of dependence."""

from .cod import cod as cod
from .cv import cv_mse as cv_mse
from .labels import ErrorModel as ErrorModel
from .labels import fit_error_model as fit_error_model
from .labels import label_distance as label_distance
from .labels import label_stats as label_stats
