"""Disk used by the model cache (resources/models/{model}) of a bf16 LLM folder, against the checkpoint.

Why: the model cache used to hold every analysed weight as float32, so a bf16 checkpoint left a
copy twice its size in resources/ (a 70B model: 280 GB) before any eigenvalue was computed. Now
fetch keeps each tensor in its stored dtype (zooscope.sources.fetch.write_safetensors) and the esd
stage widens it block by block. This builds a Llama-architecture causal LM with transformers,
saves it with ``save_pretrained`` in bf16 shards, fetches it as ``file:FOLDER`` and as
``hf:REPO`` (the same files in an offline Hugging Face cache), and prints the bytes of each
model cache against the checkpoint's weights files, and the float32 copy's size as the peer.

    python benchmarks/bench_disk.py                       # --hidden 1024 --layers 8 --vocab 32000
    python benchmarks/bench_disk.py --keep DIR            # keep the folder and the caches in DIR

Exit status 1 when a ratio exceeds --limit (default 1.05, issue 14's target). Sizes do not
depend on the machine's load, so these figures need no re-measuring; the seconds printed do.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def build_folder(folder: Path, hidden: int, layers: int, vocab: int, shard_mb: int) -> None:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=2048, tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.save_pretrained(folder, max_shard_size=f"{shard_mb}MB")


def put_in_hf_cache(hf_home: Path, repo: str, folder: Path) -> None:
    """huggingface_hub's cache layout: blobs by sha256, a snapshot of links, refs/main."""
    commit = "0" * 40
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for file in sorted(folder.iterdir()):
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            os.link(file, blob)  # the same bytes, no second copy on disk
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-mb", type=int, default=100, help="save_pretrained's max_shard_size")
    parser.add_argument("--limit", type=float, default=1.05)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_disk."))
    root.mkdir(parents=True, exist_ok=True)
    try:
        folder = root / "llama"
        if not folder.exists():
            build_folder(folder, args.hidden, args.layers, args.vocab, args.shard_mb)
        weights = sum(file.stat().st_size for file in folder.glob("*.safetensors"))
        os.environ.update(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1")
        if not (root / "hf").exists():
            put_in_hf_cache(root / "hf", "bench/llama", folder)

        from safetensors import safe_open

        from zooscope.sources.fetch import fetch_model

        print(f"checkpoint: {folder} ({len(list(folder.glob('*.safetensors')))} bf16 shards), "
              f"{weights / 2**20:.1f} MiB of weights files")
        worst = 0.0
        for name, source in (("file", f"file:{folder}"), ("hf", "hf:bench/llama")):
            out = root / "resources" / "models" / name
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            fetch_model({"model": name, "series": "s", "source": source, "accuracy": None}, out, threads=2)
            seconds = time.perf_counter() - start
            with safe_open(out / "model.safetensors", framework="numpy") as handle:
                float32 = sum(4 * _numel(handle, key) for key in handle.keys())
            size = folder_bytes(out)
            worst = max(worst, size / weights)
            print(f"{source:>24}: resources/models/{name} {size / 2**20:8.1f} MiB = {size / weights:.3f}x the "
                  f"checkpoint (a float32 copy of its tensors: {float32 / weights:.2f}x); fetch {seconds:.1f} s")
        print(f"target <= {args.limit}x: {'met' if worst <= args.limit else 'NOT met'} (worst {worst:.3f}x)")
        return 0 if worst <= args.limit else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _numel(handle, key) -> int:
    count = 1
    for dim in handle.get_slice(key).get_shape():
        count *= dim
    return count


if __name__ == "__main__":
    sys.exit(main())
