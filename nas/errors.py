"""Project error types.

Every error a user can cause (a bad YAML field, an unknown mixer, a knob out of range, a grid too small for a
static-key mixer) is raised as a :class:`NasError` whose message is one line naming *where* (file / stage /
field), *what* was wrong and *how to fix it*. The CLI prints that line and exits with code 2.

This module imports only the standard library so that ``nas.mixers`` and ``nas.models`` (which must rebuild
an exported model on a machine that has just torch + timm) can use it.
"""

from __future__ import annotations


class NasError(Exception):
    """A user-facing error: ``str(err)`` is a single line that says where, what and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(NasError, ValueError):
    """An invalid configuration value (search space, study file, model_args, mixer knob)."""


class InfeasibleArchError(ConfigError):
    """An architecture that is well-formed but cannot be built or trained meaningfully (e.g. N=1 for SKA)."""


class StudyError(NasError):
    """A study-level problem: unknown study/trial, nothing satisfies a pick, storage unreachable."""
