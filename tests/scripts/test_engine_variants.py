"""``scripts/engine_variants.py``: a differing output is suspect only where no control run
(no connector KV loaded) gave the same output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "engine_variants.py"
spec = importlib.util.spec_from_file_location("engine_variants", SCRIPT)
engine_variants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(engine_variants)

REF = {"tokens": {"0": [[1, 2, 3, 4]] * 3, "1": [[5, 6, 7, 8]] * 3}}
ENGINE_VARIANT = [1, 2, 9, 9]  # what the engine also answers for prompt 0 on its own


def write(path: Path, result: dict) -> Path:
    path.write_text(json.dumps({"result": result, "problems": []}))
    return path


@pytest.fixture
def files(tmp_path):
    control = {"tokens": {"0": [[1, 2, 3, 4], ENGINE_VARIANT, [1, 2, 3, 4]],
                          "1": [[5, 6, 7, 8]] * 3}}
    soak_control = {"answers": 600, "variants": [[1, [5, 6, 0, 0], 4]]}
    run = {"tokens": {"0": [ENGINE_VARIANT, [1, 2, 3, 4], [1, 7, 7, 7]],
                      "1": [[5, 6, 7, 8]] * 3}}
    soak = {"answers": 300, "variants": [[1, [5, 6, 0, 0], 2], [0, [1, 2, 3, 0], 1]]}
    return {name: write(tmp_path / f"{name}.json", result) for name, result in
            (("ref", REF), ("control", control), ("soak_control", soak_control),
             ("run", run), ("soak", soak))}


def test_only_outputs_no_control_gave_are_suspect(files):
    runs = {"run": engine_variants.load_result(files["run"]),
            "soak": engine_variants.load_result(files["soak"])}
    controls = {name: engine_variants.load_result(files[name])
                for name in ("control", "soak_control")}
    rows = engine_variants.classify(runs, controls, REF)
    found = {(r["run"], r["prompt"], r["pass"], r["first_difference"]): r["also_given_by"]
             for r in rows}
    assert found == {("run", 0, 0, 2): ["control"], ("run", 0, 2, 1): [],
                     ("soak", 1, -1, 2): ["soak_control"], ("soak", 0, -1, 3): []}
    assert [r["count"] for r in rows if r["run"] == "soak"] == [2, 1]


def test_the_command_exits_1_on_a_suspect_output_and_0_without(files, capsys):
    args = [str(files["ref"]), "--control", str(files["control"]),
            "--control", str(files["soak_control"])]
    assert engine_variants.main([*args, str(files["run"])]) == 1
    out = capsys.readouterr().out
    assert "prompt 0 (pass 2), parts at token 1: NO CONTROL: suspect" in out
    assert out.rstrip().endswith("2 differing outputs, 1 that no control gave (2 controls)")
    assert engine_variants.main([*args, str(files["control"])]) == 0  # its own variants


def test_unreadable_or_wrong_inputs_are_refused_plainly(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        engine_variants.main([str(files["ref"]), str(tmp_path / "missing.json")])
    assert stop.value.code == 2 and "cannot read a result" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        engine_variants.main([str(files["soak"]), str(files["run"])])
    assert "holds no tokens" in capsys.readouterr().err


def test_two_runs_of_one_case_are_two_controls(files, tmp_path, capsys):
    """Two controls from two runs of the same case (same file name, other directories) both
    count: an output the second gave is not suspect because the first did not."""
    first, second = tmp_path / "a" / "engine", tmp_path / "b" / "engine"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    write(first / "soak_serve_none.json", {"answers": 9, "variants": []})
    write(second / "soak_serve_none.json", {"answers": 9, "variants": [[0, [1, 2, 3, 0], 1]]})
    code = engine_variants.main([str(files["ref"]), str(files["soak"]),
                                 "--control", str(first / "soak_serve_none.json"),
                                 "--control", str(second / "soak_serve_none.json")])
    out = capsys.readouterr().out
    assert "(2 controls)" in out
    assert f"prompt 0 (1 x), parts at token 3: {second / 'soak_serve_none.json'}" in out
    assert code == 1  # prompt 1's [5, 6, 0, 0]: neither control gave it
