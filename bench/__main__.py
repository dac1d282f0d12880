"""Run every benchmark section: ``python -m bench [--quick]``."""

from __future__ import annotations

import sys

from bench import core


def main() -> None:
    sys.argv = [sys.argv[0], *sys.argv[1:]]
    core.main()


if __name__ == "__main__":
    main()
