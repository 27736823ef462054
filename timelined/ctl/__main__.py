"""`python -m timelined.ctl` is `timelinectl`."""

import sys

from timelined.ctl.main import main

sys.exit(main())
