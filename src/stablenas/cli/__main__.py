"""``python -m stablenas.cli``: the console script."""

from . import main

main()
