"""`python -m clicklake` = the `clicklake` command."""

from clicklake.cli import main

main()
