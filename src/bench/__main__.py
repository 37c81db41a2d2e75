"""``python -m src.bench``: the model-level speed benchmark (see src/bench/models.py)."""

import os
import sys

# Only with --malloc tuned, and before torch is imported (c10 reads it once, at the first
# allocation): PyTorch's CPU allocator then aligns allocations of >= 2 MiB to pages and asks for
# transparent huge pages (madvise). On this CPU, without it, the memory-bound sum-pool adds ran in
# one of two speeds per process (struct_resnet56_b at batch 128: 200-280 ms vs 147-157 ms with it,
# 5 processes each). The default (--malloc default) leaves the process as a user has it.
_argv = sys.argv[1:]
if any(a == "--malloc=tuned" or (a == "--malloc" and _argv[i + 1:i + 2] == ["tuned"]) for i, a in enumerate(_argv)):
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .models import main  # noqa: E402

main()
