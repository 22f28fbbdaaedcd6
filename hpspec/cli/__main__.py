"""`python -m hpspec.cli`."""

import sys

from hpspec.cli.app import main

sys.exit(main())
