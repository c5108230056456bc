"""``python -m deepfuse_bench``: the ``deepfuse-bench`` command."""

import os
import sys

from deepfuse_bench.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
