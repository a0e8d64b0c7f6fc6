"""``infection-clock``: the headless front of the core (train, predict, evaluate, sample, demo).

A thin layer: :mod:`.parser` turns the command line into a command's typed options
(:mod:`.options`), and the command functions (one module each) drive the core's
generators with progress bars. Callers such as ``demo`` call the command functions
directly. User mistakes become one clear line and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

from .parser import parse


def main(argv: list[str] | None = None) -> int:
    command, options, run = parse(argv)
    from .common import USER_ERRORS  # after parsing: --help and argument errors need no torch

    try:
        return int(run(options) or 0)
    except USER_ERRORS as exc:
        print(f"infection-clock {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infection-clock {command}: interrupted", file=sys.stderr)
        return 130
