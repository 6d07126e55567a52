"""ONNX and ONNX Runtime: the third deployment path, beside TorchScript and torch.export.

`export_onnx` writes the model with `torch.onnx.export(..., dynamo=True)` from the same
torch.export program as the `.pt2` file (a dynamic batch, and a dynamic length for sequences),
runs the ONNX checker and shape inference, and reports the opset and the files written (the
exporter may put the weights in an external data file beside the `.onnx`: both are needed, and
both are hashed in the manifest). `OrtModule` runs a file in an ONNX Runtime session and is
called like the torch model (a tensor, positional tensors or named ones), so the reload check,
the quantization table and the benchmark harness use it as they use any module.
`quantize_file` is ONNX Runtime's dynamic int8 (`quantize_dynamic`, per tensor or per channel).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.files import scratch_dir, scratch_root
from lab2prod.core.inputs import export_program

__all__ = ["available", "versions", "export_onnx", "check_onnx", "external_files", "OrtModule", "quantize_file",
           "QUANTIZED_OPS", "session_options", "inline_weights", "quantizable_nodes"]

QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "QAttention",
                 "DynamicQuantizeLSTM")


def available() -> str:
    """'' when onnx, onnxscript and onnxruntime import, else what is missing and how to install it."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return f"{', '.join(missing)} not installed; pip install -r requirements.txt" if missing else ""


def versions() -> dict:
    """onnx, onnxscript and onnxruntime versions and ONNX Runtime's execution providers (None when absent)."""
    info = {"onnx": None, "onnxscript": None, "onnxruntime": None, "onnxruntime_providers": []}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    if info["onnxruntime"]:
        import onnxruntime

        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    return info


def export_onnx(module: nn.Module, example, path: Path) -> dict:
    """Write `module` to `path` as ONNX from its torch.export program (dynamic batch, and length
    for sequences, where torch.export allows), then check it. Returns {"dynamic_dims", "opset",
    "files"}; raises with the exporter's reason when the model does not export."""

    missing = available()
    if missing:
        raise Lab2ProdError(missing)
    dynamic, program = export_program(module, example)
    path = Path(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
        warnings.simplefilter("ignore")
        torch.onnx.export(program, f=str(path), dynamo=True, external_data=True)
    opset = check_onnx(path)
    return {"dynamic_dims": dynamic, "opset": opset, "files": [path, *external_files(path)]}


def check_onnx(path: Path) -> int:
    """Run the ONNX checker and shape inference on the file (and its external data); return the
    default-domain opset. Raises onnx's error when the graph is not valid."""
    import onnx

    onnx.checker.check_model(str(path))
    with tempfile.TemporaryDirectory(prefix="lab2prod-onnx-", dir=scratch_root()) as tmp:
        onnx.shape_inference.infer_shapes_path(str(path), str(Path(tmp) / "inferred.onnx"))
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def external_files(path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (weights written beside it)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = {entry.value for tensor in model.graph.initializer if uses_external_data(tensor)
             for entry in tensor.external_data if entry.key == "location"}
    return [Path(path).parent / name for name in sorted(names)]


def session_options(threads: int = 1, optimize: bool = True):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    return options


class OrtModule(nn.Module):
    """An ONNX file in an ONNX Runtime session, called like the torch model it came from: inputs
    are matched to the graph's inputs by name (a dict) or in order (a tensor or a tuple); inputs
    the exporter found unused are dropped. Returns the first output as a torch tensor.

    `threads` is ONNX Runtime's intra-op thread count (set_threads rebuilds the session; 0 follows
    torch.get_num_threads() at each call, so a harness that sets torch's threads sets these too);
    `device` "cuda" uses the CUDA execution provider with I/O binding, so that host-device copies
    are done once per call and outside ONNX Runtime's run."""

    def __init__(self, path: Path, threads: int = 1, device: str = "cpu"):
        super().__init__()
        self.path, self.device, self.follow = Path(path), device, int(threads) == 0
        self.threads = torch.get_num_threads() if self.follow else int(threads)
        self._session = None

    @property
    def file_bytes(self) -> int:
        """What a deployment ships: the .onnx and its external data."""
        return sum(p.stat().st_size for p in [self.path, *external_files(self.path)])

    @property
    def session(self):
        if self._session is None:
            import onnxruntime

            providers = getattr(self, "providers", None) or ["CPUExecutionProvider"]
            if self.device.startswith("cuda") and not getattr(self, "providers", None):
                if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                    raise Lab2ProdError("ONNX Runtime has no CUDA execution provider here (install onnxruntime-gpu)")
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            self._session = onnxruntime.InferenceSession(str(self.path), session_options(self.threads),
                                                         providers=providers)
            self._inputs = [(i.name, i.type) for i in self._session.get_inputs()]
        return self._session

    def set_threads(self, threads: int) -> None:
        if int(threads) != self.threads:
            self.threads, self._session = int(threads), None

    def feed(self, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
        self.session  # noqa: B018 - builds the session and reads its input names
        names = [name for name, _ in self._inputs]
        if kwargs:
            unknown = [k for k in names if k not in kwargs]
            if unknown:
                raise Lab2ProdError(f"ONNX inputs {unknown} are not among the model's inputs {list(kwargs)}")
            values = {k: kwargs[k] for k in names}
        else:
            if len(args) < len(names):
                raise Lab2ProdError(f"the ONNX graph takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
            values = dict(zip(names, args, strict=False))
        return {k: v.detach().cpu().contiguous().numpy() for k, v in values.items()}

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.follow:
            self.set_threads(torch.get_num_threads())
        if self.device.startswith("cuda"):
            return self._run_bound(args, kwargs)
        return torch.from_numpy(self.session.run(None, self.feed(args, kwargs))[0])

    def _run_bound(self, args: tuple, kwargs: dict) -> torch.Tensor:  # pragma: no cover - needs a GPU
        """CUDA with I/O binding: inputs already on the GPU are bound where they are (no copy),
        the output stays on the GPU and comes back as a torch tensor there (DLPack)."""
        self.session  # noqa: B018 - builds the session and reads its input names
        names = [name for name, _ in self._inputs]
        values = {k: kwargs[k] for k in names} if kwargs else dict(zip(names, args, strict=False))
        binding = self.session.io_binding()
        keep = []
        for name, tensor in values.items():
            tensor = tensor.contiguous() if tensor.is_cuda else tensor.cuda().contiguous()
            keep.append(tensor)
            binding.bind_input(name, "cuda", tensor.device.index or 0, _NUMPY_DTYPES[tensor.dtype],
                               tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output(self.session.get_outputs()[0].name, "cuda")
        self.session.run_with_iobinding(binding)
        output = binding.get_outputs()[0]
        try:
            return torch.utils.dlpack.from_dlpack(output.to_dlpack())
        except Exception:
            return torch.from_numpy(output.numpy()).cuda()

    def state_dict(self, *args, **kwargs):  # the weights live in the file, not in torch parameters
        return {}


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
                 torch.bool: np.bool_, torch.uint8: np.uint8}


def quantize_file(source: Path, target: Path, per_channel: bool = False, nodes_to_exclude=()) -> list[str]:
    """ONNX Runtime's dynamic int8 of `source` into `target` (weights int8, activations quantized
    per call; MatMul and Conv, and Gather from a constant table); the nodes named in `nodes_to_exclude`
    stay in float. Returns the quantized operator types found in the result."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="lab2prod-ortq-", dir=scratch_root()) as tmp:
        if external_files(source):  # quantize_dynamic wants the weights inside the model it reads
            inlined = Path(tmp) / "inlined.onnx"
            onnx.save(onnx.load(str(source)), str(inlined))
            source = inlined
        # quantize_dynamic logs a pre-processing hint through the root logger on every call
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), per_channel=per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=list(nodes_to_exclude))
    model = onnx.load(str(target), load_external_data=False)
    return sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OPS})


def inline_weights(source: Path, target: Path) -> Path:
    """`source` rewritten as one file with its weights inside (quantize_dynamic reads no external data);
    quantizing the same graph many times then reads one file each time."""
    import onnx

    onnx.save(onnx.load(str(source)), str(target))
    return Path(target)


# op -> the input that must be a constant. Gemm (a Linear on 2-D inputs) is not among the dynamic int8 ops.
_WEIGHTED = {"MatMul": 1, "Conv": 1, "Gather": 0}


def quantizable_nodes(path: Path, layers=()) -> list[dict]:
    """The nodes ONNX Runtime's dynamic int8 quantizes in `path`: MatMul and Conv with a constant weight,
    and Gather from a constant table (an embedding); not Gemm, which a Linear on 2-D inputs exports to.
    Each is {"node", "op", "layer"}: `layer` is the deepest module among `layers` (the torch model's
    module names) that the exporter recorded the node under (torch.onnx's name scopes), or "" when
    none is; in graph order."""
    import ast

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    wanted, rows = set(layers), []
    for node in model.graph.node:
        index = _WEIGHTED.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in constants:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        layer = next((s for s in reversed(scopes) if s in wanted), "")
        rows.append({"node": node.name, "op": node.op_type, "layer": layer})
    return rows


@contextlib.contextmanager
def _quiet_root():
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def export_to_temp(module: nn.Module, example) -> tuple[Path, Path]:
    """(folder, file): the model exported to ONNX in a new temporary folder (the caller removes it)."""
    folder = scratch_dir("lab2prod-onnx-")
    try:
        export_onnx(module, example, folder / "model.onnx")
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise Lab2ProdError(f"the model does not export to ONNX ({one_line(exc)})") from None
    return folder, folder / "model.onnx"
