"""File helpers shared by the cache, the exports and the results: checksums and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["sha256_file", "atomic_write", "archive_payload", "data_payload_limit"]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place,
    so a reader never sees half a file and a failure leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for others to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Entries of a torch archive (below its root folder) that hold data, not the model: the sample inputs
# torch.export keeps with a program, and the inputs torch.jit.trace stores with a traced module.
_DATA_PARTS = ("data/sample_inputs/", "traced_inputs/", "traced_inputs.pkl")
_WEIGHT_PARTS = ("data/weights/", "data/constants/")


def archive_payload(path: Path) -> dict | None:
    """{"weights_bytes", "data_bytes", "other_bytes"} of a torch archive (a torch.export .pt2, an AOTInductor
    package, a TorchScript file): what its entries hold, uncompressed. `data_bytes` are stored inputs, which
    belong to nobody's deployment. None for a file that is not a zip archive (ONNX)."""
    if not zipfile.is_zipfile(path):
        return None
    sizes = {"weights_bytes": 0, "data_bytes": 0, "other_bytes": 0}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.partition("/")[2]
            if name.startswith(_DATA_PARTS):
                sizes["data_bytes"] += info.file_size
            elif name.startswith(_WEIGHT_PARTS) or (name.startswith("data/") and name[5:].isdigit()):
                sizes["weights_bytes"] += info.file_size  # TorchScript keeps its tensors as data/<n>
            else:
                sizes["other_bytes"] += info.file_size
    return sizes


def data_payload_limit(weights_bytes: int, example_bytes: int) -> int:
    """The most stored-input bytes an archive may carry: a tenth of its weights, or twice the example batch it
    was exported with plus 64 KiB of serialization, whichever is larger. A slice of a preloaded data set exported
    as it is carries the whole data set and is far over it."""
    return max(weights_bytes // 10, 2 * example_bytes + (64 << 10))
