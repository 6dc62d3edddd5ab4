"""Training: the FSDP2 diffusion SFT loop, checkpoints, and the detached launcher."""

# A file in a run's folder that asks its trainer to checkpoint and stop (its text is the reason): written by a Slurm
# job's script when the time limit nears.
STOP_FILE = "stop-request"
