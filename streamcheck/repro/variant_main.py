"""One simulator variant's process: ``python -m streamcheck.repro.variant_main REPRO VARIANT
WORLD OUT_DIR``. Every rank is a thread of this process (see :mod:`launch_sim`); the runner
kills the process on a timeout. (On CUDA each rank is a process of its own: :mod:`launch_cuda`.)
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from pathlib import Path

from streamcheck.repro.discover import load


def main(argv: list[str]) -> int:
    repro_path, variant, world, out_dir = argv
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks even when stuck in C
    module = load(repro_path)
    from streamcheck.repro.launch_sim import run_variant_sim

    run_variant_sim(module, variant, int(world), Path(out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
