"""Load the model under test: a reference model, a torchvision architecture, or the user's own.

Every model comes back as a `LoadedModel` that also knows how to make input batches, so the
notebooks never need to know where a model came from.
"""

from __future__ import annotations

import inspect
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.imports import import_object
from lab2prod.core.inputs import (
    TRAIN_SEED_OFFSET,
    call,
    check_inputs,
    describe,
    draw_indices,
    first_tensor,
    map_tensors,
    outputs_of,
)
from lab2prod.core.paths import CACHE_DIR
from lab2prod.kinds.preprocess import lab_transform_for, load_transform
from lab2prod.kinds.tensor import named_tensors
from lab2prod.kinds.text import TextPath, clean_text
from lab2prod.kinds.transforms import (
    DIGITS_INPUT_SIZE,
    PHOTO_INPUT_SIZE,
)
from lab2prod.models import langid
from lab2prod.models.data import DIGIT_CLASSES, UserData, load_user_data
from lab2prod.models.hf import MAX_LENGTH, SAMPLE_TEXTS, load_hf, text_batches
from lab2prod.models.images import parity_images
from lab2prod.models.photos import PHOTO_CLASSES
from lab2prod.models.reference import (
    REFERENCE_FAMILIES,
    REFERENCE_MODELS,
    evaluate_accuracy,
    photo_batch,
    reference_batch,
    reference_images,
    reference_model,
    set_eval,
)

__all__ = [
    "LoadedModel",
    "available_models",
    "load_model",
    "load_state_dict_file",
]

InputFn = Callable[[int, int], torch.Tensor]


@dataclass
class LoadedModel:
    """A model ready to run, with what is known about it.

    `make_inputs(batch_size, seed)` returns a float batch; `split` picks held-out ("test") or
    training ("train") data where the model has labelled data (the reference models).
    """

    spec: str
    module: nn.Module
    source: str  # "reference", "torchvision", "torchscript", "torch.export", "factory"
    trained: bool
    input_shape: tuple[int, ...]
    make_inputs: Callable[..., torch.Tensor]
    class_names: list[str] | None = None
    metrics: dict = field(default_factory=dict)
    notes: str = ""
    # What the inputs are: "digits" (labelled digit images, the digits lab transform), "photos"
    # (labelled photo crops, the photo reference recipe), "imagenet"
    # (photographs through the ImageNet recipe) or "tensor" (example_inputs; no image transform).
    family: str = "tensor"

    # "classifier" (class scores: judged by accuracy or top-1 agreement) or "embedder" (vectors:
    # judged by cosine similarity and max abs difference, never by the argmax of a vector).
    task: str = "classifier"
    tokenizer: object = None  # a Hugging Face model's tokenizer: the lab's preprocessing for text
    text_path: object = None  # a text model's lab2prod.kinds.text.TextPath: cleanup, tokenizer and its settings
    data: object = None  # the user's data (lab2prod.models.data.UserData) when --data was given
    data_labels: object = None  # its labels as indices of the model's outputs, or None
    # the lab transform (package.module:callable): PIL image -> tensor for an image model, the
    # text cleanup (str -> str, run before the tokenizer) for a text model
    lab_transform: str = ""
    # labels(batch_size, seed, split) for the batches make_inputs draws, when the input function
    # returns {"inputs": ..., "labels": ...}; None otherwise
    make_labels: Callable[..., torch.Tensor] | None = None
    # a kind registered beyond image, text and tensor (lab2prod.kinds.codec.KINDS); "" infers it
    kind_name: str = ""

    def examples(self, count: int, seed: int = 0) -> list[tuple[str, object]]:
        """Held-out examples as a client holds them, each with a name: the user's images or texts (--data), else
        the reference images or the bundled sample texts; for a model fed tensors, items of its input function
        ({input name: one item's tensor})."""
        if self.data is not None and self.data.kind in ("images", "texts") and self.kind in ("image", "text"):
            picks = draw_indices(len(self.data), min(count, len(self.data)), seed, "test")
            prefix = f"{self.data.path}#" if self.data.kind == "images" else "text#"
            return [(f"{prefix}{i}", self.data.items[i]) for i in picks]
        if self.text_path is not None:
            picks = draw_indices(len(SAMPLE_TEXTS), min(count, len(SAMPLE_TEXTS)), seed, "test")
            return [(f"text#{i}", SAMPLE_TEXTS[i]) for i in picks]
        if self.takes_images:
            names, images, _ = parity_images(self.family, count, seed)
            return list(zip(names, images, strict=True))
        rows = named_tensors(self.make_inputs(count, seed, "test"))
        return [(f"item#{i}", {name: t[i] for name, t in rows.items()}) for i in range(count)]

    @property
    def kind(self) -> str:
        """The kind of request this model takes (a name in lab2prod.kinds.codec.KINDS): text for a model
        with a tokenizer, image for an image model, tensor otherwise."""
        if self.kind_name:
            return self.kind_name
        if self.text_path is not None:
            return "text"
        return "image" if self.takes_images else "tensor"

    def data_inputs(self):
        """Every item of the user's data as model inputs (images through the lab transform, texts
        through the tokenizer), in file order; None without --data."""
        if self.data is None:
            return None
        return self.make_inputs(len(self.data), 0, "all")

    @property
    def takes_images(self) -> bool:
        return self.family in ("digits", "photos", "imagenet", "custom")

    @property
    def inputs_text(self) -> str:
        """What the model takes, in words: "input_ids [64] int64, attention_mask [64] int64"."""
        return ", ".join(f"{name} {d['shape']} {d['dtype']}" for name, d in self.input_spec.items())

    @cached_property
    def input_spec(self) -> dict:
        """{name: {"shape", "dtype"}} of every input, per item (a tensor, a tuple or a dict)."""
        return describe(self.make_inputs(1, 0))

    @property
    def label(self) -> str:
        """The name shown in tables: untrained models say so."""
        return self.spec if self.trained else f"{self.spec} (untrained)"

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def card(self) -> dict:
        """A one-row summary of the model for notebooks and the report."""
        return {
            "model": self.label,
            "source": self.source,
            "trained": self.trained,
            "parameters": self.num_parameters,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "inputs": self.inputs_text,
            "task": self.task,
            **{k: v for k, v in self.metrics.items()},
        }


# ---------------------------------------------------------------- reference models














def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classifiers (built with random weights here)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _hf_model(spec: str, weights: str | None, example_inputs: str | None) -> LoadedModel:
    if weights:
        raise Lab2ProdError(f"weights {weights!r} given with {spec!r}, whose folder carries its own; drop --weights")
    module, tokenizer, task, labels = load_hf(spec[3:])
    text_path = TextPath(tokenizer, MAX_LENGTH)
    make_inputs = _input_fn(example_inputs) if example_inputs else text_batches(text_path)
    try:
        with torch.inference_mode():
            call(module, make_inputs(2, 0))
    except Lab2ProdError:
        raise
    except Exception as exc:
        raise Lab2ProdError(f"{spec} fails on its tokenizer's output ({one_line(exc)}); check that the model and "
                            "tokenizer were saved together") from None
    return LoadedModel(spec, module, "huggingface", True, (), make_inputs, labels, family="text", task=task,
                       tokenizer=tokenizer, text_path=text_path,
                       notes=f"{type(module.model).__name__}; task {task} (from its architecture)")


TEXT_REFERENCE = "text_langid"  # the reference text model (lab2prod.models.langid), loaded through hf:


def available_models() -> list[str]:
    """Every model name `load_model` accepts besides files and `package.module:factory`."""
    return list(REFERENCE_MODELS) + [TEXT_REFERENCE] + torchvision_classifiers()


def _text_reference(cache_dir: Path) -> LoadedModel:
    """The reference text model: its save_pretrained folder (trained into the cache when absent)
    loaded through the same path as a user's hf: folder, with the lab's cleanup before the
    tokenizer and the held-out sentences as its labelled data."""
    import dataclasses


    folder, metrics = langid.reference_folder(cache_dir)
    loaded = _hf_model(f"hf:{folder}", None, None)
    path = TextPath(loaded.tokenizer, langid.MAX_LENGTH, clean_text, "lab2prod.kinds.text:clean_text")
    test, train = langid.language_texts("test"), langid.language_texts("train")
    held_out, training = text_batches(path, test.texts), text_batches(path, train.texts)

    def make(batch_size: int, seed: int = 0, split: str = "test"):
        return (training if split == "train" else held_out)(batch_size, seed, "all" if split == "all" else "test")

    labels = torch.as_tensor(test.labels)
    data = UserData("texts", "text_langid held-out sentences", list(test.texts), labels, list(test.class_names))
    return dataclasses.replace(
        loaded, spec=TEXT_REFERENCE, source="reference", make_inputs=make, text_path=path, data=data,
        data_labels=labels, lab_transform="lab2prod.kinds.text:clean_text", metrics=dict(metrics),
        notes=f"BertForSequenceClassification fine-tuned on {len(train)} sentences in {len(test.class_names)} "
              "languages; the lab cleans each text (lab2prod.kinds.text:clean_text) before the tokenizer")


























# ---------------------------------------------------------------- user inputs




def load_state_dict_file(path: str | Path) -> dict:
    """Load a state_dict with weights_only=True; refuse files that need unsafe unpickling."""
    path = Path(path)
    if not path.is_file():
        raise Lab2ProdError(f"weights file {str(path)!r} does not exist; pass a state_dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise Lab2ProdError(
                f"weights file {str(path)!r} needs unsafe unpickling of {found.group(1)}, refused: "
                "unpickling can run arbitrary code; save model.state_dict() instead of the whole model"
            ) from None
        raise Lab2ProdError(
            f"weights file {str(path)!r} is corrupt or not a torch file; "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise Lab2ProdError(
            f"weights file {str(path)!r} is corrupt or not a torch file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Lab2ProdError(
            f"weights file {str(path)!r} holds a {type(state).__name__}, not a state_dict of tensors"
        )
    return state


def _apply_weights(module: nn.Module, weights: str, spec: str) -> None:
    state = load_state_dict_file(weights)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise Lab2ProdError(
            f"weights {weights!r} do not fit model {spec!r}: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}; "
            "check that the file was saved from this architecture"
        )


def _load_file_model(path: Path) -> tuple[nn.Module, str]:
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module(), "torch.export"
        except Exception as exc:
            raise Lab2ProdError(
                f"model file {str(path)!r} is not a loadable torch.export program "
                f"({type(exc).__name__}); re-create it with torch.export.save"
            ) from None
    if not zipfile.is_zipfile(path):
        raise Lab2ProdError(
            f"model file {str(path)!r} is not a TorchScript or .pt2 archive; "
            "for a state_dict use --model package.module:factory --weights FILE"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
    except Exception:
        raise Lab2ProdError(
            f"model file {str(path)!r} is not a TorchScript archive (a pickled model or state_dict?); "
            "for a state_dict use --model package.module:factory --weights FILE"
        ) from None


def _input_fn(example_inputs: str) -> InputFn:
    fn = import_object(example_inputs, "example_inputs")
    expected = ("def make_batch(batch_size: int, seed: int) -> Tensor, tuple or dict of tensors "
                "(or {'inputs': ..., 'labels': ...})")
    if not callable(fn):
        raise Lab2ProdError(f"example_inputs {example_inputs!r} is not callable; define {expected}")
    try:
        inspect.signature(fn).bind(2, 0)
    except TypeError as exc:
        raise Lab2ProdError(f"example_inputs {example_inputs!r} cannot be called as fn(batch_size, seed) "
                            f"({exc}); define {expected}") from None
    except ValueError:
        pass  # a builtin without a signature: the call below tells

    state = {"labelled": False}

    def raw(batch_size: int, seed: int, split: str):
        # The train split gets a disjoint seed range, so tracing never sees comparison inputs.
        try:
            batch = fn(batch_size, seed if split == "test" else seed + TRAIN_SEED_OFFSET)
        except Lab2ProdError:
            raise
        except Exception as exc:
            raise Lab2ProdError(f"example_inputs {example_inputs!r} raised {one_line(exc)} when called as "
                                f"fn({batch_size}, {seed}); it must be {expected}") from None
        if isinstance(batch, dict) and set(batch) == {"inputs", "labels"}:
            state["labelled"] = True
            return batch["inputs"], batch["labels"]
        return batch, None

    def make(batch_size: int, seed: int = 0, split: str = "test"):
        return check_inputs(raw(batch_size, seed, split)[0], f"example_inputs {example_inputs!r}")

    def labels(batch_size: int, seed: int = 0, split: str = "test") -> torch.Tensor:
        values = raw(batch_size, seed, split)[1]
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError):
            values = None
        if values is None or values.dim() != 1 or len(values) != batch_size or torch.is_floating_point(values):
            raise Lab2ProdError(f"example_inputs {example_inputs!r} returned labels that are not {batch_size} class "
                                "indices; return {'inputs': ..., 'labels': a 1-d integer tensor, one per item}")
        return values.long()

    make.labels = labels
    make.labelled = lambda: state["labelled"]
    return make


def load_model(
    spec: str,
    weights: str | None = None,
    example_inputs: str | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    data: str | None = None,
    lab_transform: str | None = None,
    task: str = "auto",
) -> LoadedModel:
    """Resolve a model spec: a reference or torchvision name, a .pt/.pt2 file, package.module:factory
    or hf:PATH; with `data` (lab2prod.models.data.load_user_data) its inputs and labels come from the
    user's data, images through `lab_transform` (package.module:callable, PIL image -> tensor;
    default the recipe of the model family).

    Raises Lab2ProdError with the valid choices when `spec` is none of those.
    """
    check_task(task)
    loaded = _with_task(_load(spec, weights, example_inputs, seed, cache_dir, with_data=bool(data)), task or "auto")
    if lab_transform and loaded.text_path is not None:
        loaded = _with_text_cleanup(loaded, lab_transform)
    if data:
        return _with_data(loaded, data, lab_transform)
    return _with_transform(loaded, lab_transform) if lab_transform and loaded.takes_images else loaded


TASKS = ("auto", "classifier", "embedder")


def check_task(task: str) -> str:
    """`task` checked: auto, classifier or embedder."""
    if task not in TASKS and task:
        raise Lab2ProdError(f"task {task!r} is not known; use classifier (class scores), embedder (vectors) or auto")
    return task


def _with_task(loaded: LoadedModel, task: str) -> LoadedModel:
    """The task declared by the user, or (auto) the one a Hugging Face architecture or a
    reference model has, else inferred from the outputs: rows of unit length (a normalized
    embedding) make an embedder, anything else a classifier. The card's notes say which."""
    if task != "auto":
        if task != loaded.task:
            loaded.class_names = None if task == "embedder" else loaded.class_names
            loaded.notes = "; ".join(n for n in (loaded.notes, f"task {task} (declared)") if n)
        loaded.task = task
        return loaded
    if loaded.source in ("huggingface", "reference"):
        return loaded
    try:
        out = outputs_of(loaded.module, loaded.make_inputs(4, 0, "test"))
    except Exception:  # a model that needs --data: judged as declared (default classifier)
        return loaded
    norms = out.flatten(1).norm(dim=1)
    if out.dim() == 2 and bool(((norms - 1).abs() < 1e-3).all()):
        loaded.task = "embedder"
        said = "task embedder (inferred: its outputs are unit vectors; pass --task classifier if they are scores)"
    else:
        said = "task classifier (inferred from its outputs; pass --task embedder if it answers vectors)"
    loaded.notes = "; ".join(n for n in (loaded.notes, said) if n)
    return loaded


def _with_transform(loaded: LoadedModel, spec: str) -> LoadedModel:
    """An image model whose lab transform is the user's: its inputs are the family's images (the
    digits, the photo crops, or the sample photographs) through that transform; a reference
    model's accuracy is measured through it too."""
    import dataclasses


    transform = load_transform(spec, "lab_transform")
    if loaded.family in ("digits", "photos"):
        def make(batch_size: int, seed: int = 0, split: str = "test") -> torch.Tensor:
            images, _ = reference_images(loaded.family, "train" if split == "train" else "test")
            rng = np.random.default_rng(seed)
            picks = rng.choice(len(images), size=batch_size, replace=batch_size > len(images))
            return torch.stack([transform(images[int(i)]) for i in picks])
    else:
        def make(batch_size: int, seed: int = 0, split: str = "test") -> torch.Tensor:
            return photo_batch(batch_size, seed, split, transform)
    try:
        batch = make(2, 0)
        with torch.inference_mode():
            call(loaded.module, batch)
    except Exception as exc:
        raise Lab2ProdError(f"model {loaded.spec!r} fails on images through lab_transform {spec!r} "
                            f"({one_line(exc)}); check that the transform makes the tensor the model takes") from None
    result = dataclasses.replace(loaded, make_inputs=make, lab_transform=spec, input_shape=tuple(batch.shape[1:]))
    if loaded.family in ("digits", "photos"):
        images, labels = reference_images(loaded.family, "test")
        inputs = torch.stack([transform(image) for image in images])
        predictions = outputs_of(loaded.module, inputs).argmax(1)
        accuracy = float((predictions == torch.as_tensor(labels)).float().mean())
        result.metrics = {**loaded.metrics, "heldout_accuracy": round(accuracy, 4), "lab_transform": spec}
    return result


def _with_text_cleanup(loaded: LoadedModel, spec: str) -> LoadedModel:
    """A text model whose lab cleaned each text before the tokenizer: `spec` (package.module:callable,
    str -> str) runs first wherever the model's texts are tokenized, in the lab and when served."""

    clean = load_transform(spec, "lab_transform")
    try:
        cleaned = clean("A short <b>test</b> text.")
    except Exception as exc:
        raise Lab2ProdError(f"lab_transform {spec!r} raised on a text ({one_line(exc)}); for a text model it takes "
                            "a str and returns the cleaned str") from None
    if not isinstance(cleaned, str):
        raise Lab2ProdError(f"lab_transform {spec!r} returned {type(cleaned).__name__} for a text; for a text model "
                            "it takes a str and returns the cleaned str")
    loaded.text_path.clean, loaded.text_path.clean_spec = clean, spec  # the inputs' closures share this path
    loaded.lab_transform = spec
    return loaded


def _with_data(loaded: LoadedModel, path: str, lab_transform: str | None) -> LoadedModel:
    import dataclasses


    user = load_user_data(path)
    family = loaded.family
    if user.kind == "images":
        if lab_transform:
            transform, family = load_transform(lab_transform, "lab_transform"), "custom"
        elif loaded.takes_images:
            transform = lab_transform_for(loaded.family)[0]
        else:
            raise Lab2ProdError(f"data {path!r} holds images but model {loaded.spec!r} takes {loaded.inputs_text}; "
                                "pass an image model, or pass lab_transform=package.module:callable")

        def make(batch_size: int, seed: int = 0, split: str = "test") -> torch.Tensor:
            return torch.stack([transform(user.items[i]) for i in draw_indices(len(user), batch_size, seed, split)])
    elif user.kind == "texts":
        if loaded.tokenizer is None:
            raise Lab2ProdError(f"data {path!r} holds texts, which need the model's tokenizer; pass a Hugging Face "
                                "model (--model hf:PATH)")

        make = text_batches(loaded.text_path, user.items)
    else:
        def make(batch_size: int, seed: int = 0, split: str = "test"):
            rows = torch.as_tensor(draw_indices(len(user), batch_size, seed, split))
            return map_tensors(lambda t: t[rows], user.items)
    try:
        batch = make(2, 0)
        with torch.inference_mode():
            probe = first_tensor(call(loaded.module, batch))
    except Lab2ProdError:
        raise
    except Exception as exc:
        raise Lab2ProdError(f"model {loaded.spec!r} fails on inputs made from data {path!r} ({one_line(exc)}); "
                            "check the data and lab_transform") from None
    labels = user.resolve_labels(loaded.class_names, probe.shape[-1]) if loaded.task == "classifier" else None
    result = dataclasses.replace(loaded, make_inputs=make, family=family, data=user, data_labels=labels,
                                 make_labels=None,
                                 lab_transform=(lab_transform or "") if user.kind == "images" else loaded.lab_transform,
                                 input_shape=tuple(batch.shape[1:]) if isinstance(batch, torch.Tensor) else ())
    if labels is not None:
        predictions = outputs_of(result.module, result.data_inputs()).argmax(1)
        result.metrics = {**loaded.metrics, "heldout_accuracy": round(float((predictions == labels).float().mean()), 4),
                          "data": f"{len(user)} {user.kind} from {path}"}
    return result


def _load(spec: str, weights: str | None, example_inputs: str | None, seed: int,
          cache_dir: Path | None, with_data: bool = False) -> LoadedModel:
    if not isinstance(spec, str) or not spec.strip():
        raise Lab2ProdError(f"model {spec!r} is empty; pass a name such as 'digits_cnn'")
    weights = weights or None
    example_inputs = example_inputs or None
    cache_dir = Path(cache_dir) if cache_dir else CACHE_DIR
    path = Path(spec)
    if spec.startswith("hf:"):
        return _hf_model(spec, weights, example_inputs)
    if spec == TEXT_REFERENCE:
        if weights or example_inputs:
            raise Lab2ProdError(f"model {spec!r} carries its weights and texts; drop --weights and --example-inputs")
        return _text_reference(cache_dir)
    if spec in REFERENCE_MODELS:
        family = REFERENCE_FAMILIES[spec]
        module, metrics = reference_model(spec, cache_dir)
        if weights:
            _apply_weights(module, weights, spec)
            metrics = {"heldout_accuracy": round(evaluate_accuracy(module, "test", family), 4)}
        if family == "photos":
            shape, classes = (3, PHOTO_INPUT_SIZE, PHOTO_INPUT_SIZE), list(PHOTO_CLASSES)
        else:
            shape, classes = (3, DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE), DIGIT_CLASSES
        return LoadedModel(spec, module.eval(), "reference", True, shape, reference_batch(family), classes, metrics,
                           family=family)
    if path.suffix in (".pt", ".pth", ".pt2", ".ts", ".jit") or path.is_file():
        if not path.is_file():
            raise Lab2ProdError(f"model file {spec!r} does not exist")
        module, source = _load_file_model(path)
        trained = True
    elif ":" in spec:
        factory = import_object(spec, "model factory")
        if not callable(factory):
            raise Lab2ProdError(f"model factory {spec!r} is not callable")
        torch.manual_seed(seed)
        try:
            module = factory()
        except Exception as exc:
            raise Lab2ProdError(
                f"model factory {spec!r} raised {type(exc).__name__}: {str(exc)[:150]}; "
                "it must build the model with no arguments"
            ) from None
        if not isinstance(module, nn.Module):
            raise Lab2ProdError(
                f"model factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module"
            )
        # lab2prod cannot know what a factory loads (from_pretrained, a checkpoint): only a module it built itself
        # without weights (a torchvision name) is known to be random
        source, trained = "factory", True
    elif spec in torchvision_classifiers():
        import torchvision

        torch.manual_seed(seed)
        module = torchvision.models.get_model(spec, weights=None)
        source, trained = "torchvision", bool(weights)
    else:
        raise Lab2ProdError(
            f"model {spec!r} is not known; use one of {', '.join([*REFERENCE_MODELS, TEXT_REFERENCE])}, a "
            f"torchvision name such as resnet18 ({len(torchvision_classifiers())} in `lab2prod models`), "
            "a .pt/.pt2 file, hf:<a save_pretrained folder>, or package.module:factory"
        )
    if weights:
        if source in ("torchscript", "torch.export"):
            raise Lab2ProdError(f"weights {weights!r} given with model file {spec!r}, which carries its own")
        _apply_weights(module, weights, spec)
    make_inputs = _input_fn(example_inputs) if example_inputs else photo_batch
    probe = make_inputs(2, seed)
    try:
        with torch.inference_mode():
            call(set_eval(module), probe)
    except Exception as exc:
        if with_data:  # its inputs will be made from the user's data: checked there
            return LoadedModel(spec, set_eval(module), source, trained, (), make_inputs, family="imagenet")
        hint = "pass --example-inputs package.module:fn" if not example_inputs else "check example_inputs"
        shapes = {name: tuple(d["shape"]) for name, d in describe(probe).items()}
        raise Lab2ProdError(
            f"model {spec!r} fails on inputs {shapes if len(shapes) > 1 else next(iter(shapes.values()))} "
            f"({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:150]}); {hint}"
        ) from None
    input_shape = tuple(probe.shape[1:]) if isinstance(probe, torch.Tensor) else ()
    loaded = LoadedModel(spec, set_eval(module), source, trained, input_shape, make_inputs,
                         notes=("weights as your factory made them" if source == "factory" and not weights else "")
                         if trained else "random weights: accuracy is meaningless",
                         family="tensor" if example_inputs else "imagenet")
    return _with_labels(loaded, example_inputs) if getattr(make_inputs, "labelled", lambda: False)() else loaded


def _with_labels(loaded: LoadedModel, example_inputs: str, count: int = 360) -> LoadedModel:
    """A model whose input function also returns labels: they must be indices of its outputs, and
    its accuracy on `count` held-out draws goes on its card."""
    labels = loaded.make_inputs.labels(count, 0, "test")
    predictions = outputs_of(loaded.module, loaded.make_inputs(count, 0, "test")).argmax(1)
    outputs = int(outputs_of(loaded.module, loaded.make_inputs(1, 0, "test")).shape[-1])
    if int(labels.min()) < 0 or int(labels.max()) >= outputs:
        raise Lab2ProdError(f"example_inputs {example_inputs!r} returned labels up to {int(labels.max())} but the "
                            f"model answers {outputs} scores; labels must be 0..{outputs - 1}")
    loaded.make_labels = loaded.make_inputs.labels
    loaded.metrics = {**loaded.metrics, "heldout_accuracy": round(float((predictions == labels).float().mean()), 4),
                      "data": f"{count} labelled draws of {example_inputs}"}
    return loaded
