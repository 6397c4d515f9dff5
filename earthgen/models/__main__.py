"""``python -m earthgen.models``: the build steps' command line (:mod:`earthgen.commands.models`).

Nothing imports this module; it is the entry point kept for the documented command."""

import sys

from earthgen.commands.models import main

if __name__ == "__main__":
    sys.exit(main())
