import sys

from freezeframe.cli import main

sys.exit(main())
