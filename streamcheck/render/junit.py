"""JUnit XML for CI systems: one testcase per repro variant."""

from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any


def junit_xml(results: Iterable[dict[str, Any]], wall_seconds: float | None = None) -> str:
    """One ``testsuite``: counts, the wall-clock time of the run (variants overlap), when and
    where it ran; each failing case carries its hang stacks and rank stderr in
    ``system-err``."""
    results = list(results)
    total = wall_seconds if wall_seconds is not None else sum(r["seconds"] for r in results)
    suite = ET.Element(
        "testsuite", name="streamcheck", tests=str(len(results)),
        timestamp=datetime.datetime.now().isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
        failures=str(sum(r["verdict"] == "fail" for r in results)),
        errors=str(sum(r["verdict"] == "cancelled" for r in results)),
        skipped=str(sum(r["verdict"] == "skip" for r in results)),
        time=f"{total:.2f}",
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
        if r["verdict"] == "fail":
            parts = [f"== hung process {pid} ==\n{text}" for pid, text in
                     r.get("dumps", {}).items()]
            parts += [f"== {name} ==\n{text}" for name, text in r.get("stderr", {}).items()]
            if parts:
                ET.SubElement(case, "system-err").text = "\n".join(parts)
    return ET.tostring(suite, encoding="unicode")

