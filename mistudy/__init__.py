"""mistudy: mutual information for deep image segmentation, a reproducible study."""

__version__ = "0.1.0"
