"""The one exception type that means "the user asked for something invalid".

The CLI turns it into a single line on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""


class DvtError(Exception):
    """Bad input: an unknown name, an impossible value, a missing or corrupt file."""


class ConfigError(DvtError):
    """A params.yaml key, type or value that is not allowed."""
