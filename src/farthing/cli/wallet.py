"""`farthing wallet`: keep cards, pay HTTP 402 vendors, and see what was bought.

Every command finds the wallet file at `--wallet`, else `$FARTHING_WALLET`, else
`~/.local/share/farthing/wallet.sqlite`; and its passphrase in `--passphrase-file` (first
line), else `$FARTHING_WALLET_PASSPHRASE`, else asks for it. Errors say what happened and
what to do about it; nothing is spent when a command fails before paying.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import httpx
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from farthing.cli._common import console, err_console, fail
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import (
    CardExhausted,
    CardLocked,
    Conflict,
    ErrorCode,
    FarthingError,
    MalformedMessage,
    PolicyRefused,
    RemoteProtocolError,
    UnsupportedMethod,
    WrongPin,
)
from farthing.core.primitives import constant_time_eq
from farthing.core.schemes import payword, szm_status
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.cards import (
    BANK_KEY_LEN,
    NO_EXPIRY,
    CardInfo,
    HllCardFile,
    Pkcs11Location,
)
from farthing.wallet.lookup import FoundCard
from farthing.wallet.pkcs11_card import install_wrapped_card_key, new_wrapping_key
from farthing.wallet.policy import (
    STARTER_LIMITS,
    Limits,
    SpendingPolicy,
    format_micros,
    parse_amount,
)
from farthing.wallet.store import HistoryEntry
from farthing.wallet.wallet import DEFAULT_PREFERENCE, Wallet

__all__ = ["PASSPHRASE_ENV", "WALLET_ENV", "app", "default_wallet_path", "make_client"]

WALLET_ENV: Final = "FARTHING_WALLET"
PASSPHRASE_ENV: Final = "FARTHING_WALLET_PASSPHRASE"  # noqa: S105 -- the variable's name
PIN_ENV: Final = "FARTHING_CARD_PIN"

app = typer.Typer(
    help="The wallet: cards, payments and what was bought.\n\n"
    "Example: farthing wallet get https://news.example/articles/1",
    no_args_is_help=True,
)
add_card = typer.Typer(
    help="Add a card to the wallet.\n\n"
    "Example: farthing wallet add-card szm CODE --site https://news.example",
    no_args_is_help=True,
)
app.add_typer(add_card, name="add-card")

WalletOpt = Annotated[
    Path | None,
    typer.Option(
        "--wallet",
        envvar=WALLET_ENV,
        help="Wallet file (default ~/.local/share/farthing/wallet.sqlite)",
        show_default=False,
    ),
]
PassFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=f"Read the passphrase from this file's first line (else ${PASSPHRASE_ENV}, "
        "else a prompt)",
    ),
]
LabelOpt = Annotated[str | None, typer.Option("--label", help="A name for the card")]
SiteOpt = Annotated[
    list[str],
    typer.Option(
        "--site",
        help="A site the card may pay, e.g. https://shop.example (repeat the option, or "
        "separate sites with commas); the card pays no other site",
        show_default=False,
    ),
]


def default_wallet_path() -> Path:
    return Path.home() / ".local" / "share" / "farthing" / "wallet.sqlite"


def make_client(auth: httpx.Auth, timeout: float) -> httpx.Client:
    """The HTTP client `get` uses (tests replace it to reach an in-process vendor)."""
    return httpx.Client(auth=auth, timeout=timeout, follow_redirects=True)


# --- passphrase and opening --------------------------------------------------------------


def _passphrase(passphrase_file: Path | None, *, confirm: bool = False) -> str:
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot read the passphrase file: {exc.strerror}") from None
        first = text.splitlines()[0] if text else ""
        if not first:
            raise fail(f"the passphrase file {passphrase_file} is empty")
        return first
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    answer: str = typer.prompt(
        "Wallet passphrase", hide_input=True, confirmation_prompt=confirm, err=True
    )
    return answer


def _path(wallet: Path | None) -> Path:
    return (wallet or default_wallet_path()).expanduser()


@contextmanager
def _opened(
    wallet: Path | None,
    passphrase_file: Path | None,
    *,
    preference: Sequence[str] = DEFAULT_PREFERENCE,
) -> Iterator[Wallet]:
    path = _path(wallet)
    if not path.is_file():
        raise fail(f"no wallet at {path}", hint="create one with `farthing wallet init`")
    passphrase = _passphrase(passphrase_file)
    with _explained(), Wallet.open(path, passphrase, preference=preference) as opened:
        yield opened


# --- errors a person can act on ------------------------------------------------------------

_HINTS: Final[tuple[tuple[type[FarthingError], str], ...]] = (
    (PolicyRefused, "allow it with --max-price, or raise the limits: `farthing wallet policy`"),
    (
        CardExhausted,
        "add a card: `farthing wallet add-card szm CODE --site URL` (see `farthing wallet cards`)",
    ),
    (WrongPin, f"store the right PIN: add the card again (PIN from ${PIN_ENV} or the prompt)"),
    (CardLocked, "the token's PIN is locked; unlock it with the token's admin tools"),
    (Conflict, "see `farthing wallet cards`"),
    (MalformedMessage, "check the code or file for typos; a card code carries a checksum"),
    (UnsupportedMethod, "this farthing does not know that kind of card"),
)
_CODE_HINTS: Final = {
    ErrorCode.WRONG_PASSPHRASE: f"use the passphrase chosen at `farthing wallet init` "
    f"(--passphrase-file, ${PASSPHRASE_ENV} or the prompt)",
    ErrorCode.NO_CARD_FITS: "add a card this vendor takes: `farthing wallet add-card`",
    ErrorCode.UNKNOWN_VERSION: "check that --wallet (or $FARTHING_WALLET) names your wallet "
    "file; if it is damaged, restore a backup: `farthing wallet import BACKUP --wallet NEW`",
    ErrorCode.WALLET_BUSY: "another farthing is using this wallet; try again when it is done",
    ErrorCode.CARD_IN_FLIGHT: "another farthing is paying with this card and its answer has not "
    "come; try again when it is done, or choose another card with --card",
    ErrorCode.DEVICE_FAILED: "check that the token is plugged in, then try again",
    ErrorCode.ISSUER_UNAVAILABLE: "the issuer could not be reached; try again later",
    ErrorCode.INSECURE_TRANSPORT: "use the vendor's https:// address",
    ErrorCode.WRONG_SITE: "a card pays only the sites it was added for (see `farthing wallet "
    "cards`); add one with `farthing wallet bind LABEL --site URL` if you trust it",
    ErrorCode.WRONG_ISSUER: "this vendor takes cards of another bank or broker than yours",
    ErrorCode.SEAL_BROKEN: "the answer was not sealed by the card's issuer; see "
    "`farthing wallet history`",
}


@contextmanager
def _explained() -> Iterator[None]:
    """Turn library errors into one line saying what happened and one saying what to do."""
    try:
        yield
    except FarthingError as error:
        raise _explain(error) from None
    except httpx.ConnectError as error:
        host = error.request.url.host if _has_request(error) else "the vendor"
        raise fail(
            f"cannot reach {host}", hint="check the URL and your network, and that the vendor runs"
        ) from None
    except httpx.TimeoutException as error:
        host = error.request.url.host if _has_request(error) else "the vendor"
        raise fail(
            f"{host} did not answer in time", hint=_RESEND_HINT + ", or raise --timeout"
        ) from None
    except httpx.TransportError as error:
        host = error.request.url.host if _has_request(error) else "the vendor"
        raise fail(f"the connection to {host} broke off", hint=_RESEND_HINT) from None


# A payment whose answer was lost is kept and resent first by the next request for the URL.
_RESEND_HINT: Final = (
    "run the same command again: the wallet first resends the payment it already made"
)


def _has_request(error: httpx.RequestError) -> bool:
    try:
        error.request  # noqa: B018 -- httpx raises when the error carries no request
    except RuntimeError:
        return False
    return True


def _explain(error: FarthingError) -> typer.Exit:
    if error.code in _CODE_HINTS:
        return fail(error.message, hint=_CODE_HINTS[error.code])
    for kind, hint in _HINTS:
        if isinstance(error, kind):
            return fail(error.message, hint=hint)
    if isinstance(error, RemoteProtocolError):
        return fail(f"the vendor sent something wrong: {error.message}")
    return fail(error.message)


# --- init, cards, balance ------------------------------------------------------------------


@app.command()
def init(wallet: WalletOpt = None, passphrase_file: PassFileOpt = None) -> None:
    """Create a new, empty wallet file protected by a passphrase."""
    path = _path(wallet)
    if path.exists():
        raise fail(f"a wallet already exists at {path}", hint="use it, or choose --wallet")
    passphrase = _passphrase(passphrase_file, confirm=True)
    starter = SpendingPolicy(default=STARTER_LIMITS)
    with _explained(), Wallet.create(path, passphrase, policy=starter):
        pass
    console.print(f"Created wallet [bold]{path}[/]")
    console.print(
        f"Spending limits, in any currency: {_limits_line(STARTER_LIMITS)} "
        "(change them with `farthing wallet policy`)."
    )
    console.print("Next: add a card with `farthing wallet add-card szm CODE --site URL`.")


def _limits_line(limits: Limits) -> str:
    parts = (
        ("per request", limits.per_request),
        ("per site a day", limits.per_host),
        ("a day", limits.per_day),
    )
    return ", ".join(f"{_amount(value)} {name}" for name, value in parts)


def _amount(micros: int | None) -> str:
    return "no limit" if micros is None else format_micros(micros, "").strip()


@app.command()
def upgrade(wallet: WalletOpt = None, passphrase_file: PassFileOpt = None) -> None:
    """Re-protect the wallet with today's passphrase key derivation (Argon2id), if weaker."""
    from farthing.wallet.store import WalletStore

    path = _path(wallet)
    if not path.is_file():
        raise fail(f"no wallet at {path}", hint="create one with `farthing wallet init`")
    passphrase = _passphrase(passphrase_file)
    with _explained():
        changed = WalletStore.upgrade(path, passphrase, rng=os.urandom)
    if changed:
        console.print(f"Upgraded [bold]{path}[/]: every secret is sealed again under Argon2id.")
    else:
        console.print(f"[bold]{path}[/] is already protected by today's key derivation.")


@add_card.command("szm")
def add_szm(
    site: SiteOpt,
    code: Annotated[
        str | None,
        typer.Argument(help="The code printed on the card, XXXX-XXXX-XXXX-XXXX-XXXX-XXXX"),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option("--issuer", help="The card issuer's URL, where a typed code is looked up"),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A file holding the card: its QR code (PNG) or text"),
    ] = None,
    label: LabelOpt = None,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Add an SZM prepaid card, bound to the vendor that sold it (--site): the card's realm is
    a name anyone can copy, the site is what you trust.

    Type the code printed on the card and give its issuer (--issuer), which the wallet asks
    for the card's terms; or give the card's QR code with --file, which carries them.

    Example: farthing wallet add-card szm 7K3M-0QXD-9VAT-E2HN-4PCW-R8JB
    --issuer https://issuer.example --site https://news.example
    """
    text = _card_text(code, file)
    sites = _sites(site)
    found = _short_card(text, issuer) if _looks_short(text) else None
    with _opened(wallet, passphrase_file) as opened, _explained():
        if found is not None:
            info = opened.add_szm_card(found.card, spent=found.spent, site=sites, label=label)
        else:
            info = opened.add_szm_code(text, site=sites, label=label)
    _added(info)


def _card_text(code: str | None, file: Path | None) -> str:
    """The card as text: the typed code, or the file's text, or the QR code in a PNG file."""
    if file is None or code is not None:
        return _one_source(code, file, "a card code", "--file")
    raw = _read_bytes(file)
    if raw.startswith(_PNG_MAGIC):
        return _qr_text(file, raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"{file} is neither a card's text nor a PNG image of its QR code") from None


_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None


def _qr_text(path: Path, raw: bytes) -> str:
    """The text of the one QR code in a PNG image."""
    from farthing.wallet.qrimage import read_qr_png

    try:
        return read_qr_png(raw)
    except MalformedMessage as error:
        raise fail(
            f"cannot read a card from {path}: {error.message}",
            hint="give the PNG file the issuer wrote for the card (cards issue --qr-dir)",
        ) from None


def _looks_short(text: str) -> bool:
    from farthing.wallet.lookup import looks_short

    return looks_short(text)


def _short_card(text: str, issuer: str | None) -> FoundCard:
    """The card a typed code names: checked here (a typo is found before anything is sent),
    then looked up at its issuer."""
    from farthing.core import shortcode
    from farthing.wallet.lookup import fetch_card

    with _explained():
        try:
            shortcode.parse_code(text)
        except MalformedMessage as error:
            raise fail(
                error.message, hint="type the code again exactly as printed on the card"
            ) from None
        if issuer is None:
            raise fail(
                "a typed card code is looked up at the card's issuer: give --issuer URL",
                hint="the issuer's address is printed on the card or told by whoever sold it",
            )
        return asyncio.run(fetch_card(text, issuer))


def _sites(given: list[str]) -> list[str]:
    """`--site` values, each possibly a comma-separated list."""
    sites = [part.strip() for value in given for part in value.split(",") if part.strip()]
    if not sites:
        raise fail("give at least one --site URL", hint="e.g. --site https://news.example")
    return sites


_WRAP_LABEL: Final = "hll-card-wrap"


@app.command("hll-token-key")
def hll_token_key(
    pkcs11_module: Annotated[str, typer.Option("--pkcs11-module", help="The PKCS#11 module")],
    token_label: Annotated[str, typer.Option("--token-label")],
    wrap_label: Annotated[
        str, typer.Option("--wrap-label", help="Label of the key pair made on the token")
    ] = _WRAP_LABEL,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the public key here")
    ] = None,
) -> None:
    """Make, inside the token, the key pair the bank wraps your HLL card key to, and print
    its public key (base64url) for the bank's personalisation request. The PIN is read from
    $FARTHING_CARD_PIN or asked for."""
    pin = os.environ.get(PIN_ENV) or typer.prompt("Token PIN", hide_input=True, err=True)
    with _explained():
        public = new_wrapping_key(pkcs11_module, token_label, pin, wrap_label)
    text = b64url_encode(public)
    if output is None:
        print(text)
    else:
        _write_new(output, text + "\n")
        console.print(f"public key written to [bold]{output}[/]")
    err_console.print(
        'Next: the bank personalises your card with it ("token_public_key"); then '
        "`farthing wallet add-card hll --card-file ANSWER.json` with the same token."
    )


def _write_new(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}") from None


@add_card.command("hll")
def add_hll(
    site: SiteOpt,
    card_file: Annotated[
        Path, typer.Option("--card-file", help="The bank's personalisation output (JSON)")
    ],
    pkcs11_module: Annotated[
        str, typer.Option("--pkcs11-module", help="PKCS#11 module of the card's token")
    ],
    token_label: Annotated[str, typer.Option("--token-label")],
    key_label: Annotated[str, typer.Option("--key-label")] = "hll-card-key",
    wrap_label: Annotated[
        str, typer.Option("--wrap-label", help="The key pair `hll-token-key` made")
    ] = _WRAP_LABEL,
    bank_key: Annotated[
        str | None,
        typer.Option(
            "--bank-key",
            help="The bank's card-certification key (hex, `farthing issuer hll-key`), for a "
            "card file that does not name its bank",
        ),
    ] = None,
    label: LabelOpt = None,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Add an HLL card whose key K_C lives in a PKCS#11 token, for the merchants in --site.

    The card is bound to its bank (the card file's `bankKey`, else --bank-key): the bank
    must have signed the card's certificate, and the card pays no challenge naming another
    bank.

    If the card file carries K_C wrapped for the token (the bank's answer to a request made
    with `hll-token-key`), the token unwraps it inside itself first; K_C is never in the
    clear here. The PIN comes from $FARTHING_CARD_PIN or a prompt (never from the command
    line, where other users see it), and is kept in the wallet, sealed under the
    passphrase, so payments run without asking for it.
    """
    sites = _sites(site)
    with _explained():
        card = _with_bank(HllCardFile.from_json(_read_text(card_file)), bank_key)
    token = Pkcs11Location(module_path=pkcs11_module, token_label=token_label, key_label=key_label)
    pin = os.environ.get(PIN_ENV) or typer.prompt("Token PIN", hide_input=True, err=True)
    card = _into_token(card, token, pin, wrap_label)
    with _opened(wallet, passphrase_file) as opened, _explained():
        info = opened.add_hll_card(card, token=token, pin=pin, label=label, site=sites)
    _added(info)


def _bank_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != BANK_KEY_LEN:
        raise fail("--bank-key is 64 hex digits", hint="as `farthing issuer hll-key` prints it")
    return key


def _with_bank(card: HllCardFile, bank_key: str | None) -> HllCardFile:
    """The card file, naming its bank (from the file, else from --bank-key)."""
    if bank_key is not None:
        key = _bank_key(bank_key)
        if card.bank_key is not None and not constant_time_eq(card.bank_key, key):
            raise fail("--bank-key is not the bank the card file names")
        return replace(card, bank_key=key)
    if card.bank_key is None:
        raise fail(
            "the card file does not name its bank",
            hint="give --bank-key, the bank's key as `farthing issuer hll-key` prints it",
        )
    return card


def _into_token(card: HllCardFile, token: Pkcs11Location, pin: str, wrap_label: str) -> HllCardFile:
    """Unwrap the bank's wrapped K_C into the token (if the file carries one); the wallet
    keeps no key."""
    if card.wrapped_key is not None:
        with _explained():
            install_wrapped_card_key(
                token.module_path,
                token.token_label,
                pin,
                token.key_label,
                card.wrapped_key,
                transport_key_label=wrap_label,
            )
    return HllCardFile(
        card_id=card.card_id,
        balance=card.balance,
        denomination=card.denomination,
        expires_at=card.expires_at,
        certificate=card.certificate,
        bank_key=card.bank_key,
    )


@add_card.command("payword")
def add_payword(
    site: SiteOpt,
    certificate: Annotated[
        Path, typer.Option("--certificate", help="The broker's certificate (base64url or raw)")
    ],
    user_key: Annotated[
        Path, typer.Option("--user-key", help="Your Ed25519 private key (base64url or raw)")
    ],
    label: LabelOpt = None,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Add a PayWord account: your key and the broker's certificate for it, for the vendors
    in --site (and only for challenges naming the certificate's broker)."""
    sites = _sites(site)
    with _explained():
        cert = payword.decode_certificate(_read_blob(certificate))
        key = _read_blob(user_key)
    with _opened(wallet, passphrase_file) as opened, _explained():
        info = opened.add_payword(cert, key, label=label, site=sites)
    _added(info)


def _one_source(value: str | None, file: Path | None, what: str, option: str) -> str:
    if value is not None and file is None:
        return value
    if file is not None and value is None:
        return _read_text(file)
    raise fail(f"give {what} or {option}, not both and not neither")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}") from None


def _read_blob(path: Path) -> bytes:
    """A file of base64url text, or the raw bytes themselves."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    try:
        return b64url_decode(raw.strip())
    except MalformedMessage:
        return raw


def _added(info: CardInfo) -> None:
    console.print(
        f"Added [bold]{info.label}[/] ({info.method}): {info.units_left} units of "
        f"{format_micros(info.unit_micros, info.currency)}, {info.where}"
    )


CardArg = Annotated[str, typer.Argument(help="The card's label (see `farthing wallet cards`)")]


@app.command()
def bind(
    card: CardArg,
    site: Annotated[
        list[str] | None,
        typer.Option("--site", help="A site the card may pay from now on (repeatable, or commas)"),
    ] = None,
    bank_key: Annotated[
        str | None,
        typer.Option(
            "--bank-key",
            help="Name the bank of an HLL card added before cards named theirs (hex, "
            "`farthing issuer hll-key`)",
        ),
    ] = None,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Let a card pay more sites (--site, repeatable or comma-separated), or name an old HLL
    card's bank (--bank-key)."""
    sites = _sites(site or []) if site or bank_key is None else []
    key = None if bank_key is None else _bank_key(bank_key)
    with _opened(wallet, passphrase_file) as opened, _explained():
        info = opened.name_bank(card, key) if key is not None else None
        info = opened.bind(card, sites) if sites else info
    assert info is not None
    console.print(f"[bold]{info.label}[/]: {info.where}")


@app.command()
def unbind(
    card: CardArg,
    site: SiteOpt,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Stop a card paying these sites; a card left with none pays nobody until bound."""
    sites = _sites(site)
    with _opened(wallet, passphrase_file) as opened, _explained():
        info = opened.unbind(card, sites)
    console.print(f"[bold]{info.label}[/]: {info.where}")


cards_app = typer.Typer(
    help="List the cards in the wallet; remove or rename one.\n\n"
    "Example: farthing wallet cards rename card-1 lunch",
)
app.add_typer(cards_app, name="cards")


@cards_app.callback(invoke_without_command=True)
def cards(
    ctx: typer.Context, wallet: WalletOpt = None, passphrase_file: PassFileOpt = None
) -> None:
    """List the cards in the wallet (or remove or rename one)."""
    if ctx.invoked_subcommand is not None:
        return
    with _opened(wallet, passphrase_file) as opened:
        held = opened.cards()
    if not held:
        console.print("No cards yet. Add one with `farthing wallet add-card szm CODE --site URL`.")
        return
    table = Table(title="Cards")
    table.add_column("Card", no_wrap=True)
    table.add_column("Method", no_wrap=True)
    table.add_column("Units left", justify="right")
    table.add_column("Value left", justify="right", no_wrap=True)
    table.add_column("Expires", no_wrap=True)
    table.add_column("Where")
    for info in held:
        table.add_row(
            info.label,
            info.method,
            f"{info.units_left}/{info.total_units}",
            format_micros(info.value_left_micros, info.currency),
            _date(info.expires_at),
            info.where,
        )
    console.print(table)


@app.command()
def balance(wallet: WalletOpt = None, passphrase_file: PassFileOpt = None) -> None:
    """Money left on prepaid and bank cards, per currency (PayWord is credit, shown apart)."""
    with _opened(wallet, passphrase_file) as opened:
        totals = opened.balances()
        credit = [c for c in opened.cards() if c.method == "payword"]
    if not totals and not credit:
        console.print("The wallet holds no money yet.")
    for currency, micros in sorted(totals.items()):
        console.print(f"[bold]{format_micros(micros, currency)}[/]")
    for info in credit:
        limit = format_micros(info.value_left_micros, info.currency)
        console.print(f"PayWord credit {limit} from broker {info.realm} ({info.label})")


@app.command("card-status")
def card_status(
    label: Annotated[
        str, typer.Argument(help="The SZM card's label (see `farthing wallet cards`)")
    ],
    issuer: Annotated[str, typer.Option("--issuer", help="The card issuer's URL")],
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Ask the issuer what is left on an SZM card, proving that this wallet holds it (the
    issuer tells nobody else: the card id alone is in every payment)."""
    from farthing.http.issuer_client import CardStatus, IssuerClient

    async def ask(request: szm_status.StatusRequest) -> CardStatus:
        async with IssuerClient(issuer, merchant_id=None, merchant_key=None) as client:
            return await client.card_status(request)

    with _opened(wallet, passphrase_file) as opened:
        request = opened.szm_status_request(label)
    with _explained():
        status = asyncio.run(ask(request))
    console.print(
        f"{label}: {status.units - status.spent} of {status.units} units left at the issuer "
        f"({status.status})"
    )


# --- buying --------------------------------------------------------------------------------


@app.command()
def get(
    urls: Annotated[list[str], typer.Argument(help="One or more URLs to fetch, paying if asked")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="File to write (a directory for several URLs)"),
    ] = None,
    max_price: Annotated[
        str | None,
        typer.Option("--max-price", help="Most to pay per request, e.g. 0.05 or 0.05EUR"),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, max=3600, help="Seconds per request")
    ] = 30.0,
    card: Annotated[
        str | None,
        typer.Option(
            "--card", help="Pay with this card only (its label in `farthing wallet cards`)"
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="Pay with this method when the vendor offers it and a card can pay "
            f"({', '.join(DEFAULT_PREFERENCE)}); otherwise the usual order decides",
        ),
    ] = None,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Fetch URLs, paying their HTTP 402 challenges within the spending policy."""
    with _explained():
        cap = parse_amount(max_price) if max_price else None
    preference = _preference(method)
    _check_urls(urls)
    _check_outputs(urls, output)
    with _opened(wallet, passphrase_file, preference=preference) as opened:
        if cap is not None:
            opened.use_policy(opened.policy.with_per_request(*cap))
        with _explained():
            opened.pay_only_with(card)
        last = _last_history_id(opened)
        try:
            # Waiting for a card another farthing is paying with counts as part of a request.
            auth = PaymentAuth(opened, turn_timeout=timeout)
            with make_client(auth, timeout) as client, _explained():
                if len(urls) == 1:
                    _get_one(client, urls[0], output)
                else:
                    assert output is not None  # _check_outputs refused that
                    _get_many(client, urls, output)
        finally:
            _print_paid(opened, last)


def _check_urls(urls: list[str]) -> None:
    """Refuse, before anything is paid, what is not an http(s) address."""
    for url in urls:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise fail(
                f"{url!r} is not a web address",
                hint="give a URL that starts with https:// (or http:// on this machine)",
            )


def _last_history_id(opened: Wallet) -> int:
    newest = opened.history(limit=1)
    return newest[0].id if newest else 0


def _print_paid(opened: Wallet, after: int) -> None:
    """One line per payment made since history id `after`: what, how, and what is left."""
    made = [entry for entry in reversed(opened.history(limit=1000)) if entry.id > after]
    left = {info.label: info for info in opened.cards()}
    for entry in made:
        paid = format_micros(entry.charged_micros, entry.currency)
        info = left.get(entry.card_label)
        rest = (
            "" if info is None else f", {format_micros(info.value_left_micros, info.currency)} left"
        )
        outcome = "" if entry.outcome == "paid" else f" ({entry.outcome})"
        err_console.print(
            f"Paid {paid} with {entry.method}, card {entry.card_label}{rest}{outcome}",
            markup=False,
        )


def _preference(method: str | None) -> tuple[str, ...]:
    """The wallet's method order with `method` first (the default order without one)."""
    if method is None:
        return DEFAULT_PREFERENCE
    if method not in DEFAULT_PREFERENCE:
        raise fail(
            f"unknown payment method {method!r}",
            hint=f"choose one of {', '.join(DEFAULT_PREFERENCE)}",
        )
    return (method, *(other for other in DEFAULT_PREFERENCE if other != method))


def _fetch(client: httpx.Client, url: str) -> httpx.Response:
    response = client.get(url)
    if response.is_success:
        return response
    raise fail(f"{url}: {_why(response)}", hint=_status_hint(response.status_code))


def _why(response: httpx.Response) -> str:
    detail = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            problem = response.json()
            detail = str(problem.get("detail") or problem.get("title") or "")
        except ValueError:
            detail = ""
    return f"the vendor answered {response.status_code}" + (f" ({detail})" if detail else "")


def _status_hint(status: int) -> str | None:
    if status in (401, 402):
        return "the payment was refused; see `farthing wallet history`"
    return None


class _Target:
    """A file to write a bought body to, made ready before anything is paid.

    A temporary file beside the target is created first (proving the folder exists and is
    writable); the body replaces the target in one rename after it arrived.
    """

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise fail(f"{path} is a folder", hint="give a file name with -o")
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as exc:
            raise fail(
                f"cannot write to {path.parent}: {exc.strerror}",
                hint="nothing was paid; choose a folder that exists and is writable",
            ) from None
        os.close(fd)
        self.path = path
        self._temporary = Path(temporary)

    def keep(self, body: bytes) -> None:
        try:
            self._temporary.write_bytes(body)
            self._temporary.replace(self.path)
        except OSError as exc:
            raise fail(f"paid, but cannot write {self.path}: {exc.strerror}") from None

    def discard(self) -> None:
        self._temporary.unlink(missing_ok=True)


@contextmanager
def _writing(path: Path) -> Iterator[_Target]:
    target = _Target(path)
    try:
        yield target
    finally:
        target.discard()


def _check_outputs(urls: list[str], output: Path | None) -> None:
    """Refuse, before paying anything, a command whose bodies would have nowhere to go."""
    if len(urls) > 1 and output is None:
        raise fail(
            f"{len(urls)} URLs and no -o: the bodies would be paid for and thrown away",
            hint="give -o DIR to save each body in DIR (nothing was paid)",
        )
    if len(urls) > 1 and output is not None:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(
                f"cannot use {output} as the folder for the bodies: {exc.strerror}",
                hint="nothing was paid; give -o a folder",
            ) from None


def _get_one(client: httpx.Client, url: str, output: Path | None) -> None:
    if output is None:
        response = _fetch(client, url)
        sys.stdout.buffer.write(response.content)
        sys.stdout.buffer.flush()
        return
    with _writing(output) as target:
        response = _fetch(client, url)
        target.keep(response.content)
    err_console.print(f"Saved {len(response.content)} bytes to {output}")


def _get_many(client: httpx.Client, urls: list[str], output: Path) -> None:
    saved: list[tuple[str, int, str]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task("buying", total=len(urls))
        for number, url in enumerate(urls, start=1):
            name = httpx.URL(url).path.rstrip("/").rsplit("/", 1)[-1] or "index"
            with _writing(output / f"{number:03d}-{name}") as target:
                response = _fetch(client, url)
                target.keep(response.content)
            saved.append((url, len(response.content), str(target.path)))
            progress.advance(task)
    table = Table(title="Fetched")
    for column in ("URL", "Bytes", "Saved to"):
        table.add_column(column)
    for url, size, where in saved:
        table.add_row(url, str(size), where)
    console.print(table)


@app.command()
def quote(
    url: Annotated[str, typer.Argument(help="The URL whose price to ask")],
    card: Annotated[str | None, typer.Option("--card", help="Quote for this card only")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, max=3600, help="Seconds for the request")
    ] = 30.0,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Show what a URL costs and which card would pay, without paying (no unit is spent)."""
    from farthing.http.payment_auth import parse_challenges

    _check_urls([url])
    with _opened(wallet, passphrase_file) as opened, _explained():
        opened.pay_only_with(card)
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            response = client.get(url)
        if response.status_code != 402:
            console.print(f"{url} is free (the vendor answered {response.status_code})")
            return
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        offer = opened.quote(url, challenges)
    console.print(
        f"{url} costs {format_micros(offer.charged_micros, offer.currency)}: "
        f"{offer.method}, card {offer.card_label} ({offer.units} units). Nothing was paid.",
        markup=False,
    )


# --- history and policy --------------------------------------------------------------------


@app.command()
def history(
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=100_000, help="How many, newest first")
    ] = 50,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """What the wallet paid for, newest first."""
    with _opened(wallet, passphrase_file) as opened:
        entries = opened.history(limit=limit)
    if not entries:
        console.print("Nothing bought yet.")
        return
    console.print(_history_table(entries))


def _history_table(entries: list[HistoryEntry]) -> Table:
    table = Table(title="History")
    for column in ("When (UTC)", "URL", "Method", "Card", "Units", "Paid", "Outcome"):
        table.add_column(column, justify="right" if column in ("Units", "Paid") else "left")
    for entry in entries:
        outcome = entry.outcome if entry.status is None else f"{entry.outcome} ({entry.status})"
        table.add_row(
            _time(entry.at),
            entry.url,
            entry.method,
            entry.card_label,
            str(entry.units),
            format_micros(entry.charged_micros, entry.currency),
            outcome,
        )
    return table


@app.command()
def policy(
    per_request: Annotated[
        str | None,
        typer.Option("--per-request", help="Most per request, e.g. 0.05; none removes the limit."),
    ] = None,
    per_host: Annotated[
        str | None, typer.Option("--per-host", help="Most per site a day; none removes the limit.")
    ] = None,
    per_day: Annotated[
        str | None,
        typer.Option("--per-day", help="Most to all sites a day; none removes the limit."),
    ] = None,
    currency: Annotated[str, typer.Option("--currency")] = "EUR",
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Show the spending policy, or set limits for one currency (kept in the wallet); give
    a limit as none to remove it."""
    code = currency.upper()
    if len(code) != 3 or not code.isalpha():
        raise fail(f"{currency!r}: a currency is three letters", hint="e.g. --currency EUR")
    with _opened(wallet, passphrase_file) as opened:
        current = opened.policy
        if any(v is not None for v in (per_request, per_host, per_day)):
            with _explained():
                limits = _merged(current.limits_for(code), per_request, per_host, per_day)
            current = SpendingPolicy(
                limits={**current.limits, code: limits},
                default=current.default,
                retry_after_refusal=current.retry_after_refusal,
            )
            opened.use_policy(current, save=True)
    _show_policy(current)


_NO_LIMIT: Final = ("none", "off", "no-limit")


def _merged(
    base: Limits, per_request: str | None, per_host: str | None, per_day: str | None
) -> Limits:
    def value(text: str | None, old: int | None) -> int | None:
        if text is None:
            return old
        if text.strip().lower() in _NO_LIMIT:
            return None
        return parse_amount(text)[0]

    return Limits(
        per_request=value(per_request, base.per_request),
        per_host=value(per_host, base.per_host),
        per_day=value(per_day, base.per_day),
    )


def _show_policy(current: SpendingPolicy) -> None:
    table = Table(title="Spending policy (in the last 24 hours)")
    for column in ("Currency", "Per request", "Per host", "Per day"):
        table.add_column(column)
    rows: list[tuple[str, Limits | None]] = [*current.limits.items(), ("others", current.default)]
    for code, limits in rows:
        if limits is None:
            table.add_row(code, "refused", "refused", "refused")
            continue
        unit = code if code in current.limits else ""
        cells = (limits.per_request, limits.per_host, limits.per_day)
        table.add_row(code, *(_limit_text(value, unit) for value in cells))
    console.print(table)


def _limit_text(micros: int | None, currency: str) -> str:
    return "no limit" if micros is None else format_micros(micros, currency).strip()


def _time(unix: int) -> str:
    return _utc(unix, "%Y-%m-%d %H:%M:%S")


def _date(unix: int) -> str:
    return "never" if unix >= NO_EXPIRY else _utc(unix, "%Y-%m-%d")


def _utc(unix: int, layout: str) -> str:
    try:
        return datetime.fromtimestamp(unix, UTC).strftime(layout)
    except (OverflowError, ValueError, OSError):
        return "far future" if unix > 0 else "?"


# --- managing cards, the passphrase and backups ----------------------------------------------

passphrase_app = typer.Typer(
    help="The wallet passphrase.\n\nExample: farthing wallet passphrase change",
    no_args_is_help=True,
)
app.add_typer(passphrase_app, name="passphrase")


@cards_app.command("remove")
def cards_remove(
    card: CardArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask; the value left is lost")] = False,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Remove a card from the wallet (its history stays). The value left on it is lost
    unless the card is added again from its code."""
    with _opened(wallet, passphrase_file) as opened:
        info = next((c for c in opened.cards() if c.label == card), None)
        if info is None:
            raise fail(f"no card labelled {card!r}", hint="see `farthing wallet cards`")
        left = format_micros(info.value_left_micros, info.currency)
        if not yes and not typer.confirm(f"Remove {card} with {left} left?", err=True):
            raise fail("nothing removed")
        with _explained():
            opened.remove_card(card)
    console.print(f"Removed [bold]{escape(card)}[/] ({left} left on it)")


@cards_app.command("rename")
def cards_rename(
    card: CardArg,
    new_label: Annotated[str, typer.Argument(help="The new label")],
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Give a card another label."""
    with _opened(wallet, passphrase_file) as opened, _explained():
        info = opened.rename_card(card, new_label)
    console.print(f"[bold]{escape(card)}[/] is now [bold]{escape(info.label)}[/]")


@passphrase_app.command("change")
def passphrase_change(
    new_passphrase_file: Annotated[
        Path | None,
        typer.Option("--new-passphrase-file", help="Read the new passphrase from this file"),
    ] = None,
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Protect the wallet with a new passphrase (every secret is sealed again)."""
    from farthing.wallet.store import WalletStore

    path = _existing(wallet)
    old = _passphrase(passphrase_file)
    new = _new_passphrase(new_passphrase_file)
    with _explained(), console.status("sealing every secret again"):
        WalletStore.change_passphrase(path, old, new, rng=os.urandom)
    console.print(f"[bold]{path}[/] now opens with the new passphrase.")


def _new_passphrase(path: Path | None) -> str:
    if path is not None:
        return _passphrase(path)
    answer: str = typer.prompt(
        "New wallet passphrase", hide_input=True, confirmation_prompt=True, err=True
    )
    return answer


def _existing(wallet: Path | None) -> Path:
    path = _path(wallet)
    if not path.is_file():
        raise fail(f"no wallet at {path}", hint="create one with `farthing wallet init`")
    return path


@app.command("export")
def export_command(
    backup: Annotated[Path, typer.Argument(help="The backup file to write (must not exist)")],
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Write an encrypted backup of the whole wallet (it opens with the same passphrase)."""
    from farthing.wallet.backup import export_backup

    path = _existing(wallet)
    passphrase = _passphrase(passphrase_file)
    with _explained(), console.status("encrypting the backup"):
        size = export_backup(path, passphrase, backup, rng=os.urandom)
    console.print(f"Backup written to [bold]{backup}[/] ({size:,} bytes, mode 0600).")
    console.print("Restore it with `farthing wallet import FILE --wallet NEW`.")


@app.command("import")
def import_command(
    backup: Annotated[Path, typer.Argument(help="A file made by `farthing wallet export`")],
    wallet: WalletOpt = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Restore a backup as a new wallet file (never over an existing one)."""
    from farthing.wallet.backup import import_backup

    path = _path(wallet)
    if path.exists():
        raise fail(f"a wallet already exists at {path}", hint="restore to a new file with --wallet")
    passphrase = _passphrase(passphrase_file)
    with _explained(), console.status("decrypting the backup"):
        import_backup(backup, passphrase, path, rng=os.urandom)
    console.print(f"Restored [bold]{path}[/]; cards are where they were when the backup was made.")
