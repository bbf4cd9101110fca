"""Network architectures, registered by name.

>>> from medseg.models import create_model, MODELS   # doctest: +SKIP
>>> net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=3)  # doctest: +SKIP

Each architecture module registers its factories with ``@register_model("name")``; a factory
takes keyword arguments only (``spatial_dims``, ``in_channels``, ``out_channels`` and its own).
"""

from __future__ import annotations

import importlib
from typing import Any

from medseg.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register

# Modules whose import registers models.
MODEL_MODULES: list[str] = ["medseg.models.mil", "medseg.models.encoders"]


def _load_all() -> None:
    for m in MODEL_MODULES:
        importlib.import_module(m)


def create_model(name: str, **kwargs: Any):
    """Build a registered model by name with keyword arguments from config."""
    _load_all()
    return MODELS.create(name, **kwargs)


def model_names() -> list[str]:
    _load_all()
    return MODELS.names()
