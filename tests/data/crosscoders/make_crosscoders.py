"""Crosscoder fixtures for Loupe's tests, written with Python's standard library only (no torch, no numpy).

Layouts (see src/Loupe.Dictionaries/Crosscoders/CrosscoderFiles.cs):
  dl-relu/            dictionary_learning trainer folder: ae.pt (CrossCoder state dict) + config.json (trainer)
  dl-compiled/        the same state dict saved from a torch.compile'd model ("_orig_mod." names), no config
  dl-batchtopk-hub/   hub-mixin layout: model.safetensors + config.json, BatchTopKCrossCoder, CROSSCODER code normalisation
  dl-batchtopk-sae/   the same, SAE code normalisation (code_normalization_id 2)
  dl-encoder-layers/  hub layout, 3 layers, the encoder reads layers 0 and 2 only (encoder_layers)
  kissane/            ckkissane/crosscoder-model-diff-replication: 0.pt + 0_cfg.json
The encode/decode functions are transcriptions of dictionary_learning's CrossCoderEncoder/Decoder.forward,
BatchTopKCrossCoder.encode (inference, threshold ≥ 0) and Kissane's CrossCoder.encode/decode into plain Python;
the diff statistics transcribe Anthropic's relative norm and Minder et al.'s relative norm difference.
Run from this folder: python3 make_crosscoders.py (writes the folders and expected.json).
"""
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pytorch"))
import make_files as mf  # noqa: E402  (torch.save writer in plain Python)

D, F = 5, 8


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def tensor(values, shape, dtype="F32"):
    flat = list(values)
    assert len(flat) == math.prod(shape), (len(flat), shape)
    if dtype == "F32":
        flat = [f32(v) for v in flat]
    return mf.Tensor(mf.Storage(dtype, flat), 0, shape)


def write_safetensors(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        code = {"F32": "<f", "I64": "<q"}[dtype]
        raw = b"".join(struct.pack(code, v) for v in values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def weights(layers, enc_blocks=None, seed=0.0):
    """W_enc [blocks][d][F], b_enc [F], W_dec [L][F][d], b_dec [L][d], rounded to float32."""
    enc_blocks = layers if enc_blocks is None else enc_blocks
    w_enc = [[[f32(math.cos(0.7 * l + 0.9 * j - 0.4 * i + seed) * 0.5) for i in range(F)] for j in range(D)] for l in range(enc_blocks)]
    b_enc = [f32(0.05 * ((i * 7) % 5) - 0.12) for i in range(F)]
    w_dec = [[[f32(math.sin(0.5 * i + 1.1 * j + 0.8 * l + seed) * 0.4) for j in range(D)] for i in range(F)] for l in range(layers)]
    # latents 0 and 1 write only to the first source, latent 2 only to the last, latent 3 nowhere (dead)
    for j in range(D):
        for l in range(1, layers):
            w_dec[l][0][j] = 0.0
            w_dec[l][1][j] = 0.0
        for l in range(layers - 1):
            w_dec[l][2][j] = 0.0
        for l in range(layers):
            w_dec[l][3][j] = 0.0
        # latent 4: the second source's vector is half the first's (relative norm 1/3)
        if layers == 2:
            w_dec[1][4][j] = f32(0.5 * w_dec[0][4][j])
    b_dec = [[f32(0.1 * j - 0.15 * l) for j in range(D)] for l in range(layers)]
    return w_enc, b_enc, w_dec, b_dec


def inputs(layers, rows=6):
    return [[[f32(math.sin(1.3 * r + 0.7 * j + 0.5 * l) * (1 + 0.3 * r)) for j in range(D)] for l in range(layers)] for r in range(rows)]


def encode_pre(x, w_enc, b_enc, enc_layers):
    # CrossCoderEncoder.forward: x = x[:, encoder_layers]; f = einsum("bld, ldD -> blD", x, W).sum(1) + b; relu
    out = []
    for i in range(F):
        s = b_enc[i]
        for blk, l in enumerate(enc_layers):
            s += sum(x[l][j] * w_enc[blk][j][i] for j in range(D))
        out.append(s)
    return out


def decode(f, w_dec, b_dec):
    # CrossCoderDecoder.forward: einsum("bD, lDd -> bld", f, W) + bias
    return [[sum(f[i] * w_dec[l][i][j] for i in range(F)) + b_dec[l][j] for j in range(D)] for l in range(len(w_dec))]


def norm(v):
    return math.sqrt(sum(a * a for a in v))


def code_norms(w_dec, kind):
    out = []
    for i in range(F):
        per = [norm(w_dec[l][i]) for l in range(len(w_dec))]
        cc = sum(per)
        sae = norm([w_dec[l][i][j] for l in range(len(w_dec)) for j in range(D)])
        out.append({"CROSSCODER": cc, "SAE": sae, "NONE": 1.0}[kind])
    return out


def flat3(t):
    return [v for a in t for b in a for v in b]


def flat2(t):
    return [v for a in t for v in a]


expected = {}


def record(name, xs, latents, recons, w_dec=None, sources=None):
    entry = {"x": xs, "latents": latents, "recon": recons}
    if w_dec is not None and len(w_dec) == 2:
        diff = []
        for i in range(F):
            a, b = norm(w_dec[0][i]), norm(w_dec[1][i])
            if a + b == 0:
                diff.append({"norms": [a, b], "relative_norm": None, "norm_diff": None, "cosine": None})
                continue
            cos = (sum(p * q for p, q in zip(w_dec[0][i], w_dec[1][i])) / (a * b)) if a > 0 and b > 0 else None
            diff.append({"norms": [a, b], "relative_norm": b / (a + b), "norm_diff": 0.5 * ((b - a) / max(a, b) + 1), "cosine": cos})
        entry["diff"] = diff
    if sources is not None:
        entry["sources"] = sources
    expected[name] = entry


def relu_crosscoder(name, compiled=False):
    w_enc, b_enc, w_dec, b_dec = weights(2)
    prefix = "_orig_mod." if compiled else ""
    sd = mf.state_dict([
        (prefix + "encoder.weight", tensor(flat3(w_enc), [2, D, F])),
        (prefix + "encoder.bias", tensor(b_enc, [F])),
        (prefix + "decoder.weight", tensor(flat3(w_dec), [2, F, D])),
        (prefix + "decoder.bias", tensor(flat2(b_dec), [2, D])),
    ])
    os.makedirs(name, exist_ok=True)
    mf.save_zip(sd, os.path.join(name, "ae.pt"), prefix="ae")
    if not compiled:
        trainer = {"dict_class": "CrossCoder", "trainer_class": "CrossCoderTrainer", "activation_dim": D, "dict_size": F, "lr": 1e-4,
                   "l1_penalty": 0.04, "warmup_steps": 1000, "resample_steps": None, "device": "cuda", "layer": 2,
                   "lm_name": "google/gemma-2-2b-it-google/gemma-2-2b", "wandb_name": "L2-mu4.0e-02-lr1e-04", "submodule_name": None}
        with open(os.path.join(name, "config.json"), "w") as f:
            json.dump({"trainer": trainer}, f, indent=4)
    xs = inputs(2)
    lat = [[max(v, 0.0) for v in encode_pre(x, w_enc, b_enc, [0, 1])] for x in xs]
    record(name, xs, lat, [decode(l, w_dec, b_dec) for l in lat], w_dec,
           [["A", "blocks.2.hook_resid_post"], ["B", "blocks.2.hook_resid_post"]] if not compiled else [["A", ""], ["B", ""]])


def batchtopk_crosscoder(name, kind, threshold):
    w_enc, b_enc, w_dec, b_dec = weights(2, seed=0.3)
    kind_id = {"CROSSCODER": 1, "SAE": 2, "NONE": 4}[kind]
    os.makedirs(name, exist_ok=True)
    write_safetensors(os.path.join(name, "model.safetensors"), {
        "code_normalization_id": ("I64", [], [kind_id]),
        "decoder.bias": ("F32", [2, D], flat2(b_dec)),
        "decoder.weight": ("F32", [2, F, D], flat3(w_dec)),
        "encoder.bias": ("F32", [F], b_enc),
        "encoder.weight": ("F32", [2, D, F], flat3(w_enc)),
        "k": ("I64", [], [3]),
        "threshold": ("F32", [], [threshold]),
    })
    with open(os.path.join(name, "config.json"), "w") as f:
        json.dump({"activation_dim": D, "dict_size": F, "num_layers": 2, "k": 3, "norm_init_scale": 1.0, "decoder_type": "linear",
                   "code_normalization": kind, "code_normalization_alpha_sae": 1.0, "code_normalization_alpha_cc": 0.1}, f, indent=2)
    xs = inputs(2)
    cn = code_norms(w_dec, kind)
    lat = []
    for x in xs:
        f_ = [max(v, 0.0) for v in encode_pre(x, w_enc, b_enc, [0, 1])]
        # BatchTopKCrossCoder.encode, use_threshold and threshold >= 0: mask = f * code_norm > threshold; f * mask
        lat.append([v if v * c > threshold else 0.0 for v, c in zip(f_, cn)])
    record(name, xs, lat, [decode(l, w_dec, b_dec) for l in lat], w_dec, [["A", ""], ["B", ""]])


def encoder_layers_crosscoder(name):
    w_enc, b_enc, w_dec, b_dec = weights(3, enc_blocks=2, seed=0.6)
    os.makedirs(name, exist_ok=True)
    write_safetensors(os.path.join(name, "model.safetensors"), {
        "decoder.bias": ("F32", [3, D], flat2(b_dec)),
        "decoder.weight": ("F32", [3, F, D], flat3(w_dec)),
        "encoder.bias": ("F32", [F], b_enc),
        "encoder.weight": ("F32", [2, D, F], flat3(w_enc)),
    })
    with open(os.path.join(name, "config.json"), "w") as f:
        json.dump({"activation_dim": D, "dict_size": F, "num_layers": 3, "same_init_for_all_layers": False, "norm_init_scale": 0.005,
                   "init_with_transpose": True, "encoder_layers": [0, 2]}, f, indent=2)
    xs = inputs(3)
    lat = [[max(v, 0.0) for v in encode_pre(x, w_enc, b_enc, [0, 2])] for x in xs]
    record(name, xs, lat, [decode(l, w_dec, b_dec) for l in lat], None, [["A", ""], ["B", ""], ["C", ""]])


def kissane_crosscoder(name):
    w_enc, b_enc, w_dec_l, b_dec = weights(2, seed=0.9)
    # Kissane's W_dec is [d_hidden, n_models, d_model]
    w_dec_k = [[[w_dec_l[m][i][j] for j in range(D)] for m in range(2)] for i in range(F)]
    sd = mf.state_dict([
        ("W_enc", tensor(flat3(w_enc), [2, D, F])),
        ("W_dec", tensor(flat3(w_dec_k), [F, 2, D])),
        ("b_enc", tensor(b_enc, [F])),
        ("b_dec", tensor(flat2(b_dec), [2, D])),
    ])
    os.makedirs(name, exist_ok=True)
    mf.save_zip(sd, os.path.join(name, "0.pt"), prefix="0")
    with open(os.path.join(name, "0_cfg.json"), "w") as f:
        json.dump({"seed": 49, "batch_size": 4096, "buffer_mult": 128, "lr": 5e-05, "num_tokens": 400000000, "l1_coeff": 2,
                   "beta1": 0.9, "beta2": 0.999, "d_in": D, "dict_size": F, "seq_len": 1024, "enc_dtype": "fp32",
                   "model_name": "gemma-2-2b", "site": "resid_pre", "device": "cuda:0", "model_batch_size": 4,
                   "log_every": 100, "save_every": 30000, "dec_init_norm": 0.08, "hook_point": "blocks.1.hook_resid_pre",
                   "wandb_project": "crosscoder-model-diff-replication", "wandb_entity": "ckkissane"}, f)
    xs = inputs(2)
    # encode: einsum("batch n_models d_model, n_models d_model d_hidden -> batch d_hidden") + b_enc, relu
    lat = [[max(v, 0.0) for v in encode_pre(x, w_enc, b_enc, [0, 1])] for x in xs]
    # decode: einsum("batch d_hidden, d_hidden n_models d_model -> batch n_models d_model") + b_dec
    recons = [[[sum(l[i] * w_dec_k[i][m][j] for i in range(F)) + b_dec[m][j] for j in range(D)] for m in range(2)] for l in lat]
    record(name, xs, lat, recons, w_dec_l, [["A", "blocks.1.hook_resid_pre"], ["B", "blocks.1.hook_resid_pre"]])


def main():
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    relu_crosscoder("dl-relu")
    relu_crosscoder("dl-compiled", compiled=True)
    batchtopk_crosscoder("dl-batchtopk-hub", "CROSSCODER", 0.55)
    batchtopk_crosscoder("dl-batchtopk-sae", "SAE", 0.4)
    encoder_layers_crosscoder("dl-encoder-layers")
    kissane_crosscoder("kissane")
    with open("expected.json", "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
