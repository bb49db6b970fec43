"""Writes three small TransformerLens models as TransformerLens's own runs leave them — config.json and a torch.save state
dict (.pth) — and expected.json with their logits and gradients from TransformerLens's forward pass (HookedTransformer,
components/*.py) transcribed into plain Python below, in float64. Standard library only; the torch.save writer is
../pytorch/make_files.py's. Run: python3 make_models.py (in this folder).

  shortformer-attn-only-2l  a NeelNanda toy-model config ("normalization": "LN", "shortformer_pos": true, attention only),
                            model_final.pth holding the attention buffers (attn.mask, attn.IGNORE) a state_dict() keeps,
                            and a checkpoints/ folder of earlier steps beside it, as on the hub;
  gelu-2l-lnpre             HookedTransformerConfig.to_dict() fields (normalization_type LNPre: no norm weights,
                            d_vocab_out -1), model.pth the only .pth;
  gelu-1l-final-rms         a NeelNanda config with "final_rms": true (LN blocks, an RMSNorm before the unembedding);
  solu-2l                   a NeelNanda config with act_fn "solu_ln" (SoLU, then a LayerNorm over d_mlp: mlp.ln.w, mlp.ln.b).
Gradients: d metric / d hook_pos_embed and d hook_embed, metric = logits[-1, a] - logits[-1, b], by central differences.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pytorch"))
import make_files as mf  # noqa: E402  (registers the fake torch modules the pickler names)


def f32(v):
    return mf.f32(v)


def param(values, shape):
    return mf.Tensor(mf.Storage("F32", [f32(v) for v in values]), 0, shape, parameter=True)


def buffer(dtype, values, shape):
    return mf.Tensor(mf.Storage(dtype, values), 0, shape)


def table(n, f):
    return [f32(f(i)) for i in range(n)]


# ---- TransformerLens's forward, transcribed (float64) ----

def layer_norm(x, w, b, eps):            # LayerNorm / LayerNormPre (w, b None)
    out = []
    for row in x:
        mean = sum(row) / len(row)
        c = [v - mean for v in row]
        scale = math.sqrt(sum(v * v for v in c) / len(row) + eps)
        out.append([c[i] / scale * (1.0 if w is None else w[i]) + (0.0 if b is None else b[i]) for i in range(len(row))])
    return out


def rms_norm(x, w, eps):                 # RMSNorm
    out = []
    for row in x:
        scale = math.sqrt(sum(v * v for v in row) / len(row) + eps)
        out.append([row[i] / scale * w[i] for i in range(len(row))])
    return out


def gelu(v):                             # F.gelu (TransformerLens "gelu")
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def forward(cfg, p, tokens, nudge=None):
    """Logits [pos][vocab]; nudge = (hook, pos, dim, amount) adds to hook_embed or hook_pos_embed."""
    D, H, E, L = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["n_layers"]
    T = len(tokens)
    norm, eps = cfg["norm"], 1e-5
    embed = [[p["embed.W_E"][t * D + d] for d in range(D)] for t in tokens]
    pos = [[p["pos_embed.W_pos"][t * D + d] for d in range(D)] for t in range(T)]
    if nudge:
        hook, t, d, amount = nudge
        (embed if hook == "hook_embed" else pos)[t][d] += amount
    shortformer = cfg["shortformer"]
    resid = [[embed[t][d] + (0.0 if shortformer else pos[t][d]) for d in range(D)] for t in range(T)]

    def ln(x, name):
        if norm == "LN":
            return layer_norm(x, p[name + ".w"], p[name + ".b"], eps)
        if norm == "LNPre":
            return layer_norm(x, None, None, eps)
        return x

    for l in range(L):
        b = f"blocks.{l}."
        normed = ln(resid, b + "ln1")
        qk_in = [[normed[t][d] + (pos[t][d] if shortformer else 0.0) for d in range(D)] for t in range(T)]

        def project(x, name, h):       # einsum("pos d_model, d_model d_head -> pos d_head", x, W[h]) + b[h]
            W, bias = p[b + "attn.W_" + name], p[b + "attn.b_" + name]
            return [[sum(x[t][d] * W[(h * D + d) * E + e] for d in range(D)) + bias[h * E + e] for e in range(E)] for t in range(T)]

        attn_out = [[p[b + "attn.b_O"][d] for d in range(D)] for _ in range(T)]
        for h in range(H):
            q, k, v = project(qk_in, "Q", h), project(qk_in, "K", h), project(normed, "V", h)
            for i in range(T):
                scores = [sum(q[i][e] * k[j][e] for e in range(E)) / math.sqrt(E) for j in range(i + 1)]  # causal mask
                top = max(scores)
                ex = [math.exp(s - top) for s in scores]
                pattern = [e / sum(ex) for e in ex]
                z = [sum(pattern[j] * v[j][e] for j in range(i + 1)) for e in range(E)]
                W_O = p[b + "attn.W_O"]
                for d in range(D):
                    attn_out[i][d] += sum(z[e] * W_O[(h * E + e) * D + d] for e in range(E))
        resid = [[resid[t][d] + attn_out[t][d] for d in range(D)] for t in range(T)]
        if not cfg["attn_only"]:
            M = cfg["d_mlp"]
            x = ln(resid, b + "ln2")
            W_in, b_in, W_out, b_out = p[b + "mlp.W_in"], p[b + "mlp.b_in"], p[b + "mlp.W_out"], p[b + "mlp.b_out"]
            for t in range(T):
                pre = [sum(x[t][d] * W_in[d * M + m] for d in range(D)) + b_in[m] for m in range(M)]
                if cfg.get("solu_ln"):      # act_fn "solu_ln": mid = pre * softmax(pre); post = LayerNorm(mid) over d_mlp
                    top = max(pre)
                    ex = [math.exp(v - top) for v in pre]
                    mid = [v * e / sum(ex) for v, e in zip(pre, ex)]
                    post = layer_norm([mid], p[b + "mlp.ln.w"], p[b + "mlp.ln.b"], eps)[0]
                else:
                    post = [gelu(v) for v in pre]
                for d in range(D):
                    resid[t][d] += sum(post[m] * W_out[m * D + d] for m in range(M)) + b_out[d]
    if cfg["final_rms"]:
        final = rms_norm(resid, p["ln_final.w"], eps)
    else:
        final = ln(resid, "ln_final")
    V = cfg["d_vocab"]
    return [[sum(final[t][d] * p["unembed.W_U"][d * V + v] for d in range(D)) + p["unembed.b_U"][v] for v in range(V)] for t in range(T)]


def gradients(cfg, p, tokens, a, b, hook, step=1e-4):
    def metric(nudge):
        logits = forward(cfg, p, tokens, nudge)
        return logits[-1][a] - logits[-1][b]
    D = cfg["d_model"]
    return [[(metric((hook, t, d, step)) - metric((hook, t, d, -step))) / (2 * step) for d in range(D)] for t in range(len(tokens))]


def positional_previous_token(cfg, p, layer):
    """Loupe's positional attention (PositionalAttention, LayerAlone) for a shortformer: the stream is zero, so ln1 gives its
    bias; queries and keys read that plus W_pos[p]; scores q·k/sqrt(d_head), causal softmax; per head the mean over queries
    q >= 1 of the attention on q - 1."""
    D, H, E, P = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["n_ctx"]
    b = f"blocks.{layer}."
    x = [[p[b + "ln1.b"][d] + p["pos_embed.W_pos"][t * D + d] for d in range(D)] for t in range(P)]
    scores = []
    for h in range(H):
        def project(name):
            W, bias = p[b + "attn.W_" + name], p[b + "attn.b_" + name]
            return [[sum(x[t][d] * W[(h * D + d) * E + e] for d in range(D)) + bias[h * E + e] for e in range(E)] for t in range(P)]
        q, k = project("Q"), project("K")
        total = 0.0
        for i in range(1, P):
            s = [sum(q[i][e] * k[j][e] for e in range(E)) / math.sqrt(E) for j in range(i + 1)]
            top = max(s)
            ex = [math.exp(v - top) for v in s]
            total += ex[i - 1] / sum(ex)
        scores.append(total / (P - 1))
    return scores


# ---- the models ----

def weights(cfg, seed):
    D, H, E, L, V, C = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["n_layers"], cfg["d_vocab"], cfg["n_ctx"]
    s = seed
    w = {"embed.W_E": table(V * D, lambda i: math.sin(0.37 * i + s) * 0.8),
         "pos_embed.W_pos": table(C * D, lambda i: math.cos(0.23 * i + 2 * s) * 0.5)}
    for l in range(L):
        b = f"blocks.{l}."
        if cfg["norm"] == "LN":
            w[b + "ln1.w"] = table(D, lambda i: 1 + 0.2 * math.sin(i + l + s))
            w[b + "ln1.b"] = table(D, lambda i: 0.1 * math.cos(2 * i + l))
        for n, k in (("Q", 1.1), ("K", 1.7), ("V", 2.3)):
            w[b + "attn.W_" + n] = table(H * D * E, lambda i: math.sin(k * i + l + s) * 0.45)
            w[b + "attn.b_" + n] = table(H * E, lambda i: 0.05 * math.cos(k * i + l))
        w[b + "attn.W_O"] = table(H * E * D, lambda i: math.cos(0.71 * i + l + s) * 0.4)
        w[b + "attn.b_O"] = table(D, lambda i: 0.03 * math.sin(i - l))
        if not cfg["attn_only"]:
            M = cfg["d_mlp"]
            if cfg["norm"] == "LN":
                w[b + "ln2.w"] = table(D, lambda i: 1 - 0.15 * math.cos(i + l))
                w[b + "ln2.b"] = table(D, lambda i: 0.05 * math.sin(3 * i - l))
            w[b + "mlp.W_in"] = table(D * M, lambda i: math.sin(0.53 * i + l + s) * 0.5)
            w[b + "mlp.b_in"] = table(M, lambda i: 0.1 * math.cos(i + l))
            w[b + "mlp.W_out"] = table(M * D, lambda i: math.cos(0.61 * i - l + s) * 0.3)
            if cfg.get("solu_ln"):
                w[b + "mlp.ln.w"] = table(M, lambda i: 1 + 0.25 * math.sin(0.7 * i + l))
                w[b + "mlp.ln.b"] = table(M, lambda i: 0.04 * math.cos(1.3 * i - l))
            w[b + "mlp.b_out"] = table(D, lambda i: 0.02 * math.sin(i))
    if cfg["norm"] == "LN":
        w["ln_final.w"] = table(D, lambda i: 1 + 0.1 * math.cos(i + s))
        if not cfg["final_rms"]:
            w["ln_final.b"] = table(D, lambda i: 0.05 * math.sin(i))
    w["unembed.W_U"] = table(D * V, lambda i: math.sin(0.29 * i + s) * 0.6)
    w["unembed.b_U"] = table(V, lambda i: 0.01 * i)
    return w


SHAPES = {"embed.W_E": ("d_vocab", "d_model"), "pos_embed.W_pos": ("n_ctx", "d_model"), "attn.W_Q": ("n_heads", "d_model", "d_head"),
          "attn.W_K": ("n_heads", "d_model", "d_head"), "attn.W_V": ("n_heads", "d_model", "d_head"), "attn.b_Q": ("n_heads", "d_head"),
          "attn.b_K": ("n_heads", "d_head"), "attn.b_V": ("n_heads", "d_head"), "attn.W_O": ("n_heads", "d_head", "d_model"),
          "attn.b_O": ("d_model",), "mlp.W_in": ("d_model", "d_mlp"), "mlp.b_in": ("d_mlp",), "mlp.W_out": ("d_mlp", "d_model"),
          "mlp.b_out": ("d_model",), "unembed.W_U": ("d_model", "d_vocab"), "unembed.b_U": ("d_vocab",)}


def shape_of(name, cfg):
    if ".mlp.ln." in name:
        return (cfg["d_mlp"],)
    for suffix, dims in SHAPES.items():
        if name.endswith(suffix):
            return tuple(cfg[d] for d in dims)
    return (cfg["d_model"],)          # norm weights and biases


def save(folder, file, cfg, w, buffers=False):
    items = []
    for name, values in w.items():
        items.append((name, param(values, shape_of(name, cfg))))
        if buffers and name.endswith("attn.b_O"):   # HookedTransformer's Attention registers these; state_dict() keeps them
            C = cfg["n_ctx"]
            layer = name[:-len("b_O")]
            items.append((layer + "mask", buffer("BOOL", [j <= i for i in range(C) for j in range(C)], (C, C))))
            items.append((layer + "IGNORE", buffer("F32", [-math.inf], ())))
    os.makedirs(folder, exist_ok=True)
    mf.save_zip(mf.state_dict(items), os.path.join(folder, file), prefix=file[:-len(".pth")])


def main():
    expected = {}
    tokens = [3, 17, 5, 11, 3, 17, 8, 2]
    models = [
        ("shortformer-attn-only-2l", "model_final.pth",
         {"n_layers": 2, "d_model": 16, "d_mlp": 64, "d_head": 4, "n_heads": 4, "lr_hidden": 0.002, "lr_vector": 0.001,
          "batch_size_per_device": 32, "seed": 12, "normalization": "LN", "n_ctx": 12, "d_vocab": 23,
          "tokenizer_name": "NeelNanda/gpt-neox-tokenizer-digits", "act_fn": "gelu", "shortformer_pos": True, "attn_only": True,
          "ln_eps": 1e-05, "dataset_name": "c4_code", "n_params": 2048},
         dict(norm="LN", shortformer=True, attn_only=True, final_rms=False)),
        ("gelu-2l-lnpre", "model.pth",
         {"n_layers": 2, "d_model": 16, "n_ctx": 12, "d_head": 4, "model_name": "custom", "n_heads": 4, "d_mlp": 32,
          "act_fn": "gelu", "d_vocab": 23, "eps": 1e-05, "use_attn_result": False, "use_attn_scale": True, "attn_scale": 2.0,
          "use_split_qkv_input": False, "use_hook_mlp_in": False, "use_attn_in": False, "use_local_attn": False,
          "ungroup_grouped_query_attention": False, "original_architecture": None, "from_checkpoint": False,
          "checkpoint_index": None, "checkpoint_label_type": None, "checkpoint_value": None, "tokenizer_name": None,
          "window_size": None, "attn_types": None, "init_mode": "gpt2", "normalization_type": "LNPre", "device": "cpu",
          "n_devices": 1, "attention_dir": "causal", "attn_only": False, "seed": None, "initializer_range": 0.2,
          "init_weights": True, "scale_attn_by_inverse_layer_idx": False, "positional_embedding_type": "standard",
          "final_rms": False, "d_vocab_out": -1, "parallel_attn_mlp": False, "rotary_dim": None, "n_params": 6144,
          "use_hook_tokens": False, "gated_mlp": False, "default_prepend_bos": True, "dtype": "torch.float32",
          "tokenizer_prepends_bos": None, "n_key_value_heads": None, "post_embedding_ln": False, "rotary_base": 10000,
          "trust_remote_code": False, "rotary_adjacent_pairs": False, "load_in_4bit": False, "num_experts": None,
          "experts_per_token": None, "relative_attention_max_distance": None, "relative_attention_num_buckets": None,
          "decoder_start_token_id": None, "tie_word_embeddings": False, "use_normalization_before_and_after": False,
          "attn_scores_soft_cap": -1.0, "output_logits_soft_cap": -1.0, "use_NTK_by_parts_rope": False},
         dict(norm="LNPre", shortformer=False, attn_only=False, final_rms=False)),
        ("gelu-1l-final-rms", "model_final.pth",
         {"n_layers": 1, "d_model": 16, "d_mlp": 32, "d_head": 4, "n_heads": 4, "normalization": "LN", "n_ctx": 12,
          "d_vocab": 23, "act_fn": "gelu", "shortformer_pos": False, "attn_only": False, "final_rms": True},
         dict(norm="LN", shortformer=False, attn_only=False, final_rms=True)),
        ("solu-2l", "model_final.pth",
         {"n_layers": 2, "d_model": 16, "d_mlp": 32, "d_head": 4, "n_heads": 4, "normalization": "LN", "n_ctx": 12,
          "d_vocab": 23, "act_fn": "solu_ln", "shortformer_pos": False, "attn_only": False},
         dict(norm="LN", shortformer=False, attn_only=False, final_rms=False, solu_ln=True)),
    ]
    for seed, (name, file, config, kind) in enumerate(models):
        cfg = {k: config[k] for k in ("n_layers", "d_model", "d_head", "n_heads", "n_ctx", "d_vocab")}
        cfg.update(kind, d_mlp=config["d_mlp"])
        w = weights(cfg, seed)
        save(name, file, cfg, w, buffers=name.startswith("shortformer"))
        with open(os.path.join(name, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        p = {k: [float(v) for v in vs] for k, vs in w.items()}
        entry = {"tokens": tokens, "logits": forward(cfg, p, tokens), "metric_tokens": [4, 9]}
        for hook in ("hook_embed", "hook_pos_embed"):
            entry["grad." + hook] = gradients(cfg, p, tokens, 4, 9, hook)
        if cfg["shortformer"]:
            entry["positional_previous_token.layer0"] = positional_previous_token(cfg, p, 0)
        expected[name] = entry
    # An earlier step beside the final one, as NeelNanda's repositories keep them: not what loads.
    first = models[0]
    early = weights({**{k: first[2][k] for k in ("n_layers", "d_model", "d_head", "n_heads", "n_ctx", "d_vocab")}, **first[3], "d_mlp": 64}, 7)
    save(os.path.join(first[0], "checkpoints"), "model_100.pth", {**first[2], "d_mlp": 64}, early)
    with open("expected.json", "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
