"""Inference: sliding windows, mirroring test-time augmentation, ensembles (torch).

>>> from medseg.inference import sliding_window   # doctest: +SKIP
>>> logits = sliding_window(model, image, (64, 64, 64), overlap=0.5, batch_size=4)  # doctest: +SKIP

The three functions are loaded on first use: a prediction whose networks run on OpenVINO from the cache
never imports torch (:mod:`medseg.inference.numpy_path`). Two of them share their names with the modules
that hold them; the package keeps the function under that name, as an eager re-export would.
"""

import sys
import types
from importlib import import_module
from typing import Any

__all__ = ["sliding_window", "mirror_tta", "ensemble"]
_HOME = {"sliding_window": "sliding_window", "mirror_tta": "tta", "ensemble": "ensemble"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"medseg.inference.{_HOME[name]}"), name)
    raise AttributeError(f"module 'medseg.inference' has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOME and isinstance(value, types.ModuleType):
            return      # importing the submodule must not hide the function of the same name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
