"""`farthing vendor`: sell the files of a folder behind HTTP 402, and deposit the takings."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from farthing.cli._common import console, fail
from farthing.cli._serve import BodyTimeout, HeaderTimeout, MaxConnections, limits
from farthing.core.errors import FarthingError
from farthing.http.issuer_client import IssuerClient
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
# farthing vendor config (see `farthing vendor --help`); paths are relative to this file.
realm = {realm}
database = "vendor.sqlite"
content_dir = ".."
challenge_secret_file = "challenge.key"

[prices]   # route pattern = "<micro-units> <CURRENCY>"; first match wins
"/**" = "{price} EUR"

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
    price: Annotated[int, typer.Option(help="Default price in micro-EUR")] = 1000,
) -> None:
    """Write a starter config and the vendor's own key file into DIR/.farthing/ (never
    served). The key file holds only the SZM keys, taken from the issuer's key file; the
    realm is the issuer's (SZM cards carry it, and wallets pay only a realm that matches)."""
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
    target.parent.mkdir(mode=0o700, exist_ok=True)
    if key_file.exists():
        raise fail(f"{key_file} exists already", hint="remove it to make it again")
    write_vendor_key_file(key_file, keys)
    starter = _STARTER.format(realm=json.dumps(keys.realm), price=price, keys=VENDOR_KEYS_NAME)
    target.write_text(starter)
    console.print(f"wrote [bold]{key_file}[/] (mode 0600: SZM keys only)")
    console.print(
        f"wrote [bold]{target}[/]; edit the prices, then `farthing vendor serve {directory}`"
    )


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
    console.print(f"selling {loaded.content_dir} at http://{host}:{port} ({', '.join(methods)})")
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
