"""The slamjax ``.npz`` layout (``wave``, ``flux``, ``ivar``, optional labels): a whole set, not one spectrum.

Unlike the survey readers, this one takes a path (an npz archive is not FITS) and returns a
:class:`slamjax.SpectrumSet`, because an npz file holds many spectra on one grid. So
:func:`slamjax.io.read_spectrum` returns a ``SpectrumSet`` for npz input.
"""

from __future__ import annotations

from pathlib import Path

from .._spectra import SpectrumSet, load_npz

__all__ = ["identify", "load"]

_ZIP_MAGIC = b"PK\x03\x04"  # an npz archive is a zip file


def identify(path) -> bool:
    """True if ``path`` is a zip archive (what ``numpy.savez`` writes)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def load(path, **kwargs) -> SpectrumSet:
    """Read the npz file with :func:`slamjax.load_npz` (keyword arguments are passed on)."""
    return load_npz(path, **kwargs)
