"""The TorchServe handler lab2prod archives: its input guard and preprocessing are lab2prod's own objects.

TorchServe loads this file from the model archive (as `lab2prod_handler.py`); it imports lab2prod,
so the served transform is the lab transform object, not a copy.
"""

import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from lab2prod.guard import InputGuard, Rejected
from lab2prod.preprocess import ServingPath, lab_transform_for

__all__ = ["Lab2ProdHandler"]


class Lab2ProdHandler(BaseHandler):
    """preprocess (guard + lab transform per request) -> inference (one batch) -> postprocess
    (softmax probabilities and top-1); a refused request gets HTTP 400 with its reason code."""

    def initialize(self, context):
        properties = context.system_properties
        with open(os.path.join(properties.get("model_dir"), "lab2prod.json")) as spec_file:
            spec = json.load(spec_file)
        threads = int((getattr(context, "model_yaml_config", None) or {}).get("handler", {}).get("threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)  # one worker, one thread: no oversubscription
        super().initialize(context)
        transform, _ = lab_transform_for(spec["family"])
        self.serving_path = ServingPath(transform, InputGuard(**spec["guard"]))

    def preprocess(self, data):
        """(tensors, kept indices, outputs) where a refused request already has its output."""
        outputs, kept, tensors = [None] * len(data), [], []
        for index, row in enumerate(data):
            body = row.get("data") if row.get("data") is not None else row.get("body")
            if isinstance(body, str):
                body = body.encode("latin-1")
            try:
                tensors.append(self.serving_path(bytes(body or b"")))
                kept.append(index)
            except Rejected as exc:
                self.context.set_response_status(400, exc.code, idx=index)
                outputs[index] = {"rejected": exc.code, "message": exc.message}
        return tensors, kept, outputs

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(torch.stack(data).to(self.device))

    def postprocess(self, data):
        probabilities = torch.softmax(data.float(), dim=1).cpu()
        return [{"top1": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]

    def handle(self, data, context):
        # Each request is checked on its own: a refused one gets HTTP 400 with its reason code,
        # the others of the same server batch are still answered.
        self.context = context
        tensors, kept, outputs = self.preprocess(data)
        if tensors:
            for index, answer in zip(kept, self.postprocess(self.inference(tensors)), strict=True):
                outputs[index] = answer
        return outputs
