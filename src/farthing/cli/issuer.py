"""`farthing issuer`: set up, run and administer the issuer.

Every command takes `--db` (a SQLite path or a `postgresql://` DSN; env
`FARTHING_ISSUER_DB`) and `--keys` (the key file; env `FARTHING_ISSUER_KEYS`). The
currencies the issuer keeps books in come from `FARTHING_ISSUER_CURRENCIES` (default
`EUR`). Administrative commands run the same service code as the HTTP API, directly
against the database, and are audited as `cli:<user>`. The issuer's own modules are
imported inside the commands, so `farthing --help` stays fast.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, TextIO

import typer

from farthing.cli._common import console, err_console, fail, money, printable_target
from farthing.cli._serve import BodyTimeout, HeaderTimeout, MaxConnections, limits

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from farthing.issuer.report_service import IssuerReport
    from farthing.issuer.service import IssuerServices
    from farthing.issuer.szm_service import BatchSpec, ExportedCard
    from farthing.store import SzmBatchRow

__all__ = ["app"]

app = typer.Typer(
    help="The issuer: bank of HLL, broker of PayWord, SZM card issuer.\n\n"
    "Example: farthing issuer init && farthing issuer cards issue --count 10 --units 100",
    no_args_is_help=True,
)
tokens_app = typer.Typer(
    help="Operator tokens for the HTTP API.\n\nExample: farthing issuer tokens create alice",
    no_args_is_help=True,
)
customers_app = typer.Typer(
    help="Customer accounts.\n\nExample: farthing issuer customers add alice",
    no_args_is_help=True,
)
merchants_app = typer.Typer(
    help="Merchants (HLL merchants and PayWord vendors).\n\n"
    "Example: farthing issuer merchants add shop",
    no_args_is_help=True,
)
cards_app = typer.Typer(
    help="SZM prepaid cards.\n\nExample: farthing issuer cards issue --count 10 --units 100",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")
app.add_typer(customers_app, name="customers")
app.add_typer(merchants_app, name="merchants")
app.add_typer(cards_app, name="cards")
batches_app = typer.Typer(
    help="SZM card batches.\n\nExample: farthing issuer batches list", no_args_is_help=True
)
app.add_typer(batches_app, name="batches")
hll_app = typer.Typer(
    help="HLL smart cards (the bank).\n\n"
    "Example: farthing issuer hll cards issue --customer alice --units 100 "
    "--token-public-key token.pub --out card.json",
    no_args_is_help=True,
)
hll_cards_app = typer.Typer(
    help="Personalise HLL cards.\n\n"
    "Example: farthing issuer hll cards issue --customer alice --units 100 "
    "--token-public-key token.pub --out card.json",
    no_args_is_help=True,
)
hll_app.add_typer(hll_cards_app, name="cards")
app.add_typer(hll_app, name="hll")
payword_app = typer.Typer(
    help="PayWord (the broker).\n\n"
    "Example: farthing issuer payword users add alice-pw --customer alice --credit-limit 500 "
    "--out-dir .",
    no_args_is_help=True,
)
payword_users_app = typer.Typer(
    help="PayWord users and their certificates.\n\n"
    "Example: farthing issuer payword users add alice-pw --customer alice --credit-limit 500 "
    "--out-dir .",
    no_args_is_help=True,
)
payword_app.add_typer(payword_users_app, name="users")
app.add_typer(payword_app, name="payword")

_DEFAULT_DB: Final = "farthing-issuer.sqlite"
_DEFAULT_KEYS: Final = "farthing-issuer.keys.json"
_MIN_BBS_BITS: Final = 2048
_EXPORT_PAGE: Final = 1000
_DAY: Final = 86_400

Db = Annotated[
    str, typer.Option("--db", envvar="FARTHING_ISSUER_DB", help="SQLite file or postgresql:// DSN.")
]
Keys = Annotated[
    Path, typer.Option("--keys", envvar="FARTHING_ISSUER_KEYS", help="The issuer key file.")
]
Currency = Annotated[str, typer.Option("--currency", help="ISO 4217-style currency code.")]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _currencies() -> tuple[str, ...]:
    from farthing.issuer.config import ENV_CURRENCIES

    raw = os.environ.get(ENV_CURRENCIES, "EUR")
    return tuple(c.strip() for c in raw.split(",") if c.strip())


@contextmanager
def _services(db: str, keys: Path) -> Iterator[IssuerServices]:
    """The issuer's services over an initialised database, closed afterwards."""
    from sqlalchemy.exc import SQLAlchemyError

    from farthing.core.clock import SystemClock
    from farthing.core.errors import FarthingError
    from farthing.issuer.config import IssuerConfig, load_issuer_keys
    from farthing.issuer.service import build_services
    from farthing.store import open_store

    try:
        config = IssuerConfig(keys=load_issuer_keys(keys), currencies=_currencies())
        store = open_store(db, create=False)
    except FarthingError as error:
        raise fail(error.message) from None
    except SQLAlchemyError:
        raise fail(
            f"cannot open the database {printable_target(db)}",
            hint="check that it runs and that the URL, user and password are right",
        ) from None
    try:
        yield build_services(config, store, clock=SystemClock(), rng=os.urandom)
    finally:
        store.close()


def _private_file(path: Path) -> TextIO:
    """A new file only the owner can read (card codes and keys are secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


# --- set-up and serving -------------------------------------------------------------------


@app.command("init")
def init(
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
    issuer_id: Annotated[
        str, typer.Option(help="Broker id in PayWord certificates and realm on SZM cards.")
    ] = "farthing",
    bbs_bits: Annotated[int, typer.Option(help="Size of the BBS modulus n.")] = 2048,
) -> None:
    """Create or upgrade the database, and create the key file if there is none."""
    from farthing.issuer.config import generate_issuer_keys, write_key_file
    from farthing.store import upgrade_to_head

    if bbs_bits < _MIN_BBS_BITS:
        raise fail(f"--bbs-bits must be at least {_MIN_BBS_BITS}")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        upgrade_to_head(db)
    except SQLAlchemyError:
        raise fail(
            f"cannot open the database {printable_target(db)}",
            hint="check that it runs and that the URL, user and password are right",
        ) from None
    console.print(f"database ready: [bold]{printable_target(db)}[/]")
    if keys.exists():
        console.print(f"key file kept: [bold]{keys}[/]")
        return
    with console.status("generating keys (BBS modulus)..."):
        new_keys = generate_issuer_keys(os.urandom, broker_id=issuer_id, bbs_bits=bbs_bits)
    write_key_file(keys, new_keys)
    console.print(f"key file created (mode 0600): [bold]{keys}[/]")


@app.command("serve")
def serve(
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8400,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    rate_limit: Annotated[bool, typer.Option(help="Per-client and per-operator limits.")] = True,
    header_timeout: HeaderTimeout = None,
    body_timeout: BodyTimeout = None,
    max_connections: MaxConnections = None,
    body_budget_mib: Annotated[
        int, typer.Option(min=1, help="MiB of deposit bodies one worker holds at once.")
    ] = 64,
) -> None:
    """Run the HTTP API (uvicorn; each worker builds its own app from the environment)."""
    from farthing.issuer.config import ENV_BODY_BUDGET, ENV_DB, ENV_KEYS, ENV_RATE_LIMIT
    from farthing.serving import serve_factory

    with _services(db, keys):  # fail here, readably, rather than in every worker
        pass
    os.environ[ENV_DB] = db
    os.environ[ENV_KEYS] = str(keys.resolve())
    os.environ[ENV_RATE_LIMIT] = "on" if rate_limit else "off"
    os.environ[ENV_BODY_BUDGET] = str(body_budget_mib * 1024 * 1024)
    serve_factory(
        "farthing.issuer.app:app_from_env",
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        **limits(header_timeout, body_timeout, max_connections),
    )


@app.command("check")
def check(db: Db = _DEFAULT_DB, keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """Audit the ledger; exit status 1 if it does not balance."""
    with _services(db, keys) as services:
        result = services.reports.check()
    if result.balanced:
        console.print(
            f"[green]ledger balances[/]: {result.txn_count} transactions, "
            f"{result.entry_count} entries"
        )
        return
    for problem in result.problems:
        console.print(f"[red]problem:[/] {problem}")
    raise typer.Exit(1)


@app.command("report")
def report(db: Db = _DEFAULT_DB, keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """Balances by account kind, outstanding card value, merchants, ledger status."""
    with _services(db, keys) as services:
        result = services.reports.report()
    _print_report(result)


def _print_report(result: IssuerReport) -> None:
    from rich.table import Table

    balances = Table(title="Balances (negative: the issuer owes it)")
    balances.add_column("account kind")
    for row in result.currencies:
        balances.add_column(row.currency, justify="right")
    kinds = list(result.currencies[0].balances) if result.currencies else []
    for kind in kinds:
        balances.add_row(
            kind.value, *(money(row.balances[kind], row.currency) for row in result.currencies)
        )
    balances.add_section()
    rows = result.currencies
    balances.add_row(
        "HLL value on cards", *(money(r.hll_outstanding_micros, r.currency) for r in rows)
    )
    balances.add_row(
        "SZM value outstanding", *(money(r.szm_outstanding_micros, r.currency) for r in rows)
    )
    balances.add_row(
        "owed to merchants", *(money(r.merchants_owed_micros, r.currency) for r in rows)
    )
    console.print(balances)
    merchants = Table(title="Merchants")
    for column in ("merchant", "owed"):
        merchants.add_column(column)
    for merchant in result.merchants:
        merchants.add_row(merchant.merchant_id, money(merchant.owed_micros, merchant.currency))
    console.print(merchants)
    ledger = result.ledger
    status = "[green]balanced[/]" if ledger.balanced else f"[red]{len(ledger.problems)} problems[/]"
    console.print(
        f"ledger: {status}, {ledger.txn_count} transactions, {ledger.entry_count} entries"
    )


# --- tokens, customers, merchants ---------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who the token is for.")],
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Create an operator token. It is printed once; only its SHA-256 is stored."""
    with _services(db, keys) as services:
        made = services.accounts.create_operator_token(_actor(), name)
    console.print(f"operator [bold]{made.name}[/] (id {made.operator_id}); token:")
    print(made.token)  # plain stdout, for scripts


@tokens_app.command("revoke")
def tokens_revoke(
    operator_id: Annotated[int, typer.Argument(help="The id printed by `tokens create`.")],
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Revoke an operator token."""
    with _services(db, keys) as services:
        revoked = services.accounts.revoke_operator_token(_actor(), operator_id)
    if not revoked:
        raise fail("no active token with that id")
    console.print(f"token {operator_id} revoked")


@customers_app.command("add")
def customers_add(
    customer_id: Annotated[str, typer.Argument(help="The customer's id (your reference).")],
    currency: Currency = "EUR",
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Create a customer account."""
    with _services(db, keys) as services:
        view = services.accounts.create_customer(_actor(), customer_id, currency)
    console.print(f"customer [bold]{view.customer_id}[/] ({view.currency}) created")


@customers_app.command("load")
def customers_load(
    customer_id: Annotated[str, typer.Argument()],
    amount: Annotated[
        str, typer.Argument(help="Cash received in the account's currency: 5, 5.00 or '5 EUR'.")
    ],
    reference: Annotated[str, typer.Option(help="Idempotency key, e.g. the receipt number.")],
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Cash-in: credit a customer account with cash received."""
    from farthing.core.errors import FarthingError
    from farthing.core.money import parse_amount

    try:
        amount_micros, named = parse_amount(amount)
    except FarthingError:
        raise fail(f"not an amount: {amount!r}", hint="write it as 5, 5.00 or '5 EUR'") from None
    if amount_micros <= 0:
        raise fail("the amount must be more than zero")
    with _services(db, keys) as services:
        currency = services.accounts.customer(customer_id).currency
        if named is not None and named != currency:
            raise fail(f"customer {customer_id} keeps {currency}, not {named}")
        result = services.accounts.load(_actor(), customer_id, amount_micros, reference)
    console.print(f"available: {money(result.available_micros, currency)}")


@merchants_app.command("add")
def merchants_add(
    merchant_id: Annotated[str, typer.Argument(help="The merchant (or PayWord vendor) id.")],
    currency: Currency = "EUR",
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Register a merchant. Its key K_M is printed once, in hex (the form the vendor's
    `merchant_key_file` holds); give it to the merchant over a safe channel."""
    with _services(db, keys) as services:
        made = services.accounts.create_merchant(_actor(), merchant_id, currency)
    console.print(f"merchant [bold]{made.merchant_id}[/] ({made.currency}); key (hex):")
    print(made.key.hex())


@tokens_app.command("list")
def tokens_list(db: Db = _DEFAULT_DB, keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """List operator tokens (the tokens themselves are not kept, only who and when)."""
    with _services(db, keys) as services:
        rows = services.accounts.operators()
    table = _table("Operator tokens", "id", "name", "created (UTC)", "revoked (UTC)")
    for row in rows:
        revoked = "-" if row.revoked_at is None else _when(row.revoked_at)
        table.add_row(str(row.id), row.name, _when(row.created_at), revoked)
    _print_list(table, len(rows), "no operator tokens yet: farthing issuer tokens create NAME")


@customers_app.command("list")
def customers_list(db: Db = _DEFAULT_DB, keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """List customer accounts and what the issuer owes each."""
    with _services(db, keys) as services:
        rows = services.accounts.customers()
    table = _table("Customers", "customer", "available")
    for row in rows:
        table.add_row(row.customer_id, money(row.available_micros, row.currency))
    _print_list(table, len(rows), "no customers yet: farthing issuer customers add ID")


@merchants_app.command("list")
def merchants_list(db: Db = _DEFAULT_DB, keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """List merchants and what the issuer owes each."""
    with _services(db, keys) as services:
        rows = services.accounts.merchants()
    table = _table("Merchants", "merchant", "owed")
    for row in rows:
        table.add_row(row.merchant_id, money(row.owed_micros, row.currency))
    _print_list(table, len(rows), "no merchants yet: farthing issuer merchants add ID")


@batches_app.command("list")
def batches_list(db: Db = _DEFAULT_DB, keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """List the SZM card batches sold, newest first."""
    with _services(db, keys) as services:
        rows = services.szm.batches()
    table = _table(
        "SZM batches", "batch", "protocol", "cards", "units", "unit value", "issued", "expires"
    )
    for row in rows:
        table.add_row(
            _b64(row.batch_id), row.protocol.value, str(row.count), str(row.units),
            money(row.unit_micros, row.currency), _when(row.created_at), _when(row.expires_at),
        )  # fmt: skip
    _print_list(table, len(rows), "no batches yet: farthing issuer cards issue --count N --units U")


@cards_app.command("revenue")
def cards_revenue(
    currency: Currency = "EUR",
    recognise: Annotated[
        bool, typer.Option("--recognise", help="Post the spent value not yet recognised.")
    ] = False,
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Show what became of the SZM cards sold: spent (earned), outstanding (still owed to
    card holders) and expired unspent (breakage, reported only); --recognise posts the
    spent value not yet recognised from the prepaid float to revenue."""
    with _services(db, keys) as services:
        posted = services.szm.recognise_revenue(_actor(), currency) if recognise else None
        value = services.szm.value_summary(currency)
    table = _table(f"SZM card value in {currency}", "what", "amount")
    table.add_row("spent: earned, recognisable as revenue", money(value.spent, currency))
    table.add_row("outstanding: unspent on valid cards", money(value.outstanding, currency))
    table.add_row("expired unspent: breakage, not recognised", money(value.expired, currency))
    console.print(table)
    if posted is not None:
        console.print(f"recognised now: {money(posted, currency)}")


def _table(title: str, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for number, column in enumerate(columns):
        table.add_column(column, no_wrap=number == 0)  # ids are copied whole
    return table


def _print_list(table: Table, count: int, empty: str) -> None:
    if count == 0:
        console.print(empty)
    else:
        console.print(table)


def _when(unix: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M")


@app.command("hll-key")
def hll_key(keys: Keys = Path(_DEFAULT_KEYS)) -> None:
    """Print the bank's HLL card-certification public key (base64url, the form the API
    publishes): the `bank_public_key` a vendor names in challenges and a deferred-mode
    vendor checks card certificates with. It is public."""
    from farthing.core.errors import FarthingError
    from farthing.core.schemes import hll
    from farthing.issuer.config import load_issuer_keys

    try:
        loaded = load_issuer_keys(keys)
    except FarthingError as exc:
        raise fail(exc.message) from None
    print(_b64(hll.card_certification_public_key(loaded.hll_master)))


# --- SZM cards ----------------------------------------------------------------------------


@cards_app.command("issue")
def cards_issue(
    count: Annotated[int, typer.Option(min=1, help="How many cards.")],
    units: Annotated[int, typer.Option(min=1, help="Units per card.")],
    protocol: Annotated[
        str, typer.Option(help="The protocol: szm:chain or szm:prbg.")
    ] = "szm:chain",
    generator: Annotated[str | None, typer.Option(help="For szm:prbg: hmac-ctr or bbs.")] = None,
    unit_micros: Annotated[int, typer.Option(min=1, help="Value of one unit.")] = 1000,
    currency: Currency = "EUR",
    expires_days: Annotated[int, typer.Option(min=1, help="Validity from now.")] = 365,
    out: Annotated[Path | None, typer.Option(help="Write codes here (0600), not stdout.")] = None,
    qr_dir: Annotated[Path | None, typer.Option(help="Write one QR PNG per card here.")] = None,
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Issue (sell) a batch of anonymous SZM prepaid cards and print their codes."""
    from farthing.core.cardcode import Generator
    from farthing.core.money import Denomination
    from farthing.issuer.szm_service import BatchSpec
    from farthing.store import SzmProtocol

    try:
        kind = SzmProtocol(protocol)
        chosen = None if generator is None else Generator(generator)
    except ValueError:
        raise fail(
            "unknown protocol or generator", hint="szm:chain | szm:prbg; hmac-ctr | bbs"
        ) from None
    spec = BatchSpec(
        protocol=kind,
        count=count,
        units=units,
        denomination=Denomination(currency=currency, unit_micros=unit_micros),
        expires_at=_now() + expires_days * _DAY,
        generator=chosen,
    )
    with _services(db, keys) as services:
        batch = _issue_with_progress(services, spec)
        console.print(
            f"batch [bold]{_b64(batch.batch_id)}[/]: {batch.count} cards "
            f"(again: farthing issuer cards export --batch={_b64(batch.batch_id)})"
        )
        _export_batch(services, batch.batch_id, out, qr_dir)


@cards_app.command("export")
def cards_export(
    # An option, not an argument: a base64url id may start with "-", which a positional
    # argument would take for an unknown option.
    batch_id: Annotated[str, typer.Option("--batch", help="The batch id (base64url).")],
    out: Annotated[Path | None, typer.Option(help="Write codes here (0600), not stdout.")] = None,
    qr_dir: Annotated[Path | None, typer.Option(help="Write one QR PNG per card here.")] = None,
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Print the codes of an issued batch again (they are derived from the master key)."""
    from farthing.core.encoding import b64url_decode

    with _services(db, keys) as services:
        _export_batch(services, b64url_decode(batch_id, max_len=64), out, qr_dir)


@cards_app.command("block")
def cards_block(
    # An option, not an argument: a base64url id may start with "-" (see export).
    card_id: Annotated[str, typer.Option("--card", help="The card id (base64url).")],
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Block an SZM card: every later payment with it is refused. Audited.

    Example: farthing issuer cards block --card 3q2-7wAAAAAAAAAAAAAAAA
    """
    from farthing.core.encoding import b64url_decode

    with _services(db, keys) as services:
        blocked = services.szm.block_card(_actor(), b64url_decode(card_id, max_len=24))
    typer.echo("blocked" if blocked else "not blocked: the card was not active")


def _now() -> int:
    from farthing.core.clock import SystemClock

    return SystemClock().now()


def _b64(data: bytes) -> str:
    from farthing.core.encoding import b64url_encode

    return b64url_encode(data)


def _progress_bar() -> Progress:
    """A labelled progress bar on stderr, gone when done (stdout may carry the codes)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Not on a terminal (a pipe, a log): nothing, not even the blank line a bar leaves.
    disable = not err_console.is_terminal
    return Progress(*columns, console=err_console, transient=True, disable=disable)


def _issue_with_progress(services: IssuerServices, spec: BatchSpec) -> SzmBatchRow:
    with _progress_bar() as progress:
        task = progress.add_task("making cards", total=spec.count)

        def advance(done: int) -> None:
            if done % 100 == 0 or done == spec.count:
                progress.update(task, completed=done)

        return services.szm.issue_batch(_actor(), spec, progress=advance)


def _export_batch(
    services: IssuerServices, batch_id: bytes, out: Path | None, qr_dir: Path | None
) -> None:
    """Every card's short code (what is printed and typed), one per line, and optionally a
    QR PNG per card (which carries the whole card: no issuer lookup needed)."""
    if qr_dir is not None:
        qr_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    total = services.szm.batch(batch_id).count
    label = "writing codes" + (" and QR images" if qr_dir is not None else "")
    sink = _private_file(out) if out is not None else sys.stdout
    try:
        with _progress_bar() as progress:
            task = progress.add_task(label, total=total)
            offset = 0
            while offset < total:
                page = services.szm.export(_actor(), batch_id, offset=offset, limit=_EXPORT_PAGE)
                for card in page.cards:
                    sink.write(card.short_code + "\n")
                    if qr_dir is not None:
                        _write_qr(qr_dir, card)
                    progress.advance(task)
                if not page.cards:
                    break
                offset += len(page.cards)
    finally:
        if sink is not sys.stdout:
            sink.close()
    if out is not None:
        console.print(f"{offset} codes written to [bold]{out}[/]")


def _write_qr(directory: Path, card: ExportedCard) -> None:
    from farthing.issuer.qr import qr_png

    path = directory / f"{_b64(card.card_id)}.png"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(qr_png(card.compact))


# --- HLL cards and PayWord users -------------------------------------------------------------


@hll_cards_app.command("issue")
def hll_cards_issue(
    customer: Annotated[str, typer.Option(help="The customer whose account pays the card.")],
    units: Annotated[int, typer.Option(min=1, help="Units loaded on the card.")],
    token_public_key: Annotated[
        Path,
        typer.Option(help="The token's public key (`farthing wallet hll-token-key -o FILE`)."),
    ],
    out: Annotated[Path, typer.Option(help="The card file to write (for add-card hll).")],
    unit_micros: Annotated[int, typer.Option(min=1, help="Value of one unit.")] = 1000,
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Personalise an HLL smart card for a customer, paid from the customer's account. The
    card key leaves the bank only wrapped for the customer's token; the card file goes to
    the customer for `farthing wallet add-card hll --card-file FILE`.

    Example: farthing issuer hll cards issue --customer alice --units 200
    --token-public-key token.pub --out card.json
    """
    from farthing.core.encoding import b64url_decode, b64url_encode
    from farthing.issuer.schemas import HllCardCreated

    token_key = b64url_decode(_read_key_text(token_public_key), max_len=2048)
    with _services(db, keys) as services:
        card = services.hll.personalise(
            _actor(), customer, units=units, unit_micros=unit_micros, token_public_key=token_key
        )
        bank_key = services.hll.bank_key
    assert card.wrapped_card_key is not None
    created = HllCardCreated(
        card_id=b64url_encode(card.card_id),
        wrapped_card_key=b64url_encode(card.wrapped_card_key),
        certificate=b64url_encode(card.certificate),
        certificate_expires_at=card.certificate_expires_at,
        bank_key=b64url_encode(bank_key),
        units=card.units,
        currency=card.denomination.currency,
        unit_micros=card.denomination.unit_micros,
    )
    _write_new_file(out, created.model_dump_json() + "\n")
    console.print(
        f"HLL card [bold]{created.card_id}[/] for {customer}: {units} units, written to "
        f"[bold]{out}[/]"
    )


@payword_users_app.command("add")
def payword_users_add(
    user_id: Annotated[str, typer.Argument(help="The new user's id.")],
    customer: Annotated[str, typer.Option(help="The customer account that pays its bills.")],
    credit_limit: Annotated[int, typer.Option(min=1, help="Units it may owe at once.")],
    out_dir: Annotated[
        Path, typer.Option(help="Write USER.cert (and USER.key when made here) into this folder.")
    ],
    public_key: Annotated[
        Path | None,
        typer.Option(help="The user's Ed25519 public key (base64url); else a key pair is made."),
    ] = None,
    unit_micros: Annotated[int, typer.Option(min=1, help="Value of one unit.")] = 1000,
    db: Db = _DEFAULT_DB,
    keys: Keys = Path(_DEFAULT_KEYS),
) -> None:
    """Register a PayWord user on a customer account and write the broker's certificate for
    its key. Without --public-key a key pair is made here and the private key written (mode
    0600) beside the certificate: give both to the user for
    `farthing wallet add-card payword --certificate USER.cert --user-key USER.key`.

    Example: farthing issuer payword users add alice-pw --customer alice --credit-limit 500
    --out-dir alice
    """
    from farthing.core.encoding import b64url_decode, b64url_encode
    from farthing.core.primitives import ed25519_public_key
    from farthing.core.schemes import payword

    private = None
    if public_key is not None:
        key = b64url_decode(_read_key_text(public_key), max_len=64)
    else:
        private = os.urandom(32)
        key = ed25519_public_key(private)
    with _services(db, keys) as services:
        user = services.payword.register_user(
            _actor(),
            user_id=user_id,
            customer_id=customer,
            public_key=key,
            credit_limit=credit_limit,
            unit_micros=unit_micros,
        )
        broker = services.payword.broker_id, services.payword.broker_public
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    certificate = b64url_encode(payword.encode_certificate(user.certificate))
    _write_new_file(out_dir / f"{user_id}.cert", certificate + "\n")
    if private is not None:
        _write_new_file(out_dir / f"{user_id}.key", b64url_encode(private) + "\n")
    console.print(f"PayWord user [bold]{user_id}[/] on {customer}: files in [bold]{out_dir}[/]")
    console.print(f"broker {broker[0]!r}, public key (base64url): {b64url_encode(broker[1])}")


def _read_key_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}") from None


def _write_new_file(path: Path, text: str) -> None:
    """A new file, mode 0600; refuse to overwrite (a card or key must not be lost)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise fail(f"{path} exists already", hint="choose another name") from None
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@app.command("version")
def version() -> None:
    """Print the farthing version."""
    from farthing import __version__

    console.print(__version__)
