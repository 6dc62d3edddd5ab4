"""Training: the FSDP2 diffusion SFT loop, checkpoints, and the detached launcher."""
