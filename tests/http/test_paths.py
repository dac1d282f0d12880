"""The canonical-path rule (farthing.http.paths): what it accepts, what it refuses, and that
nothing it accepts can be normalised into another path."""

from __future__ import annotations

import posixpath
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core.errors import NotFound
from farthing.http.paths import canonical_path

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def as_uvicorn(raw: str) -> str:
    """``scope["path"]`` as uvicorn decodes a request target."""
    return urllib.parse.unquote(raw) if "%" in raw else raw


def priced_everywhere(path: str) -> bool:
    return True


segment = st.text(min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and "/" not in s and "\\" not in s and s.isprintable()
)
paths = st.lists(segment, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))


@st.composite
def encodings(draw: st.DrawFn, path: str) -> str:
    """``path`` percent-encoded the way some client might: each safe byte either as it is
    or escaped, in either hex case; every other byte escaped."""
    out = []
    for byte in path.encode():
        if byte == ord("/"):
            out.append("/")
        elif byte in UNRESERVED and draw(st.booleans()):
            out.append(chr(byte))
        else:
            escape = f"%{byte:02X}"
            out.append(escape.lower() if draw(st.booleans()) else escape)
    return "".join(out)


@given(st.data(), paths)
def test_a_plain_path_in_any_encoding_is_itself(data: st.DataObject, path: str) -> None:
    raw = data.draw(encodings(path))
    assert canonical_path(as_uvicorn(raw), raw.encode()) == path
    assert canonical_path(path, None) == path


PIECES = ["a", "b.txt", "/", "//", ".", "..", "%2e", "%2E%2e", "%2F", "%2f", "%5C", "%5c",
          "\\", "%00", "%1f", "%7F", "%", "%zz", "%C3%A9", "%C3", "%20", "?q", "%252F"]  # fmt: skip


@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8))
def test_nothing_accepted_can_be_normalised_into_another_path(pieces: list[str]) -> None:
    """Whatever a hostile target is made of, an accepted path is the decoded target, and
    normalising it (what StaticFiles or a file system does) changes nothing."""
    raw = "/" + "".join(pieces)
    path = as_uvicorn(raw.split("?")[0])
    try:
        result = canonical_path(path, raw.encode(), priced=priced_everywhere)
    except NotFound:
        return
    assert result == path
    assert posixpath.normpath(result) == result
    assert "\\" not in result
    assert result.isprintable()
    assert canonical_path(result, urllib.parse.quote(result).encode()) == result


@given(paths, st.integers(0, 4), st.sampled_from(["", "/", ".", "..", "%2e", "%2F", "%5C", "\\"]))
def test_a_bad_segment_anywhere_is_refused(path: str, at: int, bad: str) -> None:
    parts = path.split("/")
    where = 1 + at % len(parts)
    parts.insert(where, bad)
    if where == len(parts) - 1:
        parts.append("x")  # inside the path: an empty last segment is a trailing slash
    raw = "/".join(parts)
    with pytest.raises(NotFound):
        canonical_path(as_uvicorn(raw), raw.encode())


@pytest.mark.parametrize(
    "raw",
    [
        "//articles/x.txt", "/articles//x.txt", "/articles/%2Fx.txt", "/articles%2fx.txt",
        "/articles/./x.txt", "/./articles/x.txt", "/articles/.", "/articles/..",
        "/articles/%2e%2e/x.txt", "/articles/.%2E/x.txt", "/articles/%2e/x.txt",
        "/articles\\x.txt", "/articles/%5Cx.txt", "/articles/%5cx.txt", "/a/..%2F..%2Fb",
        "/articles/%00.txt", "/articles/%01.txt", "/a%7F", "/a%C2%85", "/a%E2%80%AE",
        "/a b", "/a\x01", "/%", "/%z1", "/%C3", "/%FF", "articles/x.txt", "*", "",
        "/articles/x.txt%2F",
    ],
)  # fmt: skip
def test_every_listed_form_is_refused(raw: str) -> None:
    with pytest.raises(NotFound):
        canonical_path(as_uvicorn(raw), raw.encode("latin-1"))


def test_a_path_that_is_not_the_decoded_target_is_refused() -> None:
    with pytest.raises(NotFound):
        canonical_path("/articles/x.txt", b"/articles/y.txt")
    with pytest.raises(NotFound):
        canonical_path("/articles/\ufffd", b"/articles/%FF")  # a server's lossy decoding
    with pytest.raises(NotFound):
        canonical_path("/caf\u00e9", "/caf\u00e9".encode())  # raw bytes on the wire


def test_no_raw_path_checks_the_path_itself() -> None:
    assert canonical_path("/articles/x.txt", None) == "/articles/x.txt"
    for path in ("//x", "/a/./b", "/a/../b", "/a\\b", "/a\x00"):
        with pytest.raises(NotFound):
            canonical_path(path, None)


def test_a_query_left_on_the_raw_path_is_not_part_of_it() -> None:
    assert canonical_path("/a/b", b"/a/b?x=%2F..") == "/a/b"


def test_the_trailing_slash_rule() -> None:
    priced = {"/articles/x.txt", "/items/3/"}.__contains__
    with pytest.raises(NotFound):
        canonical_path("/articles/x.txt/", b"/articles/x.txt/", priced=priced)
    assert canonical_path("/items/3/", b"/items/3/", priced=priced) == "/items/3/"
    assert canonical_path("/about/", b"/about/", priced=priced) == "/about/"
    assert canonical_path("/", b"/", priced=priced_everywhere) == "/"
    with pytest.raises(NotFound):
        canonical_path("/anything/", b"/anything/", priced=priced_everywhere)  # /** prices all
