"""Moved to :mod:`dspydantic.persist` (a package: format, atomic write, 0.1.x reader, schema drift); this
alias keeps ``from dspydantic._persist import ...`` working."""

from __future__ import annotations

from .persist import *  # noqa: F403
from .persist import __all__  # noqa: F401
from .persist.atomic import _rename, _write_file  # noqa: F401
from .persist.format import REPORT_FILE, render_files  # noqa: F401
from .persist.legacy import (  # noqa: F401
    LEGACY_METADATA,
    LEGACY_SCHEMA,
    LEGACY_STATE,
)
