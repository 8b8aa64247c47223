"""Finding the pins: install whatever the next failed import names, until every target imports.

Only ``prepare VERSION --discover`` (or a version without committed pins) runs this; it needs
the package index. Each round picks the newest release inside every range declared for the
missing distribution (vLLM's own Requires-Dist, every installed dependency's, and NARROWER).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from streamcheck.vllm_compat import VLLM_STUBS_MODULE
from tools.vllm_env.layout import Layout, log
from tools.vllm_env.pins import NARROWER, Pin
from tools.vllm_env.probe import run_probe, torch_closure
from tools.vllm_env.requires import dist_metadata_texts, parse_requires, target_marker_env
from tools.vllm_env.wheels import download_deps, install_deps, installed_versions

# Import names whose distribution is spelled differently. A tuple lists candidates: the first
# that vLLM (or an installed dependency) declares wins; vLLM 0.33 moved from openai-harmony to
# its fork oss-harmony, which installs the same ``openai_harmony`` module.
MODULE_TO_DIST: dict[str, str | tuple[str, ...]] = {
    "openai_harmony": ("oss-harmony", "openai-harmony"),
    "tvm_ffi": "apache-tvm-ffi",
    "opentelemetry": "opentelemetry-api",
    "zmq": "pyzmq",
    "yaml": "pyyaml",
    "cv2": "opencv-python-headless",
    "google": "protobuf",
    "PIL": "pillow",
    "cpuinfo": "py-cpuinfo",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "multipart": "python-multipart",
    "pythonjsonlogger": "python-json-logger",
    "attr": "attrs",
    "jwt": "pyjwt",
    "sklearn": "scikit-learn",
    "pynvml": "nvidia-ml-py",
    "websockets": "websockets",
    "email_validator": "email-validator",
}

# transformers' version check: "The 'safetensors>=0.8.0' distribution was not found ..."
_DIST_NOT_FOUND = re.compile(r"The '([^']+)' distribution")


def is_module_name(name: str) -> bool:
    """A dotted Python import name (``a.b_c``), not a path or a message."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def dist_for_module(module: str, declared: Iterable[str] = ()) -> str:
    """Distribution that provides a missing top-level module (see MODULE_TO_DIST)."""
    top = module.split(".")[0]
    found = MODULE_TO_DIST.get(top, canonicalize_name(top))
    candidates = (found,) if isinstance(found, str) else found
    declared = set(declared)
    return next((c for c in candidates if canonicalize_name(c) in declared), candidates[0])


def declared_names(lay: Layout) -> set[str]:
    """Every distribution name that vLLM or an installed dependency requires."""
    env = target_marker_env()
    names: set[str] = set()
    for text in dist_metadata_texts([lay.site, lay.deps]):
        names |= set(parse_requires(text, env))
    return names


def _named_distribution(msg: str) -> str:
    """The distribution a PackageNotFoundError message names, or ''."""
    m = _DIST_NOT_FOUND.search(msg)
    if not m:
        return ""
    try:
        return canonicalize_name(Requirement(m.group(1)).name)
    except InvalidRequirement:
        return ""


def missing_dist(err: dict[str, Any], declared: Iterable[str] = ()) -> str:
    """The distribution an ImportError chain asks for, or '' when none is a missing package.

    The innermost error is the real one. A missing module names an import; transformers'
    version check instead raises PackageNotFoundError naming a distribution.
    """
    for link in reversed(err["chain"]):
        name = str(link["name"] or "")
        if link["type"] == "PackageNotFoundError":
            named = _named_distribution(link["msg"])
            if named or is_module_name(name):
                return named or canonicalize_name(name)
        if link["type"] == "ModuleNotFoundError" and is_module_name(name):
            if name.split(".")[0] in ("vllm", VLLM_STUBS_MODULE):
                continue
            return dist_for_module(name, declared)
        if link["type"] == "ImportError" and "base-view" in str(link.get("path") or ""):
            # "cannot import name X from typing_extensions": torch's copy is too old for a
            # dependency; a newer one in deps/ shadows it.
            return dist_for_module(name, declared)
    return ""


def unmet_requirement(path: str, lay: Layout) -> str:
    """First declared requirement, not installed, of the dependency whose code raised.

    transformers 5.20 without tokenizers fails with a TypeError, not an ImportError: when the
    failing frame is inside deps/, a requirement that its METADATA declares is the likely gap.
    """
    try:
        top = Path(path).resolve().relative_to(lay.deps.resolve()).parts[0]
    except ValueError:
        return ""
    have = set(installed_versions(lay.deps)) | {
        canonicalize_name(d.metadata["Name"]) for d in torch_closure()
    }
    for info in lay.deps.glob("*.dist-info"):
        record = info / "RECORD"
        if record.exists() and f"\n{top}/" in "\n" + record.read_text():
            needs = parse_requires((info / "METADATA").read_text(), target_marker_env())
            return next((n for n in needs if n not in have), "")
    return ""


def spec_for(dist: str, lay: Layout) -> tuple[SpecifierSet, SpecifierSet]:
    """(vLLM's constraint, every other declared constraint) on ``dist``."""
    env = target_marker_env()
    key = canonicalize_name(dist)
    own = parse_requires(lay.metadata.read_text(), env).get(key, SpecifierSet())
    others = SpecifierSet(NARROWER.get(lay.version, {}).get(key, ""))
    for text in dist_metadata_texts([lay.deps]):
        others &= parse_requires(text, env).get(key, SpecifierSet())
    return own, others


def fetch_in_range(dist: str, lay: Layout) -> tuple[str, str]:
    """Download the newest wheel in range; return (requirement used, note for the pin file).

    A range that the index cannot meet (vLLM 0.33 asks for a certifi newer than any release)
    falls back to the other constraints, and the pin says so instead of hiding it.
    """
    own, others = spec_for(dist, lay)
    req = f"{dist}{own & others}"
    try:
        download_deps([req], lay.dep_wheels)
        return req, ""
    except subprocess.CalledProcessError:
        if not own:
            raise
    fallback = f"{dist}{others}"
    why = f"none on the index meets it with {others}" if others else "no such release on the index"
    log(f"vLLM asks {dist}{own}, {why}: using {fallback}")
    download_deps([fallback], lay.dep_wheels)
    return fallback, f"vLLM asks {own}: {why}"


def discover(lay: Layout, limit: int = 120) -> list[Pin]:
    """Install whatever the next ImportError names, until every target imports.

    Each round runs the probe in a minimal interpreter (site-packages hidden but torch), reads
    the first ModuleNotFoundError, and installs that one distribution at the newest version
    inside every range declared for it. The result is the smallest set that these imports need.
    """
    progress = lay.deps / ".discovery.json"
    needed_by: dict[str, str] = {}
    if progress.exists():  # resume an interrupted discovery: each round costs seconds
        needed_by = json.loads(progress.read_text())
        log(f"resuming discovery with {len(needed_by)} packages already found")
    else:
        if lay.deps.exists():
            shutil.rmtree(lay.deps)
        lay.deps.mkdir(parents=True)
    for _ in range(limit):
        report = run_probe(lay, minimal=True)
        failed = next((t for t in report["targets"] if "import_error" in t or "error" in t), None)
        if failed is None:
            versions = installed_versions(lay.deps)
            progress.unlink(missing_ok=True)
            return [Pin(n, versions[n], needed_by.get(n, "")) for n in sorted(versions)]
        err = failed.get("import_error") or failed["error"]
        if "error" in failed:
            dist = unmet_requirement(err["frames"][-1], lay)
        else:
            dist = missing_dist(err, declared_names(lay))
        if not dist:
            raise SystemExit(f"{failed['module']}: {err['msg']}\n{err['tb']}")
        if dist in needed_by:
            raise SystemExit(f"installed {dist}, still missing:\n{err['tb']}")
        req, note = fetch_in_range(dist, lay)
        log(f"{failed['name']}: needs {dist} -> installing {req}")
        install_deps([req], lay.dep_wheels, lay.deps)
        needed_by[dist] = "; ".join(s for s in (str(failed["name"]), note) if s)
        progress.write_text(json.dumps(needed_by))
    raise SystemExit(f"gave up after {limit} rounds")
