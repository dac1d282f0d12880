"""The core must stay pure: no I/O frameworks, no later layers, no clock or RNG of its own."""

import ast
import subprocess
import sys
from pathlib import Path

import farthing.core

CORE = Path(farthing.core.__file__).parent

# Never loaded by importing the core, even indirectly.
FRAMEWORKS = [
    "asyncio", "httpx", "starlette", "fastapi", "sqlalchemy", "uvicorn", "psycopg",
    "farthing.store", "farthing.issuer", "farthing.paywall", "farthing.wallet", "farthing.cli",
]  # fmt: skip

# Never imported by core code itself (a library may use them internally, e.g. gmpy2 loads
# importlib.metadata, which loads socket; that is not I/O done by the core).
DIRECT = {"socket", "os", "subprocess", "threading", "asyncio", "random", "secrets", "io",
          "sqlite3", "pathlib", "shutil", "tempfile", "urllib", "http", "time"}  # fmt: skip
ALLOWED = {("clock.py", "time")}  # SystemClock, used only by adapters


def core_modules() -> list[str]:
    names = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent.parent).with_suffix("")
        names.append(".".join(rel.parts).removesuffix(".__init__"))
    return names


def direct_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_has_modules() -> None:
    assert "farthing.core.encoding" in core_modules()


def test_core_imports_no_io_framework() -> None:
    program = (
        "import sys, importlib\n"
        f"for name in {core_modules()!r}: importlib.import_module(name)\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"farthing.core imported: {out}"


def test_core_code_imports_no_io_module() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for name in direct_imports(path) & DIRECT:
            if (path.name, name) not in ALLOWED:
                offenders.append(f"{path.relative_to(CORE)} imports {name}")
    assert offenders == []


def test_direct_import_check_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import os.path\nfrom socket import socket\nfrom . import x\n")
    assert direct_imports(sample) == {"os", "socket"}


def test_reference_actors_import_only_the_core() -> None:
    """farthing.testing's reference actors are driven by the core's rules alone: importing
    them loads no service, store or I/O framework (they would drift with the services)."""
    program = (
        "import sys, importlib\n"
        "for name in ['farthing.testing', 'farthing.testing.hll', 'farthing.testing.payword',"
        " 'farthing.testing.szm']: importlib.import_module(name)\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"farthing.testing imported: {out}"
