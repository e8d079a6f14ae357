"""Peak memory of the fetch and esd stages on a synthetic sharded model (default 2 GiB of weights).

Why: docs/sharding-and-resources.md promises that memory is bounded by the largest tensor, not the model: fetch reads
a safetensors-sourced model one tensor at a time (zooscope.tensors.TensorStore) and streams its
output (zooscope.sources.fetch.write_safetensors); esd reads one tensor at a time (safe_open). This
builds a Hugging Face style sharded model (model-0000i-of-0000n.safetensors + index), runs each
stage in a fresh subprocess (so nothing else is in its memory) and reports the child's peak RSS
(``VmHWM`` of /proc/self/status, Linux), next to the RSS of the same imports alone.

The same is measured for an ``hf:`` source: a synthetic GPT-2 of the same size, sharded, in a
Hugging Face cache read offline (HF_HUB_OFFLINE=1), fetched as zooscope does it (the module tree
on the meta device, the checkpoint converted tensor by tensor: zooscope.sources.hf.hf_checkpoint) and,
as the peer, through ``transformers.AutoModel.from_pretrained`` (the model loaded whole).

    python benchmarks/bench_memory.py                 # --gib 2 --shards 4 --rows 8192 --cols 1024
    python benchmarks/bench_memory.py --keep DIR      # keep the synthetic model and outputs in DIR

Exit status 1 when the esd stage's peak RSS reaches --esd-limit-gib (default 0.75).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1 << 30

# Each child prints its peak RSS in bytes as the last line of stdout (zooscope.jobs.peak_rss: the
# high-water mark of its own address space; ru_maxrss would carry the parent's peak over fork and exec).
PEAK = "from zooscope.jobs import peak_rss; print(peak_rss())"
# Fetches hf:bench/synthetic-gpt2 from the Hugging Face cache in sys.argv[1] into sys.argv[2], offline.
HF_REPO = "bench/synthetic-gpt2"
HF_FETCH = (
    "import os, sys\nos.environ.update(HF_HOME=sys.argv[1], HF_HUB_OFFLINE='1')\n"
    "from zooscope.sources.fetch import fetch_model\n"
    f"fetch_model({{'model': 'synthetic-gpt2', 'series': 's', 'source': 'hf:{HF_REPO}', 'accuracy': None}},"
    " sys.argv[2], sheet_dir='.', threads=2)\n"
)
CHILDREN = {
    "fetch imports": "import zooscope.sources.fetch, safetensors\n" + PEAK,  # a file: fetch imports no torch
    "fetch": (
        "import sys\nfrom zooscope.sources.fetch import fetch_model\n"
        "fetch_model({'model': 'synthetic', 'series': 's', 'source': 'file:' + sys.argv[1], 'accuracy': None},"
        " sys.argv[2], sheet_dir='.', threads=2)\n" + PEAK
    ),
    "hf fetch imports": "import zooscope.sources.fetch, zooscope.sources.hubs, transformers, safetensors.torch\n"
                        "from transformers import GPT2Model\n" + PEAK,
    "hf fetch": HF_FETCH + PEAK,
    "hf fetch whole": "from zooscope.sources import hf\nhf.hf_checkpoint = lambda *args: None\n" + HF_FETCH + PEAK,
    "esd imports": "import zooscope.spectra.esd, safetensors\n" + PEAK,
    "esd": (
        "import sys\nfrom threadpoolctl import threadpool_limits\nfrom zooscope.config import EsdSettings\n"
        "from zooscope.spectra.esd import compute_model_esd\n"
        "with threadpool_limits(2):\n"
        "    compute_model_esd(sys.argv[1] + '/model.safetensors', sys.argv[1] + '/layers.json', sys.argv[2],\n"
        "                      EsdSettings(randomize=False))\n"
        + PEAK
    ),
}


def make_sharded_model(folder: Path, gib: float, shards: int, rows: int, cols: int, seed: int = 0) -> int:
    """A sharded safetensors model of ``gib`` GiB of float32 (rows x cols) Linear weights; its tensor count.

    Tensors are generated one shard at a time, so building it needs one shard of memory.
    """
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    count = max(shards, round(gib * GIB / (4 * rows * cols)))
    rng = np.random.default_rng(seed)
    weight_map = {}
    per_shard = -(-count // shards)
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        keys = [f"layers.{i}.fc.weight" for i in range(shard * per_shard, min(count, (shard + 1) * per_shard))]
        tensors = {key: rng.standard_normal((rows, cols), dtype=np.float32) for key in keys}
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(keys, name))
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": count * rows * cols * 4}, "weight_map": weight_map})
    )
    return count


def make_hf_gpt2(hf_home: Path, gib: float, shards: int, width: int = 1024, seed: int = 0) -> tuple[int, int]:
    """A GPT-2 of about ``gib`` GiB of float32 weights, as a sharded checkpoint in a Hugging Face cache
    at ``hf_home`` (the layout huggingface_hub downloads to); (number of tensors, bytes).

    Names and shapes come from GPT2Model built on the meta device; values are drawn one shard at a
    time, so building it needs one shard of memory.
    """
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    layers = max(1, round(gib * GIB / (4 * 12 * width * width)))  # a block holds about 12 width^2 weights
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=width // 64, vocab_size=1024,
                                     n_positions=1024, bos_token_id=0, eos_token_id=0)
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in transformers.GPT2Model(config).state_dict().items()}
    snapshot = hf_home / "hub" / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    config.save_pretrained(snapshot)
    rng = np.random.default_rng(seed)
    keys = list(shapes)
    per_shard = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[shard * per_shard:(shard + 1) * per_shard]
        tensors = {key: 0.02 * rng.standard_normal(shapes[key], dtype=np.float32) for key in part}
        save_file(tensors, str(snapshot / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        total += sum(t.nbytes for t in tensors.values())
        del tensors
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return len(keys), total


def run_child(label: str, *args: str) -> tuple[float, float]:
    """(peak RSS in bytes, seconds) of one stage run in a fresh interpreter."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILDREN[label], *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{label} failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="weights in the synthetic model (GiB)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--esd-limit-gib", type=float, default=0.75)
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        source, fetched, esd_out = root / "source", root / "resources" / "synthetic", root / "esd"
        count = make_sharded_model(source, args.gib, args.shards, args.rows, args.cols)
        weights = count * args.rows * args.cols * 4
        tensor = args.rows * args.cols * 4
        print(f"synthetic model: {count} float32 tensors of {args.rows} x {args.cols} "
              f"({tensor / GIB * 1024:.0f} MiB each) in {args.shards} shards, {weights / GIB:.2f} GiB")
        hf_count, hf_bytes = make_hf_gpt2(root / "hf", args.gib, args.shards)
        print(f"synthetic GPT-2: {hf_count} float32 tensors in {args.shards} shards, {hf_bytes / GIB:.2f} GiB, "
              f"in a Hugging Face cache")
        rows = []
        for label, child_args in (
            ("fetch imports", ()), ("fetch", (str(source), str(fetched))),
            ("esd imports", ()), ("esd", (str(fetched), str(esd_out))),
            ("hf fetch imports", ()), ("hf fetch", (str(root / "hf"), str(root / "resources" / "gpt2"))),
            ("hf fetch whole", (str(root / "hf"), str(root / "resources" / "gpt2-whole"))),
        ):
            peak, seconds = run_child(label, *child_args)
            rows.append((label, peak, seconds))
        print(f"{'stage':<18}{'peak RSS (GiB)':>16}{'seconds':>10}")
        for label, peak, seconds in rows:
            print(f"{label:<18}{peak / GIB:>16.3f}{seconds:>10.1f}")
        peaks = {label: peak for label, peak, _ in rows}
        print(f"fetch above its imports: {(peaks['fetch'] - peaks['fetch imports']) / GIB:.3f} GiB; "
              f"esd above its imports: {(peaks['esd'] - peaks['esd imports']) / GIB:.3f} GiB "
              f"(the model is {weights / GIB:.2f} GiB, one tensor {tensor / GIB:.3f} GiB)")
        print(f"hf fetch above its imports: {(peaks['hf fetch'] - peaks['hf fetch imports']) / GIB:.3f} GiB "
              f"tensor by tensor, {(peaks['hf fetch whole'] - peaks['hf fetch imports']) / GIB:.3f} GiB loaded whole "
              f"(the model is {hf_bytes / GIB:.2f} GiB)")
        ok = peaks["esd"] < args.esd_limit_gib * GIB
        print(f"esd peak RSS {peaks['esd'] / GIB:.3f} GiB {'<' if ok else '>='} limit {args.esd_limit_gib} GiB: "
              f"{'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
