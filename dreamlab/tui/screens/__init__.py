"""Console screens: runs, run detail, launch, compare, evals, help and confirmations."""
