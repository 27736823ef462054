"""`python -m timelined` is `timelined`."""

import sys

from timelined.cli import main

sys.exit(main())
