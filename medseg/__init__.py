"""medseg: medical image segmentation and whole-slide classification."""

from medseg.volume import Volume

__all__ = ["Volume", "__version__"]
__version__ = "0.1.0"
