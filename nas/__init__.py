"""mixer-nas: multi-objective architecture search over token-mixer placement in MetaFormer backbones.

``import nas`` registers the timm entrypoints (``mixerformer``, ``mixerformer_caformer_s18``,
``mixerformer_convformer_s18``) and nothing heavier than torch + timm.
"""

from nas import models  # noqa: F401  (registers timm entrypoints)

__version__ = "0.1.0"
