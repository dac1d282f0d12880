"""SQLite: a WAL fsync that fails on a real disk fails its payments (store/writer.py).

The other failure tests hold or fail a stand-in fsync (:class:`farthing.testing.GatedFsync`);
here the kernel itself fails it: the store lives on an ext4 file system on a loop device
(root only), shut down (``FS_IOC_SHUTDOWN``, the log not flushed) right after a batch's
commit returned and before its fsync began. Every write and fsync on it then returns EIO,
and what the commit left in the page cache never reaches the disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from farthing.core.errors import Unavailable
from farthing.store import open_store
from farthing.store.writer import StoreWriter
from tests.paywall.helpers import issue_chain_cards
from tests.store.helpers import spend_job

pytestmark = pytest.mark.anyio
EXPIRES = 4_000_000_000
FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32), linux/fs.h
SHUTDOWN_NOLOGFLUSH = 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 file system on a loop device, unmounted afterwards."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("mkfs.ext4", "mount")):
        pytest.skip("needs root, mkfs.ext4 and mount for a loop-mounted file system")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(64 << 20)
    if subprocess.run(["mkfs.ext4", "-q", str(image)], check=False).returncode:
        pytest.skip("mkfs.ext4 cannot make a file system here")
    if subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=False).returncode:
        pytest.skip("cannot mount a loop device here")
    try:
        yield mount
    finally:  # lazy: a descriptor the test left open must not keep the mount
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _shut_down(folder: Path) -> None:
    """The file system holding ``folder`` stops: every write and fsync on it fails (EIO)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", SHUTDOWN_NOLOGFLUSH))
    finally:
        os.close(fd)


async def test_an_fsync_that_fails_on_the_disk_fails_its_payment(
    failing_disk: Path, sqlite_template: Path
) -> None:
    """The disk fails between a batch's commit and its fsync: the payment is answered
    Unavailable with the fsync's EIO as its cause, never a success; ``durable()`` (what
    a resend served as retried waits for) fails too."""
    path = failing_disk / "store.sqlite"
    shutil.copyfile(sqlite_template, path)
    store = open_store(str(path), create=False)
    armed = [False]

    def after_commit(jobs: int, seconds: float) -> None:
        # StoreWriter calls it once a batch's commit returned, before that batch's fsync.
        if armed[0]:
            armed[0] = False
            _shut_down(failing_disk)

    writer = StoreWriter(store, observe=after_commit)
    cards = issue_chain_cards(store, 2)
    try:
        assert await writer.run_hot(spend_job(cards[0].card_id, 0, b"\x01" * 32, EXPIRES)) == "won"
        armed[0] = True
        with pytest.raises(Unavailable) as failed:
            await writer.run_hot(spend_job(cards[1].card_id, 0, b"\x02" * 32, EXPIRES))
        assert not armed[0]  # the disk failed after the commit (the commit itself went through)
        assert isinstance(failed.value.__cause__, OSError)
        assert failed.value.__cause__.errno == errno.EIO
        with pytest.raises(Unavailable):
            await writer.durable()
    finally:
        with contextlib.suppress(Exception):
            await writer.aclose()
        with contextlib.suppress(Exception):
            store.close()
