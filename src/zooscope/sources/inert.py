"""Pickles of torch's zip format read as data: objects of unknown classes become inert records,
nothing named in the file is imported or called but torch's tensor rebuilders and plain
containers.

Two kinds of file need this: TorchScript archives (zooscope.sources.torchscript), whose
``data.pkl`` holds ``__torch__`` module objects, and ``torch.save`` files that pickle whole
objects beside or instead of a state dict (``torch.save(model)``; YOLO-style checkpoints whose
``model`` is the nn.Module itself), which ``torch.load(weights_only=True)`` refuses.

Why it is safe: a pickle can only run code through the globals it names, which find_class
resolves, and the calls it makes with them (REDUCE, NEWOBJ, BUILD's ``__setstate__``). Here a
global is either on an allowlist of data builders (torch's ``_rebuild_tensor_v2`` and
``_rebuild_parameter``, storage types, dtypes, ``torch.device``, ``OrderedDict``, ``set``, numpy's
array and scalar builders) or becomes a fresh
subclass of Inert, whose construction (NEWOBJ) and state (BUILD) only record data; calling one
(REDUCE: how a pickle calls a function, ``os.system`` or ``exec``) is refused unless the caller
allows it for that module (TorchScript's own classes, whose enum members are pickled so). The
modules a pickle names are never imported.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from typing import Any, Callable

# Data builders a pickle of torch's zip format may call, as (module, name).
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("torch.jit._pickle", "build_intlist"), ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"), ("torch.jit._pickle", "build_tensorlist"),
    ("torch.jit._pickle", "restore_type_tag"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "device"), ("torch.serialization", "_get_layout"),
    # numpy arrays, scalars and dtypes a module or its checkpoint keeps (both numpy 1's and 2's names)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("_codecs", "encode"),  # how protocol 2 pickles bytes (an array's data)
}


class Inert:
    """An object of a class the pickle names, as data: the class's qualified name, the arguments
    it was made with and the state it was saved with (``state``: its ``__dict__`` for most)."""

    qualified_name = ""

    def __init__(self, *arguments: Any) -> None:
        self.arguments, self.state = arguments, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class InertUnpickler(pickle._Unpickler):  # the Python unpickler: its REDUCE can be checked
    """Unpickles a torch zip archive's pickle (its storages read from ``{root}data/``) as data.

    ``callable_inert``: whether REDUCE may call an Inert class of a module (TorchScript's
    ``__torch__`` classes: its enum members); otherwise a call to one is an UnpicklingError naming
    it. A bare value as REDUCE's arguments (TorchScript's enums) is passed as one argument."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, archive: zipfile.ZipFile, root: str, callable_inert: Callable[[str], bool]):
        super().__init__(file)
        self.archive, self.root, self.callable_inert, self.classes = archive, root, callable_inert, {}

    def find_class(self, module: str, name: str) -> Any:
        import torch

        module = {"__builtin__": "builtins"}.get(module, module)  # protocol 2's Python 2 names
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
                                  or (name.endswith("Storage") and isinstance(getattr(torch, name, None), type))):
            return getattr(torch, name)
        qualified = f"{module}.{name}"
        if qualified not in self.classes:
            self.classes[qualified] = type(name, (Inert,), {"qualified_name": qualified, "module": module})
        return self.classes[qualified]

    def load_reduce(self) -> None:
        arguments = self.stack.pop()
        function = self.stack[-1]
        if isinstance(function, type) and issubclass(function, Inert) and not self.callable_inert(function.module):
            raise pickle.UnpicklingError(f"the pickle calls {function.qualified_name}, which zooscope does not run")
        self.stack[-1] = function(*(arguments if isinstance(arguments, tuple) else (arguments,)))

    dispatch[pickle.REDUCE[0]] = load_reduce

    def persistent_load(self, saved_id: Any) -> Any:
        import torch

        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(saved_id)[:80]}")
        _, storage_type, key, _location, numel = saved_id
        with warnings.catch_warnings():  # the legacy storage classes' "TypedStorage is deprecated"
            warnings.simplefilter("ignore", UserWarning)
            dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"a storage of unknown type {storage_type!r}")
        data = self.archive.read(f"{self.root}data/{key}")
        if len(data) != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, not {numel} {dtype} values")
        untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def pickle_root(names: list[str]) -> str | None:
    """The folder of a torch zip archive's ``data.pkl`` (``archive/``), or None."""
    return next((name.removesuffix("data.pkl") for name in names if name == "data.pkl" or name.endswith("/data.pkl")),
                None)


def load_objects(path, callable_inert: Callable[[str], bool] = lambda module: False) -> Any:
    """What a torch zip archive's ``data.pkl`` holds, unknown objects as Inert records."""
    with zipfile.ZipFile(path) as archive:
        root = pickle_root(archive.namelist())
        if root is None:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        with archive.open(f"{root}data.pkl") as handle:
            return InertUnpickler(handle, archive, root, callable_inert).load()


def module_states(value: Any) -> Any:
    """``value`` with each pickled nn.Module in it (an Inert whose state has ``_parameters``,
    ``_buffers`` and ``_modules``, as nn.Module pickles) replaced by its state dict: its
    parameters and persistent buffers under their module paths, as ``state_dict()`` names them.
    Mappings, lists and tuples are looked into; other Inert objects become None."""
    import torch

    if isinstance(value, Inert):
        state = value.state if isinstance(value.state, dict) else None
        if state is None or not isinstance(state.get("_modules"), dict):
            return None
        found: dict[str, Any] = {}
        _module_state(value, "", found, set())
        return found
    if isinstance(value, dict):
        return {key: module_states(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [module_states(item) for item in value]
    return value if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))) else None


def _module_state(module: Inert, prefix: str, found: dict, seen: set) -> None:
    import torch

    if id(module) in seen or not isinstance(module.state, dict):
        return
    seen.add(id(module))
    state = module.state
    skipped = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor) and not (group == "_buffers" and name in skipped):
                found.setdefault(f"{prefix}{name}", tensor)
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Inert):
            _module_state(child, f"{prefix}{name}.", found, seen)
