#!/usr/bin/env python3
"""A tiny random Phi-3 checkpoint (Phi3ForCausalLM layout) with partial rotary, LongRoPE and a sliding window: a seed for the
`model` fuzz target, not a reference (Phi-3's parity is checked on the llama fixture re-packed, tests/Loupe.Models.Tests/Phi3Tests.cs).
Standard library only: python3 make_phi3.py (writes config.json and model.safetensors beside this script)."""
import json, os, random, struct

HERE = os.path.dirname(os.path.abspath(__file__))
D, H, KV, DH, M, L, V = 16, 4, 2, 4, 24, 2, 32
rng = random.Random(0)

config = {
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": D, "intermediate_size": M,
    "num_attention_heads": H, "num_key_value_heads": KV, "num_hidden_layers": L, "vocab_size": V,
    "max_position_embeddings": 32, "original_max_position_embeddings": 8, "partial_rotary_factor": 0.5,
    "rope_theta": 10000.0, "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.5]},
    "rms_norm_eps": 1e-05, "hidden_act": "silu", "sliding_window": 6, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}

tensors = {"model.embed_tokens.weight": [V, D], "model.norm.weight": [D], "lm_head.weight": [V, D]}
for l in range(L):
    p = f"model.layers.{l}."
    tensors[p + "input_layernorm.weight"] = [D]
    tensors[p + "post_attention_layernorm.weight"] = [D]
    tensors[p + "self_attn.qkv_proj.weight"] = [(H + 2 * KV) * DH, D]
    tensors[p + "self_attn.o_proj.weight"] = [D, H * DH]
    tensors[p + "mlp.gate_up_proj.weight"] = [2 * M, D]
    tensors[p + "mlp.down_proj.weight"] = [D, M]

header, blobs, offset = {}, [], 0
for name in sorted(tensors):
    shape = tensors[name]
    n = 1
    for s in shape:
        n *= s
    values = [1.0 + 0.1 * rng.gauss(0, 1) if name.endswith("norm.weight") else 0.2 * rng.gauss(0, 1) for _ in range(n)]
    blob = struct.pack(f"<{n}f", *values)
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
with open(os.path.join(HERE, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
with open(os.path.join(HERE, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
