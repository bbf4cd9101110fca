"""Network architectures, registered by name.

>>> from medseg.models import create_model, MODELS   # doctest: +SKIP
>>> net = create_model("unet", spatial_dims=3, in_channels=1, out_channels=3)  # doctest: +SKIP

Each architecture module registers its factories with ``@register_model("name")``; a factory
takes keyword arguments only (``spatial_dims``, ``in_channels``, ``out_channels`` and its own).

Every model follows one contract:

* ``forward(x)``: input (N, in_channels, *S) -> logits (N, out_channels, *S) for any spatial size
  ``S`` (the models pad and crop internally);
* ``forward_with_aux(x) -> list[Tensor]``: the same logits first, then (when built with
  ``deep_supervision=True``) lower-resolution logits, highest resolution first; without deep
  supervision it is ``[forward(x)]``. Each model documents the aux sizes; a trainer resizes the
  target (nearest) to ``aux.shape[2:]``.

2D models run on volumes through :class:`medseg.models.slicewise.SliceWise` (slicing axis from
:func:`medseg.models.slicewise.slicing_axis`); :func:`medseg.models.blocks.count_parameters`
counts parameters.
"""

from __future__ import annotations

import importlib
from typing import Any

from medseg.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register

# Modules whose import registers models.
MODEL_MODULES: list[str] = ["medseg.models.unet", "medseg.models.transunet",
                             "medseg.models.swin_unet", "medseg.models.mil", "medseg.models.encoders"]


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
