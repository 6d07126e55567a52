"""What every kind of request shares: raw bodies, the guard's fields, and the user's transform source
carried in a model archive and imported back inside the server."""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.imports import import_object
from lab2prod.kinds.preprocess import load_transform

__all__ = ["Kind", "JSON_CONTENT_TYPE", "TRANSFORM_FILE", "raw_body", "guard_fields", "archive_source",
           "imported_transform"]


@dataclass(frozen=True)
class Kind:
    """What a request is for one kind of model: its name (the `kind` of a loaded model and of an archive's
    lab2prod.json), what a client sends, the codec of a loaded model (`codec(loaded, guarded, max_bytes,
    z_limit)`), the same codec rebuilt inside a server from the archive (`from_spec(spec, model_dir)`), and the
    request bodies of the model's held-out examples (`bodies(loaded, count, seed)`), its catalog of real serving
    bugs (what parity replays on the same requests), and its drift features (`features(items)`: one row of
    numbers per raw input, what the drift study's property test compares).
    A codec turns one request body into the model's inputs (`codec(body)`), names its content type,
    writes what it needs into an archive (`archive(work)`) and lists hostile bodies (`hostile(max_bytes, good)`)."""

    name: str
    request: str
    codec: Callable
    from_spec: Callable
    bodies: Callable  # (loaded, count, seed) -> [(name, body bytes)] of held-out examples (loaded.examples)
    bugs: tuple = ()  # the serving-bug catalog: objects with a name, what goes wrong and where it happens
    features: Callable | None = None  # (raw inputs) -> np.ndarray, one row per input

JSON_CONTENT_TYPE = "application/json"


TRANSFORM_FILE = "lab2prod_transform.py"


def raw_body(body) -> bytes:
    if isinstance(body, str):
        return body.encode("latin-1")
    return bytes(body or b"")


def guard_fields(guard) -> dict | None:
    return asdict(guard) if guard is not None else None


def archive_source(spec: str, work: Path) -> tuple[dict, list[Path]]:
    """The archive entry of a user's lab transform (an image transform or a text cleanup) and its
    source file copied into `work`, so a server without the user's package can still import it."""
    entry = {"spec": spec, "file": TRANSFORM_FILE, "attr": spec.partition(":")[2]}
    source = _source_file(spec)
    if source is None:
        return entry, []
    shutil.copyfile(source, work / TRANSFORM_FILE)
    return entry, [work / TRANSFORM_FILE]


def _source_file(spec: str) -> Path | None:
    """The source file of the module a package.module:name spec names (the module itself, also
    when the name is an object such as a torchvision Compose whose class lives elsewhere)."""

    import_object(spec, "lab_transform")  # imports the module, with a clear error when it does not
    try:
        return Path(inspect.getsourcefile(sys.modules[spec.partition(":")[0]]))
    except (KeyError, TypeError):
        return None


def imported_transform(entry: dict, model_dir: Path):
    """The user's lab transform by its name where the user's package is installed, else from the
    source file the archive carries; the import error when neither works."""

    try:
        return load_transform(entry["spec"], "lab_transform")
    except Lab2ProdError:  # the user's package is not installed where the server runs
        transform = _archived_transform(entry, model_dir)
        if transform is None:
            raise
        return transform


def _archived_transform(entry: dict, model_dir: Path):
    """The user's lab transform from the source file the archive carries, for a server where the
    user's package is not installed; None when the file is absent or does not import on its own."""
    file = model_dir / entry["file"]
    if not file.exists():
        return None
    module_spec = importlib.util.spec_from_file_location("lab2prod_archived_transform", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        obj = module
        for part in entry["attr"].split("."):
            obj = getattr(obj, part)
        return obj
    except Exception:
        return None
