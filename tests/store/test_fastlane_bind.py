"""A fast-lane statement's parameters are bound without SQLAlchemy's ``construct_params``
walk (store/_fastlane.py ``FastStatement.bind``): the driver must get exactly what
``construct_params`` gives, for every statement the store runs on the fast lane, in both
dialects' paramstyles (SQLite positional, psycopg named)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from sqlalchemy import Dialect, bindparam, column, exc, select, table
from sqlalchemy.dialects import postgresql, sqlite

from farthing.store._fastlane import FastStatement
from farthing.store._hll import _ONLINE
from farthing.store._hot import HotStatements, PreparedHot
from farthing.store._ledger import _POST

DIALECTS = [sqlite.dialect(), postgresql.psycopg.dialect()]  # type: ignore[attr-defined]


def _statements(dialect: Dialect) -> dict[str, FastStatement]:
    found: dict[str, FastStatement] = {}
    for group in (
        PreparedHot.build(HotStatements.build(), dialect),
        _ONLINE.get(dialect),
        _POST.get(dialect),
    ):
        for field in dataclasses.fields(group):  # type: ignore[arg-type]
            statement = getattr(group, field.name)
            if isinstance(statement, FastStatement):
                found[f"{type(group).__name__}.{field.name}"] = statement
    return found


def _caller_params(statement: FastStatement) -> dict[str, object]:
    """A distinct value for each parameter the caller must give."""
    values = itertools.count(1)
    compiled = statement.compiled
    return {name: next(values) for bind, name in compiled.bind_names.items() if bind.required}


def _expected(statement: FastStatement, params: dict[str, object]) -> object:
    values = statement.compiled.construct_params(dict(params))
    if statement.order is None:
        return dict(values)
    return tuple(values[name] for name in statement.order)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_every_fast_statement_binds_as_construct_params_does(dialect: Dialect) -> None:
    statements = _statements(dialect)
    assert len(statements) >= 15
    for name, statement in statements.items():
        assert statement.constants is not None, name  # none needs the slow binding
        params = _caller_params(statement)
        assert statement.bind(params) == _expected(statement, params), name


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_statement_constant_is_bound_and_can_be_given(dialect: Dialect) -> None:
    t = table("t", column("k"), column("v"))
    statement = FastStatement.prepare(
        select(t.c.v).where(t.c.k == bindparam("k"), t.c.v == "active"), dialect
    )
    assert statement.bind({"k": 7}) == _expected(statement, {"k": 7})
    assert "active" in list(_values(statement.bind({"k": 7})))
    given = {"k": 7, "v_1": "blocked"}
    assert statement.bind(given) == _expected(statement, given)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_missing_parameter_is_refused_as_construct_params_refuses_it(dialect: Dialect) -> None:
    t = table("t", column("k"), column("v"))
    statement = FastStatement.prepare(select(t.c.v).where(t.c.k == bindparam("k")), dialect)
    with pytest.raises(exc.InvalidRequestError):
        statement.compiled.construct_params({})
    with pytest.raises(exc.InvalidRequestError):
        statement.bind({})


def test_an_expanding_parameter_keeps_sqlalchemys_binding() -> None:
    t = table("t", column("k"))
    statement = FastStatement.prepare(
        select(t.c.k).where(t.c.k.in_(bindparam("ks", expanding=True))), sqlite.dialect()
    )
    assert statement.constants is None


def _values(bound: object) -> object:
    return bound.values() if isinstance(bound, dict) else bound
