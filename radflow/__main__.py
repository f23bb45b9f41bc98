"""``python -m radflow`` = the ``radflow`` command."""

import sys

from radflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
