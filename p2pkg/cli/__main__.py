"""``python -m p2pkg.cli``: the command line."""

from p2pkg.cli import main

main()
