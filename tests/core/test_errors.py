import inspect

import pytest

from farthing.core import errors
from farthing.core.errors import (
    CLASS_OF_CODE,
    ErrorCode,
    ExternalFailure,
    FarthingError,
    LocalProtocolError,
    RemoteProtocolError,
)

BRANCHES = (LocalProtocolError, RemoteProtocolError, ExternalFailure)


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


def test_every_concrete_error_sits_under_exactly_one_branch() -> None:
    for cls in error_classes():
        if cls is FarthingError or cls in BRANCHES:
            continue
        assert [issubclass(cls, branch) for branch in BRANCHES].count(True) == 1, cls


def test_every_code_is_raised_as_one_class_and_each_class_by_its_default() -> None:
    assert set(CLASS_OF_CODE) == set(ErrorCode)
    for cls in error_classes():
        if cls is not FarthingError and cls not in BRANCHES[1:]:
            assert CLASS_OF_CODE[cls.default_code] is cls, cls


def test_outages_are_external_failures_not_misuse() -> None:
    outages = [
        ErrorCode.ISSUER_UNAVAILABLE,
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.DEVICE_FAILED,
        ErrorCode.WALLET_BUSY,
    ]
    for code in outages:
        assert issubclass(CLASS_OF_CODE[code], ExternalFailure), code
        assert not issubclass(CLASS_OF_CODE[code], LocalProtocolError), code
        assert CLASS_OF_CODE[code].http_status == 503


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
    public = [*sorted(c.__name__ for c in error_classes()), "ErrorCode", "CLASS_OF_CODE"]
    assert sorted(errors.__all__) == sorted(public)
