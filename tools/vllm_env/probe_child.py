"""The probe's child: import each target inside the env under test and report as JSON.

Why a separate, standard-library-only file: it runs in the prepared tree's own interpreter
(``python -S`` with PYTHONPATH = site/, deps/ and a view of torch), where neither streamcheck's
dependencies nor ``packaging`` may be importable. ``probe.py`` runs it by path and reads the one
line that starts with RESULT_TAG. Everything it needs arrives in its JSON config.
"""

from __future__ import annotations

import importlib
import importlib.abc
import json
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_TAG = "STREAMCHECK_PROBE_RESULT:"


def probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Import each target in this process; report the first failure and compiled-name tries.

    ``cfg["stubs"]`` names the stand-ins to register first, exactly as the stand-in module does
    (``cfg["stub_flag"]``, when given, is set on each). A meta-path hook records every other
    attempt to import a compiled vLLM module (``cfg["compiled"]``) and lets it fail as it would
    without the extension, so vLLM's own try/except fallbacks run unchanged.
    """
    compiled = set(cfg.get("compiled", ()))
    tried: list[str] = []

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
            if name in compiled:
                tried.append(name)
            return None

    flag = cfg.get("stub_flag")
    for name in cfg.get("stubs", ()):
        module = types.ModuleType(name)
        if flag:
            setattr(module, flag, True)
        sys.modules.setdefault(name, module)
    sys.meta_path.insert(0, _Finder())
    result: dict[str, Any] = {"ok": True, "targets": [], "tried_compiled": tried, "platform": None}
    for tgt in cfg["targets"]:
        entry: dict[str, Any] = {"name": tgt["name"], "module": tgt["module"]}
        result["targets"].append(entry)
        try:
            mod = importlib.import_module(tgt["module"])
            entry["missing_attrs"] = [a for a in tgt["attrs"] if not hasattr(mod, a)]
            if tgt.get("call"):
                entry["call"] = _call(getattr(mod, tgt["call"]), result)
        except ImportError as exc:
            entry["import_error"] = {
                "chain": import_chain(exc),
                "msg": str(exc)[:500],
                "tb": traceback.format_exc()[-3000:],
            }
            result["ok"] = False
            break
        except Exception as exc:  # e.g. a dependency that breaks when its own dep is absent
            frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
            entry["error"] = {
                "type": type(exc).__name__,
                "msg": str(exc)[:500],
                "frames": frames[-20:],
                "tb": traceback.format_exc()[-3000:],
            }
            result["ok"] = False
            break
    return result


def import_chain(exc: BaseException) -> list[dict[str, Any]]:
    """Every ImportError in the cause/context chain, outermost first.

    Lazy importers (transformers) re-raise a vague error from the real ModuleNotFoundError, so
    the missing package is often named only deeper in the chain.
    """
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ImportError):
            chain.append(
                {
                    "type": type(cur).__name__,
                    "name": cur.name,
                    "path": cur.path,
                    "msg": str(cur)[:500],
                }
            )
        cur = cur.__cause__ or cur.__context__
    return chain


def _call(fn: Callable[[], object], result: dict[str, Any]) -> str:
    """Call current_stream(); on a CPU build the CUDA-only branch raising is expected."""
    try:
        plat = importlib.import_module("vllm.platforms").current_platform
        result["platform"] = type(plat).__name__
    except ImportError:
        raise
    except Exception as exc:
        result["platform"] = f"error: {type(exc).__name__}: {exc}"[:300]
    try:
        return "returned " + type(fn()).__name__
    except ImportError:
        raise
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"[:300]


def main(argv: list[str]) -> None:
    """``probe_child.py CONFIG_JSON``: print RESULT_TAG + the report."""
    print(RESULT_TAG + json.dumps(probe(json.loads(argv[0]))), flush=True)


if __name__ == "__main__":
    # Run by path, Python put this directory first on sys.path; its sibling modules are not
    # what vLLM or its dependencies mean by those names.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    main(sys.argv[1:])
