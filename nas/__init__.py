"""mixer-nas: multi-objective architecture search over token-mixer placement in MetaFormer backbones.

``import nas`` registers the timm entrypoints (``mixerformer``, ``mixerformer_caformer_s18``,
``mixerformer_convformer_s18``) — but not by importing torch and timm itself, which takes seconds and which most
CLI commands (``nas status``, ``nas pareto``...) never need. timm has no entry-point discovery, so registration has
to happen in a process that imports ``nas``: if timm is already imported it happens now; otherwise it happens the
moment timm finishes importing (a one-shot import hook). Either way ``import nas, timm`` then
``timm.create_model("local-dir:DIR")`` works, and an exported model loads with just torch, timm and this package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__version__ = "0.1.0"


def _register() -> None:
    import nas.models  # noqa: F401  (the @register_model entrypoints)


class _AfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``timm`` with the normal finders, runs it, then registers our entrypoints; removes itself after."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from coming back here
        spec = importlib.util.find_spec(name)  # whichever finder really provides timm
        if spec is None or spec.loader is None:
            return spec
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)  # type: ignore[attr-defined]
        module.__loader__ = module.__spec__.loader = self._inner  # timm keeps its own loader afterwards
        _register()


if "timm" in sys.modules:
    _register()
elif not any(isinstance(f, _AfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimm())
