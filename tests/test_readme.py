"""The README's publisher quickstart runs as printed, and its paywall does what it says."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from farthing.cli import app
from farthing.http.payment_auth import parse_challenges
from farthing.issuer.config import generate_issuer_keys, write_key_file

README = Path(__file__).parent.parent / "README.md"


def publisher_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart: a publisher", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the publisher quickstart has no Python block"
    return match.group(1)


@pytest.mark.anyio
async def test_the_publisher_quickstart_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key_file(
        tmp_path / "issuer.keys.json",
        generate_issuer_keys(os.urandom, broker_id="b", bbs_bits=2048),
    )
    made = CliRunner().invoke(
        app,
        ["vendor", "keys", "--issuer-keys", str(tmp_path / "issuer.keys.json"),
         "--out", str(tmp_path / "vendor.keys.json")],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    (tmp_path / "challenge.key").write_text(os.urandom(32).hex())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(publisher_snippet(), str(README), "exec"), namespace)  # noqa: S102 - our README

    transport = httpx.ASGITransport(app=namespace["app"])  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://news.test") as client:
        sold = await client.get("/articles/hello-world")
        unknown = await client.get("/articles/no-such-slug")
    assert sold.status_code == 402
    methods = {c.method for c in parse_challenges(sold.headers.get_list("www-authenticate"))}
    assert methods == {"szmchain", "szmprbg"}
    assert unknown.status_code == 404
    assert "www-authenticate" not in unknown.headers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
