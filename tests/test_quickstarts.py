"""The README's quickstarts run exactly as printed, from an empty folder, and buy an article.

Every ``sh`` block of the README's "Quickstarts" section is run, as printed, by ``bash -e``
in a new empty folder (``HOME`` there too, the virtual environment's ``bin`` first on
``PATH``); every ``python`` block is saved under the name the text before it gives
("Save as `shop.py`"), as a reader would. The only change: the PostgreSQL quickstart's
``export FARTHING_ISSUER_DB=...`` line ("yours") gets this test's throwaway server.

The servers the quickstarts start (``... &``) listen on the printed ports 8400 and 8000;
the tests take a lock so that no two run at once, and stop every process a quickstart
started (its process group) when they end. The section's text is pinned by its hash: a
change of the README fails here until this test is run and updated with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Page
from psycopg import sql

from tests.pgserver import PgServer
from tests.servers import die_with_parent

pytestmark = pytest.mark.xdist_group("quickstarts")

README = Path(__file__).parent.parent / "README.md"
# sha256 of the "## Quickstarts" section; update it only with a run of these tests.
SECTION_SHA256 = "13c2f24dc36e6beece2dc70933b73de1d0d4f34f3b73c53d13b49f4d493e395c"
TITLES = (
    "a publisher sells a folder of files",
    "a publisher adds a price to a FastAPI route",
    "a reader",
    "a reader in a browser",
    "a shop takes HLL smart cards and PayWord",
    "an operator runs the issuer on PostgreSQL",
)
PORTS = (8400, 8000)
ARTICLE = "Hello, paying reader."
PASSWORD = "s3cret-pg-password"
_LOCK = Path("/tmp/farthing-quickstart-ports.lock")


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    save_as: str | None = None


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quickstarts\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def quickstarts() -> dict[str, list[Block]]:
    """Each quickstart's code blocks, in order."""
    parts = re.split(r"^### Quickstart: (.+)$", section(), flags=re.MULTILINE)
    found = {}
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        blocks = []
        for match in re.finditer(r"```(\w+)\n(.*?)```", body, re.DOTALL):
            before = body[: match.start()].rstrip().splitlines() or [""]
            named = re.search(r"Save as `([\w.]+)`", before[-1])
            blocks.append(Block(match.group(1), match.group(2), named and named.group(1)))
        found[title.strip()] = blocks
    return found


def test_the_quickstarts_are_the_ones_this_test_runs() -> None:
    """A changed or added quickstart fails here until it is run by this test."""
    found = quickstarts()
    assert tuple(found) == TITLES
    assert {block.language for blocks in found.values() for block in blocks} == {"sh", "python"}
    assert hashlib.sha256(section().encode()).hexdigest() == SECTION_SHA256


@contextlib.contextmanager
def printed_ports() -> Iterator[None]:
    """The ports the README prints, for one quickstart at a time (in every worktree)."""
    with _LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        deadline = time.monotonic() + 60
        while any(_busy(port) for port in PORTS):
            if time.monotonic() > deadline:
                pytest.fail(f"a port the README prints ({PORTS}) is taken by another program")
            time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _busy(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Folder:
    """An empty folder a person works in, and the shells run there (stopped at the end)."""

    path: Path
    sessions: list[subprocess.Popen[bytes]]

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        keep = {k: v for k, v in os.environ.items() if not k.startswith("FARTHING_")}
        return {**keep, "HOME": str(self.path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(self, blocks: list[Block], *, replace: tuple[str, str] | None = None) -> str:
        """Save the python blocks, run the sh blocks as one ``bash -e`` script; its output."""
        script = []
        for block in blocks:
            if block.language == "python":
                assert block.save_as, "a python block must say what to save it as"
                (self.path / block.save_as).write_text(block.text, encoding="utf-8")
            else:
                script.append(block.text)
        text = "\n".join(script)
        if replace is not None:
            assert replace[0] in text
            text = text.replace(*replace)
        # A file, not a pipe: the servers started with "&" keep their output open.
        log = self.path.parent / f"session-{len(self.sessions)}.log"
        with log.open("w") as sink:
            process = subprocess.Popen(
                ["bash", "-e", "-c", text],
                cwd=self.path,
                env=self.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            self.sessions.append(process)
            process.wait(timeout=240)
        output = log.read_text(encoding="utf-8", errors="replace")
        assert process.returncode == 0, output[-4000:]
        return output

    def stop(self) -> None:
        for process in self.sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_busy(port) for port in PORTS) and time.monotonic() < deadline:
            time.sleep(0.2)
        for process in self.sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Folder]:
    with printed_ports():
        made = Folder(tmp_path / "empty", [])
        made.path.mkdir()
        try:
            yield made
        finally:
            made.stop()


def test_the_folder_quickstart_sells_an_issued_card_s_article(folder: Folder) -> None:
    output = folder.run(quickstarts()["a publisher sells a folder of files"])
    assert ARTICLE in output  # `wallet get` printed the article: it was paid for
    assert "no problem found" in output  # vendor check


def test_the_fastapi_quickstart_sells_with_the_card_s_qr_code(folder: Folder) -> None:
    output = folder.run(quickstarts()["a publisher adds a price to a FastAPI route"])
    assert '"slug":"hello-world"' in output.replace(" ", "")


def test_the_reader_quickstart_pays_from_the_cli_and_from_httpx(folder: Folder) -> None:
    found = quickstarts()
    output = folder.run([*found["a publisher sells a folder of files"], *found["a reader"]])
    assert (folder.path / "hello.txt").read_text(encoding="utf-8").strip() == ARTICLE
    assert output.count(ARTICLE) == 2  # the first quickstart's purchase, then read.py's
    assert "news" in output  # the card's label in the history


@pytest.mark.browser
def test_the_browser_quickstart_buys_with_a_typed_code(folder: Folder, page: Page) -> None:
    found = quickstarts()
    assert found["a reader in a browser"] == []  # steps in the browser, no commands
    folder.run(found["a publisher sells a folder of files"])
    code = (folder.path / "codes.txt").read_text(encoding="utf-8").splitlines()[1]
    url = "http://127.0.0.1:8000/articles/hello.txt"

    answer = page.goto(url)  # step 1
    assert answer is not None
    assert answer.status == 402
    assert "This article costs 0.2 cent" in page.inner_text("h1")
    page.fill("#card-code", code)  # step 2
    page.get_by_role("button", name="Use this card").click()
    page.wait_for_selector("#budget:not([hidden])")
    assert "100 units left on your card" in page.inner_text("#balance")
    with page.expect_navigation():
        page.get_by_role("button", name="Save and read").click()
    assert page.inner_text("body").strip() == ARTICLE

    page.reload()  # step 3: opened again, at no charge
    assert page.inner_text("body").strip() == ARTICLE
    page.goto("http://127.0.0.1:8000/_farthing/wallet.html")  # step 4
    page.wait_for_selector("#bought li")
    assert "98 units left on your card" in page.inner_text("#card-balance")
    assert page.input_value("#card-code") == code


def test_the_smart_card_quickstart_pays_with_an_hll_card_and_payword(folder: Folder) -> None:
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (softhsm2-util not on PATH); run `make sysdeps`")
    output = folder.run(quickstarts()["a shop takes HLL smart cards and PayWord"])
    assert output.count(ARTICLE) == 2  # `wallet get` printed the article twice: both paid
    assert "Paid 0.002 EUR with hll:mac" in output
    assert "Paid 0.002 EUR with payword" in output


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A database owned by a role with a password (to see it is never printed)."""
    name = f"quickstart_{os.getpid()}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute("DROP ROLE IF EXISTS farthing_qs")
        conn.execute(
            sql.SQL("CREATE ROLE farthing_qs LOGIN PASSWORD {}").format(sql.Literal(PASSWORD))
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER farthing_qs").format(sql.Identifier(name)))
    return f"postgresql://farthing_qs:{PASSWORD}@127.0.0.1:{pg_server.port}/{name}"


def test_the_postgresql_quickstart_issues_cards_a_shop_sells(folder: Folder, pg_dsn: str) -> None:
    blocks = quickstarts()["an operator runs the issuer on PostgreSQL"]
    printed = "postgresql://farthing:secret@127.0.0.1:5432/farthing"
    output = folder.run(blocks, replace=(printed, pg_dsn))
    assert PASSWORD not in output
    assert "balanced" in output.lower()
    # A shop set up as the closing sentence says, selling the first card issued above.
    bought = folder.run([Block("sh", f"""
export FARTHING_ISSUER_DB={pg_dsn}
mkdir -p shop/articles && echo "{ARTICLE}" > shop/articles/hello.txt
farthing vendor init shop --issuer-keys farthing-issuer.keys.json
farthing vendor serve shop &
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null http://127.0.0.1:8000/healthz
export FARTHING_WALLET=$PWD/wallet.sqlite FARTHING_WALLET_PASSPHRASE=pw
farthing wallet init
farthing wallet add-card szm "$(head -1 cards.txt)" --issuer http://127.0.0.1:8400 \\
    --site http://127.0.0.1:8000
farthing wallet get http://127.0.0.1:8000/articles/hello.txt
""")])  # fmt: skip
    assert ARTICLE in bought
    assert PASSWORD not in bought
