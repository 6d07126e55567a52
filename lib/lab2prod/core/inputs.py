"""Model inputs of any structure: one tensor, a tuple of tensors (positional arguments) or a dict of
named tensors (keyword arguments), of any dtype (float features, int64 token ids, int/bool masks).

Every study calls a model through `call`, moves inputs with `to_device`, and exports or traces it
through `export_program` and `trace`, so a model with token ids and an attention mask goes wherever
an image model goes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lab2prod.core.errors import Lab2ProdError

__all__ = [
    "Inputs",
    "Contiguous",
    "load_aoti",
    "check_inputs",
    "call",
    "first_tensor",
    "outputs_of",
    "to_device",
    "batch_size_of",
    "tensors",
    "map_tensors",
    "cat",
    "take",
    "describe",
    "varied_cases",
    "arguments",
    "TRAIN_SEED_OFFSET",
    "draw_indices",
    "export_program",
    "trace",
]

Inputs = torch.Tensor | tuple | dict


# The train split of an input source draws from another seed range, so tracing and export never see
# the inputs they are compared on.
TRAIN_SEED_OFFSET = 1_000_003


def draw_indices(count: int, batch_size: int, seed: int, split: str) -> list[int]:
    """Which of `count` items make a batch: every item in order for "all", else a seeded draw (the
    train split from another seed range)."""
    if split == "all":
        return list(range(count))
    import numpy as np

    rng = np.random.default_rng(seed if split == "test" else seed + TRAIN_SEED_OFFSET)
    return rng.choice(count, size=batch_size, replace=batch_size > count).tolist()


def check_inputs(inputs, source: str) -> Inputs:
    """`inputs` when it is a tensor, a non-empty tuple/list of tensors or a non-empty dict of str to
    tensors, all with the same batch size in dimension 0; a Lab2ProdError naming `source` otherwise."""
    expected = "one tensor, a tuple of tensors or a dict of named tensors, batch first"
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if isinstance(inputs, torch.Tensor):
        parts = [inputs]
    elif isinstance(inputs, tuple) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        parts = list(inputs)
    elif (isinstance(inputs, dict) and inputs and all(isinstance(k, str) for k in inputs)
          and all(isinstance(t, torch.Tensor) for t in inputs.values())):
        parts = list(inputs.values())
    else:
        raise Lab2ProdError(f"{source} returned {_shape_text(inputs)}; it must return {expected}")
    if any(t.dim() == 0 for t in parts) or len({t.shape[0] for t in parts}) != 1:
        raise Lab2ProdError(f"{source} returned tensors of shapes {[tuple(t.shape) for t in parts]}; every input "
                            "needs the same batch size in dimension 0")
    return inputs


def _shape_text(value) -> str:
    if isinstance(value, dict):
        return "a dict of " + ", ".join(f"{k}: {type(v).__name__}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of " + ", ".join(type(v).__name__ for v in value)
    return type(value).__name__


def call(fn: Callable, inputs: Inputs):
    """fn(inputs), fn(*inputs) or fn(**inputs) for a tensor, a tuple or a dict."""
    if isinstance(inputs, dict):
        return fn(**inputs)
    if isinstance(inputs, tuple):
        return fn(*inputs)
    return fn(inputs)


def first_tensor(output) -> torch.Tensor:
    """The answer of a model that returns a tensor, a tuple/list (its first tensor) or a dict (its first value)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and output:
        return next(iter(output.values()))
    raise TypeError(f"model returned {type(output).__name__}, not a tensor")


def outputs_of(module: Callable, inputs: Inputs, chunk: int = 64) -> torch.Tensor:
    """The model's answers (first tensor, float) for every row of `inputs`, run `chunk` rows at a time."""
    count = batch_size_of(inputs)
    with torch.inference_mode():
        return torch.cat([first_tensor(call(module, take(inputs, start, start + chunk))).float()
                          for start in range(0, count, chunk)])


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs) -> Inputs:
    """The same structure with `fn` applied to every tensor."""
    if isinstance(inputs, dict):
        return {k: fn(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(fn(v) for v in inputs)
    return fn(inputs)


class Contiguous:
    """Calls `module` with every input tensor made contiguous. AOTInductor's compiled code reads its inputs
    with the strides it was compiled for and does not check them: a channels-last image batch (what a PIL
    image through ToTensor and unsqueeze can give) gets wrong answers, silently."""

    def __init__(self, module: Callable):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*map_tensors(_contiguous, args), **map_tensors(_contiguous, kwargs))


def _contiguous(value):
    return value.contiguous() if isinstance(value, torch.Tensor) else value


def load_aoti(path: str) -> Contiguous:
    """An AOTInductor package loaded in its C++ runner, called with contiguous inputs (see Contiguous)."""
    return Contiguous(torch._inductor.aoti_load_package(str(path)))


def to_device(inputs: Inputs, device: str | torch.device) -> Inputs:
    return map_tensors(lambda t: t.to(device), inputs)


def tensors(inputs: Inputs) -> list[torch.Tensor]:
    """The tensors of `inputs`, in order."""
    if isinstance(inputs, dict):
        return list(inputs.values())
    if isinstance(inputs, tuple):
        return list(inputs)
    return [inputs]


def batch_size_of(inputs: Inputs) -> int:
    return int(tensors(inputs)[0].shape[0])


def take(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Rows start:stop of every tensor."""
    return map_tensors(lambda t: t[start:stop], inputs)


def cat(parts: list[Inputs]) -> Inputs:
    """Batches of the same structure joined along dimension 0."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts)


def describe(inputs: Inputs) -> dict[str, dict]:
    """{name: {"shape": per-item shape, "dtype": ...}}: names are the dict's keys, `input_<i>` for a
    tuple, `input` for one tensor."""
    if isinstance(inputs, dict):
        named = inputs.items()
    elif isinstance(inputs, tuple):
        named = ((f"input_{i}", t) for i, t in enumerate(inputs))
    else:
        named = (("input", inputs),)
    return {name: {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", "")} for name, t in named}


def _is_sequence(t: torch.Tensor) -> bool:
    return not torch.is_floating_point(t) and t.dim() == 2


def varied_cases(inputs: Inputs, generator: torch.Generator) -> dict[str, Inputs]:
    """Inputs that push a model with data-dependent control flow down another branch. Float
    tensors: negated, and Gaussian noise of the same mean and scale. Integer tensors (token ids,
    masks): other valid values, drawn uniformly between the smallest and largest value seen (ids
    stay in the vocabulary, masks stay 0/1). Sequences (2-d integer inputs of one length): the
    first half of the sequence, for a dynamic length. Image batches (4-d float tensors): the same values laid
    out channels-last, as a decoded image often is (a file compiled for contiguous inputs that does not check
    strides answers it wrongly)."""
    floats = [t for t in tensors(inputs) if torch.is_floating_point(t)]
    cases: dict[str, Inputs] = {}
    if floats:
        cases["negated"] = map_tensors(lambda t: -t if torch.is_floating_point(t) else t, inputs)
        if any(t.dim() == 4 for t in floats):
            cases["channels-last"] = map_tensors(
                lambda t: t.contiguous(memory_format=torch.channels_last) if torch.is_floating_point(t) and t.dim() == 4
                else t, inputs)

        def noise(t: torch.Tensor) -> torch.Tensor:
            if not torch.is_floating_point(t):
                return t
            drawn = torch.randn(t.shape, generator=generator) * t.float().std() + t.float().mean()
            return drawn.to(t.dtype)
        cases["noise"] = map_tensors(noise, inputs)
    integers = [t for t in tensors(inputs) if not torch.is_floating_point(t) and t.dtype != torch.bool]
    if integers:
        def redraw(t: torch.Tensor) -> torch.Tensor:
            if torch.is_floating_point(t) or t.dtype == torch.bool or t.numel() == 0:
                return t
            low, high = int(t.min()), int(t.max())
            return torch.randint(low, high + 1, t.shape, generator=generator, dtype=t.dtype)
        cases["other-ids"] = map_tensors(redraw, inputs)
    lengths = {t.shape[1] for t in tensors(inputs) if _is_sequence(t)}
    if len(lengths) == 1 and (length := lengths.pop()) >= 4:
        half = length // 2
        cases["shorter"] = map_tensors(lambda t: t[:, :half] if t.dim() >= 2 and t.shape[1] == length else t,
                                       inputs)
    return cases


def arguments(inputs: Inputs) -> tuple[tuple, dict]:
    """(positional, keyword) arguments of a call with `inputs`."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (inputs,), {}


def _dynamic_shapes(inputs: Inputs, sequence: bool):
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The length's range is the model's to say (position embeddings cap it): DYNAMIC lets
    # torch.export find it, and fails, rather than silently specialize, when the length is fixed.
    seq = torch.export.Dim.DYNAMIC

    def spec(t: torch.Tensor) -> dict:
        dims = {0: batch}
        if sequence and t.dim() >= 2 and _is_sequence_like(t, inputs):
            dims[1] = seq
        return dims

    if isinstance(inputs, dict):
        return {name: spec(t) for name, t in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(spec(t) for t in inputs)
    return (spec(inputs),)


def _is_sequence_like(t: torch.Tensor, inputs: Inputs) -> bool:
    lengths = {s.shape[1] for s in tensors(inputs) if _is_sequence(s)}
    return len(lengths) == 1 and t.shape[1] in lengths


def export_program(module: torch.nn.Module, example: Inputs, dynamic: bool = True):
    """(dynamic dims, ExportedProgram): torch.export with a dynamic batch and, for sequences, a
    dynamic length; falling back to a dynamic batch only, then to static shapes. `dynamic dims`
    is "batch+seq", "batch" or "" (static). The example is copied out of any storage it shares first: the
    program keeps its example inputs, and a slice of a preloaded data set would carry the whole data set
    into the saved file."""
    example = map_tensors(lambda t: t.detach().clone(), example)
    args, kwargs = arguments(example)
    attempts = ([("batch+seq", True)] if any(_is_sequence(t) for t in tensors(example)) else []) + [("batch", False)]
    if dynamic:
        for label, sequence in attempts:
            try:
                shapes = _dynamic_shapes(example, sequence)
                return label, torch.export.export(module, args, kwargs=kwargs, dynamic_shapes=shapes)
            except Exception:
                continue
    return "", torch.export.export(module, args, kwargs=kwargs)


def trace(module: torch.nn.Module, example: Inputs, **options):
    """torch.jit.trace with positional inputs, or with `example_kwarg_inputs` for a dict (the old
    path, deprecated upstream)."""
    example = map_tensors(lambda t: t.detach().clone(), example)  # the traced file stores its inputs: only these
    if isinstance(example, dict):
        return torch.jit.trace(module, example_kwarg_inputs=dict(example), **options)
    return torch.jit.trace(module, example, **options)
