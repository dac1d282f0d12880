"""Run every benchmark section: ``python -m bench [--quick] [section ...]``.

Sections, in order: core, e2e (end to end over loopback), scale (up to 10^6 cards),
profile (where a paid request's time goes). Each also runs alone: ``python -m bench.<name>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from bench import core, e2e, profile, scale

SECTIONS: dict[str, Callable[[], None]] = {
    "core": core.main,
    "e2e": e2e.main,
    "scale": scale.main,
    "profile": profile.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a few minutes)")
    parser.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: all)")
    args = parser.parse_args()
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
