"""`python -m dreamlab`: the same command as the `dreamlab` script (torchrun starts data-parallel evals this way)."""

from dreamlab.cli import main

main()
