"""``python -m napari_infection_clock``: the ``infection-clock`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
