"""Load an exported model in a fresh Python process and run saved inputs through it.

Run as `python -m lab2prod.models.reload_check FORMAT MODEL_FILE INPUTS OUTPUTS DEVICE`. The process
imports no model code, exactly like a server that only has the file. It writes the outputs
(a dict of tensors, one per input case) and prints one JSON line: whether the file loaded
and any per-case error.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from lab2prod.core.inputs import call, first_tensor, load_aoti, to_device
from lab2prod.models.onnx_rt import OrtModule

__all__ = ["load_exported", "main"]


def load_exported(fmt: str, path: str, device: str = "cpu"):
    """Load a TorchScript (`torchscript_*`), torch.export (`torch_export`), AOTInductor (`aoti`, CPU) or ONNX
    (`onnx`, in an ONNX Runtime session) file onto `device`."""
    if fmt.startswith("torchscript"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(path, map_location=device).eval()
    if fmt == "torch_export":
        module = torch.export.load(path).module()
        return module.to(device) if device != "cpu" else module
    if fmt == "aoti":  # AOTInductor's native code for this CPU, run by its C++ runner
        if device != "cpu":
            raise ValueError("this AOTInductor package was compiled for the CPU")
        return load_aoti(path)  # as lab2prod's servers load it
    if fmt == "onnx":  # ONNX Runtime on the file and its external data, no torch model code

        module = OrtModule(path, threads=1, device=device)
        module.session  # noqa: B018 - load now, so a broken file fails the load, not the first case
        return module
    raise ValueError(f"format {fmt!r} is not known")


def main(argv: list[str] | None = None) -> int:
    fmt, model_file, inputs_file, outputs_file, device = (argv or sys.argv[1:])[:5]
    status = {"loaded": False, "load_error": None, "errors": {}}
    try:
        model = load_exported(fmt, model_file, device)
        status["loaded"] = True
    except Exception as exc:
        status["load_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(json.dumps(status))
        return 0
    inputs = torch.load(inputs_file, weights_only=True)
    outputs = {}
    with torch.inference_mode():
        for case, batch in inputs.items():
            try:
                outputs[case] = first_tensor(call(model, to_device(batch, device))).float().cpu()
            except Exception as exc:
                message = str(exc).strip().splitlines()
                status["errors"][case] = f"{type(exc).__name__}: {message[0] if message else ''}"[:300]
    torch.save(outputs, outputs_file)
    print(json.dumps(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
