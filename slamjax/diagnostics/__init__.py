"""Diagnostics: label statistics and per-pixel CV model errors."""

from .cv import cv_mse as cv_mse
from .labels import label_stats as label_stats
