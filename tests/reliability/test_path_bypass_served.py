"""The paywall cannot be bypassed through the path: real ``farthing vendor serve`` processes
over raw sockets (issue 11, sections 1 and 7).

Clients normalise paths (httpx drops ``/./``, browsers and curl fold ``..``); a raw socket
sends the request target byte for byte, as an attacker would. The world's issuer runs as a
real server too, so HLL is paid online. Three vendors: the world's ``"/articles/*" = "2000
EUR"`` with every method, the same with a cheap ``"/**" = "1000 EUR"`` after it, and the
starter config of ``farthing vendor init`` (only ``/**``) on the world's store.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farthing.cli import app as cli
from tests.reliability.pathforms import (
    ARTICLE,
    BYPASS_FORMS,
    METHODS,
    TRAILING,
    Answer,
    decoded,
    pay,
    raw_request,
    variants,
)
from tests.reliability.procs import Server, issuer_server, rss_kib, vendor_server
from tests.reliability.world import ARTICLES, World, build_world, challenge_ids
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("reliability-servers")
SECRET = ARTICLES["a.txt"].encode()


@dataclass
class Deployment:
    world: World
    issuer: Server
    folder: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("paths-served")
    target = str(folder / "farthing.sqlite")
    issuer = issuer_server(
        target, folder / "world" / "issuer.keys.json", workers=1, log_path=folder / "issuer.log"
    )
    world = build_world(folder / "world", target, issuer_url=issuer.base)
    with issuer:
        yield Deployment(world, issuer, folder)
    world.close()


def serve(config: Path, log: Path) -> contextlib.AbstractContextManager[str]:
    """``farthing vendor serve`` with ``config``, on a free loopback port."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(config.parent), "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    return command_server(command, port, env={}, log_path=log)


def config_with_prices(world: World, name: str, *lines: str) -> Path:
    text = world.config_path.read_text()
    old = '"/articles/*" = "2000 EUR"\n'
    path = world.config_path.with_name(name)
    path.write_text(text.replace(old, "".join(line + "\n" for line in lines)))
    return path


def assert_refused(answer: Answer, form: str) -> None:
    assert answer.status == 404, (form, answer.status, answer.body[:200])
    assert SECRET not in answer.body, form
    assert "www-authenticate" not in answer, form
    assert "payment-receipt" not in answer, form


def challenge(base: str, path: str, method: str) -> tuple[str, int]:
    offer = raw_request(base, "GET", path)
    assert offer.status == 402, (path, offer.status)
    return challenge_ids(offer.get_list("www-authenticate"))[method]


def test_every_variant_and_head_are_refused_and_charge_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    world = deployment.world
    with serve(world.config_path, tmp_path / "vendor.log") as base:
        for form in BYPASS_FORMS:
            assert_refused(raw_request(base, "GET", form), form)
            assert_refused(raw_request(base, "HEAD", form), form)
        for method in METHODS:
            cid, expires = challenge(base, ARTICLE, method)
            holder, header = pay(world, method, cid, expires, ARTICLE, units=2)
            auth = [("Authorization", header)]
            for form in BYPASS_FORMS:
                assert_refused(raw_request(base, "GET", form, auth), f"{method} {form}")
            head = raw_request(base, "HEAD", ARTICLE, auth)
            assert (head.status, head.body) == (402, b""), method
            assert head.get_list("www-authenticate"), method
            assert world.spent(holder) == 0, method
            assert raw_request(base, "GET", ARTICLE, auth).status == 200, method
            assert world.spent(holder) == 2, method


def test_a_variant_does_not_pay_a_cheaper_catch_all(deployment: Deployment, tmp_path: Path) -> None:
    world = deployment.world
    (world.folder / "goods" / "cheap.txt").write_text("a cheap page")
    config = config_with_prices(
        world, "cheap.toml", '"/articles/*" = "2000 EUR"', '"/**" = "1000 EUR"'
    )
    with serve(config, tmp_path / "vendor.log") as base:
        for method in METHODS:
            form = "//articles/a.txt"
            cid, expires = challenge(base, "/cheap.txt", method)
            holder, header = pay(world, method, cid, expires, decoded(form), units=1)
            assert_refused(raw_request(base, "GET", form, [("Authorization", header)]), method)
            assert world.spent(holder) == 0, method


def test_the_starter_config_of_vendor_init_is_not_open_to_the_trailing_slash(
    deployment: Deployment, tmp_path: Path
) -> None:
    world = deployment.world
    goods = world.folder / "goods"
    made = CliRunner().invoke(
        cli,
        [
            "vendor",
            "init",
            str(goods),
            "--issuer-keys",
            str(world.key_file),
            "--issuer-db",
            world.target,
        ],
    )
    assert made.exit_code == 0, made.output
    config = goods / ".farthing" / "vendor.toml"
    starter = config.read_text()
    assert '"/**" = "1000 EUR"' in starter
    try:
        with serve(config, tmp_path / "vendor.log") as base:
            for form in [TRAILING, *BYPASS_FORMS]:
                assert_refused(raw_request(base, "GET", form), form)
            for method in ("szm:chain", "szm:prbg"):
                cid, expires = challenge(base, ARTICLE, method)
                holder, header = pay(world, method, cid, expires, ARTICLE, units=1)
                auth = [("Authorization", header)]
                for form in [TRAILING, *BYPASS_FORMS]:
                    assert_refused(raw_request(base, "GET", form, auth), f"{method} {form}")
                assert world.spent(holder) == 0
                assert raw_request(base, "GET", ARTICLE, auth).status == 200
                assert world.spent(holder) == 1
    finally:
        config.unlink()


def test_path_variants_do_not_grow_the_vendor(deployment: Deployment, tmp_path: Path) -> None:
    """Issue 11, section 7: 1,000 unpaid requests for variants of one 200 KiB file added
    ~66 MB to a vendor worker's file cache."""
    world = deployment.world
    (world.folder / "goods" / "articles" / "big.bin").write_bytes(b"b" * 200 * 1024)
    with vendor_server(world.config_path, workers=1, log_path=tmp_path / "vendor.log") as server:
        (pid,) = server.worker_pids()
        assert raw_request(server.base, "GET", "/articles/big.bin").status == 402
        before = rss_kib(pid)
        statuses: dict[int, int] = {}
        for form in variants("big.bin", 1000):
            status = raw_request(server.base, "GET", form).status
            statuses[status] = statuses.get(status, 0) + 1
        grown = rss_kib(pid) - before
    assert statuses == {404: 1000}
    assert grown < 16 * 1024, f"the vendor grew by {grown} KiB"
