"""Errors a user can fix: each message names the bad value and what to do about it."""

__all__ = ["Lab2ProdError", "one_line"]


class Lab2ProdError(Exception):
    """A bad input from the user (model name, file, parameter, folder).

    The command line prints the message as one line on stderr and exits with code 2.
    """


def one_line(exc: BaseException) -> str:
    """`TypeName: first line of the message`, at most 300 characters: how a failure is shown in a table."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
