"""Writes gated/ — a SAELens 6 "gated" SAE folder (cfg.json + sae_weights.safetensors) — and gated/expected.json with the
latents and reconstructions of SAELens's GatedSAE.encode/decode (sae_lens/saes/gated_sae.py), transcribed line by line into
plain Python below. Standard library only: python3 make_gated.py (run in this folder)."""
import json
import math
import os
import struct

D, F = 5, 9


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


W_enc = [[f32(math.cos(0.8 * r + 0.45 * c) * 0.7) for c in range(F)] for r in range(D)]   # [d_in, d_sae]
W_dec = [[f32(math.sin(0.6 * r - 0.9 * c) * 0.5) for c in range(D)] for r in range(F)]    # [d_sae, d_in]
b_dec = [f32(0.07 * i - 0.15) for i in range(D)]
b_gate = [f32(0.11 * ((i * 4) % 7) - 0.3) for i in range(F)]
b_mag = [f32(0.1 * ((i * 2) % 5) - 0.2) for i in range(F)]
r_mag = [f32(0.4 * math.cos(2.1 * i) - 0.05) for i in range(F)]
X = [[f32(math.sin(0.9 * r + 1.3 * c) * (1 + 0.25 * r)) for c in range(D)] for r in range(8)]


def encode(x):
    sae_in = [a - b for a, b in zip(x, b_dec)]                                  # process_sae_in: apply_b_dec_to_input
    gating_pre = [sum(sae_in[r] * W_enc[r][c] for r in range(D)) + b_gate[c] for c in range(F)]
    active = [1.0 if g > 0 else 0.0 for g in gating_pre]
    w_mag = [[W_enc[r][c] * math.exp(r_mag[c]) for c in range(F)] for r in range(D)]   # W_enc * r_mag.exp()
    magnitude_pre = [sum(sae_in[r] * w_mag[r][c] for r in range(D)) + b_mag[c] for c in range(F)]
    return [a * max(m, 0.0) for a, m in zip(active, magnitude_pre)]


def decode(f):
    return [sum(f[r] * W_dec[r][c] for r in range(F)) + b_dec[c] for c in range(D)]


def write_safetensors(path, tensors):
    header, data = {}, b""
    for name, (shape, flat) in tensors.items():
        raw = struct.pack(f"<{len(flat)}f", *flat)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def main():
    os.makedirs("gated", exist_ok=True)
    write_safetensors(os.path.join("gated", "sae_weights.safetensors"), {
        "W_enc": ((D, F), [v for row in W_enc for v in row]), "W_dec": ((F, D), [v for row in W_dec for v in row]),
        "b_dec": ((D,), b_dec), "b_gate": ((F,), b_gate), "b_mag": ((F,), b_mag), "r_mag": ((F,), r_mag)})
    cfg = {"architecture": "gated", "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.12.1", "model_name": "gpt2", "hook_name": "blocks.4.hook_resid_pre",
                        "hook_head_index": None, "prepend_bos": True, "context_size": 128, "dataset_path": "", "neuronpedia_id": None}}
    with open(os.path.join("gated", "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    latents = [encode(x) for x in X]
    theta = [m - math.exp(r) * g for r, g, m in zip(r_mag, b_gate, b_mag)]
    with open(os.path.join("gated", "expected.json"), "w") as f:
        json.dump({"x": X, "latents": latents, "recon": [decode(l) for l in latents], "jumprelu_threshold": theta}, f, indent=1)


if __name__ == "__main__":
    main()
