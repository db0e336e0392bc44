"""Print a policy test run: one line per case, the differences under a
failed case, a summary; and a JUnit XML file for CI."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

from .runner import ERROR, FAIL, CaseResult, RunReport

__all__ = ["case_lines", "write_junit"]

INDENT = "      "


def case_lines(result: CaseResult) -> list[str]:
    """``PASS  name``, or ``FAIL  name`` with its differences indented below."""
    return [f"{result.status:<5} {result.name}", *(INDENT + line for line in result.details)]


def write_junit(report: RunReport, path: str | Path) -> None:
    """A JUnit XML report: one testsuite, one testcase per case."""
    suite = ElementTree.Element("testsuite", {
        "name": f"hessra-pg policy test {report.source}",
        "tests": str(len(report.results)),
        "failures": str(report.count(FAIL)),
        "errors": str(report.count(ERROR)),
        "skipped": "0",
    })
    classname = Path(report.source).stem or "cases"
    for result in report.results:
        case = ElementTree.SubElement(suite, "testcase", {"classname": classname, "name": result.name})
        if not result.passed:
            tag = "failure" if result.status == FAIL else "error"
            problem = ElementTree.SubElement(case, tag, {"message": result.details[0] if result.details else tag})
            problem.text = "\n".join(result.details)
    ElementTree.ElementTree(suite).write(str(path), encoding="utf-8", xml_declaration=True)
