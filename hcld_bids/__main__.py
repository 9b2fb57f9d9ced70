"""``python -m hcld_bids`` runs the command line."""

import sys

from .cli.run import main

if __name__ == "__main__":
    sys.exit(main())
