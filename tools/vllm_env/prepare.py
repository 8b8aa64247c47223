"""Build ``ROOT/VERSION`` from the vLLM wheel and the committed pins, and say when it is ready.

``READY.json`` is written last and names the digest of the pins it was built from; a tree whose
digest matches the committed pins is reused as it is (no download, no probe). Its fields and the
digest's input must stay as they are, or every prepared tree would be rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.vllm_env.discover import discover
from tools.vllm_env.layout import REPO, Layout, log
from tools.vllm_env.pins import pins_digest, read_pins, write_pins
from tools.vllm_env.probe import (
    current_stream_module,
    find_stubs,
    probe_config,
    probe_env,
    probe_subprocess,
)
from tools.vllm_env.stubs import GPU_NEEDED_STUBS, write_stubs
from tools.vllm_env.wheels import dir_size, download_vllm_wheel, extract_site, install_pins


def is_ready(lay: Layout) -> bool:
    """Prepared and built from the pins that are committed now."""
    if not lay.ready.exists() or not lay.pins.exists():
        return False
    info = json.loads(lay.ready.read_text())
    return info.get("pins_digest") == pins_digest(read_pins(lay.pins))


@dataclass
class PrepareStats:
    """What a prepare cost: seconds and bytes fetched, for the CI budget."""

    seconds: float = 0.0
    downloaded: int = 0
    reused: bool = False


@contextlib.contextmanager
def version_lock(lay: Layout) -> Iterator[None]:
    """One prepare per version at a time: a second one waits instead of unpacking over it."""
    lay.root.mkdir(parents=True, exist_ok=True)
    with open(lay.root / f".{lay.version}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another prepare of {lay.version} is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def prepare(version: str, root: Path, rediscover: bool = False) -> PrepareStats:
    """Build ROOT/VERSION from the wheel and the committed pins (or discover the pins)."""
    lay = Layout(root, version)
    with version_lock(lay):
        if not rediscover and is_ready(lay):
            return PrepareStats(reused=True)
        return _prepare_locked(lay, rediscover)


def _prepare_locked(lay: Layout, rediscover: bool) -> PrepareStats:
    t0 = time.monotonic()
    version = lay.version
    before = dir_size(lay.wheels)
    if lay.ready.exists():
        lay.ready.unlink()
    compiled = extract_site(download_vllm_wheel(lay), lay)
    write_stubs(lay, GPU_NEEDED_STUBS.get(version, ()), compiled)
    if rediscover or not lay.pins.exists():
        pins = discover(lay)
        write_pins(lay.pins, version, pins)
        log(f"wrote {lay.pins.relative_to(REPO)} ({len(pins)} packages)")
    else:
        pins = read_pins(lay.pins)
        if lay.deps.exists():
            shutil.rmtree(lay.deps)
        install_pins([f"{p.name}=={p.version}" for p in pins], lay)
    stats = PrepareStats(downloaded=dir_size(lay.wheels) - before)
    report = verify(lay, compiled)
    lay.ready.write_text(
        json.dumps(
            {
                "version": version,
                "pins_digest": pins_digest(pins),
                "platform": report["platform"],
                "current_stream_module": current_stream_module(lay.site),
                "targets": report["targets"],
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=1,
        )
    )
    stats.seconds = time.monotonic() - t0
    return stats


def verify(lay: Layout, compiled: Sequence[str]) -> dict[str, Any]:
    """Every target must import with the pinned deps alone; needed stand-ins are added."""
    cfg = probe_config(lay)
    env = probe_env(lay, minimal=True)
    stubs, report = find_stubs(cfg, lambda c: probe_subprocess(c, env, isolated=True))
    if set(stubs) != set(cfg["stubs"]):
        log(f"stand-ins needed on this machine too: {sorted(set(stubs) - set(cfg['stubs']))}")
        write_stubs(lay, stubs, compiled)
    bad = [t for t in report["targets"] if "import_error" in t or t.get("missing_attrs")]
    if bad:
        raise SystemExit(
            f"vLLM {lay.version}: env does not import cleanly:\n"
            + json.dumps(bad, indent=1)[-4000:]
        )
    return report
