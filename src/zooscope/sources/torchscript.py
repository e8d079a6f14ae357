"""TorchScript archives (``torch.jit.save``: a deployed model), read for their tensors without
running their code.

A TorchScript archive is a zip of the model's code (``code/__torch__/...``), its constants and
``data.pkl``: a pickle of the module objects (``__torch__.torch.nn.modules.linear.Linear``),
each with its attributes, submodules and tensors, the tensors' bytes in ``data/{key}``.
``torch.jit.load`` would compile and run that code, and ``torch.load(weights_only=True)``
refuses the archive; here ``data.pkl`` is read as data (zooscope.sources.inert: each object an
inert record of the attributes it was saved with, nothing of its class run; TorchScript's own
classes may be called, as its enum members are pickled), and the module tree is walked into a
state dict (``features.0.weight``), which is typed like any PyTorch file's.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.sources.base import CONVERT_HINT, FetchError
from zooscope.sources.inert import Inert, load_objects

if TYPE_CHECKING:
    from torch import Tensor

SCRIPT_MODULES = "__torch__"


def archive_root(names: list[str]) -> str | None:
    """The folder of a TorchScript archive's ``data.pkl`` (``archive/``), or None: a zip is one when
    beside its ``data.pkl`` there are ``constants.pkl`` and ``code/`` (torch.save's zip has neither)."""
    for name in names:
        if name.endswith("/data.pkl"):
            root = name.removesuffix("data.pkl")
            if f"{root}constants.pkl" in names and any(other.startswith(f"{root}code/") for other in names):
                return root
    return None


def read_torchscript(path: Path, model: str) -> dict[str, Tensor]:
    """The tensors of a TorchScript archive's modules under their state-dict names, in module order."""
    try:
        top = load_objects(path, callable_inert=lambda module: module.split(".")[0] == SCRIPT_MODULES)
    except pickle.UnpicklingError as error:
        raise FetchError(f"model {model!r}: refusing to load TorchScript archive {path}: {error}; zooscope never "
                         f"runs pickled code: {CONVERT_HINT}") from None
    except Exception as error:  # a damaged zip or pickle: any of zipfile's, pickle's and torch's errors
        raise FetchError(f"model {model!r}: cannot read TorchScript archive {path} (corrupt or truncated?): "
                         f"{type(error).__name__}: {error}") from None
    tensors: dict[str, Tensor] = {}
    walk(top, "", tensors, set())
    return tensors


def walk(node: Any, prefix: str, tensors: dict, seen: set) -> None:
    """Each tensor attribute of a TorchScript object and of its submodules, as ``{path}.{attribute}``."""
    import torch

    if not isinstance(node, Inert) or id(node) in seen or not isinstance(node.state, dict):
        return
    seen.add(id(node))
    for name, value in node.state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            tensors.setdefault(f"{prefix}{name}", value)
        elif isinstance(value, Inert):
            walk(value, f"{prefix}{name}.", tensors, seen)
