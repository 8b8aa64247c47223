"""Start-up hook for child processes: audit them if ``STREAMCHECK`` asks, then chain on.

This directory is put first on PYTHONPATH by ``streamcheck.activation.child_env``. Python
imports the first ``sitecustomize`` it finds, so after starting the audit this module loads
the next ``sitecustomize`` on the path, if any, so a site's own one still runs.
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


try:
    from streamcheck.activation import process_startup

    process_startup()
except Exception as exc:  # never stop a process from starting
    print(f"streamcheck: start-up hook failed: {exc!r}", file=sys.stderr)
_chain()
