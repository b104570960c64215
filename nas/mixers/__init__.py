"""Token mixers: one module per family, registered by name (``dwconv``, ``mhsa``, ``ska``, ``cska``,
``manifold_key``, ``key_only``). Imports only torch and the standard library."""

from nas.mixers import dwconv, key_only, manifold_key, mhsa, static_key  # noqa: F401  (registration)
from nas.mixers.base import Knob, MixerDef, get, names, register

__all__ = ["Knob", "MixerDef", "get", "names", "register"]
