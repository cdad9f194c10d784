"""Emulators: labels (physical units) -> normalised flux of ONE spectrum."""

from ._base import AbstractEmulator as AbstractEmulator
from ._base import AbstractLinearEmulator as AbstractLinearEmulator
from ._base import LabelSpace as LabelSpace
from ._base import LabelSystematics as LabelSystematics
from ._base import load_emulator as load_emulator
from ._base import read_header as read_header
from ._cannon import CannonEmulator as CannonEmulator
from ._kernel import KernelEmulator as KernelEmulator
from ._normalized import ContinuumNormalized as ContinuumNormalized
from ._payne import PayneEmulator as PayneEmulator
