"""lab2prod: measure the gap between a PyTorch model in the lab and the same model in production."""

__version__ = "0.1.0"
__all__ = ["__version__"]
