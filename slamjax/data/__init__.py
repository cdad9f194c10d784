"""The bundled sample: FGK stars of the MILES stellar library (see ``CITATION.md`` here).

All 434 stars with 4000 K < Teff < 7000 K from the public part of the MILES v9.1 library as
prepared for slamjax (566 stars; Sánchez-Blázquez et al. 2006, MNRAS 371, 703; stellar
parameters Cenarro et al. 2007, MNRAS 374, 664; resolution Falcón-Barroso et al. 2011,
A&A 532, A95): pseudo-continuum-normalised flux on 4300 pixels, 3540.5-7409.6 Å (air),
FWHM 2.5 Å (R ≈ 2000 at 5000 Å, LAMOST-LRS-like), nominal ivar = 1e4 (MILES has no
error spectra), labels ``teff`` [K], ``logg`` [dex], ``fe_h`` [dex].
"""

from __future__ import annotations

from importlib import resources

from .._spectra import SpectrumSet, load_npz

__all__ = ["load_sample", "sample_path"]

_SAMPLE = "miles_fgk.npz"


def sample_path():
    """Path of the bundled sample npz file."""
    return resources.files(__name__).joinpath(_SAMPLE)


def load_sample() -> SpectrumSet:
    """The bundled MILES FGK sample (434 stars x 4300 pixels, labels teff/logg/fe_h).

    ``meta`` holds ``names`` (star names) and ``spectral_type``.
    """
    with resources.as_file(sample_path()) as path:
        ds = load_npz(path)
    ds.meta["source"] = "slamjax bundled sample: MILES v9.1 FGK stars (see slamjax/data/CITATION.md)"
    return ds
