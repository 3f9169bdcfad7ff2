"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class UserError(ValueError):
    """Bad input from the user (argument, file, value). The message names what is wrong."""
