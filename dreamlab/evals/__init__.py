"""Evaluation: generate with the diffusion sampler and score answers."""
