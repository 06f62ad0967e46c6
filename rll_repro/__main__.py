import sys

from rll_repro.cli import main

sys.exit(main())
