"""Entry point of one variant's process (the runner puts it in a process group of its own)."""

from __future__ import annotations

import faulthandler
import signal
import sys
from pathlib import Path

from streamcheck.repro.discover import load


def main(argv: list[str]) -> int:
    repro_path, variant, backend, world, out_dir = argv
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks even when stuck in C
    module = load(repro_path)
    out = Path(out_dir)
    if backend == "sim":
        from streamcheck.repro.launch_sim import run_variant_sim

        run_variant_sim(module, variant, int(world), out)
        return 0
    from streamcheck.repro.launch_cuda import run_variant_cuda

    return run_variant_cuda(repro_path, module, variant, int(world), out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
