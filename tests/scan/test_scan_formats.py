"""`streamcheck scan` for CI and editors: output formats, exit codes, exclusions, project config.

Documents are checked with real validators: the SARIF log against the official OASIS SARIF
2.1.0 schema (``tests/data``), the JSON against streamcheck's published ``streamcheck.scan/1``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from streamcheck.documents import SCAN_SCHEMA, validate
from streamcheck.settings import AuditSettings

FIXTURES = Path(__file__).parent / "fixtures"
LEAK = (FIXTURES / "vllm092_global_cache.py").read_text(encoding="utf-8")
SARIF_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "sarif-schema-2.1.0.json")
                          .read_text(encoding="utf-8"))


def scan(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamcheck", "scan", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with the 0.9.2 leak in two places and a clean module."""
    for rel in ("pkg/leak.py", "tests/test_leak.py", "third_party/vendored/leak.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LEAK, encoding="utf-8")
    (tmp_path / "pkg" / "clean.py").write_text("x = 1\n", encoding="utf-8")
    return tmp_path


def sarif_errors(log: dict) -> list[str]:
    validator = jsonschema.Draft4Validator(SARIF_SCHEMA,
                                          format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(log)]


def test_sarif_on_stdout_is_valid_against_the_official_2_1_0_schema(project: Path) -> None:
    done = scan("pkg", "tests", "--output-format", "sarif", cwd=project)
    assert done.returncode == 1, done.stderr
    log = json.loads(done.stdout)  # nothing but the document on stdout
    assert sarif_errors(log) == []
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["name"] == "streamcheck" and driver["version"]
    assert all(r["help"]["markdown"] for r in driver["rules"])
    assert len(log["runs"][0]["results"]) == 4
    assert "finding(s)" not in done.stdout


def test_sarif_with_unreadable_files_stays_valid(project: Path) -> None:
    (project / "pkg" / "broken.py").write_bytes(b"def current_stream(:\n    pass\n")
    done = scan("pkg", "--sarif", "out.sarif", cwd=project)
    log = json.loads((project / "out.sarif").read_text())
    assert sarif_errors(log) == []
    notes = log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert done.returncode == 1 and any("broken.py" in json.dumps(n) for n in notes)


def test_sarif_validator_rejects_a_broken_log() -> None:
    """The check above can fail: a log missing required parts is refused by the schema."""
    assert sarif_errors({"version": "2.1.0", "runs": [{"tool": {}}]})


def test_json_on_stdout_matches_the_scan_schema(project: Path) -> None:
    done = scan("pkg", "--output-format", "json", cwd=project)
    document = json.loads(done.stdout)
    assert validate(document, "scan stdout") == SCAN_SCHEMA
    assert document["summary"]["findings"] == 2
    assert "finding(s) in" in done.stderr  # the summary still reaches a person, on stderr


def test_concise_is_one_editor_line_per_finding(project: Path) -> None:
    done = scan("pkg", "--output-format", "concise", cwd=project)
    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert lines[0].startswith("pkg/leak.py:17:1: SC102 ") and lines[1].startswith(
        "pkg/leak.py:20:1: SC101 ")
    assert lines[-1].startswith("2 finding(s)")


def test_github_annotations_escape_their_properties(tmp_path: Path) -> None:
    odd = tmp_path / "a,b:c%d"
    odd.mkdir()
    (odd / "leak.py").write_text(LEAK, encoding="utf-8")
    done = scan(str(odd.name), "--output-format", "github", cwd=tmp_path)
    annotations = [line for line in done.stdout.splitlines() if line.startswith("::")]
    assert len(annotations) == 2
    assert annotations[0].startswith("::warning file=a%2Cb%3Ac%25d/leak.py,line=17,col=1,"
                                     "title=SC102 patched-set-stream-global::")
    assert "\n" not in annotations[0]


def test_exit_zero_reports_but_passes(project: Path) -> None:
    done = scan("pkg", "--exit-zero", "--output-format", "concise", cwd=project)
    assert done.returncode == 0 and "SC101" in done.stdout


def test_exclude_from_the_command_line(project: Path) -> None:
    done = scan(".", "--exclude", "third_party,tests/*", "--output-format", "json", cwd=project)
    paths = {f["path"] for f in json.loads(done.stdout)["findings"]}
    assert paths == {"pkg/leak.py"}


def test_project_config_selects_excludes_and_ignores_per_file(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        "[tool.streamcheck]\nmode = 'record'\n\n"
        "[tool.streamcheck.scan]\n"
        "exclude = ['third_party']\n"
        "per-file-ignores = {'tests/*' = ['global-stream-cache']}\n", encoding="utf-8")
    want = {("pkg/leak.py", "SC101"), ("pkg/leak.py", "SC102"), ("tests/test_leak.py", "SC102")}
    done = scan(".", "--output-format", "json", cwd=project)
    found = {(f["path"], f["rule_id"]) for f in json.loads(done.stdout)["findings"]}
    assert found == want, found
    done = scan("..", "--output-format", "json", cwd=project / "pkg")  # found from below too
    found = {(f["path"].removeprefix("../"), f["rule_id"])
             for f in json.loads(done.stdout)["findings"]}
    assert found == want, found
    # --select replaces the configured rules; the per-file ignore still applies
    done = scan(".", "--select", "SC101", "--output-format", "json", cwd=project)
    found = {(f["path"], f["rule_id"]) for f in json.loads(done.stdout)["findings"]}
    assert found == {("pkg/leak.py", "SC101")}
    # the audit's settings read the same table without tripping over the scan sub-table
    assert AuditSettings.load({}, cwd=project).mode.value == "record"


@pytest.mark.parametrize("table,message", [
    ("[tool.streamcheck.scan]\nselct = ['SC1']\n", "unknown key(s) selct"),
    ("[tool.streamcheck.scan]\nignore = ['SC999']\n", "unknown rule 'SC999'"),
    ("[tool.streamcheck.scan]\nexclude = 3\n", "exclude: must be a list of strings"),
    ("[tool.streamcheck.scan]\nper-file-ignores = {'x' = ['nope']}\n", "per-file-ignores 'x'"),
])
def test_bad_config_is_a_usage_error_naming_the_file(project: Path, table: str,
                                                     message: str) -> None:
    (project / "pyproject.toml").write_text(table, encoding="utf-8")
    done = scan("pkg", cwd=project)
    assert done.returncode == 2
    assert message in done.stdout + done.stderr and "pyproject.toml" in done.stdout + done.stderr


def test_explicit_config_file(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = tmp_path_factory.mktemp("cfg") / "pyproject.toml"
    config.write_text("[tool.streamcheck.scan]\nselect = ['SC102']\n", encoding="utf-8")
    done = scan("pkg", "--config", str(config), "--output-format", "json", cwd=project)
    assert {f["rule_id"] for f in json.loads(done.stdout)["findings"]} == {"SC102"}
    missing = scan("pkg", "--config", "nope.toml", cwd=project)
    assert missing.returncode == 2 and "nope.toml: no such file" in missing.stdout
