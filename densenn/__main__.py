"""``python -m densenn``: the same as the ``densenn`` command."""
import sys

from densenn.cli import main

sys.exit(main())
