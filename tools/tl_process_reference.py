#!/usr/bin/env python3
"""TransformerLens's weight processing of a GPT-2 checkpoint, transcribed into plain Python.

This is a TRANSCRIPTION of TransformerLens's code, not TransformerLens itself (there is no torch
here). It follows, step by step and in the same order:

  transformer_lens/pretrained/weight_conversions/gpt2.py  convert_gpt2_weights
      (TransformerLensOrg/TransformerLens @ 2985420357c44b644216a8b7b692c3fa69373f6d)
  transformer_lens/HookedTransformer.py  load_and_process_state_dict, fold_layer_norm
      (fold_biases=True, center_weights=True), center_writing_weights, center_unembed,
      fold_value_biases  (TransformerLensOrg/TransformerLens @ c5c360cba35e6237d7c54d2ccd6b44c112137801)

plus fill_missing_keys's zero b_U (GPT-2 has no unembedding bias). Tensors are float32 arrays
(array('f') rounds every stored value to float32, as torch does); sums and means accumulate in
float64 before rounding, so results can differ from torch's float32 reductions in the last bit.

Usage: tl_process_reference.py MODEL.safetensors CONFIG.json OUT.safetensors
Output: TransformerLens's state-dict names and layouts (W_Q [n_heads, d_model, d_head], ...),
after fold_ln + center_writing_weights + center_unembed + fold_value_biases.
"""
import json
import struct
import sys
from array import array


class T:
    """A float32 tensor: shape and row-major data."""

    def __init__(self, shape, data=None):
        self.shape = tuple(shape)
        n = 1
        for s in shape:
            n *= s
        self.data = array('f', data if data is not None else [0.0] * n)
        assert len(self.data) == n, (shape, len(self.data))


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        assert info['dtype'] == 'F32', (name, info['dtype'])
        a, b = info['data_offsets']
        data = array('f')
        data.frombytes(body[a:b])
        if sys.byteorder != 'little':
            data.byteswap()
        out[name] = T(info['shape'], data)
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = array('f', t.data)
        if sys.byteorder != 'little':
            data.byteswap()
        raw = data.tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(t.shape), 'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header['__metadata__'] = {'source': 'tools/tl_process_reference.py (a transcription of TransformerLens, not TransformerLens)'}
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * ((8 - len(text) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


# ---- convert_gpt2_weights ----

def convert_gpt2_weights(w, cfg):
    p = 'transformer.' if 'transformer.wte.weight' in w else ''
    D, H, dh, L = cfg['d_model'], cfg['n_heads'], cfg['d_head'], cfg['n_layers']
    sd = {}
    sd['embed.W_E'] = w[p + 'wte.weight']
    pos = w[p + 'wpe.weight']
    if pos.shape[0] > cfg['n_ctx']:
        pos = T((cfg['n_ctx'], D), pos.data[:cfg['n_ctx'] * D])
    sd['pos_embed.W_pos'] = pos
    for l in range(L):
        b = f'{p}h.{l}.'
        sd[f'blocks.{l}.ln1.w'] = w[b + 'ln_1.weight']
        sd[f'blocks.{l}.ln1.b'] = w[b + 'ln_1.bias']
        W = w[b + 'attn.c_attn.weight']  # [d_model, 3 d_model]
        for part, name in enumerate(('W_Q', 'W_K', 'W_V')):
            # torch.split(W, d_model, dim=1), then "m (i h) -> i m h"
            out = T((H, D, dh))
            for i in range(H):
                for m in range(D):
                    for h in range(dh):
                        out.data[(i * D + m) * dh + h] = W.data[m * 3 * D + part * D + i * dh + h]
            sd[f'blocks.{l}.attn.{name}'] = out
        bias = w[b + 'attn.c_attn.bias']  # view(3, n_heads, d_head)
        for part, name in enumerate(('b_Q', 'b_K', 'b_V')):
            sd[f'blocks.{l}.attn.{name}'] = T((H, dh), bias.data[part * D:(part + 1) * D])
        WO = w[b + 'attn.c_proj.weight']  # "(i h) m -> i h m": already [H, dh, D] in memory
        sd[f'blocks.{l}.attn.W_O'] = T((H, dh, D), WO.data)
        sd[f'blocks.{l}.attn.b_O'] = w[b + 'attn.c_proj.bias']
        sd[f'blocks.{l}.ln2.w'] = w[b + 'ln_2.weight']
        sd[f'blocks.{l}.ln2.b'] = w[b + 'ln_2.bias']
        sd[f'blocks.{l}.mlp.W_in'] = w[b + 'mlp.c_fc.weight']
        sd[f'blocks.{l}.mlp.b_in'] = w[b + 'mlp.c_fc.bias']
        sd[f'blocks.{l}.mlp.W_out'] = w[b + 'mlp.c_proj.weight']
        sd[f'blocks.{l}.mlp.b_out'] = w[b + 'mlp.c_proj.bias']
    # W_U = lm_head.weight.T (tied to wte in GPT-2)
    WE = w['lm_head.weight'] if 'lm_head.weight' in w else w[p + 'wte.weight']
    V = WE.shape[0]
    WU = T((D, V))
    for v in range(V):
        for d in range(D):
            WU.data[d * V + v] = WE.data[v * D + d]
    sd['unembed.W_U'] = WU
    sd['ln_final.w'] = w[p + 'ln_f.weight']
    sd['ln_final.b'] = w[p + 'ln_f.bias']
    sd['unembed.b_U'] = T((V,))  # fill_missing_keys: the default (zero) b_U
    return sd


# ---- the processing ----

def fold_into(W, ln_w, ln_b, bias, center):
    """W [..., d_model, n] read after a LayerNorm (w, b): TL's three steps for one weight.
    bias += (W * ln_b[:, None]).sum(-2); W = W * ln_w[:, None]; W -= W.mean(-2, keepdim=True)."""
    D, n = W.shape[-2], W.shape[-1]
    lead = len(W.data) // (D * n)
    new_bias = T(bias.shape, bias.data) if bias is not None else None
    new_W = T(W.shape, W.data)
    for a in range(lead):
        base = a * D * n
        for j in range(n):
            if ln_b is not None:
                s = 0.0
                for d in range(D):
                    s += W.data[base + d * n + j] * ln_b.data[d]
                new_bias.data[a * n + j] = new_bias.data[a * n + j] + s
            for d in range(D):
                new_W.data[base + d * n + j] = W.data[base + d * n + j] * ln_w.data[d]
            if center:
                mean = sum(new_W.data[base + d * n + j] for d in range(D)) / D
                for d in range(D):
                    new_W.data[base + d * n + j] = new_W.data[base + d * n + j] - mean
    return new_W, new_bias


def fold_layer_norm(sd, cfg):
    for l in range(cfg['n_layers']):
        ln_w, ln_b = sd.pop(f'blocks.{l}.ln1.w'), sd.pop(f'blocks.{l}.ln1.b')
        for x in 'QKV':
            sd[f'blocks.{l}.attn.W_{x}'], sd[f'blocks.{l}.attn.b_{x}'] = fold_into(
                sd[f'blocks.{l}.attn.W_{x}'], ln_w, ln_b, sd[f'blocks.{l}.attn.b_{x}'], True)
        ln_w, ln_b = sd.pop(f'blocks.{l}.ln2.w'), sd.pop(f'blocks.{l}.ln2.b')
        sd[f'blocks.{l}.mlp.W_in'], sd[f'blocks.{l}.mlp.b_in'] = fold_into(
            sd[f'blocks.{l}.mlp.W_in'], ln_w, ln_b, sd[f'blocks.{l}.mlp.b_in'], True)
    ln_w, ln_b = sd.pop('ln_final.w'), sd.pop('ln_final.b')
    sd['unembed.W_U'], sd['unembed.b_U'] = fold_into(sd['unembed.W_U'], ln_w, ln_b, sd['unembed.b_U'], True)


def center_last(t):
    """t - t.mean(-1, keepdim=True)"""
    n = t.shape[-1]
    out = T(t.shape, t.data)
    for r in range(len(t.data) // n):
        mean = sum(t.data[r * n:(r + 1) * n]) / n
        for j in range(n):
            out.data[r * n + j] = t.data[r * n + j] - mean
    return out


def center_writing_weights(sd, cfg):
    sd['embed.W_E'] = center_last(sd['embed.W_E'])
    sd['pos_embed.W_pos'] = center_last(sd['pos_embed.W_pos'])  # not rotary
    for l in range(cfg['n_layers']):
        sd[f'blocks.{l}.attn.W_O'] = center_last(sd[f'blocks.{l}.attn.W_O'])  # [H, d_head, d_model]
        sd[f'blocks.{l}.attn.b_O'] = center_last(sd[f'blocks.{l}.attn.b_O'])  # b_O - b_O.mean()
        sd[f'blocks.{l}.mlp.W_out'] = center_last(sd[f'blocks.{l}.mlp.W_out'])
        sd[f'blocks.{l}.mlp.b_out'] = center_last(sd[f'blocks.{l}.mlp.b_out'])


def center_unembed(sd):
    sd['unembed.W_U'] = center_last(sd['unembed.W_U'])
    sd['unembed.b_U'] = center_last(sd['unembed.b_U'])


def fold_value_biases(sd, cfg):
    H, dh, D = cfg['n_heads'], cfg['d_head'], cfg['d_model']
    for l in range(cfg['n_layers']):
        b_V, W_O, b_O = sd[f'blocks.{l}.attn.b_V'], sd[f'blocks.{l}.attn.W_O'], sd[f'blocks.{l}.attn.b_O']
        folded = T((D,), b_O.data)
        for d in range(D):
            s = 0.0  # (b_V[:, :, None] * W_O).sum([0, 1])
            for h in range(H):
                for j in range(dh):
                    s += b_V.data[h * dh + j] * W_O.data[(h * dh + j) * D + d]
            folded.data[d] = folded.data[d] + s
        sd[f'blocks.{l}.attn.b_O'] = folded
        sd[f'blocks.{l}.attn.b_V'] = T(b_V.shape)


def main():
    model, config, out = sys.argv[1:4]
    hf = json.load(open(config))
    D, H = hf['n_embd'], hf['n_head']
    cfg = {'d_model': D, 'n_heads': H, 'd_head': D // H, 'n_layers': hf['n_layer'], 'n_ctx': hf['n_positions']}
    sd = convert_gpt2_weights(read_safetensors(model), cfg)
    fold_layer_norm(sd, cfg)
    center_writing_weights(sd, cfg)
    center_unembed(sd)
    fold_value_biases(sd, cfg)
    write_safetensors(out, sd)


if __name__ == '__main__':
    main()
