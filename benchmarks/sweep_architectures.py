"""Third-party architectures through zooscope's intake, eigenvalues and fit, against WeightWatcher.

Each model is built at random initialisation by its own library (timm, transformers), saved the
way users save it (timm, torchvision: ``torch.save(model.state_dict())``; transformers: ``save_pretrained``, a
folder with its config.json; ``--onnx``: timm models exported by ``torch.onnx.export``'s TorchScript
exporter, ``--onnx-dynamo`` by its dynamo exporter), fetched
as a ``file:`` source (zooscope.sources.fetch.fetch_model) and analysed in process
(compute_model_esd with ``conv2d: pooled`` and fit_layers with ``min_evals: 8``: WeightWatcher
0.7.7's defaults), while WeightWatcher's ``analyze()`` runs on the nn.Module itself. One line per
model: zooscope's fitted layers, WeightWatcher's, how many alphas agree within 1e-6 relative, and
every layer one tool has and the other does not. Layers with fewer than 20 eigenvalues are not
compared (WeightWatcher switches to another fit below 20: docs/fit.md) but counted.

    python benchmarks/sweep_architectures.py                  # the default lists, about 2-3 minutes
    python benchmarks/sweep_architectures.py --timm resnet18 --torchvision "" --hf mixtral --hf-heads "" --onnx "" --onnx-dynamo ""

What differs by design (docs/method.md, docs/intake.md): zooscope analyses the per-expert
weights and routers of mixture-of-experts models (WeightWatcher only nn.Linear modules), fails
all-zero and flat spectra (timm's zero-initialised heads, RWKV's orthogonal and ConViT's identity
initialisations) instead of fitting them, and has no max_evals cap by default (WeightWatcher
skips layers with more than 15000 eigenvalues), analyses a head tied to the embedding once
(WeightWatcher lists ``lm_head`` again), and has the Conv1d layers and MultiheadAttention
projections WeightWatcher leaves out (Whisper, CANINE, SigLIP's pooling head).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

TIMM = ("resnet18,convnext_atto,vit_tiny_patch16_224,efficientnet_b0,mobilenetv3_small_050,regnetx_002,densenet121,"
        "swin_tiny_patch4_window7_224,deit_tiny_patch16_224,mixer_s16_224,inception_v3,xception41,ghostnet_050,"
        "levit_128s,coat_lite_tiny,mobilevit_xxs,poolformer_s12,cait_xxs24_224,beit_base_patch16_224,nfnet_l0,"
        "dla34,res2net50_14w_8s,eva02_tiny_patch14_224,fastvit_t8,maxvit_nano_rw_256,convit_tiny,repvit_m1")
HF = ("bert,roberta,distilbert,albert,deberta-v2,gpt2,gpt_neox,llama,mistral,qwen2,qwen3,phi,gemma2,opt,bloom,t5,bart,"
      "convnext,resnet,clip,vit,wav2vec2,olmo,starcoder2,rwkv,mixtral,qwen2_moe,qwen3_moe,olmoe,gpt_oss,granitemoe,"
      "jamba,deepseek_v2,dbrx,ibert,whisper,siglip,falcon,gemma3_text,phi3,mamba,swin,efficientnet,sam")
HF_HEADS = "llama,gpt2,t5,bert,vit,qwen2,gemma2,mixtral,gpt_oss,granitemoe,roberta,whisper,bart"
TORCHVISION = ("alexnet,vgg11,resnet18,squeezenet1_0,densenet121,inception_v3,googlenet,mobilenet_v3_small,"
               "efficientnet_b0,regnet_x_400mf,vit_b_16,swin_t,convnext_tiny,maxvit_t")
ONNX = "resnet18,vit_tiny_patch16_224,efficientnet_b0,swin_tiny_patch4_window7_224,mixer_s16_224,inception_v3"
ONNX_DYNAMO = "resnet18,vit_tiny_patch16_224,mixer_s16_224,convnext_atto"
# Small transformers configs: the options each model type has are set, the rest keep their defaults.
HF_SMALL = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=1000,
    n_embd=128, n_layer=2, n_head=4, d_model=128, num_layers=2, num_heads=4, d_ff=256, encoder_layers=2,
    decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
    num_key_value_heads=4, head_dim=32, d_kv=32, moe_intermediate_size=64, num_experts=4, num_local_experts=4,
    attention_hidden_size=128)
# Options of model types whose configs name them otherwise.
HF_EXTRA = {"dbrx": dict(d_model=128, n_heads=4, n_layers=2, attn_config={"kv_n_heads": 4, "rope_theta": 10000.0},
                         ffn_config={"ffn_hidden_size": 256, "moe_num_experts": 4, "moe_top_k": 2})}
SMALL_N = 20  # WeightWatcher 0.7.7's WWFit uses another fit below this many eigenvalues


def weightwatcher_details(model: torch.nn.Module):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import weightwatcher  # prints about torch and CUDA on import

        return weightwatcher.WeightWatcher(model=model).analyze()


def zooscope_layers(source: Path, work: Path):
    from zooscope.analysis.metrics import fit_layers
    from zooscope.config import EsdSettings, FitSettings
    from zooscope.sources.fetch import fetch_model
    from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues

    fetched, esd = work / "fetched", work / "esd"
    fetch_model({"model": "m", "series": "sweep", "source": f"file:{source}", "accuracy": None}, fetched,
                sheet_dir=work)
    index = compute_model_esd(fetched / "model.safetensors", fetched / "layers.json", esd,
                              EsdSettings(randomize=False, conv2d="pooled"), threads=torch.get_num_threads())
    return fit_layers(index, partial(load_layer_eigenvalues, esd), FitSettings(min_evals=8).without_uncertainty())


def compare(label: str, model: torch.nn.Module, save) -> dict:
    """One model's line (printed) and its counts."""
    with tempfile.TemporaryDirectory(prefix="zooscope-sweep-") as tmp:
        work = Path(tmp)
        try:
            ours = zooscope_layers(save(model, work), work)
        except Exception as error:
            print(f"{label:34s} zooscope FAILED: {type(error).__name__}: {str(error)[:300]}", flush=True)
            return {"failed": 1}
    fitted = ours[ours["status"] == "ok"].set_index("layer")
    line = f"{label:34s} zooscope {len(fitted):3d} fitted"
    others = ours[ours["status"] != "ok"]["status"].value_counts()
    line += "".join(f", {count} {status}" for status, count in others.items())
    try:
        theirs = weightwatcher_details(model)
    except Exception as error:
        print(f"{line}; WeightWatcher FAILED: {type(error).__name__}: {str(error)[:120]}", flush=True)
        return {"compared": 0, "agree": 0}
    theirs = theirs[theirs["alpha"].notna()].set_index("longname")
    common = [name for name in fitted.index if name in theirs.index and theirs.loc[name, "num_evals"] >= SMALL_N]
    small = sum(name in theirs.index and theirs.loc[name, "num_evals"] < SMALL_N for name in fitted.index)
    ours_alpha, their_alpha = (fitted.loc[common, "alpha"].to_numpy(float), theirs.loc[common, "alpha"].to_numpy(float))
    relative = np.abs(ours_alpha - their_alpha) / their_alpha if common else np.zeros(0)
    agree = int((relative <= 1e-6).sum())
    line += (f"; WeightWatcher {len(theirs):3d}; alphas compared {len(common)} (+{small} under {SMALL_N} "
             f"eigenvalues), within 1e-6: {agree}" + (f", worst {relative.max():.1e}" if common else ""))
    only_ours = [name for name in fitted.index if name not in theirs.index]
    only_theirs = [name for name in theirs.index if name not in ours.set_index("layer").index]
    if only_ours:
        line += f"; only zooscope: {len(only_ours)} ({', '.join(only_ours[:2])}...)"
    if only_theirs:
        line += f"; only WeightWatcher: {len(only_theirs)} ({', '.join(only_theirs[:2])}...)"
    print(line, flush=True)
    return {"compared": len(common), "agree": agree}


def save_state_dict(model, work: Path) -> Path:
    torch.save(model.state_dict(), work / "model.pth")
    return work / "model.pth"


def save_pretrained(model, work: Path) -> Path:
    model.save_pretrained(work / "folder")
    return work / "folder"


def save_onnx(model, work: Path, dynamo: bool = False) -> Path:
    """torch's TorchScript exporter, or its dynamo exporter (torch's default from 2.9; needs onnxscript)."""
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter's progress lines
        torch.onnx.export(model, (torch.randn(1, *size),), str(work / "model.onnx"), dynamo=dynamo)
    return work / "model.onnx"


HEAD_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModelForImageClassification")


def hf_model(model_type: str, head: bool = False):
    """A small model of ``model_type`` at random initialisation: its base model, or with ``head``
    the first of HEAD_CLASSES that has one (a language model's lm_head, a classifier)."""
    import transformers

    defaults = transformers.AutoConfig.for_model(model_type)
    # Only the options a config stores as plain values of the same kind (not properties, not
    # per-stage lists such as Swin's num_heads).
    options = {key: value for key, value in HF_SMALL.items()
               if isinstance(getattr(defaults, key, None), int) and not isinstance(getattr(type(defaults), key, None), property)}
    if isinstance(getattr(defaults, "layer_types", None), list) and not isinstance(getattr(type(defaults), "layer_types", None), property):
        options["layer_types"] = list(defaults.layer_types[: HF_SMALL["num_hidden_layers"]])
    if isinstance(getattr(defaults, "pad_token_id", None), int) and defaults.pad_token_id >= HF_SMALL["vocab_size"]:
        options["pad_token_id"] = 1  # a default pad token beyond the small vocabulary
    config = transformers.AutoConfig.for_model(model_type, **{**options, **HF_EXTRA.get(model_type, {})})
    for name in HEAD_CLASSES if head else ():
        with contextlib.suppress(ValueError):  # "Unrecognized configuration class" for this head
            return getattr(transformers, name).from_config(config).eval()
    return transformers.AutoModel.from_config(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm", default=TIMM, help="timm model names, comma-separated (state dicts)")
    parser.add_argument("--torchvision", default=TORCHVISION,
                        help="torchvision model names, comma-separated (state dicts)")
    parser.add_argument("--hf", default=HF, help="transformers model types, comma-separated (save_pretrained folders)")
    parser.add_argument("--hf-heads", default=HF_HEADS,
                        help="transformers model types to build with their head (HEAD_CLASSES), comma-separated")
    parser.add_argument("--onnx", default=ONNX, help="timm model names to export to ONNX, comma-separated")
    parser.add_argument("--onnx-dynamo", default=ONNX_DYNAMO,
                        help="timm model names to export with torch's dynamo exporter, comma-separated")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.cores)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # save_pretrained's "Writing model shards" bar
    import timm
    import transformers

    transformers.utils.logging.disable_progress_bar()

    print(f"timm {timm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    start, totals = time.perf_counter(), []
    import torchvision

    jobs = ([(f"timm {name}", partial(timm.create_model, name), save_state_dict) for name in filter(None, args.timm.split(","))]
            + [(f"torchvision {name}", partial(torchvision.models.get_model, name, weights=None), save_state_dict)
               for name in filter(None, args.torchvision.split(","))]
            + [(f"transformers {name}", partial(hf_model, name), save_pretrained) for name in filter(None, args.hf.split(","))]
            + [(f"transformers+head {name}", partial(hf_model, name, head=True), save_pretrained)
               for name in filter(None, args.hf_heads.split(","))]
            + [(f"onnx {name}", partial(timm.create_model, name), save_onnx) for name in filter(None, args.onnx.split(","))]
            + [(f"onnx-dynamo {name}", partial(timm.create_model, name), partial(save_onnx, dynamo=True))
               for name in filter(None, args.onnx_dynamo.split(","))])
    for label, build, save in jobs:
        torch.manual_seed(0)
        try:
            model = build().eval()
        except Exception as error:
            print(f"{label:34s} not built: {type(error).__name__}: {str(error)[:120]}", flush=True)
            continue
        totals.append(compare(label, model, save))
    compared, agree = sum(t.get("compared", 0) for t in totals), sum(t.get("agree", 0) for t in totals)
    failed = sum(t.get("failed", 0) for t in totals)
    print(f"\n{len(totals)} models, {failed} that zooscope could not read; {agree}/{compared} alphas within 1e-6 of "
          f"WeightWatcher's; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
