"""dreamlab: a lab console for masked diffusion language models (Dream and friends)."""

__version__ = "0.1.0"
