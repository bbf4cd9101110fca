"""Network architectures, one registry per contract.

* segmentation networks (this module): :data:`SEG_MODELS`, :func:`create_seg_model`,
  :func:`seg_model_names`; ``unet``, ``transunet``, ``swin_unet`` (the names model bundles and
  training configs give in ``model.name``);
* MIL heads: :data:`medseg.models.mil.MIL_HEADS`, :func:`~medseg.models.mil.create_mil_head`,
  :func:`~medseg.models.mil.mil_head_names`;
* tile encoders: :data:`medseg.models.encoders.TILE_ENCODERS`,
  :func:`~medseg.models.encoders.create_encoder`, :func:`~medseg.models.encoders.encoder_names`.

>>> from medseg.models import create_seg_model, SEG_MODELS   # doctest: +SKIP
>>> net = create_seg_model("unet", spatial_dims=3, in_channels=1, out_channels=3)  # doctest: +SKIP

Each segmentation module registers its factories with ``@register_seg_model("name")``; a factory
takes keyword arguments only (``spatial_dims``, ``in_channels``, ``out_channels`` and its own).

Every segmentation model follows one contract:

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

from typing import Any

from medseg.models.seg_registry import SEG_MODELS, register_seg_model

__all__ = ["SEG_MODELS", "create_seg_model", "register_seg_model", "seg_model_names"]


def _register_builtin() -> None:
    """Import the segmentation modules: their ``@register_seg_model`` decorators fill SEG_MODELS.
    (Imported on first use, so ``import medseg.models`` stays cheap.)"""
    from medseg.models import swin_unet, transunet, unet  # noqa: F401


def create_seg_model(name: str, **kwargs: Any):
    """Build a registered segmentation network by name with keyword arguments from config."""
    _register_builtin()
    return SEG_MODELS.create(name, **kwargs)


def seg_model_names() -> list[str]:
    """Registered segmentation networks (built-in and any registered by the caller), sorted."""
    _register_builtin()
    return SEG_MODELS.names()
