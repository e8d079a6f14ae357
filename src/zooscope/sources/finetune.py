"""``finetune:full`` and ``finetune:lora``: the row's base (a ``train:`` model of the zoo) trained further here on the digits.

The fine-tunes of the demo, made offline and deterministically like ``train:`` models. The fetch
job rebuilds the base from its fetched folder (its architecture from meta.json, its whole state
from model.safetensors) and trains it on the whole digits task (the training options of train:,
defaults :data:`FINETUNE_DEFAULTS`):

- ``finetune:full`` trains every weight: a full fine-tune, analysed against its base like a
  ``file:`` model with a base;
- ``finetune:lora`` wraps the base in ``peft``'s LoRA (rank ``lora_rank``, ``lora_alpha``, every
  Linear layer a target; peft's default initialisation, seeded), trains the adapter alone, writes
  it with peft's ``save_pretrained`` into a temporary folder and fetches that folder exactly as a
  ``peft:`` row (zooscope.sources.peft.fetch_adapter): the merged model, and each layer's factors
  for the low-rank route of its update's spectrum.

The accuracy is the measured test accuracy (all ten digits). Like an adapter, the row needs its
``base``, and its fetch job gets the base's fetched folder (``SourceKind.adapter``): changing the
base refetches (retrains) the fine-tune.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.models.catalog import TRAINING_OPTION_TYPES, TrainingConfig
from zooscope.sources.base import FetchError, SourceKind
from zooscope.sources.built import checked_training, measured_source, module_fields

if TYPE_CHECKING:
    from torch import nn

    from zooscope.sources.base import Fetched
    from zooscope.zoo import ZooRow

MODES = ("full", "lora")
# Training of a fine-tune: fewer epochs and a smaller learning rate than training from scratch.
FINETUNE_DEFAULTS = TrainingConfig(epochs=20, lr=1e-3, batch_size=64)
LORA_OPTION_TYPES: dict[str, type] = {"lora_rank": int, "lora_alpha": float}
LORA_DEFAULTS = {"lora_rank": 4, "lora_alpha": 8.0}


def training_config(options: Mapping[str, Any]) -> TrainingConfig:
    """The fine-tune's training: FINETUNE_DEFAULTS with the row's training options (checked)."""
    return checked_training(dataclasses.replace(
        FINETUNE_DEFAULTS, **{key: value for key, value in options.items() if key in TRAINING_OPTION_TYPES}))


def lora_options(options: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**LORA_DEFAULTS, **{key: value for key, value in options.items() if key in LORA_OPTION_TYPES}}
    if merged["lora_rank"] < 1 or not merged["lora_alpha"] > 0:
        raise ValueError(f"columns lora_rank and lora_alpha must be positive, got {merged}")
    return merged


def check(mode: str, options: Mapping[str, Any]) -> None:
    """The sheet-time check (ValueError): the mode, the training options, LoRA's only for lora."""
    training_config(options)
    if mode == "full" and any(key in options for key in LORA_OPTION_TYPES):
        raise ValueError("columns lora_rank and lora_alpha apply to finetune:lora only")
    lora_options(options)


def base_module(model: str, base_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The base's module with its fetched state, and its architecture (from its meta.json)."""
    from safetensors.torch import load_file

    from zooscope import io
    from zooscope.jacobian.rebuild import module_state
    from zooscope.models import architectures

    meta = io.read_json(base_dir / "meta.json")
    if "architecture" not in meta or "training" not in meta:
        raise FetchError(f"model {model!r}: a finetune: row needs a train: model as its base, not "
                         f"{meta.get('source')!r} ({meta.get('model')!r})")
    architecture = meta["architecture"]
    network = architectures.build_architecture(architecture["name"], architecture["options"])
    network.load_state_dict(module_state(network, load_file(str(base_dir / "model.safetensors"))))
    return network, architecture


def fetch(row: ZooRow, threads: int, base_dir: Path) -> Fetched:
    """Fine-tune the row's base (fetched into ``base_dir``) on the whole digits task."""
    from zooscope.models import digits
    from zooscope.sources.base import Fetched

    mode, config = row.source.argument, training_config(row.options)
    network, architecture = base_module(row.model, Path(base_dir))
    meta = {"architecture": architecture, "finetune": {"mode": mode, "base": row.base}}
    if mode == "full":
        result = digits.train(network, config, threads=threads)
        return Fetched(**module_fields(network, row.selection), accuracy=result.test_accuracy,
                       accuracy_source=measured_source(), extra_meta={**meta, "training": result.to_meta()})
    import peft
    import torch

    from zooscope.sources.peft import fetch_adapter

    lora = lora_options(row.options)
    targets = sorted(name for name, module in network.named_modules() if isinstance(module, torch.nn.Linear))
    with digits.deterministic_torch(config.seed, threads):  # peft draws A's initial values
        wrapped = peft.get_peft_model(network, peft.LoraConfig(r=lora["lora_rank"], lora_alpha=lora["lora_alpha"],
                                                                target_modules=targets, lora_dropout=0.0))
    result = digits.train(wrapped, config, threads=threads)
    with tempfile.TemporaryDirectory(prefix=f"{row.model}-adapter-") as folder:
        wrapped.save_pretrained(folder)
        fetched = fetch_adapter(row.model, Path(folder), result.test_accuracy, Path(base_dir))
    fetched.accuracy_source = measured_source()
    # the temporary folder is no input, and peft writes its target modules in set order
    fetched.extra_meta["adapter"].update(folder=None, target_modules=targets)
    fetched.extra_meta.update(meta, training={**result.to_meta(), **lora})
    return fetched


KIND = SourceKind(
    name="finetune", syntax="finetune:MODE", example="finetune:lora", argument="|".join(MODES), fetch=fetch,
    options={**TRAINING_OPTION_TYPES, **LORA_OPTION_TYPES}, check=check, adapter=True,
)
