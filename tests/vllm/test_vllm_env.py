"""vLLM's real ``current_stream()`` on CPU, per version, in prepared Python-module envs.

The seed bug lives in vLLM 0.9.2's module-global ``_current_stream``; 0.10+ keep it in a
``threading.local``. These tests run vLLM's own code (not a copy) to show both, on CPU: the
real ``torch.cuda.set_stream`` cannot run on a CPU build, so the child replaces
``prev_set_stream`` -- the original setter vLLM saved before installing ``_patched_set_stream``
-- with a recorder, and passes a plain object as the stream. Everything vLLM itself does (the
cache update, the lookup in another thread) runs unchanged.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
from packaging.utils import canonicalize_name

from streamcheck import vllm_compat
from tests.vllm.conftest import REPO, require_prepared, run_in_vllm
from tools.vllm_env.layout import Layout, default_root
from tools.vllm_env.pins import SUPPORTED as VERSIONS
from tools.vllm_env.pins import read_pins
from tools.vllm_env.requires import marker_holds, parse_requires, satisfies, target_marker_env
from tools.vllm_env.stubs import read_stubs, render_stubs, write_stubs

# Where current_stream lives, read from each wheel's source.
ACCESSOR = {
    "0.9.2": "vllm.utils",
    "0.13.0": "vllm.utils.torch_utils",
    "0.24.0": "vllm.utils.torch_utils",
    "0.33.0": "vllm.utils.torch_utils",
}

CHILD = """
import sys, threading
import streamcheck_vllm_stubs
import torch
from streamcheck import vllm_compat

out = {"version": vllm_compat.vllm_version(), "stubs": list(streamcheck_vllm_stubs.STUBBED)}
module, name = vllm_compat.find_current_stream_accessor()
current_stream = getattr(module, name)
out["accessor"] = [module.__name__, name]
out["detected_kind"] = vllm_compat.detect_cache_kind(module)
out["set_stream_is_vllms"] = torch.cuda.set_stream is module._patched_set_stream

pynccl = vllm_compat.pynccl_module()
out["pynccl_binds"] = sorted(a for m, a in vllm_compat.bound_copies(current_stream)
                             if m is pynccl)
out["pynccl_has_communicator"] = hasattr(pynccl, "PyNcclCommunicator")

# The level vLLM patches: its saved original setter. Record instead of calling CUDA.
real_calls = []
module.prev_set_stream = real_calls.append

class ConnectorStream:
    '''Stands in for torch.cuda.Stream: only identity matters to the cache.'''

def ask():
    # What current_stream() gives this thread: the stream, or the error it raises.
    try:
        return current_stream()
    except Exception as exc:
        return f"raised {type(exc).__name__}"

def name_of(value):
    return value if isinstance(value, str) else type(value).__name__

S = ConnectorStream()
seen = {}

def connector():
    torch.cuda.set_stream(S)          # what `with torch.cuda.stream(S)` does on entry
    seen["connector"] = current_stream() is S

t = threading.Thread(target=connector, name="kv-connector")
t.start(); t.join()
got = ask()                           # the main thread, as pynccl would ask before a launch
out["connector_sees_own_stream"] = seen["connector"]
out["main_sees_connector_stream"] = got is S
out["main_got"] = name_of(got)
out["real_setter_called_with_S"] = real_calls == [S]
fresh = {}
t2 = threading.Thread(target=lambda: fresh.update(got=name_of(ask())))
t2.start(); t2.join()
out["fresh_thread_got"] = fresh["got"]
from vllm.platforms import current_platform
out["platform"] = type(current_platform).__name__
emit(out)
"""


@functools.cache
def child_report(version: str) -> dict:
    """One child run per version serves every test below (each costs a torch import)."""
    return run_in_vllm(version, CHILD)


@pytest.fixture(params=VERSIONS)
def report(request: pytest.FixtureRequest) -> dict:
    require_prepared(request.param)
    return child_report(request.param) | {"expected_version": request.param}


def test_version_read_from_metadata(report: dict) -> None:
    assert report["version"] == report["expected_version"]


def test_accessor_location(report: dict) -> None:
    assert report["accessor"] == [ACCESSOR[report["version"]], "current_stream"]
    assert report["set_stream_is_vllms"], "importing vLLM must install its set_stream patch"


def test_cache_kind_table_matches_source(report: dict) -> None:
    assert vllm_compat.cache_kind(report["version"]) == report["detected_kind"]


def test_pynccl_binds_current_stream_by_name(report: dict) -> None:
    assert report["pynccl_has_communicator"]
    assert report["pynccl_binds"] == [vllm_compat.PYNCCL_STREAM_NAME]


def test_connector_thread_stream_leaks_only_with_module_global_cache(report: dict) -> None:
    """The seed bug: 0.9.2 hands the connector thread's stream to the main thread."""
    assert report["connector_sees_own_stream"]
    assert report["real_setter_called_with_S"], "vLLM's patch must still call the real setter"
    leaks = vllm_compat.cache_kind(report["version"]) == "module-global"
    assert report["main_sees_connector_stream"] is leaks
    if report["version"] == "0.9.2":
        assert report["main_sees_connector_stream"], "0.9.2's global cache must leak"
    if report["version"] == "0.33.0":
        assert not report["main_sees_connector_stream"], "0.33's thread-local must not leak"


# What a thread that never set a stream gets on a CPU-only machine. 0.33 picks the CPU platform
# from VLLM_TARGET_DEVICE=cpu; 0.13 and 0.24 only from a "+cpu" build's version string, so they
# stay on UnspecifiedPlatform, whose current_stream() refuses (no torch stream API).
CPU_FRESH_THREAD = {
    "0.13.0": ("UnspecifiedPlatform", "raised ValueError"),
    "0.24.0": ("UnspecifiedPlatform", "raised ValueError"),
    "0.33.0": ("CpuPlatform", "_StreamPlaceholder"),
}


def test_fresh_thread_on_cpu(report: dict) -> None:
    """0.9.2 hands every thread the leaked stream; 0.10+ never hand out another thread's."""
    if vllm_compat.cache_kind(report["version"]) == "module-global":
        assert report["fresh_thread_got"] == "ConnectorStream"
        return
    platform, fresh = CPU_FRESH_THREAD[report["version"]]
    assert report["platform"] == platform
    assert report["fresh_thread_got"] == fresh
    assert report["main_got"] == fresh


@pytest.mark.parametrize("version", VERSIONS)
def test_pins_inside_vllm_ranges(version: str) -> None:
    """Every pinned dependency satisfies vLLM's own Requires-Dist (or says why not)."""
    require_prepared(version)
    layout = Layout(default_root(), version)
    wanted = parse_requires(layout.metadata.read_text(), target_marker_env())
    assert wanted, "vLLM's METADATA declares requirements"
    for pin in read_pins(layout.pins):
        spec = wanted.get(canonicalize_name(pin.name))
        if spec is not None and "vLLM asks" not in pin.needed_by:
            assert spec.contains(pin.version, prereleases=True), f"{pin.name}=={pin.version} {spec}"


@pytest.mark.parametrize("version", VERSIONS)
def test_stubs_name_only_compiled_modules(version: str) -> None:
    """The prepared tree's stand-in module names compiled modules only, and is byte for byte
    what the tool writes today (so trees prepared earlier stay valid without a rebuild)."""
    require_prepared(version)
    layout = Layout(default_root(), version)
    stubbed, compiled = read_stubs(layout)
    assert stubbed and set(stubbed) <= set(compiled)
    written = (layout.site / f"{vllm_compat.VLLM_STUBS_MODULE}.py").read_text()
    assert written == render_stubs(version, stubbed, compiled)


@pytest.mark.parametrize("version", VERSIONS)
def test_env_command_prints_exports(version: str) -> None:
    require_prepared(version)
    out = subprocess.run(
        [sys.executable, "-m", "tools.vllm_env", "env", version, "--gpu", "no"],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(REPO),
    ).stdout
    assert "export PYTHONPATH=" in out and f"/{version}/site" in out
    assert "export VLLM_TARGET_DEVICE=cpu" in out


def test_compat_without_vllm_is_light_and_clear() -> None:
    """Importing the compat module adds neither torch nor vLLM; a call says how to install."""
    code = (
        "import sys; import streamcheck\n"
        "before = set(sys.modules)\n"
        "from streamcheck import vllm_compat as c\n"
        "added = set(sys.modules) - before\n"
        "assert not {m for m in added if m.split('.')[0] in ('torch', 'vllm')}, added\n"
        "assert c.vllm_version() is None, c.vllm_version()\n"
        "try:\n    c.find_current_stream_accessor()\nexcept c.VllmUnavailable as e:\n"
        "    print(e)\nelse:\n    raise SystemExit('no error')\n"
        "from streamcheck.wrappers import vllm as w\n"  # the wrappers raise the same error
        "try:\n    w.instrument_pynccl()\nexcept c.VllmUnavailable as e:\n"
        "    print('wrappers:', e)\nelse:\n    raise SystemExit('no error from the wrappers')\n"
        "print('instrument_vllm:', w.instrument_vllm()['pynccl'][0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=env | {"PYTHONPATH": str(REPO)},
    )
    if "vllm_version" in proc.stderr and "AssertionError" in proc.stderr:
        pytest.skip("vLLM is installed in this interpreter")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'streamcheck[vllm]'" in proc.stdout
    assert "`python -m tools.vllm_env prepare VERSION`" in proc.stdout
    assert "wrappers: vLLM is not installed (vllm.distributed" in proc.stdout
    assert "instrument_vllm: unavailable: vLLM is not installed" in proc.stdout


@pytest.mark.parametrize(
    ("version", "kind"),
    [
        ("0.9.2", "module-global"),
        ("0.9.2+cu126", "module-global"),
        ("0.10.0rc1", "thread-local-default-stream"),
        ("0.13.0", "thread-local-default-stream"),
        ("0.14.0", "thread-local-new-stream"),
        ("0.24.0", "thread-local-new-stream"),
        ("0.33.0", "thread-local-new-stream"),
        ("1.0", "thread-local-new-stream"),
    ],
)
def test_cache_kind_by_version(version: str, kind: str) -> None:
    assert vllm_compat.cache_kind(version) == kind


def test_marker_and_requires_parsing() -> None:
    env = target_marker_env("3.11")
    text = "\n".join(
        [
            'Requires-Dist: six>=1.16.0; python_version > "3.11"',
            'Requires-Dist: protobuf>=5; platform_machine != "s390x"',
            'Requires-Dist: protobuf==7.36.1; platform_machine == "s390x"',
            "Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0",
            'Requires-Dist: pytest; extra == "dev"',
        ]
    )
    assert {k: str(v) for k, v in parse_requires(text, env).items()} == {
        "protobuf": ">=5",
        "fastapi": "<0.137.0,>=0.133.0",
    }
    assert "six" in parse_requires(text, target_marker_env("3.12"))


@pytest.mark.parametrize(
    ("version", "spec", "met"),
    [
        ("2.11.0+cu130", ">=2.4", True),  # a local build is the release it builds
        ("2.11.0", ">=2.4,<2.10", False),
        ("0.9.2", "==0.9.*", True),
        ("0.10.0", "~=0.9.2", False),
        ("1.0rc1", ">=0.9", True),  # pre-releases count: the GPU image may carry one
        ("1.0", "", True),
        ("1.0", "not a specifier", False),
    ],
)
def test_satisfies_uses_packaging_rules(version: str, spec: str, met: bool) -> None:
    assert satisfies(version, spec) is met


def test_a_marker_that_cannot_be_read_does_not_hold() -> None:
    env = target_marker_env("3.11")
    assert marker_holds('python_version >= "3.9" and sys_platform == "linux"', env)
    assert not marker_holds("python_version >>> 3", env)


def test_the_tool_writes_the_stub_module_library_code_registers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The module the tool writes is the one vllm_compat.register_vllm_stubs imports: the names
    it registers come back, each flagged as a stand-in, and the switch turns it off."""
    layout = Layout(tmp_path, "0.0.1")
    layout.site.mkdir(parents=True)
    write_stubs(layout, ["vllm._C", "vllm._C"], ["vllm._C", "vllm._moe_C"])
    assert read_stubs(layout) == (("vllm._C",), ("vllm._C", "vllm._moe_C"))
    code = (
        "import sys\n"
        "from streamcheck import vllm_compat as c\n"
        "names = c.register_vllm_stubs()\n"
        "flags = [getattr(sys.modules.get(n), c.VLLM_STUB_FLAG, None) for n in names]\n"
        "print(names, flags, 'vllm._moe_C' in sys.modules)\n"
    )

    def run(**extra: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != vllm_compat.VLLM_STUBS_SWITCH}
        env |= {"PYTHONPATH": os.pathsep.join([str(layout.site), str(REPO)]), **extra}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, cwd=str(REPO), check=True)
        return proc.stdout.strip()

    assert run() == "['vllm._C'] [True] False"
    assert run(**{vllm_compat.VLLM_STUBS_SWITCH: "OFF"}) == "[] [] False"
