"""GGUF files (zooscope.sources.formats.gguf), written by gguf.GGUFWriter in the test and quantised
with gguf.quants.quantize (K-quant blocks written as raw bytes: gguf only dequantises those);
dequantised matrices are checked against numpy decoders of the block formats written here from
the format's definition (ggml-quants.c), not with gguf's own dequantiser."""
import numpy as np
import pytest

from conftest import fetch_file_source
from zooscope.sources import formats
from zooscope.sources.base import FetchError

import gguf
Q = gguf.GGMLQuantizationType
N_EMBD, N_FF, N_VOCAB, N_HEAD, N_HEAD_KV = 64, 256, 96, 4, 2


def decode_q8_0(raw: np.ndarray, shape) -> np.ndarray:
    """Blocks of 34 bytes: a float16 scale d, then 32 int8 q; x = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


def decode_q4_0(raw: np.ndarray, shape) -> np.ndarray:
    """Blocks of 18 bytes: d (float16), 16 bytes of nibbles; x[j] = (lo_j - 8) d, x[j+16] = (hi_j - 8) d."""
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    qs = blocks[:, 2:].astype(np.int32)
    values = np.concatenate([(qs & 0xF) - 8, (qs >> 4) - 8], axis=1).astype(np.float32)
    return (d * values).reshape(shape)


def decode_q4_k(raw: np.ndarray, shape) -> np.ndarray:
    """Super-blocks of 144 bytes (256 values): d, dmin (float16), 12 bytes of packed 6-bit scales
    and mins of 8 sub-blocks of 32, 128 bytes of nibbles (dequantize_row_q4_K, one value at a time)."""
    out = []
    for block in raw.reshape(-1, 144):
        d = float(block[0:2].copy().view(np.float16)[0])
        dmin = float(block[2:4].copy().view(np.float16)[0])
        scales, qs = [int(b) for b in block[4:16]], block[16:]

        def scale_min(j):
            if j < 4:
                return scales[j] & 63, scales[j + 4] & 63
            return ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
                    (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))

        values = []
        for chunk in range(4):
            q = qs[32 * chunk: 32 * chunk + 32]
            (sc1, m1), (sc2, m2) = scale_min(2 * chunk), scale_min(2 * chunk + 1)
            values += [d * sc1 * (int(b) & 0xF) - dmin * m1 for b in q]
            values += [d * sc2 * (int(b) >> 4) - dmin * m2 for b in q]
        out.append(values)
    return np.asarray(out, dtype=np.float32).reshape(shape)


def llama_permute(weights, n_head, n_head_kv):
    """What llama.cpp's convert_hf_to_gguf.py does to q and k (LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_out(writer) -> None:
    """Header, metadata and tensors to the file, then close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def convert_llama(state: dict, path, blocks: int, experts: int = 0) -> None:
    """A Hugging Face Llama or Mixtral state dict to an F32 GGUF, the way llama.cpp's
    convert_hf_to_gguf.py does: names from gguf's own TensorNameMap, q and k rows permuted for its
    rotary embedding, and for Mixtral each projection's experts stacked (experts first)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(blocks)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    if experts:
        writer.add_expert_count(experts)
    for key, value in state.items():
        if ".experts." in key:
            continue
        if key.endswith("q_proj.weight"):
            value = llama_permute(value, N_HEAD, N_HEAD)
        elif key.endswith("k_proj.weight"):
            value = llama_permute(value, N_HEAD, N_HEAD_KV)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(value))
    for block in range(blocks if experts else 0):
        for w in ("w1", "w2", "w3"):
            stacked = np.stack([state[f"model.layers.{block}.block_sparse_moe.experts.{e}.{w}.weight"]
                                for e in range(experts)])
            name = names.get_name(f"model.layers.{block}.block_sparse_moe.experts.{w}.weight", try_suffixes=(".weight",))
            assert name.endswith("_exps.weight")
            writer.add_tensor(name, stacked)
    write_out(writer)


def random_q4_k(rng, rows, cols):
    raw = rng.integers(0, 256, size=(rows, cols // 256 * 144), dtype=np.uint8)
    blocks = raw.reshape(-1, 144)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # d, dmin: finite scales
    blocks[:, 2:4] = np.frombuffer(np.float16(0.004).tobytes(), np.uint8)
    return raw


def write_llama(path, rng, arch="llama"):
    """A 2-block Llama-architecture GGUF, tensors in a scrambled order, several quantisations.
    Returns {gguf name: (stored type, the dequantised matrix in HF layout expected back)}."""
    hf_q = rng.standard_normal((N_EMBD, N_EMBD)).astype(np.float32)
    hf_k = rng.standard_normal((N_EMBD // 2, N_EMBD)).astype(np.float32)
    permute = arch == "llama"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_embedding_length(N_EMBD)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    expected, raw = {}, {}

    def add(name, qtype, matrix=None, data=None, decode=None):
        if data is None:
            data = gguf.quants.quantize(matrix, qtype) if qtype not in (Q.F32, Q.F16) else matrix
        writer.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
        raw[name] = data
        if decode is not None:
            expected[name] = (qtype.name, decode(data))

    def floats(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    ffn_down = random_q4_k(rng, N_EMBD, N_FF)
    add("output.weight", Q.F16, floats(N_VOCAB, N_EMBD).astype(np.float16), decode=lambda d: d.astype(np.float32))
    add("blk.1.ffn_down.weight", Q.Q4_K, data=ffn_down, decode=lambda d: decode_q4_k(d, (N_EMBD, N_FF)))
    add("blk.0.attn_q.weight", Q.F32, llama_permute(hf_q, N_HEAD, N_HEAD) if permute else hf_q,
        decode=lambda d: hf_q)
    add("blk.0.attn_k.weight", Q.F32, llama_permute(hf_k, N_HEAD, N_HEAD_KV) if permute else hf_k,
        decode=lambda d: hf_k)
    add("blk.0.attn_v.weight", Q.Q8_0, floats(N_EMBD // 2, N_EMBD), decode=lambda d: decode_q8_0(d, (N_EMBD // 2, N_EMBD)))
    add("blk.0.attn_output.weight", Q.Q4_0, floats(N_EMBD, N_EMBD), decode=lambda d: decode_q4_0(d, (N_EMBD, N_EMBD)))
    for block in (0, 1):
        add(f"blk.{block}.attn_norm.weight", Q.F32, np.ones(N_EMBD, np.float32))
        add(f"blk.{block}.ffn_norm.weight", Q.F32, np.ones(N_EMBD, np.float32))
        add(f"blk.{block}.ffn_gate.weight", Q.Q8_0, floats(N_FF, N_EMBD), decode=lambda d: decode_q8_0(d, (N_FF, N_EMBD)))
        add(f"blk.{block}.ffn_up.weight", Q.Q4_0, floats(N_FF, N_EMBD), decode=lambda d: decode_q4_0(d, (N_FF, N_EMBD)))
    add("blk.0.ffn_down.weight", Q.F16, floats(N_EMBD, N_FF).astype(np.float16), decode=lambda d: d.astype(np.float32))
    for part, rows in (("attn_q", N_EMBD), ("attn_k", N_EMBD // 2), ("attn_v", N_EMBD // 2), ("attn_output", N_EMBD)):
        # block 1's q and k are Q4_0 as stored (permuted): llama.cpp's permutation of ours must give them
        add(f"blk.1.{part}.weight", Q.Q4_0, floats(rows, N_EMBD), decode=lambda d, r=rows: decode_q4_0(d, (r, N_EMBD)))
    add("token_embd.weight", Q.BF16, floats(N_VOCAB, N_EMBD),
        decode=lambda d: (d.reshape(N_VOCAB, -1).copy().view(np.uint16).astype(np.uint32) << 16).view(np.float32))
    add("output_norm.weight", Q.F32, np.ones(N_EMBD, np.float32))
    write_out(writer)
    return expected


HF_ORDER = ["model.embed_tokens"] + [
    f"model.layers.{block}.{part}" for block in (0, 1) for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]


def hf_name(gguf_name):
    parts = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    base = gguf_name.removesuffix(".weight")
    if base.startswith("blk."):
        _, block, part = base.split(".")
        return f"model.layers.{block}.{parts[part]}"
    return {"token_embd": "model.embed_tokens", "output": "lm_head"}[base]


def test_a_quantised_llama_gguf_reads_as_its_hugging_face_layers(tmp_path, rng):
    expected = write_llama(tmp_path / "m.gguf", rng)
    assert formats.detect(tmp_path / "m.gguf") == "gguf"
    layers, matrices, meta = fetch_file_source(tmp_path / "m.gguf", tmp_path / "out")
    assert [l["name"] for l in layers] == HF_ORDER
    assert [l["type"] for l in layers] == ["Embedding"] + ["Linear"] * (len(HF_ORDER) - 1)
    for gguf_name, (_, matrix) in expected.items():
        ours = matrices[hf_name(gguf_name)]
        if gguf_name in ("blk.1.attn_q.weight", "blk.1.attn_k.weight"):  # read back in HF order
            ours = llama_permute(ours, N_HEAD, N_HEAD_KV if "attn_k" in gguf_name else N_HEAD)
        np.testing.assert_array_equal(ours, matrix, err_msg=gguf_name)
    tensors = meta["stored_tensors"]
    assert {name: tensors[name]["dtype"] for name in expected} == {name: q for name, (q, _) in expected.items()}
    assert tensors["blk.1.ffn_down.weight"] == {"dtype": "Q4_K", "shape": [N_EMBD, N_FF],
                                               "layer": "model.layers.1.mlp.down_proj"}
    assert tensors["blk.0.attn_norm.weight"]["reason"] == "norm"
    assert meta["file_format_info"]["architecture"] == "llama"
    n_norm = 2 * 2 * N_EMBD + N_EMBD
    assert meta["num_params"] == sum(int(np.prod(m.shape)) for m in matrices.values()) + n_norm


def test_other_architectures_keep_llama_cpp_names_and_rows(tmp_path, rng):
    expected = write_llama(tmp_path / "m.gguf", rng, arch="phi2")
    layers, matrices, meta = fetch_file_source(tmp_path / "m.gguf", tmp_path / "out")
    assert [l["name"] for l in layers][:3] == ["token_embd", "blk.0.attn_q", "blk.0.attn_k"]
    assert [l["name"] for l in layers][-1] == "output"
    np.testing.assert_array_equal(matrices["blk.0.attn_q"], expected["blk.0.attn_q.weight"][1])
    assert meta["file_format_info"]["names"] == "llama.cpp"


def test_a_quantisation_gguf_cannot_dequantise_is_a_clear_error(tmp_path, rng):
    from zooscope.sources.formats.gguf import dequantisable

    unsupported = next(qtype for qtype in (Q.Q8_1, Q.Q8_K) if qtype.name not in dequantisable())
    block, size = gguf.GGML_QUANT_SIZES[unsupported]
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_tensor("blk.0.attn_q.weight", rng.integers(0, 255, (8, 256 // block * size), dtype=np.uint8),
                      raw_dtype=unsupported)
    write_out(writer)
    with pytest.raises(FetchError, match=rf"model 'm'.*m\.gguf.*'blk\.0\.attn_q\.weight'.*{unsupported.name}"
                                         r".*cannot dequantise.*llama-quantize"):
        fetch_file_source(tmp_path / "m.gguf", tmp_path / "out")


def test_integer_tensors_are_recorded_and_stacked_experts_are_one_layer_each(tmp_path, rng):
    """qwen2moe (llama.cpp's names kept): a Q8_0 tensor of 4 stacked experts is 4 Linear layers,
    each expert dequantised alone (checked with the decoder above); an integer tensor is recorded."""
    experts = rng.standard_normal((4, 8, 64)).astype(np.float32)
    raw = gguf.quants.quantize(experts, Q.Q8_0)
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "qwen2moe")
    writer.add_tensor("blk.0.ffn_gate_exps.weight", raw, raw_dtype=Q.Q8_0)
    writer.add_tensor("blk.0.ffn_gate_inp.weight", rng.standard_normal((4, 64)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.bias", rng.standard_normal(64).astype(np.float32))
    writer.add_tensor("token_types", np.arange(6, dtype=np.int32).reshape(2, 3))
    write_out(writer)
    layers, matrices, meta = fetch_file_source(tmp_path / "m.gguf", tmp_path / "out")
    expert_names = [f"blk.0.ffn_gate_exps.{e}" for e in range(4)]
    assert [l["name"] for l in layers] == ["blk.0.attn_q", *expert_names, "blk.0.ffn_gate_inp"]
    for e, name in enumerate(expert_names):
        np.testing.assert_array_equal(matrices[name], decode_q8_0(raw[e], (8, 64)))
    tensors = meta["stored_tensors"]
    assert tensors["blk.0.ffn_gate_exps.weight"] == {"dtype": "Q8_0", "shape": [4, 8, 64], "layer": ",".join(expert_names)}
    reasons = {name: entry.get("reason") for name, entry in tensors.items()}
    assert reasons == {"blk.0.ffn_gate_exps.weight": None, "blk.0.ffn_gate_inp.weight": None,
                       "blk.0.attn_q.weight": None, "blk.0.attn_q.bias": "bias", "token_types": "integer buffer"}
    assert meta["num_params"] == 4 * 8 * 64 + 4 * 64 + 64 * 64 + 64


def test_a_truncated_gguf_names_model_and_file(tmp_path, rng):
    write_llama(tmp_path / "m.gguf", rng)
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "m.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(FetchError, match=r"model 'm'.*m\.gguf"):
        fetch_file_source(tmp_path / "m.gguf", tmp_path / "out")


def test_a_gguf_converted_from_a_hugging_face_llama_gives_its_layers(tmp_path):
    """A transformers LlamaForCausalLM saved with save_pretrained, converted to an F32 GGUF the
    way llama.cpp's convert_hf_to_gguf.py does (names from gguf's own TensorNameMap, q and k rows
    permuted): both files give the same layers, with the same matrices."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    config = transformers.LlamaConfig(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))

    convert_llama(state, tmp_path / "llama.gguf", config.num_hidden_layers)

    hf_layers, hf_matrices, _ = fetch_file_source(tmp_path / "hf", tmp_path / "out-hf")
    gguf_layers, gguf_matrices, _ = fetch_file_source(tmp_path / "llama.gguf", tmp_path / "out-gguf")
    assert {(l["name"], l["type"]) for l in gguf_layers} == {(l["name"], l["type"]) for l in hf_layers}
    assert len(gguf_layers) == 2 + 7 * config.num_hidden_layers
    for name, matrix in hf_matrices.items():
        np.testing.assert_array_equal(gguf_matrices[name], matrix, err_msg=name)
    assert {l["name"]: l["sha256"] for l in gguf_layers} == {l["name"]: l["sha256"] for l in hf_layers}


def test_a_mixtral_gguf_gives_the_layers_of_its_hugging_face_folder(tmp_path):
    """A transformers MixtralForCausalLM saved with save_pretrained (each expert's w1, w2, w3 a
    matrix), converted to GGUF as llama.cpp's convert_hf_to_gguf.py does (each projection's
    experts stacked, experts first, under gguf's own TensorNameMap names; q and k permuted): both
    files give the same layers in the same order, with the same matrices."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    config = transformers.MixtralConfig(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
                                        num_local_experts=3, num_experts_per_tok=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))

    convert_llama(state, tmp_path / "mixtral.gguf", config.num_hidden_layers, experts=config.num_local_experts)

    hf_layers, hf_matrices, _ = fetch_file_source(tmp_path / "hf", tmp_path / "out-hf")
    gguf_layers, gguf_matrices, _ = fetch_file_source(tmp_path / "mixtral.gguf", tmp_path / "out-gguf")
    assert [(l["name"], l["type"]) for l in gguf_layers] == [(l["name"], l["type"]) for l in hf_layers]
    assert len(gguf_layers) == 2 + (4 + 3 * 3 + 1) * config.num_hidden_layers
    for name, matrix in hf_matrices.items():
        np.testing.assert_array_equal(gguf_matrices[name], matrix, err_msg=name)
    assert [l["sha256"] for l in gguf_layers] == [l["sha256"] for l in hf_layers]
