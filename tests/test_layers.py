"""The layer rules of src/farthing, checked on every import statement (function-local too).

::

    cli                                   the commands people type
    demo  mpp                             the demo world; the methods as pympp's (farthing[mpp])
    paywall  issuer  wallet  serving      the parties, and the server runner
    observe                               health, metrics, access log (over the store)
    store  http  keyfiles  logs  guard    persistence, the wire, key files, infrastructure
    core                                  pure rules (its own purity: tests/core/test_purity.py)

A module may import its own component and any component of a lower layer, never one of its
own layer or above: so the paywall and the wallet do not import each other, and neither
imports the issuer (what the paywall and the issuer share, the issuer's HTTP client and
request tags, lives in ``farthing.http``; the vendor key file in ``farthing.keyfiles``).
``farthing.testing`` (test doubles) uses the core only and only the demo ships with it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import farthing

SRC = Path(farthing.__file__).parent

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"", "core"}),  # "" is the root package (``farthing.__version__``)
    frozenset({"store", "http", "keyfiles", "logs", "guard", "testing"}),
    frozenset({"observe"}),  # health, metrics, access log: over the store and the wire
    frozenset({"paywall", "issuer", "wallet", "serving"}),
    frozenset({"demo", "mpp"}),
    frozenset({"cli"}),
)
CORE_ONLY = {"testing"}  # may import the core and nothing else of farthing
ONLY_FOR = {"testing": {"demo"}}  # importable from these components only


@dataclass(frozen=True)
class Import:
    where: str  # file:line, from the directory above the package
    target: str  # the full module name, e.g. "farthing.issuer.client"

    def __str__(self) -> str:
        return f"{self.where} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def component(module: str) -> str:
    """``farthing.paywall.methods.hll`` -> ``paywall``; ``farthing`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if name in members:
            return index
    raise AssertionError(f"farthing.{name} is in no layer: place it in tests/test_layers.py")


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every farthing module ``path`` imports, at any depth of the file (functions included)."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from farthing import testing`` names a module; ``import __version__`` does not
            targets = [
                f"{base}.{alias.name}" if base == root.name else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == root.name or target.startswith(root.name + "."):
                yield Import(f"{path.relative_to(root.parent)}:{node.lineno}", target)


def why_forbidden(importer: str, imported: str) -> str | None:
    """None if ``importer`` may import ``imported`` (both component names), else the rule."""
    if importer == imported or imported in ("", "core"):
        return None
    if importer in CORE_ONLY:
        return f"farthing.{importer} may import only farthing.core"
    if imported in ONLY_FOR and importer not in ONLY_FOR[imported]:
        allowed = ", ".join(sorted(ONLY_FOR[imported]))
        return f"only {allowed} may import farthing.{imported} (test doubles)"
    low, high = layer_of(imported), layer_of(importer)
    if low < high:
        return None
    where = "the same layer" if low == high else "a higher layer"
    return f"{importer} may not import {imported}: {where} (see tests/test_layers.py)"


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        importer = component(module_name(path, root))
        for imp in imports_of(path, root):
            imported = component(imp.target)
            if imported not in {name for layer in LAYERS for name in layer}:
                imported = ""  # a name of the root package (__version__), not a module
            reason = why_forbidden(importer, imported)
            if reason is not None:
                found.append(f"{imp}: {reason}")
    return found


def test_every_component_has_a_layer() -> None:
    names = {component(module_name(path, SRC)) for path in SRC.rglob("*.py")}
    for name in names:
        layer_of(name)


def test_no_import_breaks_a_layer_rule() -> None:
    assert violations(SRC) == []


def test_the_paywall_and_the_issuer_share_only_lower_modules() -> None:
    """The two former imports of the issuer package by the paywall stay gone."""
    offending = [
        str(imp)
        for package in ("paywall", "wallet")
        for path in sorted((SRC / package).rglob("*.py"))
        for imp in imports_of(path, SRC)
        if component(imp.target) in {"issuer", "paywall", "wallet"} - {package}
    ]
    assert offending == []


def test_the_check_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    root = tmp_path / "farthing"
    for package in ("core", "paywall", "issuer", "wallet"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("__version__ = '0'\n")
    (root / "paywall" / "serve.py").write_text(
        "from farthing import __version__\n"
        "from farthing.core import x\n"
        "def bank():\n"
        "    from farthing.issuer.client import IssuerClient\n"
        "    return IssuerClient\n"
    )
    (root / "wallet" / "pay.py").write_text("from ..paywall import serve\n")
    (root / "core" / "pure.py").write_text("import farthing.wallet.pay\n")
    assert violations(root) == [
        "farthing/core/pure.py:1 imports farthing.wallet.pay: "
        "core may not import wallet: a higher layer (see tests/test_layers.py)",
        "farthing/paywall/serve.py:4 imports farthing.issuer.client: "
        "paywall may not import issuer: the same layer (see tests/test_layers.py)",
        "farthing/wallet/pay.py:1 imports farthing.paywall: "
        "wallet may not import paywall: the same layer (see tests/test_layers.py)",
    ]
