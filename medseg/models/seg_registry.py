"""The registry of segmentation networks (:data:`SEG_MODELS`), apart from :mod:`medseg.models` so that
the network modules can register themselves without importing the package that imports them.
:mod:`medseg.models` re-exports both names and builds models from it (``create_seg_model``)."""

from __future__ import annotations

from medseg.registry import Registry

SEG_MODELS = Registry("model")
register_seg_model = SEG_MODELS.register
