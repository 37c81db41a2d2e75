"""``python -m src.bench``: the model-level speed benchmark (see src/bench/models.py)."""

from .models import main

main()
