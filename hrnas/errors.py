"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class UserError(ValueError):
    """Bad input from the user (argument, file, value). The message names what is wrong."""


def check_choice(param: str, value, choices) -> None:
    """Raise ``UserError`` "``param=value`` is not one of ..." unless ``value`` is in ``choices``."""
    if value not in choices:
        raise UserError(f"{param}={value!r} is not one of {', '.join(map(str, choices))}")


def check_keywords(what: str, given, accepted) -> None:
    """Raise ``UserError`` naming the keywords of ``given`` that ``what`` does not accept."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise UserError(f"{what} does not accept {', '.join(unknown)} (accepted: {', '.join(accepted) or 'nothing'})")
