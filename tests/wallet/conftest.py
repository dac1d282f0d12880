"""SoftHSM2 fixtures: one token directory per test process, one fresh token per test.

SoftHSM2 reads ``SOFTHSM2_CONF`` when its module is initialised, and python-pkcs11 keeps one
loaded module per path for the whole process, so every test in a process shares one
configuration (a session-scoped temp dir). Each test gets its own token label in it.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from farthing.wallet.pkcs11_card import SoftHsmToken, init_softhsm_token

USER_PIN = "4711-user"
SO_PIN = "so-secret-0815"


@pytest.fixture(scope="session")
def softhsm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The one SoftHSM2 directory of this test process; restores SOFTHSM2_CONF afterwards."""
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (softhsm2-util not on PATH); run `make sysdeps`")
    # init_softhsm_token points SOFTHSM2_CONF at its token directory; put back what was there
    # (or remove it) afterwards, so later tests in this process see the caller's value.
    before = os.environ.get("SOFTHSM2_CONF")
    try:
        yield tmp_path_factory.mktemp("softhsm")
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="session")
def token_labels() -> Iterator[str]:
    return (f"farthing-test-{n}" for n in itertools.count())


@pytest.fixture
def softhsm_token(softhsm_home: Path, token_labels: Iterator[str]) -> SoftHsmToken:
    """A fresh, empty SoftHSM2 token with a label no other test uses."""
    return init_softhsm_token(
        softhsm_home,
        label=next(token_labels),
        user_pin=USER_PIN,
        so_pin=SO_PIN,
    )
