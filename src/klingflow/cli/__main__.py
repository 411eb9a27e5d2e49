"""``python -m klingflow.cli``: the same command as the ``klingflow`` script."""

from klingflow.cli import main

main()
