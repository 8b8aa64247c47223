"""The stand-in module a prepared tree ships for vLLM's compiled extensions.

Library code imports it by name (``streamcheck.vllm_compat.register_vllm_stubs``), so everything
it relies on -- the module name, the attributes holding the names, the flag on each stand-in, the
environment switch -- is defined in ``streamcheck.vllm_compat`` and only *used* here: the
library never depends on this tool, and the two cannot disagree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence

from streamcheck.vllm_compat import (
    VLLM_STUB_FLAG,
    VLLM_STUBS_COMPILED,
    VLLM_STUBS_MODULE,
    VLLM_STUBS_OFF,
    VLLM_STUBS_STUBBED,
    VLLM_STUBS_SWITCH,
)
from tools.vllm_env.layout import Layout

# Compiled vLLM modules that the GPU import path of the probe targets cannot do without: the
# CUDA platform module (vllm/platforms/cuda.py) imports them unconditionally. On an H200 with
# each version's .py tree, every compiled-module import on the targets' path was recorded: 0.9.2
# tried vllm._C and vllm._moe_C, 0.33 vllm._C_stable_libtorch and vllm._qutlass_C; 0.13 and 0.24
# were read from source only (the same single unconditional import in cuda.py). Optional imports
# that vLLM guards with try/except (0.9.2's _moe_C, 0.33's _qutlass_C) are NOT stubbed: a
# stand-in there would tell vLLM that a kernel library exists. ``find-stubs`` re-derives the list
# on a GPU machine; names the CPU path needs are found the same way by ``prepare`` and added.
GPU_NEEDED_STUBS: dict[str, tuple[str, ...]] = {
    "0.9.2": ("vllm._C",),
    "0.13.0": ("vllm._C",),
    "0.24.0": ("vllm._C_stable_libtorch",),
    "0.33.0": ("vllm._C_stable_libtorch",),
}

STUBS_TEMPLATE = '''\
"""Empty stand-ins for vLLM {version}'s compiled extension modules.

Imported before ``vllm``, this registers an empty module for each name in {names}: the compiled
modules that the import path of ``current_stream()``, ``PyNcclCommunicator``, the KV connector
base/factory and the v1 scheduler cannot do without (vllm/platforms/cuda.py imports them
unconditionally once the platform resolves to CUDA). This tree holds only vLLM's Python files,
so without the stand-ins those imports fail. Imports that vLLM guards with try/except are left
alone: vLLM then sees those optional kernels as absent, which they are.

Why this is honest: those code paths never call into the compiled kernels (pynccl reaches NCCL
through ctypes); they only import the modules, whose import registers custom ops. A stand-in has
no attributes and registers no op, so code that did call a kernel would fail at once, never
return a made-up result. Where the real extension file sits next to this one (a full install),
nothing is registered. Set {switch}=off to skip registration.
"""

import os
import sys
import types
from pathlib import Path

VERSION = {version!r}
{names} = {stubbed!r}
{compiled_attr} = {compiled!r}


def install() -> list:
    """Register the stand-ins that are missing; return the names registered."""
    here = Path(__file__).resolve().parent
    done = []
    for name in {names}:
        parts = name.split(".")
        if name in sys.modules or any(here.joinpath(*parts[:-1]).glob(parts[-1] + ".*so")):
            continue
        module = types.ModuleType(name)
        module.{flag} = True
        sys.modules[name] = module
        done.append(name)
    return done


if os.environ.get("{switch}", "on").lower() not in {off}:
    install()
'''


def render_stubs(version: str, stubbed: Iterable[str], compiled: Sequence[str]) -> str:
    """The stand-in module's source: ``stubbed`` (sorted, once each) and the wheel's full list."""
    return STUBS_TEMPLATE.format(
        version=version,
        stubbed=tuple(sorted(set(stubbed))),
        compiled=tuple(compiled),
        names=VLLM_STUBS_STUBBED,
        compiled_attr=VLLM_STUBS_COMPILED,
        flag=VLLM_STUB_FLAG,
        switch=VLLM_STUBS_SWITCH,
        off="(" + ", ".join(f'"{v}"' for v in VLLM_STUBS_OFF) + ")",
    )


def write_stubs(lay: Layout, stubbed: Iterable[str], compiled: Sequence[str]) -> None:
    """(Re)write the stand-in module with the given names, keeping the wheel's full list."""
    (lay.site / f"{VLLM_STUBS_MODULE}.py").write_text(
        render_stubs(lay.version, stubbed, compiled)
    )


def _string_tuple(node: ast.expr, what: str) -> tuple[str, ...]:
    """A tuple (or list) of string literals, and nothing else."""
    if isinstance(node, (ast.Tuple, ast.List)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    raise ValueError(f"{what} is not a tuple of strings")


def parse_stubs(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(STUBBED, COMPILED) from a stand-in module's source, read as syntax (nothing is run;
    a name that is absent reads as empty)."""
    found: dict[str, tuple[str, ...]] = {}
    wanted = (VLLM_STUBS_STUBBED, VLLM_STUBS_COMPILED)
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name) and target.id in wanted:
                found[target.id] = _string_tuple(stmt.value, target.id)
    return found.get(VLLM_STUBS_STUBBED, ()), found.get(VLLM_STUBS_COMPILED, ())


def read_stubs(lay: Layout) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(STUBBED, COMPILED) of the module written into ``lay``, without importing it."""
    return parse_stubs((lay.site / f"{VLLM_STUBS_MODULE}.py").read_text())
