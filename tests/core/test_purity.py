"""The core must stay pure: no I/O frameworks, no later layers."""

import subprocess
import sys
from pathlib import Path

import farthing.core

FORBIDDEN = [
    "asyncio", "httpx", "starlette", "fastapi", "sqlalchemy", "uvicorn", "socket",
    "farthing.store", "farthing.issuer", "farthing.vendor", "farthing.wallet", "farthing.cli",
]  # fmt: skip


def core_modules() -> list[str]:
    root = Path(farthing.core.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent.parent).with_suffix("")
        names.append(".".join(rel.parts).removesuffix(".__init__"))
    return names


def test_core_has_modules() -> None:
    assert "farthing.core.encoding" in core_modules()


def test_core_imports_no_io_framework() -> None:
    program = (
        "import sys, importlib\n"
        f"for name in {core_modules()!r}: importlib.import_module(name)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"farthing.core imported: {out}"
