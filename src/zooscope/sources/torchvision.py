"""``torchvision:NAME[@WEIGHTS]``: a torchvision model with its published weights (WEIGHTS defaults
to DEFAULT), through ``torchvision.models.get_model``; its accuracy is the weights' ImageNet-1K
acc@1 from their meta. Loaded safely and cached as zooscope.sources.hubs describes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from zooscope.sources.base import Fetched, FetchError, SourceKind

if TYPE_CHECKING:
    from zooscope.sources.hubs import HubModel
    from zooscope.zoo import ZooRow


def fetch(row: ZooRow, threads: int) -> Fetched:
    from zooscope.sources.hubs import fetch_hub

    return fetch_hub(row, load_torchvision, threads)


def load_torchvision(argument: str, model: str) -> HubModel:
    """``torchvision:NAME[@WEIGHTS]`` (WEIGHTS defaults to DEFAULT); accuracy from the weights' meta."""
    import torch
    import torchvision

    from zooscope.sources.hubs import HubModel, download_error, file_records, guarded_load, offline

    name, _, weights_name = argument.partition("@")
    weights = torchvision_weights(name, weights_name or "DEFAULT", model)
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    source = f"torchvision:{argument}"
    cache_hint = f"download {weights.url} and put it into {checkpoint.parent}/ (set by TORCH_HOME)"
    if not checkpoint.is_file() and offline():
        raise download_error(model, source, f"offline (HF_HUB_OFFLINE set) and {checkpoint} is not cached", cache_hint)
    module = guarded_load(model, source, cache_hint, lambda: torchvision.models.get_model(name, weights=weights))
    acc1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return HubModel(
        module=module,
        accuracy=float(acc1) if acc1 is not None else None,
        accuracy_source=f"torchvision {type(weights).__name__}.{weights.name} meta: ImageNet-1K acc@1"
        if acc1 is not None else None,
        provenance={
            "library": "torchvision",
            "version": torchvision.__version__,
            "weights": f"{type(weights).__name__}.{weights.name}",
            "url": weights.url,
            "files": file_records([checkpoint]),
        },
    )


def torchvision_weights(name: str, weights_name: str, model: str):
    """The weights enum member for ``name@weights_name``; unknown names list the valid ones."""
    import torchvision

    from zooscope.sources.hubs import did_you_mean

    if name not in torchvision.models.list_models():
        raise FetchError(
            f"model {model!r}: unknown torchvision model {name!r}"
            f"{did_you_mean(name, torchvision.models.list_models())}"
        )
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights_name]
    except KeyError:
        raise FetchError(
            f"model {model!r}: torchvision model {name!r} has no weights {weights_name!r}; "
            f"valid: {', '.join(enum.__members__)}"
        ) from None


KIND = SourceKind(
    name="torchvision", syntax="torchvision:NAME[@WEIGHTS]", example="torchvision:resnet50@IMAGENET1K_V1",
    argument=r"[a-z][a-z0-9_]*(@[A-Z][A-Z0-9_]*)?", fetch=fetch,
)
