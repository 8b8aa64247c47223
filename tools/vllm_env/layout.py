"""Where one vLLM version's environment lives, and the shell variables that select it.

Every path derives from (root, version), so the tool, the tests and ``env`` agree on it without
sharing state; the on-disk layout is documented in the package docstring and must stay stable
(trees prepared by earlier checkouts are reused, not rebuilt).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from streamcheck.vllm_compat import VLLM_PREPARE_COMMAND

REPO = Path(__file__).resolve().parents[2]
#: Committed pin files, one per vLLM version.
PINS_DIR = Path(__file__).resolve().parent / "pinned"


def log(msg: str) -> None:
    """Progress goes to stderr so ``env`` output stays eval-able."""
    print(f"[vllm_env] {msg}", file=sys.stderr, flush=True)


def default_root() -> Path:
    """One cache for every checkout that points at it; the repo's git-ignored .vllm/ otherwise."""
    env = os.environ.get("STREAMCHECK_VLLM_ROOT")
    return Path(env).resolve() if env else REPO / ".vllm"


@dataclass(frozen=True)
class Layout:
    """Where one version's environment lives; every path derives from (root, version)."""

    root: Path
    version: str

    @property
    def base(self) -> Path:
        return self.root / self.version

    @property
    def site(self) -> Path:
        return self.base / "site"

    @property
    def deps(self) -> Path:
        return self.base / "deps"

    @property
    def ready(self) -> Path:
        return self.base / "READY.json"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def dep_wheels(self) -> Path:
        return self.root / "wheels" / f"deps-cp{sys.version_info[0]}{sys.version_info[1]}"

    @property
    def metadata(self) -> Path:
        return self.site / f"vllm-{self.version}.dist-info" / "METADATA"

    @property
    def pins(self) -> Path:
        return PINS_DIR / f"{self.version}.txt"


def prepare_command(version: str) -> str:
    """The exact command a person runs to build the env that a skipped test wanted."""
    return f"{VLLM_PREPARE_COMMAND} {version}"


def has_gpu() -> bool:
    """An NVIDIA device node means vLLM should resolve its CUDA platform, not the CPU one."""
    return os.path.exists("/dev/nvidiactl")


def env_vars(version: str, root: Path, gpu: bool | None = None) -> dict[str, str]:
    """Variables that make ``import vllm`` pick this env's Python modules."""
    lay = Layout(root, version)
    out = {"PYTHONPATH": os.pathsep.join([str(lay.site), str(lay.deps)])}
    if not (has_gpu() if gpu is None else gpu):
        out["VLLM_TARGET_DEVICE"] = "cpu"
    return out
