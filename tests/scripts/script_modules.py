"""The scripts in ``scripts/`` as modules for their tests (they are files, not a package)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` loaded under ``name``, with ``scripts/`` importable for the
    siblings it imports."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDED = Path(__file__).resolve().parent / "recorded"


def recorded_result(folder: str, name: str, part: str = "result") -> dict:
    """The ``result`` (or another ``part``: ``audit``) of a case file kept from a GPU run
    (``recorded/<folder>/<name>.json``)."""
    return json.loads((RECORDED / folder / f"{name}.json").read_text())[part]
