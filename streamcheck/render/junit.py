"""JUnit XML for CI systems: one testcase per repro variant."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def junit_xml(results: Iterable[dict[str, Any]]) -> str:
    results = list(results)
    suite = ET.Element(
        "testsuite", name="streamcheck", tests=str(len(results)),
        failures=str(sum(r["verdict"] == "fail" for r in results)),
        errors=str(sum(r["verdict"] == "cancelled" for r in results)),
        skipped=str(sum(r["verdict"] == "skip" for r in results)),
        time=f"{sum(r['seconds'] for r in results):.2f}",
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"{r['repro']}.{r['backend']}",
                             name=r["variant"], time=f"{r['seconds']:.2f}")
        if r["verdict"] == "fail":
            failure = ET.SubElement(case, "failure", message=r["reason"])
            failure.text = f"expected: {r['expected']}\nobserved: {r['observed']}"
        elif r["verdict"] == "skip":
            ET.SubElement(case, "skipped", message=r["reason"])
        elif r["verdict"] == "cancelled":
            ET.SubElement(case, "error", message=r["reason"])
        out = ET.SubElement(case, "system-out")
        out.text = r["observed"]
    return ET.tostring(suite, encoding="unicode")


def write_junit(results: Iterable[dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text(junit_xml(results))
