"""``Prompter.save``: the files of the format (:mod:`.format`), written atomically (:mod:`.atomic`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import atomic
from .format import render_files
from .load import is_prompter_dir

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["save_prompter"]


def save_prompter(prompter: Prompter, path: str | os.PathLike[str]) -> None:
    """Write ``prompter`` to the directory ``path`` atomically (through a symbolic link: into the directory it
    points to; the link stays). Any failure leaves the previous save as it was."""
    target = atomic.resolve_target(path, "a prompter")
    files = render_files(prompter)
    atomic.write_directory(target, files, is_ours=is_prompter_dir, what="a saved prompter")
