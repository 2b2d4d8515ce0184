"""``python -m pyae ...``: the same as the ``pyae`` console script."""
import sys

from pyae.cli import main

if __name__ == "__main__":
    sys.exit(main())
