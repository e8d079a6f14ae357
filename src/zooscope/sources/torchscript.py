"""TorchScript archives (``torch.jit.save``: a deployed model), read for their tensors without
running their code.

A TorchScript archive is a zip of the model's code (``code/__torch__/...``), its constants and
``data.pkl``: a pickle of the module objects (``__torch__.torch.nn.modules.linear.Linear``),
each with its attributes, submodules and tensors, the tensors' bytes in ``data/{key}``.
``torch.jit.load`` would compile and run that code, and ``torch.load(weights_only=True)``
refuses the archive; here ``data.pkl`` is read by an unpickler that makes each ``__torch__``
object an empty record of its attributes (ScriptObject: nothing of its class is run), tensors
from their bytes, and nothing else (TorchScriptUnpickler). The module tree is then walked into
a state dict (``features.0.weight``), which is typed like any PyTorch file's.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.sources.base import CONVERT_HINT, FetchError

if TYPE_CHECKING:
    from torch import Tensor

# torch's data builders a TorchScript data.pkl names, each making a tensor or a plain list.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"), ("collections", "OrderedDict"),
    ("torch.jit._pickle", "build_intlist"), ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"), ("torch.jit._pickle", "build_tensorlist"),
    ("torch.jit._pickle", "restore_type_tag"),
}
SCRIPT_PREFIX = "__torch__."


def archive_root(names: list[str]) -> str | None:
    """The folder of a TorchScript archive's ``data.pkl`` (``archive/``), or None: a zip is one when
    beside its ``data.pkl`` there are ``constants.pkl`` and ``code/`` (torch.save's zip has neither)."""
    for name in names:
        if name.endswith("/data.pkl"):
            root = name.removesuffix("data.pkl")
            if f"{root}constants.pkl" in names and any(other.startswith(f"{root}code/") for other in names):
                return root
    return None


class ScriptObject:
    """A TorchScript object as data: its class's qualified name and the attributes it was saved
    with (``state``, a dict for modules; an enum's value)."""

    script_class = ""

    def __init__(self, *arguments: Any) -> None:
        self.state = arguments

    def __setstate__(self, state: Any) -> None:
        self.state = state


class TorchScriptUnpickler(pickle._Unpickler):  # the Python unpickler: its REDUCE can be replaced
    """Makes ``__torch__`` objects ScriptObjects, storages from the archive's bytes, tensors with
    torch's own rebuild functions, plain lists; refuses any other global.

    TorchScript pickles an enum member as its class called with its bare value, not an argument
    tuple, which Python's unpickler rejects; REDUCE here passes a bare value as one argument."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_reduce(self) -> None:
        arguments = self.stack.pop()
        function = self.stack[-1]
        self.stack[-1] = function(*(arguments if isinstance(arguments, tuple) else (arguments,)))

    dispatch[pickle.REDUCE[0]] = load_reduce

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root, self.classes = archive, root, {}

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module.startswith(SCRIPT_PREFIX.rstrip(".")):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObject,), {"script_class": qualified})
            return self.classes[qualified]
        if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
            return getattr(torch, name)
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the archive's data.pkl names {module}.{name}, which is not TorchScript data")

    def persistent_load(self, saved_id: Any) -> Any:
        import torch

        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(saved_id)[:80]}")
        _, storage_type, key, _location, numel = saved_id
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"a storage of unknown type {storage_type!r}")
        data = self.archive.read(f"{self.root}data/{key}")
        if len(data) != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, not {numel} {dtype} values")
        untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def read_torchscript(path: Path, model: str) -> dict[str, Tensor]:
    """The tensors of a TorchScript archive's modules under their state-dict names, in module order."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = archive_root(archive.namelist())
            if root is None:
                raise FetchError(f"model {model!r}: {path} is not a TorchScript archive")
            with archive.open(f"{root}data.pkl") as handle:
                top = TorchScriptUnpickler(handle, archive, root).load()
    except pickle.UnpicklingError as error:
        raise FetchError(f"model {model!r}: refusing to load TorchScript archive {path}: {error}; zooscope never "
                         f"runs pickled code: {CONVERT_HINT}") from None
    except FetchError:
        raise
    except Exception as error:  # a damaged zip or pickle: any of zipfile's, pickle's and torch's errors
        raise FetchError(f"model {model!r}: cannot read TorchScript archive {path} (corrupt or truncated?): "
                         f"{type(error).__name__}: {error}") from None
    tensors: dict[str, Tensor] = {}
    walk(top, "", tensors, set())
    return tensors


def walk(node: Any, prefix: str, tensors: dict, seen: set) -> None:
    """Each tensor attribute of ``node`` and of its submodules, as ``{path}.{attribute}``."""
    import torch

    if not isinstance(node, ScriptObject) or id(node) in seen or not isinstance(getattr(node, "state", None), dict):
        return
    seen.add(id(node))
    for name, value in node.state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            tensors.setdefault(f"{prefix}{name}", value)
        elif isinstance(value, ScriptObject):
            walk(value, f"{prefix}{name}.", tensors, seen)
