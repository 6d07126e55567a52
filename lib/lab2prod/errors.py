"""Errors a user can fix: each message names the bad value and what to do about it."""

__all__ = ["Lab2ProdError"]


class Lab2ProdError(Exception):
    """A bad input from the user (model name, file, parameter, folder).

    The command line prints the message as one line on stderr and exits with code 2.
    """
