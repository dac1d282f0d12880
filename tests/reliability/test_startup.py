"""Workers starting at once on a fresh vendor config (``uvicorn --workers N``).

The challenge secret is made on first use. Every worker reads the config at the same
moment, so the file must appear whole and once: no worker may crash on a half-written
file or on losing the race to create it, and all must end up with the same secret (else
a challenge issued by one worker would be refused by the other).
"""

from __future__ import annotations

import threading
from pathlib import Path

from farthing.paywall.config import load_vendor_config
from farthing.paywall.serve import app_from_config
from tests.reliability.world import issuer_keys, write_vendor_config


def test_workers_reading_a_fresh_config_at_once_share_one_secret(tmp_path: Path) -> None:
    failures: list[str] = []
    for round_ in range(40):
        folder = tmp_path / f"vendor-{round_}"
        folder.mkdir()
        config = write_vendor_config(
            folder, str(folder / "v.sqlite"), issuer_keys(), bytes(32),
            hll_mode="online", issuer_url="http://127.0.0.1:9", deposit_interval=60,
        )  # fmt: skip
        text = config.read_text().replace('keys = "vendor.keys.json"', _inline_keys())
        config.write_text(text)
        secrets, errors = start_at_once(config, workers=4)
        assert len(set(secrets)) <= 1, "workers started with different challenge secrets"
        failures += errors
    assert failures == []


def start_at_once(config: Path, *, workers: int) -> tuple[list[bytes], list[str]]:
    """Every worker reads the config at the same instant: their secrets and crashes."""
    secrets: list[bytes] = []
    errors: list[str] = []
    barrier = threading.Barrier(workers)

    def start() -> None:
        barrier.wait()
        try:
            secrets.append(load_vendor_config(config).settings.challenge_secret)
        except Exception as error:  # what a worker would die of
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=start) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return secrets, errors


def _inline_keys() -> str:
    keys = issuer_keys()
    return (
        f'chain_master = "{keys.szm_chain_master.hex()}"\n'
        f'prbg_master = "{keys.szm_prbg_master.hex()}"'
    )


def test_a_vendor_without_hll_starts(tmp_path: Path) -> None:
    config = tmp_path / "vendor.toml"
    keys = issuer_keys()
    config.write_text(
        'realm = "r"\ndatabase = "v.sqlite"\n[prices]\n"/a/*" = "2000 EUR"\n[szm]\n'
        + _inline_keys()
        + '\n[payword]\nvendor_id = "shop"\nbroker_id = "b"\n'
        + f'broker_public_key = "{keys.broker_public_key.hex()}"\nunit_micros = 1000\n'
    )
    app_from_config(load_vendor_config(config))
