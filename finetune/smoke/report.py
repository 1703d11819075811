"""The smoke report: one pass/fail line per check per stage, and the same as JUnit XML for CI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

Status = Literal["pass", "fail", "skip"]
_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


@dataclass(frozen=True)
class Check:
    stage: str
    name: str
    status: Status
    detail: str = ""


@dataclass
class SmokeReport:
    recipe: str
    checks: list[Check] = field(default_factory=list)
    reductions: list[str] = field(default_factory=list)  # what was changed to fit this machine
    models: list[str] = field(default_factory=list)  # one line per shrunk model
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def render(self) -> str:
        lines = [f"ft smoke {self.recipe}"]
        lines += [f"  model: {m}" for m in self.models]
        lines += [f"  reduced: {r}" for r in self.reductions]
        width = max((len(c.stage) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"{_MARK[c.status]}  {c.stage:<{width}}  {c.name}" + (f": {c.detail}" if c.detail else ""))
        failed = len(self.failed())
        verdict = "all checks passed" if self.ok else f"{failed} check{'s' * (failed != 1)} failed"
        lines.append(f"{verdict} ({len(self.checks)} checks, {self.seconds:.1f}s)")
        return "\n".join(lines)

    def write_junit(self, path: str | Path) -> Path:
        """One <testcase> per check per stage (classname: the stage), failures with their detail."""
        suite = ET.Element("testsuite", name=f"ft smoke {self.recipe}", tests=str(len(self.checks)),
                           failures=str(len(self.failed())),
                           skipped=str(sum(c.status == "skip" for c in self.checks)), time=f"{self.seconds:.2f}")
        for c in self.checks:
            case = ET.SubElement(suite, "testcase", classname=f"{self.recipe}.{c.stage}", name=c.name)
            if c.status == "fail":
                ET.SubElement(case, "failure", message=c.detail.splitlines()[0] if c.detail else c.name).text = c.detail
            elif c.status == "skip":
                ET.SubElement(case, "skipped", message=c.detail)
            else:
                ET.SubElement(case, "system-out").text = c.detail
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
        return out
