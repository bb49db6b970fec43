#!/usr/bin/env python3
"""Hugging Face's outputs for a causal LM, in the layout `loupe verify --reference FILE` reads.

    pip install torch transformers safetensors
    python tools/make_reference.py --model gpt2 --out gpt2-ref.safetensors
    python tools/make_reference.py --model ./my-model --ids 1,2,3,4;5,6,7,8 --metric-tokens 17,42 --out ref.safetensors
    loupe verify --model ./my-model --reference ref.safetensors

Tensors (float32, the layout of ../shared/fixtures/reference, see its README):
  input_ids [B,T] (I64), logits [B,T,V], resid_pre.i / resid_post.i [B,T,D] (the residual stream entering / leaving
  decoder layer i), attn_probs.i [B,H,T,T] (eager attention), attn_out.i / mlp_out.i [B,T,D] (the attention and MLP
  modules' outputs; for Gemma these are before the post-norms and `loupe verify` skips them), final_norm_in,
  final_norm_out, and with --metric-tokens A,B: metric_tokens (I64 [2]), metric = sum_b logits[b,-1,A] - logits[b,-1,B]
  and grad.resid_pre.i = d metric / d resid_pre.i.

Prompts have no padding (every row the same length): pass --ids rows of equal length, or --prompt texts that tokenize
to the same length (they are truncated to the shortest). Computation is in float32 unless --dtype says otherwise.
This script is not run by Loupe's CI (no torch there); its layout is the fixtures', which Loupe's tests read.
"""
import argparse
import json

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def decoder_layers(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers", "language_model.model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    raise SystemExit(f"cannot find the decoder layers of {type(model).__name__}")


def final_norm(model):
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.language_model.norm"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise SystemExit(f"cannot find the final norm of {type(model).__name__}")


def submodule(layer, names):
    for name in names:
        if hasattr(layer, name):
            return getattr(layer, name)
    raise SystemExit(f"layer {type(layer).__name__} has none of {names}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id or local folder")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--prompt", action="append", help="a prompt text (repeatable)")
    ap.add_argument("--ids", help="token ids: rows separated by ';', ids by ','")
    ap.add_argument("--metric-tokens", help="A,B: also store the gradient of sum_b logits[b,-1,A] - logits[b,-1,B]")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype, attn_implementation="eager")
    model.eval()
    if args.ids:
        rows = [[int(x) for x in row.split(",")] for row in args.ids.split(";")]
        if len({len(r) for r in rows}) != 1:
            raise SystemExit("--ids: every row needs the same length (no padding)")
        input_ids = torch.tensor(rows, dtype=torch.long)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        texts = args.prompt or ["The quick brown fox jumps over the lazy dog because"]
        encoded = [tokenizer(t, return_tensors="pt").input_ids[0] for t in texts]
        length = min(len(e) for e in encoded)
        input_ids = torch.stack([e[:length] for e in encoded])

    layers = decoder_layers(model)
    captured = {}

    def pre_hook(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.requires_grad:
                hidden.retain_grad()
            captured[f"resid_pre.{i}"] = hidden
        return hook

    def post_hook(name):
        def hook(module, args, output):
            captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(f"resid_post.{i}")))
        handles.append(submodule(layer, ("self_attn", "attn", "attention")).register_forward_hook(post_hook(f"attn_out.{i}")))
        handles.append(submodule(layer, ("mlp",)).register_forward_hook(post_hook(f"mlp_out.{i}")))
    norm = final_norm(model)
    handles.append(norm.register_forward_pre_hook(lambda m, a: captured.__setitem__("final_norm_in", a[0])))
    handles.append(norm.register_forward_hook(post_hook("final_norm_out")))

    with torch.set_grad_enabled(args.metric_tokens is not None):
        out = model(input_ids, output_attentions=True, use_cache=False)
    tensors = {"input_ids": input_ids, "logits": out.logits.detach().float()}
    for i, probs in enumerate(out.attentions):
        tensors[f"attn_probs.{i}"] = probs.detach().float()
    for name, value in captured.items():
        tensors[name] = value.detach().float()
    metadata = {"model": args.model, "hf_class": type(model).__name__, "dtype": args.dtype,
                "transformers": __import__("transformers").__version__, "torch": torch.__version__}
    if args.metric_tokens:
        a, b = (int(x) for x in args.metric_tokens.split(","))
        metric = (out.logits[:, -1, a] - out.logits[:, -1, b]).sum()
        metric.backward()
        tensors["metric_tokens"] = torch.tensor([a, b], dtype=torch.long)
        tensors["metric"] = metric.detach().float().reshape(1)
        for i in range(len(layers)):
            grad = captured[f"resid_pre.{i}"].grad
            if grad is not None:
                tensors[f"grad.resid_pre.{i}"] = grad.float()
        metadata["metric"] = f"sum_b logits[b,-1,{a}] - logits[b,-1,{b}]"
    for h in handles:
        h.remove()
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()})
    print(f"wrote {args.out}: {len(tensors)} tensors, input_ids {list(input_ids.shape)}")


if __name__ == "__main__":
    main()
