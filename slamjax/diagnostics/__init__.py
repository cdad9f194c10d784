"""Diagnostics: label statistics (and, with the kernel emulator, CV MSE and CODs)."""

from .labels import label_stats as label_stats
