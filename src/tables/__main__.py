"""``python -m src.tables``: see src/tables/cli.py."""

from .cli import main

main()
