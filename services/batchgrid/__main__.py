"""``python -m batchgrid`` runs the CLI."""

from batchgrid.cli import main

main()
