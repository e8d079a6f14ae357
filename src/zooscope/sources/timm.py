"""``timm:NAME``: a timm model with its pretrained tag (e.g. resnet50.a1_in1k), through
``timm.create_model``; weights from the Hugging Face cache. Loaded safely as zooscope.sources.hubs
describes.
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

    return fetch_hub(row, load_timm, threads)


def load_timm(argument: str, model: str) -> HubModel:
    """``timm:NAME`` with its pretrained tag (e.g. resnet50.a1_in1k), via ``timm.create_model``."""
    import timm
    import torch

    from zooscope.sources.hubs import (
        HubModel, file_records, guarded_load, hf_cache_dir, hf_cache_hint, hf_cache_only_unless_reachable,
    )
    from zooscope.sources.hf import hf_snapshot

    check_timm_name(argument, model)
    source = f"timm:{argument}"
    unreachable = hf_cache_only_unless_reachable()
    module = guarded_load(model, source, hf_cache_hint(f"timm/{argument}"),
                          lambda: timm.create_model(argument, pretrained=True, cache_dir=hf_cache_dir()),
                          context=unreachable)
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    provenance = {"library": "timm", "version": timm.__version__, "pretrained": argument}
    if cfg.get("hf_hub_id"):
        repo, _, revision = cfg["hf_hub_id"].partition("@")
        provenance.update(hf_snapshot(repo, revision or None, model))
    elif cfg.get("url"):
        provenance["url"] = cfg["url"]
        provenance["files"] = file_records([Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])])
    return HubModel(module=module, provenance=provenance)


def check_timm_name(name: str, model: str) -> None:
    """An unknown architecture or pretrained tag is a sheet error, reported before any download."""
    import timm

    from zooscope.sources.hubs import did_you_mean

    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        raise FetchError(
            f"model {model!r}: unknown timm model {architecture!r}{did_you_mean(architecture, timm.list_models())}"
        )
    tags = timm.list_pretrained(f"{architecture}.*")
    if not tags:
        raise FetchError(f"model {model!r}: timm model {architecture!r} has no pretrained weights")
    if "." in name and name not in tags:
        raise FetchError(f"model {model!r}: unknown timm pretrained tag {name!r}; valid: {', '.join(tags)}")


KIND = SourceKind(
    name="timm", syntax="timm:NAME", example="timm:resnet50.a1_in1k",
    argument=r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)?", fetch=fetch,
)
