"""farthing.logs: the same warning is written at most ``burst`` times per interval, with a
count of what was dropped; access-log lines (INFO) are never dropped."""

from __future__ import annotations

import logging
import subprocess
import sys

from farthing.logs import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(
    line: int, level: int = logging.ERROR, msg: str = "accept failed fd=%d"
) -> logging.LogRecord:
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        exc_info = sys.exc_info()
    return logging.LogRecord("asyncio", level, "selector_events.py", line, msg, (line,), exc_info)


def test_the_same_error_is_written_burst_times_per_interval_then_counted() -> None:
    clock = Clock()
    log = RateLimitedLog(burst=3, per=60, clock=clock)
    written = [log.filter(_record(165)) for _ in range(1000)]
    assert sum(written) == 3
    clock.now = 61
    after = _record(165)
    assert log.filter(after)
    assert "[997 more like this dropped in the last 60 s]" in after.getMessage()


def test_other_call_sites_and_info_lines_are_not_held_back() -> None:
    log = RateLimitedLog(burst=1, per=60, clock=Clock())
    assert log.filter(_record(165))
    assert not log.filter(_record(165))
    assert log.filter(_record(200))  # another logging call
    assert all(log.filter(_record(165, logging.INFO)) for _ in range(100))


_FLOOD = """
import logging.config, uvicorn.config
from farthing.logs import rate_limited_log_config
logging.config.dictConfig(rate_limited_log_config(uvicorn.config.LOGGING_CONFIG))
for _ in range(500):
    logging.getLogger("asyncio").error("socket.accept() out of system resource")
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    logging.getLogger("farthing.guard").warning("connection cap reached")
"""


def test_uvicorn_asyncio_and_farthing_records_pass_the_filter() -> None:
    """With the logging config serving.py gives uvicorn (in a child process: it is global
    state), a flood of asyncio errors (root logger), uvicorn warnings and farthing's own
    writes ten lines each, not five hundred."""
    done = subprocess.run(
        [sys.executable, "-c", _FLOOD], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert sum("out of system resource" in line for line in lines) == 10
    assert sum("Invalid HTTP request" in line for line in lines) == 10
    assert sum("connection cap reached" in line for line in lines) == 10


class CountingStream:
    """A text stream that keeps each ``write`` apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        return None


def test_access_lines_of_one_loop_pass_are_one_write() -> None:
    """The access log's handler: 30 lines logged in one pass of the event loop reach the
    stream as one write right after the pass, in order; outside a loop, at once."""
    import asyncio

    from farthing.logs import LoopBufferedHandler

    stream = CountingStream()
    handler = LoopBufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("farthing.test.buffered")
    logger.propagate, logger.handlers = False, [handler]
    logger.setLevel(logging.INFO)

    async def one_pass() -> int:
        for n in range(30):
            logger.info("line %d", n)
        written = len(stream.writes)
        await asyncio.sleep(0)
        return written

    assert asyncio.run(one_pass()) == 0
    assert stream.writes == ["".join(f"line {n}\n" for n in range(30))]
    logger.info("outside")
    assert stream.writes[-1] == "outside\n"
    assert len(stream.writes) == 2


def test_the_access_log_handler_is_the_buffered_one() -> None:
    from uvicorn.config import LOGGING_CONFIG

    from farthing.logs import rate_limited_log_config

    config = rate_limited_log_config(LOGGING_CONFIG)
    assert config["handlers"]["farthing_access"]["class"] == "farthing.logs.LoopBufferedHandler"
