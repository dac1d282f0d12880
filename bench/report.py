"""Writing benchmark sections into docs/benchmarks.md, each between its own markers."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every table and plot here is written by `make bench` (sections by `python -m bench.<name>`);
nothing is typed by hand. These machines are noisy: each figure is a median of several runs,
and what matters most are the ratios measured in the same run. Speed goals are checked here,
never in unit tests.
"""


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured {now} on {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} ({platform.machine()})."
    )


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of docs/benchmarks.md."""
    text = DOC.read_text() if DOC.exists() else HEADER
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    section = f"{begin}\n## {title}\n\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + section + "\n")
    )
    DOC.write_text(text)
