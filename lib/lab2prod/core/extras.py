"""The optional parts of lab2prod (pyproject's extras) and whether this environment has them.

A study that needs a missing extra is skipped with the line that installs it; code that needs one
raises `require`'s one-line error instead of an ImportError.
"""

from __future__ import annotations

from importlib.util import find_spec

from lab2prod.core.errors import Lab2ProdError

__all__ = ["EXTRAS", "missing", "available", "install_line", "require"]

# extra -> the top-level modules it provides (what is imported, not the distribution's name)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serving": ("ts", "model_archiver", "captum", "locust", "prometheus_client"),
    "ray": ("ray", "fastapi"),
    "litserve": ("litserve",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "hf": ("transformers", "tokenizers", "faker"),
    "lab": ("jupyterlab", "jupytext"),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` this environment cannot import."""
    if extra not in EXTRAS:
        raise Lab2ProdError(f"extra {extra!r} is not known; use one of {', '.join(EXTRAS)}")
    return [module for module in EXTRAS[extra] if find_spec(module) is None]


def available(extra: str) -> bool:
    return not missing(extra)


def install_line(*extras: str) -> str:
    return f"pip install 'lab2prod[{','.join(extras)}]'"


def require(extra: str, what: str) -> None:
    """Raise a one-line error naming the install line when `what` needs an extra this environment lacks."""
    gone = missing(extra)
    if gone:
        raise Lab2ProdError(f"{what} needs the {extra} extra ({', '.join(gone)} not installed); "
                            f"{install_line(extra)}")
