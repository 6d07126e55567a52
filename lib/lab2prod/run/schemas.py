"""Every study's results schema, derived from the Results class in its module: what `compare`
judges and what the report explains beside each value."""

from __future__ import annotations

import importlib
from functools import cache

from lab2prod.core.registry import STUDIES
from lab2prod.core.schema import Results, ResultSchema
from lab2prod.core.schema import measure_kind as _measure_kind

__all__ = ["results_class", "schemas", "measure_kind", "field_help"]


@cache
def results_class(module_name: str, study: str) -> type[Results] | None:
    """The Results subclass a study module declares for `study`, or None: a study without one, or one
    whose module imports only beside its notebook (a study kept outside the package)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0]:
            raise
        return None
    return next((value for value in vars(module).values()
                 if isinstance(value, type) and issubclass(value, Results) and value.study == study), None)


def schemas() -> dict[str, ResultSchema]:
    """{study: schema} for every registered study that declares its results."""
    found = {}
    for study in STUDIES:
        cls = results_class(study.module, study.short)
        if cls is not None:
            found[study.short] = cls.schema()
    return found


def measure_kind(path: str) -> str | None:
    """latency, accuracy or size for a flattened results path (`benchmark.rows[*].p99_ms`) its study's
    schema declares as a measure; None for everything else (context, not judged)."""
    return _measure_kind(schemas().get(path.split(".", 1)[0]), path)


def field_help(name: str, key: str) -> str:
    """The schema's one line of help for results[name][key], or ''."""
    schema = schemas().get(name)
    return schema.fields.get(key, ("", ""))[1] if schema else ""
