"""GGUF files (llama.cpp): every tensor read from the file's memory map and dequantised one at a
time with the ``gguf`` package (F32, F16, BF16, F64, Q8_0, Q4_0 and the other block and K-quants
that ``gguf.quants.dequantize`` supports), so that a quantised LLM can be compared with its
original.

Names and types follow the Hugging Face model the file was converted from. For the Llama family
(``general.architecture`` in LLAMA_LIKE) llama.cpp's names map to Hugging Face's
(``blk.N.attn_q.weight`` -> ``model.layers.N.self_attn.q_proj``, ``token_embd`` ->
``model.embed_tokens``, ``output`` -> ``lm_head``: HF_NAMES); other architectures keep
llama.cpp's names. Depth is the Hugging Face module order: the embedding, then block by block
(attention q, k, v, o, then the MLP's gate, up, down; other tensors of a block after those, in
file order), the head last. 2-D tensors are Linear (``token_embd``: Embedding); llama.cpp stores
a (out, in) weight with ``ne = [in, out]``, which gguf's numpy view already shows as (out, in).
A mixture of experts' 3-D tensors (``blk.N.ffn_gate_exps``: all experts stacked, experts first)
are one Linear per expert, each dequantised alone (EXPERT_NAMES; Mixtral's Hugging Face names).
For ``llama`` itself, llama.cpp's converter permutes the rows of q and k for its rotary
embedding; they are permuted back, so a F32 file gives Hugging Face's exact matrices (a row
permutation changes no eigenvalue either way). A quantisation gguf cannot dequantise is an error
that names the tensor; meta.json records every tensor's quantisation.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from zooscope.layers import natural_key
from zooscope.tensors import as_float32
from zooscope.sources.formats import (
    BIAS, NORM, ONE_D, RANK, FormatLayer, FormatWeights, NotAnalysed, StoredTensor, why_not,
)

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite")
# llama.cpp's per-block tensor names -> Hugging Face's (LlamaDecoderLayer), in module order.
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# A mixture-of-experts block (Mixtral: llama.cpp's "llama" with an expert count): each projection
# of all experts stacked in one 3-D tensor (experts first) -> Hugging Face's per-expert weights,
# and the router; after the block's attention, in Hugging Face's name order (as the same model's
# safetensors are: zooscope.layers.with_unclaimed).
EXPERT_NAMES = {"ffn_gate_exps": "w1", "ffn_down_exps": "w2", "ffn_up_exps": "w3"}
ROUTER_NAMES = {"ffn_gate_inp": "block_sparse_moe.gate"}
BLOCK = re.compile(r"blk\.(\d+)\.(.+)")
INTEGER_TYPES = ("I8", "I16", "I32", "I64")


def read_gguf(path: Path, model: str) -> FormatWeights:
    """The weights of a GGUF file (module docstring)."""
    import gguf

    from zooscope.sources.base import FetchError

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as error:  # gguf raises ValueError, struct.error, ... on a damaged file
        raise FetchError(f"model {model!r}: cannot read GGUF file {path}: {error}") from None
    arch = _field(reader, "general.architecture") or ""
    hf_names = arch in LLAMA_LIKE
    heads = (_field(reader, f"{arch}.attention.head_count"), _field(reader, f"{arch}.attention.head_count_kv"))
    entries = []
    for position, tensor in enumerate(reader.tensors):
        name, order = _name_and_order(tensor.name, position, hf_names)
        stored = StoredTensor(tensor.name, tuple(int(n) for n in reversed(tensor.shape)), tensor.tensor_type.name)
        entries.append((order, name, stored, tensor))
    entries.sort(key=lambda entry: entry[0])

    found, skipped = [], []
    for order, name, stored, tensor in entries:
        reason = _reason(tensor.name, stored)
        if reason:
            skipped.append(NotAnalysed(stored, reason))
            continue
        _check_dequantisable(stored, path, model)
        if len(stored.shape) == 3:  # stacked experts: one Linear per expert, dequantised alone
            for e in range(stored.shape[0]):
                expert_name = _expert_name(tensor.name, e, hf_names)
                found.append(((*order[:3], natural_key(expert_name)), FormatLayer(
                    expert_name, "Linear", stored, stored.shape[1:],
                    lambda t=tensor, s=stored.shape[1:], e=e: _dequantised(t, s, None, expert=e))))
            continue
        kind = "Embedding" if tensor.name.startswith("token_embd.") else "Linear"
        heads_of = _rotary_heads(tensor.name, arch, heads)
        found.append((order, FormatLayer(name, kind, stored, stored.shape,
                                         lambda t=tensor, s=stored.shape, h=heads_of: _dequantised(t, s, h))))
    found.sort(key=lambda entry: entry[0])
    layers = [layer for _, layer in found]
    meta = {"architecture": arch or None, "names": "hugging face" if hf_names else "llama.cpp",
            "gguf_version": _field(reader, "GGUF.version")}
    return FormatWeights("gguf", tuple(layers), tuple(skipped), meta)


def _name_and_order(gguf_name: str, position: int, hf_names: bool) -> tuple[str, tuple]:
    """The layer name of a tensor (without ``.weight``) and its sort key in depth order."""
    base = gguf_name.removesuffix(".weight")
    match = BLOCK.fullmatch(base)
    if match:
        block, part = int(match.group(1)), match.group(2)
        if part in EXPERT_NAMES or part in ROUTER_NAMES:  # after the block's others, in name order
            name = f"model.layers.{block}.{ROUTER_NAMES[part]}" if hf_names and part in ROUTER_NAMES else base
            return name, (1, block, len(BLOCK_NAMES) + 1, natural_key(name))
        known = list(BLOCK_NAMES).index(part) if part in BLOCK_NAMES else len(BLOCK_NAMES)
        name = f"model.layers.{block}.{BLOCK_NAMES[part]}" if hf_names and part in BLOCK_NAMES else base
        return name, (1, block, known, position)
    name = GLOBAL_NAMES[base] if hf_names and base in GLOBAL_NAMES else base
    if base == "output_norm" or base == "output":  # the head, after every block
        return name, (2, base == "output", 0, position)
    return name, (0, base != "token_embd", 0, position)  # the embedding, then other global tensors


def _reason(gguf_name: str, stored: StoredTensor) -> str | None:
    """Why a tensor is not analysed, or None for a layer (a floating 2-D ``.weight``)."""
    if gguf_name.endswith(".bias"):
        return BIAS
    if stored.dtype in INTEGER_TYPES:
        return why_not(stored, floating=False)
    if len(stored.shape) <= 1:
        return NORM if "norm" in gguf_name else ONE_D
    if len(stored.shape) == 3 and _expert_part(gguf_name):
        return None  # a mixture of experts' stacked (experts, out, in) weights
    if len(stored.shape) != 2:
        return RANK
    if not gguf_name.endswith(".weight"):
        return why_not(stored, floating=True)
    return None


def _expert_part(gguf_name: str) -> str | None:
    """``ffn_gate_exps`` of ``blk.N.ffn_gate_exps.weight`` (EXPERT_NAMES), else None."""
    match = BLOCK.fullmatch(gguf_name.removesuffix(".weight"))
    return match.group(2) if match and match.group(2) in EXPERT_NAMES else None


def _expert_name(gguf_name: str, expert: int, hf_names: bool) -> str:
    """Expert ``expert``'s layer of a stacked tensor: Hugging Face's
    ``model.layers.N.block_sparse_moe.experts.E.w1`` (Mixtral), else ``blk.N.ffn_gate_exps.E``."""
    block = BLOCK.fullmatch(gguf_name.removesuffix(".weight")).group(1)
    part = _expert_part(gguf_name)
    if hf_names:
        return f"model.layers.{block}.block_sparse_moe.experts.{expert}.{EXPERT_NAMES[part]}"
    return f"blk.{block}.{part}.{expert}"


def _check_dequantisable(stored: StoredTensor, path: Path, model: str) -> None:
    from zooscope.sources.base import FetchError

    supported = dequantisable()
    if stored.dtype not in supported:
        raise FetchError(
            f"model {model!r}: GGUF file {path}: tensor {stored.name!r} is stored as {stored.dtype}, which the "
            f"installed gguf package cannot dequantise (it can: {', '.join(supported)}); convert the file to "
            "one of those (llama.cpp: llama-quantize --allow-requantize IN.gguf OUT.gguf Q8_0), or upgrade gguf")


def dequantisable() -> tuple[str, ...]:
    """The stored types this reader turns into floats: numpy's and gguf.quants' dequantisers'."""
    from gguf import quants

    return ("F32", "F16", "F64", *(qtype.name for qtype in getattr(quants, "_type_traits", {})))


def _dequantised(tensor, shape: tuple[int, ...], heads: int | None, expert: int | None = None) -> np.ndarray:
    """One tensor as float32 (out, in), rows of a rotary q/k put back in Hugging Face's order;
    ``expert``: that expert's matrix of stacked experts, alone (gguf's view of a quantised tensor
    keeps the experts first: (experts, out, bytes per row))."""
    from gguf import GGMLQuantizationType, quants

    data = tensor.data if expert is None else tensor.data[expert]
    if tensor.tensor_type == GGMLQuantizationType.F64:
        values = np.asarray(data, dtype=np.float32)
    else:
        values = quants.dequantize(data, tensor.tensor_type)
    values = values.reshape(shape)
    if heads:
        rows = shape[0]
        values = values.reshape(heads, rows // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    return as_float32(values)


def _rotary_heads(gguf_name: str, arch: str, heads: tuple) -> int | None:
    """The heads whose rows llama.cpp permuted in this tensor (llama's q and k), else None."""
    if arch != "llama":
        return None
    n_head, n_head_kv = heads
    if gguf_name.endswith(".attn_q.weight"):
        return n_head
    if gguf_name.endswith(".attn_k.weight"):
        return n_head_kv or n_head
    return None


def _field(reader, key: str):
    """A metadata value (a str or number), or None when the file does not have it."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value.item() if isinstance(value, np.generic) else value
