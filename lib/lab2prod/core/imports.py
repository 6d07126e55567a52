"""Importing the user's code by `package.module:name`, with an error that names the fix."""

from __future__ import annotations

import importlib

from lab2prod.core.errors import Lab2ProdError

__all__ = ["import_object"]


def import_object(spec: str, what: str = "object") -> object:
    """Import `package.module:attribute`; a clear error when it does not import."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise Lab2ProdError(f"{what} {spec!r} is not of the form package.module:name")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while importing user code
        raise Lab2ProdError(
            f"{what} {spec!r}: module {module_name!r} does not import "
            f"({type(exc).__name__}: {exc}); check the name and that it is on PYTHONPATH"
        ) from None
    try:
        obj = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise Lab2ProdError(
            f"{what} {spec!r}: {module_name!r} has no attribute {attribute!r}"
        ) from None
    return obj
