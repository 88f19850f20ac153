"""``python -m dspydantic``: the ``dspydantic`` command."""

import sys

from .cli import main

sys.exit(main())
