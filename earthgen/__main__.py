import sys

from earthgen.cli import main

sys.exit(main())
