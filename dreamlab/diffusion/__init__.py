"""Masked diffusion: `settings` (plain data, no torch), `loss` (the SFT loss) and `sampler` (tensors in, tensors out)."""
