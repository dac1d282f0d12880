"""Run every benchmark section: ``python -m bench [--quick] [section ...]``.

Sections, in order: core, e2e (end to end over loopback), clearing (HLL deposit items per
second at the bank), bank (online HLL verifications at the bank alone), scale (up to 10^6
cards), profile (where a paid request's time goes).
Each also runs alone: ``python -m bench.<name>``.

``python -m bench quick`` (``make bench-quick``) is a subset for quick comparisons, under
two minutes: core (short), end to end on SQLite with one worker and one round, clearing on
SQLite. It prints its figures and leaves docs/benchmarks.md alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from bench import bank, clearing, core, e2e, profile, scale

SECTIONS: dict[str, Callable[[], None]] = {
    "core": core.main,
    "e2e": e2e.main,
    "clearing": clearing.section,
    "bank": bank.section,
    "scale": scale.main,
    "profile": profile.main,
}


def quick() -> None:
    """The quick subset: SQLite only, one worker, printed (no docs written)."""
    started = time.monotonic()
    print(core.render(core.run(True)), flush=True)
    e2e.quick()
    for result in clearing.run(quick=True, backends=("sqlite",)):
        print(result.line(), flush=True)
    print(f"[bench] quick took {time.monotonic() - started:.0f} s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a few minutes)")
    parser.add_argument(
        "sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: all), or quick"
    )
    args = parser.parse_args()
    if args.sections == ["quick"]:
        quick()
        return
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    for name in args.sections or list(SECTIONS):
        sys.argv = [f"bench.{name}", *(["--quick"] if args.quick else [])]
        started = time.monotonic()
        SECTIONS[name]()
        print(f"[bench] {name} took {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
