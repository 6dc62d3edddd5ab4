"""dreamlab: a lab console for masked diffusion language models (Dream and friends)."""

__version__ = "0.1.0"


def library_versions() -> dict[str, str]:
    """torch, transformers and dreamlab versions, recorded with every run and eval (imports torch)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "dreamlab": __version__}
