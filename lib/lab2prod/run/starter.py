"""`lab2prod init [folder]`: a starter project with a parameters file and a model file to edit."""

from __future__ import annotations

from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.registry import COMMON, STUDIES, Study

__all__ = ["PARAMS_FILE", "MODELS_FILE", "params_text", "write_starter"]

PARAMS_FILE = "lab2prod.yaml"
MODELS_FILE = "models.py"

_MODELS = '''"""Your model for lab2prod: edit build_model to return it, make_batch to draw the inputs it takes.

`lab2prod run -f lab2prod.yaml` imports this file from the folder you run it in.
"""

import torch
from torch import nn


def build_model() -> nn.Module:
    """Return your model with its trained weights, e.g. MyNet() then load_state_dict(torch.load(...)), or
    AutoModel.from_pretrained("path/to/folder"). This starter is a small untrained network."""
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def make_batch(batch_size: int, seed: int) -> torch.Tensor:
    """A batch of the inputs your model takes in production (here: 16 features per row). Draw them from
    your data where you can; clone a slice of a larger tensor (data[i:i + n].clone()) so that only the
    batch, not the whole tensor, is stored with the exported model."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 16, generator=generator)
'''


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def params_text(studies: list[Study] | None = None) -> str:
    """A lab2prod.yaml: the model lines set for models.py, then every study's parameters, commented out at
    their defaults with their help, to uncomment and change."""
    studies = STUDIES if studies is None else studies
    lines = ["# lab2prod parameters: `lab2prod run -f lab2prod.yaml` (a -p on the command line wins over this file).",
             "# A bare name goes to every study that has it; study.name to one study.", "",
             f"model: {MODELS_FILE[:-3]}:build_model  # {COMMON['model'].help}",
             f"example_inputs: {MODELS_FILE[:-3]}:make_batch  # {COMMON['example_inputs'].help}"]
    shared = [name for name in COMMON if name not in ("model", "example_inputs", "run_dir")]
    lines += [f"# {name}: {_yaml_value(COMMON[name].default)}  # {COMMON[name].help}" for name in shared]
    for study in studies:
        own = [p for p in study.params if p.name not in COMMON and p.name != "run_dir"]
        if not own:
            continue
        lines += ["", f"# {study.short} ({study.notebook}; checklist item: {study.item})"]
        for param in own:
            rule = param.range_text()
            lines.append(f"# {study.short}.{param.name}: {_yaml_value(param.default)}  # {param.help}"
                         + (f" ({rule})" if rule else ""))
    return "\n".join(lines) + "\n"


def write_starter(folder: str | Path, force: bool = False) -> list[Path]:
    """Write lab2prod.yaml and models.py into `folder` (made if absent); refuse to overwrite either unless
    `force`. Returns the paths written."""
    folder = Path(folder)
    targets = {folder / PARAMS_FILE: params_text(), folder / MODELS_FILE: _MODELS}
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise Lab2ProdError(f"{', '.join(existing)} already exists; edit it, choose another folder, or pass --force "
                            "to overwrite")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in targets.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise Lab2ProdError(f"folder {str(folder)!r} cannot be written ({exc.strerror}); choose another") from None
    return list(targets)
