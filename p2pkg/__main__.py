"""``python -m p2pkg``: the command line (p2pkg.cli)."""

from p2pkg.cli import main

main()
