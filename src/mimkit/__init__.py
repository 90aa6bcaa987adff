"""mimkit: masked image modelling for Vision Transformers."""

__version__ = "0.1.0"
