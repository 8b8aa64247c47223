"""Start-up hook for child processes: audit them if ``STREAMCHECK`` asks, then chain on.

This directory is put first on PYTHONPATH by ``streamcheck.activation.child_env``. Python
imports the first ``sitecustomize`` it finds, so after starting the audit this module loads
the next ``sitecustomize`` on the path, if any, so a site's own one still runs.

An interpreter that cannot import streamcheck (another Python started from the same shell)
stays silent, unless the audit was asked for strictly (``STREAMCHECK_STRICT=1``): then it
refuses to run unaudited.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _strict() -> bool:
    return os.environ.get("STREAMCHECK_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


def _refuse(message: str) -> None:
    """Stop the interpreter before it runs anything: no traceback from inside ``site``."""
    print(f"streamcheck: {message}; STREAMCHECK_STRICT is set: refusing to run unaudited",
          file=sys.stderr, flush=True)
    os._exit(2)


try:
    from streamcheck.activation import process_startup
except ImportError as exc:
    if os.environ.get("STREAMCHECK") and _strict():
        _refuse(f"cannot import streamcheck in {sys.executable} ({exc})")
else:
    try:
        process_startup()
    except SystemExit as exc:  # a strict refusal, already explained on stderr
        sys.stderr.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 2)
    except Exception as exc:  # never stop a process from starting, unless asked to
        if _strict():
            _refuse(f"start-up hook failed: {exc!r}")
        print(f"streamcheck: start-up hook failed: {exc!r}", file=sys.stderr)
_chain()
