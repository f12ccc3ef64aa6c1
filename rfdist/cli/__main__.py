"""``python -m rfdist.cli`` — the same as the ``rfdist`` command."""

from rfdist.cli.main import main

main()
