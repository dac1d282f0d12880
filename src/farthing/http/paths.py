"""The one canonical form of a request path, decided before anything is priced.

A path is priced, offered, bound into a seal (or an HLL offer) and looked up as a file. If
those steps may each read the request differently (``//a`` and ``/a``, ``%2F`` and ``/``,
``a/../b``, a trailing slash that a file system or Starlette's ``StaticFiles`` drops), a
request can be priced as one thing and served as another. So the paywall works out one
string here, once, and every later step uses that string; or it refuses the request.

The rule. From the request target's path as it came on the wire (ASGI ``raw_path``; when a
server does not give it, from ``path``), a path is *canonical* when:

- it starts with ``/`` and has no empty segment (no ``//``), except that it may end with
  ``/`` (see the trailing-slash rule);
- no segment is ``.`` or ``..``, whether written plainly or percent-encoded (``%2e``);
- the raw path holds only printable ASCII other than ``\\`` (no space, no control byte, no
  byte over 0x7F), every ``%`` starts a two-digit hex escape, and no escape encodes ``/``
  or ``\\`` (``%2F``, ``%5C``, in any case);
- its percent-decoding is valid UTF-8 with no control or other non-printing character
  (``str.isprintable``; a space is allowed) and no ``\\``;
- that decoding is exactly the server's ``path``: the string priced is the string decoded.

Trailing slash. A path ending in ``/`` (other than ``/`` itself) is refused when the same
path without that slash is priced: ``/articles/a.txt/`` under ``/articles/*`` or the
starter ``/**``. A slash-ended route that is priced as such (FastAPI's ``/items/{id}/`` is
``/items/*/``) keeps working, since ``/items/3`` is not priced by ``/items/*/``.

The canonical path is the decoded string itself: accepted paths are never rewritten, only
refused (the paywall answers 404, asks for nothing and charges nothing).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote_to_bytes

from farthing.core.errors import NotFound

__all__ = ["canonical_path"]

# A raw path byte that is not printable ASCII, a backslash, or a % that does not begin
# a two-digit hex escape.
_BAD_RAW: Final = re.compile(r"[^\x21-\x7e]|\\|%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR: Final = re.compile(r"%(?:2[Ff]|5[Cc])")
# An empty segment (``//``), or a ``.`` or ``..`` segment, in a decoded path.
_BAD_SEGMENT: Final = re.compile(r"//|/\.\.?(?:/|\Z)")


def _never(path: str) -> bool:
    return False


def canonical_path(
    path: str, raw_path: bytes | None, *, priced: Callable[[str], object] = _never
) -> str:
    """The canonical path of a request (ASGI ``path`` and ``raw_path``), or
    :class:`NotFound` saying which rule it breaks. ``priced(p)`` tells whether ``p`` has a
    price (for the trailing-slash rule)."""
    text = path if raw_path is None else _decode(raw_path)
    if text != path:
        raise NotFound("the path decodes to another string than the one requested")
    if not text.startswith("/"):
        raise NotFound("the path does not start with /")
    if _BAD_SEGMENT.search(text):
        raise NotFound("the path has an empty, . or .. segment")
    if "\\" in text or not text.isprintable():
        raise NotFound("the path has a backslash or a non-printing character")
    if len(text) > 1 and text.endswith("/") and priced(text[:-1]):
        raise NotFound("a priced path with a trailing slash")
    return text


def _decode(raw_path: bytes) -> str:
    # Some servers leave the query on raw_path; a ? in a path is always escaped (%3F).
    raw = raw_path.split(b"?", 1)[0]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise NotFound("the raw path is not ASCII") from None
    if _BAD_RAW.search(text):
        raise NotFound("the raw path has a space, control byte, backslash or bad escape")
    if "%" not in text:
        return text
    if _ENCODED_SEPARATOR.search(text):
        raise NotFound("the raw path encodes a slash or backslash")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound("the path does not decode to UTF-8") from None
