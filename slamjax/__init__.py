"""slamjax: stellar labels from spectra with data-driven generative emulators in JAX.

Importing slamjax enables JAX's 64-bit mode (``jax_enable_x64``): training and
covariances need float64, and without it float64 input would be silently truncated.
float32 input is still computed in float32.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from . import data as data  # noqa: E402
from . import diagnostics as diagnostics  # noqa: E402
from . import direct as direct  # noqa: E402
from . import io as io  # noqa: E402
from . import preprocess as preprocess  # noqa: E402
from . import validate as validate  # noqa: E402
from ._diagnose import diagnose as diagnose  # noqa: E402
from ._fit import fit_labels as fit_labels  # noqa: E402
from ._result import FitResult as FitResult  # noqa: E402
from ._result import Status as Status  # noqa: E402
from ._spectra import SpectrumSet as SpectrumSet  # noqa: E402
from ._spectra import load_npz as load_npz  # noqa: E402
from ._version import __version__ as __version__  # noqa: E402
from .emulators import AbstractEmulator as AbstractEmulator  # noqa: E402
from .emulators import CannonEmulator as CannonEmulator  # noqa: E402
from .emulators import ContinuumNormalized as ContinuumNormalized  # noqa: E402
from .emulators import KernelEmulator as KernelEmulator  # noqa: E402
from .emulators import PayneEmulator as PayneEmulator  # noqa: E402
from .emulators import load_emulator as load_emulator  # noqa: E402
