"""Canonical, versioned, domain-separated byte strings, and their compact text form.

Every message farthing hashes, MACs, signs or sends has exactly one byte encoding::

    message  = version:u8 || len(domain):u8 || domain:ascii || field*
    field    = u64       8 bytes, big-endian (amounts, indexes, counters, times)
             | bytes     len:u16 big-endian || raw bytes
             | text      len:u16 big-endian || UTF-8 in NFC, no control characters

The domain names the message kind (``farthing/hll/purchase``), so a MAC or signature made
for one kind can never be read as another. The field order and kinds are fixed per kind by
the code that encodes it; decoding reads the same fields back and rejects anything else:
a wrong version or domain, a short or long buffer, an over-long field, text that is not
canonical UTF-8. Because every field is length-prefixed or fixed-width and trailing bytes
are refused, two different messages never share an encoding.

The text form used in HTTP is base64url without padding; decoding it is strict too
(no padding, no foreign characters, no non-zero spare bits).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import functools
import re
import struct
import unicodedata
from typing import Final

from farthing.core.errors import ErrorCode, MalformedMessage

__all__ = [
    "MAX_FIELD",
    "VERSION",
    "Reader",
    "Writer",
    "b64url_decode",
    "b64url_encode",
    "header",
]

VERSION: Final = 1
MAX_FIELD: Final = 0xFFFF
_U64_MAX: Final = (1 << 64) - 1
_B64URL: Final = re.compile(rb"\A[A-Za-z0-9_-]*\Z")
_B64URL_VALUE: Final = {
    c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# The bits of the last character that no byte uses, by the text's length mod 4: the
# canonical encoding leaves them zero.
_SPARE_BITS: Final = (0, 0, 0x0F, 0x03)
_U64: Final = struct.Struct(">Q")
_U16: Final = struct.Struct(">H")
# Unicode's control characters (general category Cc) are exactly C0, DEL and C1.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


@functools.lru_cache(maxsize=128)
def header(domain: str, version: int = VERSION) -> bytes:
    """The prefix of every message of kind ``domain`` (kept: every Reader and Writer asks
    for one, and the kinds are a few constants)."""
    raw = domain.encode("ascii")
    if not 0 < len(raw) < 256 or not 0 < version < 256:
        raise ValueError("domain must be 1..255 ASCII bytes and version 1..255")
    return bytes((version, len(raw))) + raw


def u64(value: int) -> bytes:
    """Eight big-endian bytes; raises ValueError outside 0..2**64-1."""
    if not 0 <= value <= _U64_MAX:
        raise ValueError("u64 out of range")
    return _U64.pack(value)


class Writer:
    """Builds one canonical message. ``Writer(domain).u64(1).bytes(b"x").finish()``."""

    __slots__ = ("_parts",)

    def __init__(self, domain: str, version: int = VERSION) -> None:
        self._parts: list[bytes] = [header(domain, version)]

    def u64(self, value: int) -> Writer:
        self._parts.append(u64(value))
        return self

    def bytes(self, value: builtins.bytes) -> Writer:
        if len(value) > MAX_FIELD:
            raise ValueError("field longer than 65535 bytes")
        self._parts.append(_U16.pack(len(value)) + value)
        return self

    def text(self, value: str) -> Writer:
        _check_text(value)
        return self.bytes(value.encode("utf-8"))  # which bounds its length

    def finish(self) -> builtins.bytes:
        return b"".join(self._parts)


class Reader:
    """Reads one canonical message back; every failure is a :class:`MalformedMessage`.

    Call the field readers in the order the writer wrote them, then :meth:`finish`,
    which refuses trailing bytes.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: builtins.bytes, domain: str, *, max_size: int = 4096) -> None:
        if not isinstance(data, bytes):
            raise MalformedMessage("message must be bytes")
        if len(data) > max_size:
            raise MalformedMessage("message too large", code=ErrorCode.OVERSIZED)
        expected = header(domain)
        if data[:1] and data[0] != VERSION:
            raise MalformedMessage("unknown message version", code=ErrorCode.UNKNOWN_VERSION)
        if len(data) < len(expected):
            raise MalformedMessage("message truncated", code=ErrorCode.TRUNCATED)
        if data[: len(expected)] != expected:
            raise MalformedMessage("wrong message kind", code=ErrorCode.WRONG_DOMAIN)
        self._data = data
        self._pos = len(expected)

    def _take(self, n: int) -> builtins.bytes:
        end = self._pos + n
        if end > len(self._data):
            raise MalformedMessage("message truncated", code=ErrorCode.TRUNCATED)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u64(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def bytes(self, *, max_len: int = MAX_FIELD, exact: int | None = None) -> builtins.bytes:
        (length,) = _U16.unpack(self._take(2))
        if exact is not None and length != exact:
            raise MalformedMessage("field has the wrong length", code=ErrorCode.BAD_FIELD)
        if length > max_len:
            raise MalformedMessage("field too long", code=ErrorCode.OVERSIZED)
        return self._take(length)

    def text(self, *, max_len: int = 1024) -> str:
        raw = self.bytes(max_len=max_len)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("text is not UTF-8", code=ErrorCode.NON_CANONICAL) from None
        try:
            _check_text(value)  # its length: at most max_len bytes, read as such
        except ValueError:
            raise MalformedMessage("text is not canonical", code=ErrorCode.NON_CANONICAL) from None
        return value

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessage("trailing bytes after message", code=ErrorCode.NON_CANONICAL)


def _check_text(value: str) -> None:
    if not value.isascii() and not unicodedata.is_normalized("NFC", value):
        raise ValueError("text must be in Unicode NFC")
    if _CONTROL.search(value):
        raise ValueError("text must not contain control characters")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes, *, max_len: int = 65536) -> bytes:
    """Strict inverse of :func:`b64url_encode`: rejects padding, foreign characters and
    encodings with non-zero spare bits, so every byte string has exactly one text form."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if len(raw) > max_len:
        raise MalformedMessage("base64url text too long", code=ErrorCode.OVERSIZED)
    if not _B64URL.match(raw) or len(raw) % 4 == 1:
        raise MalformedMessage("not base64url without padding", code=ErrorCode.NON_CANONICAL)
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise MalformedMessage("not base64url", code=ErrorCode.NON_CANONICAL) from None
    # Over this alphabet, the text is canonical iff its last character's spare bits are
    # zero (the same answer as encoding ``data`` again and comparing, without the copy).
    if raw and _B64URL_VALUE[raw[-1]] & _SPARE_BITS[len(raw) % 4]:
        raise MalformedMessage("non-canonical base64url", code=ErrorCode.NON_CANONICAL)
    return data
