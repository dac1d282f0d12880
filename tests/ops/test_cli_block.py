"""``farthing issuer cards block``: the dashboard's operation from the command line,
audited; a card that is not there is said in words, with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farthing.cli import app
from farthing.core.encoding import b64url_encode
from farthing.store import CardStatus, open_store


def test_an_operator_blocks_a_card_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, keys = tmp_path / "issuer.sqlite", tmp_path / "issuer.keys.json"
    monkeypatch.setenv("FARTHING_ISSUER_DB", str(db))
    monkeypatch.setenv("FARTHING_ISSUER_KEYS", str(keys))
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(app, ["issuer", *args])
        assert result.exit_code == 0, result.output
        return result.output

    ok("init", "--issuer-id", "news.example")
    ok("cards", "issue", "--count", "2", "--units", "10", "--out", str(tmp_path / "codes.txt"))
    with open_store(str(db)) as store, store.transaction(readonly=True) as tx:
        ids = [row.card_id for row in tx.szm.cards_page()]  # as the dashboard lists them
    assert len(ids) == 2
    card = b64url_encode(ids[0])
    assert "blocked" in ok("cards", "block", "--card", card)
    assert "not blocked: the card was not active" in ok("cards", "block", "--card", card)
    with open_store(str(db)) as store:
        rows = [store.szm_card(card_id) for card_id in ids]
        with store.transaction(readonly=True) as tx:
            audit = tx.admin.audit_entries(5)
    assert [r.status if r else None for r in rows] == [CardStatus.BLOCKED, CardStatus.ACTIVE]
    blocks = [a for a in audit if a.action == "szm.card.block"]
    assert len(blocks) == 1
    assert blocks[0].detail == {"card": card}
    assert blocks[0].actor.startswith("cli:")
    # A card that does not exist: words and a non-zero exit, no traceback.
    farthing = str(Path(sys.executable).parent / "farthing")
    done = subprocess.run(
        [farthing, "issuer", "cards", "block", "--card", "A" * 22],
        capture_output=True, text=True, check=False,
        env={"FARTHING_ISSUER_DB": str(db), "FARTHING_ISSUER_KEYS": str(keys), "PATH": ""},
    )  # fmt: skip
    assert done.returncode != 0
    assert "no such card" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
