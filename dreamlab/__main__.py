"""`python -m dreamlab`: the same CLI as the `dreamlab` command (for environments without the script on PATH)."""

from dreamlab.cli import main

main()
