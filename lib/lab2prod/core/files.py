"""File helpers shared by the cache, the exports and the results: checksums, atomic writes, and the scratch
folder that temporary files go in."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["sha256_file", "atomic_write", "archive_payload", "data_payload_limit", "scratch_dir", "scratch_root",
           "SCRATCH_ENV"]

# Temporary files (ONNX exports, quantized copies, tokenizer vocabularies) go in one scratch folder per process.
# A process that exits removes its own; a killed one cannot (nbval and `lab2prod run` stop a notebook's kernel
# with SIGKILL), so the next lab2prod process removes the scratch folders of this user's processes that are
# gone. A parent that owns the cleanup (the runner, for its kernels) names the folder in SCRATCH_ENV instead.
SCRATCH_ENV = "LAB2PROD_SCRATCH"
_SCRATCH_PREFIX = "lab2prod-scratch-"
_scratch: dict[int, Path] = {}  # pid -> this process's scratch folder (a forked child makes its own)


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


def scratch_root() -> Path:
    """This process's scratch folder: the one SCRATCH_ENV names, else a folder of its own in the system's
    temporary folder, removed at exit (and by a later process when this one is killed)."""
    given = os.environ.get(SCRATCH_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    pid = os.getpid()
    folder = _scratch.get(pid)
    if folder is None or not folder.is_dir():
        _remove_orphaned_scratch()
        folder = _scratch[pid] = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{pid}-"))
        atexit.register(_remove_own_scratch, pid, folder)
    return folder


def scratch_dir(prefix: str) -> Path:
    """A new, empty folder under this process's scratch folder (the caller may remove it sooner)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


def _remove_own_scratch(pid: int, folder: Path) -> None:
    if os.getpid() == pid:  # a forked child inherits the exit handler, not the folder
        shutil.rmtree(folder, ignore_errors=True)


def _remove_orphaned_scratch() -> None:
    """Remove the scratch folders of this user's lab2prod processes that no longer run."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_SCRATCH_PREFIX}*"):
        pid = folder.name[len(_SCRATCH_PREFIX):].split("-")[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid() or _alive(int(pid)):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: a check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
