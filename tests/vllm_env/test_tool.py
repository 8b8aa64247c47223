"""tools/vllm_env without vLLM: versions, pins, requirements and markers as ``packaging`` reads
them, the stand-in module read back as syntax, and the command line's refusals.

None of this needs a prepared tree or the network; each test builds the files it reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tools.vllm_env import __main__ as cli
from tools.vllm_env.discover import missing_dist, spec_for
from tools.vllm_env.layout import Layout
from tools.vllm_env.pins import Pin, checked_version, parse_pin, pins_digest, read_pins
from tools.vllm_env.prepare import is_ready
from tools.vllm_env.requires import (
    marker_holds,
    parse_requires,
    requirements,
    satisfies,
    target_marker_env,
)
from tools.vllm_env.stubs import parse_stubs
from tools.vllm_env.wheels import installed_versions

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("text", "spelled"),
    [("0.9.2", "0.9.2"), ("v0.9.2", "0.9.2"), ("0.13", "0.13"), ("0.10.0RC1", "0.10.0rc1")],
)
def test_versions_are_spelled_the_way_packaging_normalizes_them(text: str, spelled: str) -> None:
    assert checked_version(text) == spelled


@pytest.mark.parametrize("text", ["../0.9.2", "0.9.2/..", "latest", "0.9.2; rm -rf /", ""])
def test_what_is_not_a_version_never_becomes_a_path(text: str) -> None:
    with pytest.raises(ValueError, match="not a vLLM version"):
        checked_version(text)


def test_an_unchecked_version_is_accepted_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    assert checked_version("0.99.0") == "0.99.0"
    assert "0.99.0 is not one of the checked versions" in capsys.readouterr().err
    checked_version("0.9.2")
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- pins


def test_a_pin_line_is_an_exact_requirement_and_its_comment() -> None:
    assert parse_pin("PyYAML==6.0.3          # scheduler; vLLM asks >=7") == Pin(
        "PyYAML", "6.0.3", "scheduler; vLLM asks >=7"
    )
    assert parse_pin("numpy == 2.5.2") == Pin("numpy", "2.5.2", "")
    assert parse_pin("   # only a comment") is None
    assert parse_pin("") is None


@pytest.mark.parametrize(
    "line",
    [
        "numpy>=2.5",  # a range is not a pin
        "numpy",
        "numpy==2.5.*",  # a wildcard is not one version
        "numpy==2.5.2,<3",
        "numpy[extra]==2.5.2",
        'numpy==2.5.2; python_version < "3.12"',
        "numpy==not-a-version",
        "==2.5.2",
    ],
)
def test_anything_but_name_equals_version_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_pin(line)


def test_read_pins_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "0.0.1.txt"
    path.write_text("# head\nnumpy==2.5.2\nrich>=13\n")
    with pytest.raises(ValueError, match=r"0\.0\.1\.txt:3: .*rich>=13"):
        read_pins(path)


def test_the_committed_pins_all_parse() -> None:
    for version in ("0.9.2", "0.13.0", "0.24.0", "0.33.0"):
        pins = read_pins(Layout(REPO / ".vllm", version).pins)
        assert len(pins) > 10 and all(p.version for p in pins), version


def test_the_pins_digest_is_the_one_prepared_trees_recorded() -> None:
    """READY.json of every prepared tree holds this digest; its input must not drift (the
    value was computed by the former scripts/vllm_env.py)."""
    pins = [Pin("typing_extensions", "4.15.0"), Pin("numpy", "2.5.2", "x"), Pin("PyYAML", "6.0.3")]
    assert pins_digest(pins) == "6bbb8a19b109133a"
    assert pins_digest(list(reversed(pins))) == "6bbb8a19b109133a"
    assert pins_digest([*pins[:2], Pin("PyYAML", "6.0.2")]) != "6bbb8a19b109133a"


def test_a_tree_is_ready_only_for_the_committed_pins(tmp_path: Path) -> None:
    lay = Layout(tmp_path, "0.9.2")
    assert not is_ready(lay)
    lay.base.mkdir()
    lay.ready.write_text(json.dumps({"pins_digest": pins_digest(read_pins(lay.pins))}))
    assert is_ready(lay)
    lay.ready.write_text('{"pins_digest": "0000000000000000"}')
    assert not is_ready(lay)


# --------------------------------------------------------------------------- requirements


def test_markers_are_evaluated_for_the_target_not_this_interpreter() -> None:
    x86, arm = target_marker_env("3.11"), target_marker_env("3.11", machine="aarch64")
    assert marker_holds('platform_machine == "x86_64"', x86)
    assert not marker_holds('platform_machine == "x86_64"', arm)
    assert marker_holds('python_version < "3.12"', x86)
    assert not marker_holds('python_version < "3.12"', target_marker_env("3.12"))
    assert marker_holds('sys_platform == "linux" and os_name == "posix"', x86)
    assert not marker_holds('sys_platform == "darwin" or platform_system == "Windows"', x86)
    assert not marker_holds('extra == "dev"', x86), "no extra is ever requested"
    assert marker_holds("", x86)


@pytest.mark.parametrize(
    "marker",
    ["python_version >>> 3", 'platform_machine == "x86_64" and', "__import__('os')", "1 == 1"],
)
def test_a_marker_that_cannot_be_read_does_not_hold_and_is_never_run(marker: str) -> None:
    assert not marker_holds(marker, target_marker_env())


def test_requires_dist_as_metadata_writes_it() -> None:
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: vllm",
            "Requires-Dist: regex",
            "Requires-Dist: Foo.Bar (>=1.0)",  # the legacy parenthesized form
            "Requires-Dist: torch>=2.4",
            'Requires-Dist: torch<2.8; platform_machine == "x86_64"',
            'Requires-Dist: nvidia-nccl ; platform_machine == "aarch64"',
            "Requires-Dist: not a requirement !!",
            'Requires-Dist: pytest ; extra == "test"',
            "",
            "Long description, not headers:",
            "Requires-Dist: from-the-readme>=1",
        ]
    )
    got = parse_requires(metadata, target_marker_env("3.11"))
    assert list(got) == ["regex", "foo-bar", "torch"]
    assert got["regex"] == SpecifierSet()
    assert got["foo-bar"] == SpecifierSet(">=1.0")
    assert got["torch"] == SpecifierSet(">=2.4,<2.8"), "lines for one name are intersected"


def test_requirements_keep_names_and_drop_extras_only_lines() -> None:
    reqs = requirements(
        ["filelock", 'opt-einsum>=3.3; extra == "opt-einsum"', "sympy>=1.13.3", "bad line !!"],
        target_marker_env(),
    )
    assert [r.name for r in reqs] == ["filelock", "sympy"]


def test_satisfies_accepts_a_parsed_specifier_too() -> None:
    assert satisfies("4.53.0", SpecifierSet(">=4.51.1") & SpecifierSet("<4.54"))
    assert not satisfies("4.54.0", SpecifierSet(">=4.51.1") & SpecifierSet("<4.54"))
    assert not satisfies("not.a.version!", ">=1")


def test_spec_for_splits_vllms_range_from_every_other(tmp_path: Path) -> None:
    """vLLM's own range, and the ones its installed deps and NARROWER add (0.9.2 narrows
    transformers below 4.54)."""
    lay = Layout(tmp_path, "0.9.2")
    lay.metadata.parent.mkdir(parents=True)
    lay.metadata.write_text("Name: vllm\nRequires-Dist: transformers>=4.51.1\n")
    dep = lay.deps / "tokenizer_thing-1.0.dist-info"
    dep.mkdir(parents=True)
    (dep / "METADATA").write_text("Name: tokenizer-thing\nRequires-Dist: Transformers!=4.52.0\n")
    own, others = spec_for("transformers", lay)
    assert own == SpecifierSet(">=4.51.1")
    assert others == SpecifierSet("<4.54,!=4.52.0")
    assert [v for v in ("4.51.0", "4.52.0", "4.53.3", "4.54.0") if satisfies(v, own & others)] == [
        "4.53.3"
    ]
    assert spec_for("numpy", lay) == (SpecifierSet(), SpecifierSet())


def test_installed_versions_come_from_each_distributions_metadata(tmp_path: Path) -> None:
    for dirname, name, version in [
        ("Foo_Bar-1.0.dist-info", "Foo.Bar", "1.0"),
        ("zope.interface-7.2.dist-info", "zope.interface", "7.2"),
        ("x-2.0.post1.dist-info", "X", "2.0.post1"),
    ]:
        (tmp_path / dirname).mkdir()
        (tmp_path / dirname / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n")
    assert installed_versions(tmp_path) == {
        "foo-bar": "1.0", "zope-interface": "7.2", "x": "2.0.post1"
    }


# --------------------------------------------------------------------------- discovery


def _chain(*links: tuple[str, str | None, str]) -> dict:
    return {"chain": [{"type": t, "name": n, "msg": m, "path": None} for t, n, m in links]}


@pytest.mark.parametrize(
    ("err", "dist"),
    [
        (_chain(("ModuleNotFoundError", "yaml", "No module named 'yaml'")), "pyyaml"),
        (
            _chain(("ImportError", None, "vague"), ("ModuleNotFoundError", "zmq.asyncio", "")),
            "pyzmq",
        ),
        (
            _chain(("PackageNotFoundError", None, "The 'Safe_Tensors>=0.8.0' distribution was not "
                    "found and is required by this application")),
            "safe-tensors",
        ),
        (_chain(("ModuleNotFoundError", "vllm._C", "No module named 'vllm._C'")), ""),
        (_chain(("ModuleNotFoundError", "streamcheck_vllm_stubs", "")), ""),
        (_chain(("ModuleNotFoundError", "/not/a/module", "")), ""),
    ],
)
def test_missing_dist_reads_the_innermost_import_error(err: dict, dist: str) -> None:
    assert missing_dist(err) == dist


def test_a_forked_module_goes_to_the_distribution_vllm_declares() -> None:
    err = _chain(("ModuleNotFoundError", "openai_harmony", ""))
    assert missing_dist(err, declared=["openai-harmony"]) == "openai-harmony"
    assert missing_dist(err, declared=["oss-harmony"]) == "oss-harmony"


# --------------------------------------------------------------------------- stand-ins


def test_the_stub_lists_are_read_as_syntax_never_run() -> None:
    source = (
        "import os\nos._exit(3)\n"
        "STUBBED = ('vllm._C',)\nCOMPILED = ['vllm._C', 'vllm._moe_C']\nOTHER = 1\n"
    )
    assert parse_stubs(source) == (("vllm._C",), ("vllm._C", "vllm._moe_C"))
    assert parse_stubs("VERSION = '1'\n") == ((), ())


@pytest.mark.parametrize(
    "value", ["tuple(['vllm._C'])", "('vllm._C', 1)", "__import__('os').getcwd()", "'vllm._C'"]
)
def test_a_stub_list_that_is_not_literal_strings_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="STUBBED"):
        parse_stubs(f"STUBBED = {value}\n")


# --------------------------------------------------------------------------- command line


def test_env_of_an_unprepared_version_says_how_to_prepare_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"python -m tools\.vllm_env prepare 0\.9\.2$"):
        cli.main(["env", "0.9.2", "--root", str(tmp_path)])


def test_the_module_runs_from_the_repository_root() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.vllm_env", "prepare", "--root", "/nonexistent", "../x"],
        capture_output=True, text=True, cwd=str(REPO),
    )
    assert proc.returncode == 2
    assert "argument VERSION: not a vLLM version: '../x'" in proc.stderr
    for sub in ("prepare", "prepare-all", "env", "probe", "pack-gpu", "find-stubs"):
        assert sub in cli.build_parser().format_help()
