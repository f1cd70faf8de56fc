"""User-facing errors.

Every problem caused by the user's input (a missing file, a corrupt clip, a wrong feature shape,
an unknown name or config key) is raised as a :class:`UserError`. The CLI prints its message as one
line and exits with code 2; no traceback, and no run is marked complete.
"""

import errno


class UserError(Exception):
    """A problem with the user's input; the message must name the file, key or value at fault."""

    exit_code = 2


class ConfigError(UserError):
    """Unknown or invalid configuration key or value."""


class DataError(UserError):
    """Missing, unreadable or malformed data (clips, features, manifests)."""


class ClipError(DataError):
    """A media clip that cannot be decoded or lacks a required stream."""


class FeatureError(DataError):
    """A pre-extracted feature file with a wrong shape, dtype or missing ids."""


#: errno values meaning "no room to write": a full disk, a quota, the process's file-size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
