"""The TorchServe handler lab2prod archives: its input guard and preprocessing are lab2prod's own objects.

TorchServe loads this file from the model archive (as `lab2prod_handler.py`); it imports lab2prod,
so the served request path is the lab's codec object (`lab2prod.kinds.codec`), not a copy: image bytes
through the user's lab transform (carried in the archive) or the family's recipe, JSON texts
through the model's tokenizer (carried in the archive), or JSON arrays for tensor models. The
archived model is TorchScript (`.pt`) or an ONNX file (`.onnx`, run in ONNX Runtime).
"""

import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from lab2prod.core.inputs import call, cat, first_tensor, to_device
from lab2prod.kinds.codec import answers, from_spec
from lab2prod.kinds.guard import Rejected
from lab2prod.models.onnx_rt import OrtModule
from lab2prod.servers.timing import HEADER, Stopwatch, header_value

__all__ = ["Lab2ProdHandler"]


class Lab2ProdHandler(BaseHandler):
    """preprocess (guard + codec per request) -> inference (one batch) -> postprocess (softmax
    probabilities and top-1 for a classifier, the vector for an embedder); a refused request gets
    HTTP 400 with its reason code."""

    def initialize(self, context):
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        with open(os.path.join(model_dir, "lab2prod.json")) as spec_file:
            spec = json.load(spec_file)
        threads = int((getattr(context, "model_yaml_config", None) or {}).get("handler", {}).get("threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)  # one worker, one thread: no oversubscription
        super().initialize(context)
        if str(self.model_pt_path or "").endswith(".onnx"):
            # TorchServe opens an .onnx as a bare ONNX Runtime session, with one thread per CPU; lab2prod's session
            # module takes the worker's threads and is called like the torch model it came from (tensors,
            # positional or named), so the same codec feeds both. It replaces TorchServe's session, which nothing
            # else holds: the worker keeps one copy of the model once initialized.
            self.model = OrtModule(self.model_pt_path, threads=max(threads, 1))
        self.task = spec.get("task", "classifier")
        self.codec = from_spec(spec["codec"], model_dir)
        # the archive's version (torch-model-archiver --version): each answer names the version that gave it
        self.version = str((getattr(context, "manifest", None) or {}).get("model", {}).get("modelVersion", "") or "")

    def preprocess(self, data):
        """(inputs per kept request, kept indices, outputs) where a refused request already has its output;
        `self.codec_ms` holds each kept request's codec time."""
        outputs, kept, items, self.codec_ms = [None] * len(data), [], [], []
        for index, row in enumerate(data):
            body = row.get("data") if row.get("data") is not None else row.get("body")
            try:
                watch = Stopwatch()
                items.append(self.codec(body if body is not None else b""))
                self.codec_ms.append(watch.lap())
                kept.append(index)
            except Rejected as exc:
                self.context.set_response_status(400, exc.code, idx=index)
                outputs[index] = {"rejected": exc.code, "message": exc.message}
        return items, kept, outputs

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return first_tensor(call(self.model, to_device(cat(data), self.device)))

    def postprocess(self, data):
        return answers(self.task, data)

    def handle(self, data, context):
        # Each request is checked on its own: a refused one gets HTTP 400 with its reason code,
        # the others of the same server batch are still answered.
        # Each answered request's phases go back in its Server-Timing header (lab2prod.servers.timing).
        self.context = context
        items, kept, outputs = self.preprocess(data)
        if items:
            watch = Stopwatch()
            raw = self.inference(items)
            inference_ms = watch.lap()
            answered = self.postprocess(raw)
            postprocess_ms = watch.lap()
            for index, answer, codec_ms in zip(kept, answered, self.codec_ms, strict=True):
                outputs[index] = answer
                context.set_response_header(index, HEADER, header_value(
                    {"codec": codec_ms, "inference": inference_ms, "postprocess": postprocess_ms}, len(items),
                    self.version))
        return outputs
