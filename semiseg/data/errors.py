"""The one exception type for problems a user can fix in their data.

``DataError`` is a ``ValueError`` so callers that already catch bad values keep working. Every message
names the file (or folder) at fault and says what to do about it; ``data_error`` builds messages in that
shape so they read the same everywhere.
"""

from __future__ import annotations

import os


class DataError(ValueError):
    """A dataset file or option is wrong in a way the user can fix. The message says where and how."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.fix = fix
        text = message if self.path is None else f"{self.path}: {message}"
        if fix:
            text = f"{text}\n  fix: {fix}"
        super().__init__(text)
