"""The base class for errors a user can fix (bad input, bad config).

The CLI turns these (and the module-specific subclasses of ValueError it lists) into
one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input or configuration; the message names the file, record and field."""
