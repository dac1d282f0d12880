import inspect

import pytest

from farthing.core import errors
from farthing.core.errors import ErrorCode, FarthingError, LocalProtocolError, RemoteProtocolError


def error_classes() -> list[type[FarthingError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, FarthingError)
    ]


def test_codes_unique_and_in_ranges() -> None:
    values = [code.value for code in ErrorCode]
    assert len(values) == len(set(values))
    assert all(1000 <= v < 10000 for v in values)


def test_every_concrete_error_sits_under_local_or_remote() -> None:
    for cls in error_classes():
        if cls in (FarthingError, LocalProtocolError, RemoteProtocolError):
            continue
        assert issubclass(cls, LocalProtocolError) != issubclass(cls, RemoteProtocolError), cls


def test_leaf_classes_have_distinct_default_codes() -> None:
    leaves = [c for c in error_classes() if not c.__subclasses__()]
    codes = [c.default_code for c in leaves]
    assert len(codes) == len(set(codes))


def test_remote_errors_hint_client_statuses() -> None:
    for cls in error_classes():
        if issubclass(cls, RemoteProtocolError):
            assert 400 <= cls.http_status < 500, cls


def test_code_override_and_repr() -> None:
    err = errors.InvalidPayment("bad", code=ErrorCode.SEAL_BROKEN)
    assert err.code is ErrorCode.SEAL_BROKEN
    assert "SEAL_BROKEN" in repr(err)
    with pytest.raises(RemoteProtocolError):
        raise err


def test_all_is_sorted_and_complete() -> None:
    public = [*sorted(c.__name__ for c in error_classes()), "ErrorCode"]
    assert sorted(errors.__all__) == sorted(public)
