"""The probe child: ``python -m streamcheck.doctor.probe_main --backend {sim,cuda}``.

Runs in its own interpreter because importing vLLM patches ``torch.cuda.set_stream`` and the sim
back end replaces ``torch.cuda`` wholesale; neither may touch the doctor's process. Order is
everything here: the fake ``torch.cuda`` goes in before vLLM is imported (vLLM captures
``set_stream`` at import), the stand-ins for compiled modules before ``vllm``, and the platform
shim before ``current_stream()`` is first called.

Prints exactly one line ``STREAMCHECK_DOCTOR_RESULT:{json}`` (a :class:`ProbeOutcome`) on stdout,
whatever happens; everything else (vLLM's logging) goes where it likes.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

from streamcheck.doctor.model import ProbeOutcome, cannot_tell_all
from streamcheck.doctor.streams import CudaStreams, SimStreams, StreamBackend

RESULT_TAG = "STREAMCHECK_DOCTOR_RESULT:"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="streamcheck.doctor.probe_main")
    p.add_argument("--backend", choices=("sim", "cuda"), required=True)
    p.add_argument("--devices", type=int, default=2, help="simulated devices (sim only)")
    return p.parse_args(argv)


def make_backend(name: str, devices: int) -> StreamBackend:
    """For sim, this is the step that must precede ``import vllm``."""
    if name == "sim":
        import torch

        from streamcheck.doctor import fake_cuda

        fake = fake_cuda.build(device_count=devices)
        fake_cuda.install(fake)
        return SimStreams(fake, cuda=torch.cuda)
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("--backend cuda: torch sees no CUDA device here")
    return CudaStreams()


def prepare_vllm(outcome: ProbeOutcome, force_shim: bool) -> Any:
    """Import vLLM's ``current_stream`` the way vLLM does; shim the platform when needed."""
    from streamcheck import vllm_compat
    from streamcheck.doctor import platform_shim

    info = outcome.vllm
    info.version = vllm_compat.vllm_version()
    if info.version is None:
        raise vllm_compat.VllmUnavailable()
    info.cache_kind_by_version = vllm_compat.cache_kind(info.version)
    import vllm

    info.location = str(getattr(vllm, "__file__", None) or list(vllm.__path__))
    if force_shim:
        info.shim = platform_shim.force_cuda_platform()
    else:
        platform = platform_shim.resolved_platform()
        if not platform_shim.is_cuda_alike(platform):
            info.shim = platform_shim.force_cuda_platform()
    module, name = vllm_compat.find_current_stream_accessor()
    info.accessor = f"{module.__name__}.{name}"
    info.platform = type(platform_shim.resolved_platform()).__name__
    try:
        info.cache_kind_by_source = vllm_compat.detect_cache_kind(module)
    except (OSError, TypeError):  # no source on disk (a zipped or compiled install)
        info.cache_kind_by_source = None
    return getattr(module, name)


def launch_sites() -> list[dict[str, Any]]:
    """The built-in launch sites as this interpreter has them (after vLLM's import)."""
    from streamcheck.wrappers.instrument import describe_site
    from streamcheck.wrappers.sites import BUILTIN_SITES

    return [describe_site(site) for site in BUILTIN_SITES]


def probe(args: argparse.Namespace) -> ProbeOutcome:
    outcome = ProbeOutcome(backend=args.backend)
    try:
        backend = make_backend(args.backend, args.devices)
        outcome.devices = backend.device_count()
        from streamcheck.vllm_compat import register_vllm_stubs

        outcome.stubs = register_vllm_stubs()
        current_stream = prepare_vllm(outcome, force_shim=args.backend == "sim")
    except ImportError as exc:  # VllmUnavailable included: its message says how to get vLLM
        outcome.error = str(exc)
    except Exception as exc:
        tail = traceback.format_exc(limit=-3).strip().splitlines()[-6:]
        outcome.error = f"{type(exc).__name__}: {exc}\n" + "\n".join(tail)
    outcome.targets = launch_sites()
    if outcome.error is not None:
        outcome.results = cannot_tell_all(outcome.error, args.backend)
        return outcome
    from streamcheck.doctor.probes import run_all

    outcome.results = run_all(backend, current_stream)
    return outcome


def main(argv: list[str] | None = None) -> int:
    outcome = probe(parse_args(argv))
    sys.stdout.write(RESULT_TAG + json.dumps(outcome.to_dict()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
