"""`farthing vendor`: sell the files of a folder behind HTTP 402, and deposit the takings."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from farthing.cli._common import console, fail, printable_target
from farthing.cli._serve import BodyTimeout, HeaderTimeout, MaxConnections, limits
from farthing.core.errors import FarthingError
from farthing.http.issuer_client import IssuerClient
from farthing.paywall.config import VendorConfig
from farthing.paywall.deposits import Depositor, FlushReport

app = typer.Typer(
    help="The vendor: a paywall for a folder of information goods.\n\n"
    "Example: farthing vendor serve ./articles",
    no_args_is_help=True,
)

CONFIG_NAME = ".farthing/vendor.toml"
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help=f"Config file (default DIR/{CONFIG_NAME})")
]

_STARTER = """\
# farthing vendor config (docs/vendor.md); paths are relative to this file.
realm = {realm}   # the issuer's: its SZM cards carry it
database = {database}   # the issuer's database: the cards live there
content_dir = ".."
challenge_secret_file = "challenge.key"

[prices]   # route pattern = "<micro-units> <CURRENCY>"; first match wins
"/**" = "{price} {currency}"

[szm]      # SZM prepaid cards of the issuer whose database this vendor shares
keys = "{keys}"   # the vendor's own key file: SZM masters and BBS factors only
"""
VENDOR_KEYS_NAME = "vendor.keys.json"


def _config_path(directory: Path, config: Path | None) -> Path:
    path = config if config is not None else directory / CONFIG_NAME
    if not path.exists():
        raise fail(
            f"no vendor config at {path}",
            hint=f"create one with `farthing vendor init {directory} --issuer-keys FILE`",
        )
    return path


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="The folder of goods to sell")],
    issuer_keys: Annotated[
        Path, typer.Option(help="Key file from `farthing issuer init` (read, not kept)")
    ],
    issuer_db: Annotated[
        str,
        typer.Option(
            "--issuer-db",
            envvar="FARTHING_ISSUER_DB",
            help="The issuer's database (SQLite file or postgresql:// DSN): the vendor sells "
            "the cards issued into it",
        ),
    ] = "farthing-issuer.sqlite",
    price: Annotated[int, typer.Option(min=1, help="Default price in micro-units")] = 1000,
    currency: Annotated[str, typer.Option(help="The price's currency")] = "EUR",
) -> None:
    """Write a starter config and the vendor's own key file into DIR/.farthing/ (never
    served), from what the issuer has: its realm (SZM cards carry it, and wallets pay only a
    realm that matches), its database (where its cards are) and the SZM keys of its key file
    (nothing else of it). Then `farthing vendor check DIR`, and `farthing vendor serve DIR`.

    Example: farthing vendor init goods --issuer-keys farthing-issuer.keys.json
    --issuer-db farthing-issuer.sqlite
    """
    from farthing.issuer.config import load_issuer_keys, vendor_keys
    from farthing.keyfiles import write_vendor_key_file

    if not directory.is_dir():
        raise fail(f"{directory} is not a folder")
    target = directory / CONFIG_NAME
    if target.exists():
        raise fail(f"{target} exists already", hint="edit it, or remove it to start over")
    key_file = target.parent / VENDOR_KEYS_NAME
    try:
        keys = vendor_keys(load_issuer_keys(issuer_keys))
    except FarthingError as error:
        raise fail(error.message) from None
    database = _issuer_database(issuer_db)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    if key_file.exists():
        raise fail(f"{key_file} exists already", hint="remove it to make it again")
    write_vendor_key_file(key_file, keys)
    starter = _STARTER.format(
        realm=json.dumps(keys.realm),
        database=json.dumps(database),
        price=price,
        currency=currency,
        keys=VENDOR_KEYS_NAME,
    )
    # The database may be a DSN with a password: only the owner reads the config.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(starter)
    console.print(f"wrote [bold]{key_file}[/] (mode 0600: SZM keys only)")
    console.print(
        f"wrote [bold]{target}[/] (realm {keys.realm!r}, the issuer's database "
        f"{printable_target(database)}); edit the prices, then "
        f"`farthing vendor serve {directory}`"
    )


def _issuer_database(target: str) -> str:
    """The issuer's database as the vendor config names it (a SQLite file by its absolute
    path, the config being elsewhere), after checking that it is there and current."""
    from farthing.store import open_store

    database = target if target.startswith("postgresql") else str(Path(target).resolve())
    try:
        open_store(database, create=False).close()
    except FarthingError as error:
        raise fail(
            f"cannot use the issuer's database {printable_target(database)}: {error.message}",
            hint="give the issuer's --issuer-db (the --db of `farthing issuer init`)",
        ) from None
    except SQLAlchemyError:
        raise fail(
            f"cannot open the issuer's database {printable_target(database)}",
            hint="check that it runs and that the URL, user and password are right",
        ) from None
    return database


@app.command("check")
def check(
    directory: Annotated[Path, typer.Argument(help="The vendor's folder")],
    config: ConfigOpt = None,
) -> None:
    """Say in words what is wrong with a vendor config, before a reader finds out: a missing
    key file, a database that is not the issuer's, a realm no card carries, no card left
    to sell, an issuer that does not answer. Exit 1 if anything is wrong.

    Example: farthing vendor check goods
    """
    from farthing.paywall.config import load_vendor_config

    path = _config_path(directory, config)
    try:
        loaded = load_vendor_config(path)
    except FarthingError as error:
        raise fail(f"the config {path} cannot be used: {error.message}") from None
    problems = [
        *_content_problems(loaded),
        *_szm_problems(loaded, path),
        *_issuer_problems(loaded),
    ]
    for problem in problems:
        console.print(f"[bold red]problem:[/] {problem}")
    if problems:
        raise typer.Exit(1)
    methods = [m for m in ("szm", "hll", "payword") if getattr(loaded.settings, m) is not None]
    console.print(f"{path}: no problem found ({', '.join(methods)})")


def _content_problems(loaded: VendorConfig) -> list[str]:
    if not loaded.content_dir.is_dir():
        return [f"content_dir {loaded.content_dir} is not a folder: there is nothing to sell"]
    return []


def _szm_problems(loaded: VendorConfig, path: Path) -> list[str]:
    """The SZM cards this vendor sells are the issuer's: same realm, same database."""
    from farthing.core.clock import SystemClock
    from farthing.keyfiles import load_vendor_keys
    from farthing.store import open_store

    if loaded.settings.szm is None:
        return []
    problems = []
    key_file = _szm_key_file(path)
    if key_file is not None:
        realm = load_vendor_keys(key_file).realm
        if realm != loaded.settings.realm:
            problems.append(
                f"realm {loaded.settings.realm!r} is not the issuer's ({realm!r}, in {key_file}):"
                f" wallets will not pay here with its cards; set realm = {realm!r}"
            )
    shown = printable_target(loaded.database)
    try:
        with (
            open_store(loaded.database, create=False) as store,
            store.transaction(readonly=True) as tx,
        ):
            cards = tx.szm.active_card_count(SystemClock().now())
    except FarthingError as error:
        return [*problems, f"the database {shown} cannot be used: {error.message}"]
    except SQLAlchemyError:
        return [*problems, f"cannot open the database {shown}"]
    if cards == 0:
        problems.append(
            f"the database {shown} holds no SZM card that can pay: is it the issuer's? "
            "issue cards with `farthing issuer cards issue --db` the same database"
        )
    return problems


def _szm_key_file(path: Path) -> Path | None:
    import tomllib

    table = tomllib.loads(path.read_text(encoding="utf-8")).get("szm", {})
    name = table.get("keys") if isinstance(table, dict) else None
    if not isinstance(name, str):
        return None
    key_file = Path(name).expanduser()
    return key_file if key_file.is_absolute() else path.resolve().parent / key_file


def _issuer_problems(loaded: VendorConfig) -> list[str]:
    """Every issuer URL the config names must answer (HLL verification, deposits)."""
    urls = {url for url in (loaded.issuer_url,) if url}
    if loaded.deposits is not None:
        urls.add(loaded.deposits.issuer_url)
    problems = []
    for url in sorted(urls):
        try:
            httpx.get(url.rstrip("/") + "/v1/payword/broker", timeout=5.0)
        except httpx.HTTPError as error:
            problems.append(f"the issuer at {url} does not answer ({type(error).__name__})")
    return problems


@app.command("keys")
def keys_command(
    issuer_keys: Annotated[
        Path, typer.Option(help="Key file from `farthing issuer init` (read, not kept)")
    ],
    out: Annotated[Path, typer.Option(help="The vendor key file to write (mode 0600)")] = Path(
        VENDOR_KEYS_NAME
    ),
) -> None:
    """Write a vendor key file (SZM keys only) for a vendor built in code (create_vendor_app)."""
    from farthing.issuer.config import load_issuer_keys, vendor_keys
    from farthing.keyfiles import write_vendor_key_file

    try:
        keys = vendor_keys(load_issuer_keys(issuer_keys))
        write_vendor_key_file(out, keys)
    except FarthingError as error:
        raise fail(error.message) from None
    console.print(f"wrote [bold]{out}[/] (mode 0600: SZM keys only, realm {keys.realm!r})")


@app.command("serve")
def serve(
    directory: Annotated[Path, typer.Argument(help="The folder of goods to sell")],
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes")] = 1,
    header_timeout: HeaderTimeout = None,
    body_timeout: BodyTimeout = None,
    max_connections: MaxConnections = None,
) -> None:
    """Serve DIR's files, each paid as the config's price table says."""
    from farthing.paywall.config import CONFIG_ENV, load_vendor_config
    from farthing.serving import serve_factory

    path = _config_path(directory, config)
    try:
        loaded = load_vendor_config(path)  # fail here, in the foreground, not in a worker
    except FarthingError as error:
        raise fail(error.message) from None
    os.environ[CONFIG_ENV] = str(path.resolve())
    methods = [m for m in ("szm", "hll", "payword") if getattr(loaded.settings, m) is not None]
    folder = os.path.normpath(loaded.content_dir)
    console.print(f"selling {folder} at http://{host}:{port} ({', '.join(methods)})")
    serve_factory(
        "farthing.paywall.serve:app_from_env",
        host=host,
        port=port,
        workers=workers,
        **limits(header_timeout, body_timeout, max_connections),
    )


async def _flush_and_close(depositor: Depositor, client: IssuerClient) -> FlushReport:
    async with client:
        return await depositor.flush_and_reconcile()


@app.command("deposit")
def deposit(
    directory: Annotated[Path, typer.Argument(help="The vendor's folder")],
    config: ConfigOpt = None,
) -> None:
    """Claim delivered HLL and PayWord payments from the issuer, now."""
    from farthing.paywall.config import load_vendor_config
    from farthing.paywall.serve import depositor_for

    try:
        loaded = load_vendor_config(_config_path(directory, config))
        deposits = depositor_for(loaded)
        if deposits is None:
            raise fail(
                "this vendor has no issuer to deposit at",
                hint="set issuer_url in [hll], or issuer_url and merchant_key_file in [payword]",
            )
        depositor, client = deposits
        staged = depositor.stage()
        report = asyncio.run(_flush_and_close(depositor, client))
    except FarthingError as error:
        raise fail(error.message) from None
    table = Table(title="deposits")
    for column in ("staged", "sent", "retry later", "failed", "reconciled"):
        table.add_column(column, justify="right")
    counts = (staged, report.sent, report.retry_later, report.failed, report.reconciled)
    table.add_row(*map(str, counts))
    console.print(table)
    if report.failed:
        raise typer.Exit(1)


@app.command("stats")
def stats(
    directory: Annotated[Path, typer.Argument(help="The vendor's folder.")],
    config: ConfigOpt = None,
) -> None:
    """Sales by method and path, from the vendor's sales log (sales_log in the config)."""
    from farthing.cli._common import money
    from farthing.paywall.config import load_vendor_config
    from farthing.paywall.sales import SalesLog, summarise

    try:
        loaded = load_vendor_config(_config_path(directory, config))
    except FarthingError as error:
        raise fail(error.message) from None
    if loaded.sales_log is None:
        raise fail("this vendor keeps no sales log", hint='set sales_log = "sales.jsonl"')
    rows = summarise(SalesLog(loaded.sales_log).lines())
    if not rows:
        console.print(f"No sales yet (the log is {loaded.sales_log}).")
        return
    table = Table(title="Sales by method and path")
    for column in ("method", "path", "sold", "units", "takings"):
        table.add_column(
            column, justify="right" if column in ("sold", "units", "takings") else "left"
        )
    for row in rows:
        table.add_row(
            row.method, row.path, str(row.count), str(row.units), money(row.micros, row.currency)
        )
    table.add_section()
    by_method: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        count, micros = by_method.get((row.method, row.currency), (0, 0))
        by_method[(row.method, row.currency)] = (count + row.count, micros + row.micros)
    for (method, currency), (count, micros) in sorted(by_method.items()):
        table.add_row(method, "all paths", str(count), "", money(micros, currency))
    console.print(table)
