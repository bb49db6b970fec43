#!/usr/bin/env python3
"""The peer of Loupe.GpuBench: the same shapes in Hugging Face transformers, eager attention, on the
same GPU. Random weights from the config (nothing is downloaded). Forward, and forward+backward of
logit_diff(17, 42) at the last position to the input of every block (parameters frozen, as Loupe
differentiates activations, not weights). Minimum of --reps runs after --warmup, each ended by
torch.cuda.synchronize(). Writes JSON with the same keys as the Loupe bench. With --sae, also one TopK SAE
training step (sae_step: forward, backward, torch.optim.Adam; fp32, TF32 off), the core math of Loupe's SaeTrainer device step (which also uploads the batch, projects, clips and renormalises)."""
import argparse
import os, json, time
import torch
import transformers

SHAPES = {
    "gpt2-small": dict(kind="gpt2", n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024),
    "llama-3.2-1b": dict(kind="llama", num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "gpt2-tiny": dict(kind="gpt2", n_layer=2, n_embd=128, n_head=4, n_inner=512, vocab_size=1024, n_positions=1024),
    "llama-tiny": dict(kind="llama", num_hidden_layers=2, hidden_size=128, num_attention_heads=8, num_key_value_heads=2,
                       intermediate_size=352, vocab_size=1024, max_position_embeddings=4096, tie_word_embeddings=True),
}


def build(name, dtype):
    spec = dict(SHAPES[name])
    kind = spec.pop("kind")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(activation_function="gelu_new", **spec)
        model = transformers.GPT2LMHeadModel(cfg)
        blocks = model.transformer.h
    else:
        cfg = transformers.LlamaConfig(hidden_act="silu", **spec)
        model = transformers.LlamaForCausalLM(cfg)
        blocks = model.model.layers
    cfg._attn_implementation = "eager"
    model = model.to("cuda", dtype=dtype).eval()
    model.requires_grad_(False)
    return model, blocks, spec["vocab_size"]


def timed(warmup, reps, fn):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) * 1000)
    return best


def crosscoder_step(d, d_sae, k, batch, warmup, reps):
    """A BatchTopK crosscoder step as dictionary_learning's BatchTopKCrossCoder trains (Minder et al.): two sources of width d
    concatenated, pre = x W_enc + b_enc, f = relu(pre), the k*batch largest f_i * sum_s ||W_dec^s[i]|| of the whole batch kept,
    recon = acts W_dec + b_dec, loss = sum((recon - x)^2) / batch; backward; Adam; loss.item(). The shapes of Loupe.GpuBench's
    crosscoder_step (d = the SAE shape's d_in, d_sae / 2 latents)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    w_dec = torch.randn(d_sae, 2, d, device=dev)
    w_dec *= 0.08 / w_dec.norm(dim=2, keepdim=True)
    w_enc = w_dec.reshape(d_sae, 2 * d).t().contiguous()
    params = [w_enc, torch.zeros(d_sae, device=dev), w_dec, torch.zeros(2 * d, device=dev)]
    for t in params:
        t.requires_grad_(True)
    w_enc, b_enc, w_dec, b_dec = params
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    x = torch.rand(batch, 2 * d, device=dev) * 2 - 1
    last = {}

    def step():
        opt.zero_grad(set_to_none=True)
        f = (x @ w_enc + b_enc).relu()
        code_norms = w_dec.norm(dim=2).sum(dim=1)
        scaled = (f * code_norms).flatten()
        kept = scaled.topk(k * batch).indices
        mask = torch.zeros_like(scaled).scatter(0, kept, 1.0).view_as(f)
        recon = (f * mask) @ w_dec.reshape(d_sae, 2 * d) + b_dec
        loss = (recon - x).pow(2).sum() / batch
        loss.backward()
        opt.step()
        last["loss"] = loss.item()

    ms = timed(warmup, reps, step)
    print(f"crosscoder_step 2 x d {d}, d_sae {d_sae}, k {k}, batch {batch}: {ms:8.2f} ms   loss {last['loss']:.5g}")
    result = dict(d=d, sources=2, d_sae=d_sae, k=k, batch=batch, ms=ms, loss=last["loss"])
    del opt, params, x
    torch.cuda.empty_cache()
    return result


def sae_step(d_in, d_sae, k, batch, warmup, reps, aux=False):
    """A TopK SAE step as SAELens writes it: x_in = x - b_dec, pre = x_in W_enc + b_enc, acts = scatter(relu(topk(pre))),
    recon = acts W_dec + b_dec, loss = sum((recon - x)^2) / batch; backward; Adam. Ends with loss.item() (one sync),
    as Loupe's step reads back its loss. With aux, SAELens's aux-k term as once features have died: the top
    k_aux = d_in/2 of pre among dead features (here every fourth feature), ReLU'd and decoded, fitted to the residual."""
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as Loupe's
    dev = "cuda"
    w_dec = torch.randn(d_sae, d_in, device=dev)
    w_dec *= 0.1 / w_dec.norm(dim=1, keepdim=True)
    w_enc = w_dec.t().contiguous()
    params = [w_enc, torch.zeros(d_sae, device=dev), w_dec, torch.zeros(d_in, device=dev)]
    for t in params:
        t.requires_grad_(True)
    w_enc, b_enc, w_dec, b_dec = params
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    x = torch.rand(batch, d_in, device=dev) * 2 - 1
    dead = (torch.arange(d_sae, device=dev) % 4 == 0).unsqueeze(0)
    n_dead = int(dead.sum())
    last = {}

    def step():
        opt.zero_grad(set_to_none=True)
        pre = (x - b_dec) @ w_enc + b_enc
        values, indices = pre.topk(k, dim=1)
        acts = torch.zeros_like(pre).scatter(1, indices, values.relu())
        recon = acts @ w_dec + b_dec
        loss = (recon - x).pow(2).sum() / batch
        if aux:
            k_aux = min(d_in // 2, n_dead)
            masked = torch.where(dead, pre, torch.full_like(pre, float("-inf")))
            aux_values, aux_indices = masked.topk(k_aux, dim=1)
            aux_acts = torch.zeros_like(pre).scatter(1, aux_indices, aux_values.relu())
            residual = (x - recon).detach()
            scale = min(n_dead / (d_in // 2), 1.0) / 32
            loss = loss + scale * (aux_acts @ w_dec - residual).pow(2).sum() / batch
        loss.backward()
        opt.step()
        last["loss"] = loss.item()

    ms = timed(warmup, reps, step)
    print(f"sae_step{'_aux' if aux else ''} d_in {d_in} d_sae {d_sae} k {k} batch {batch}: {ms:8.2f} ms {batch / ms * 1000:12.0f} tok/s   loss {last['loss']:.5g}")
    result = dict(d_in=d_in, d_sae=d_sae, k=k, batch=batch, ms=ms, tok_s=batch / ms * 1000, loss=last["loss"])
    del opt, params, x
    torch.cuda.empty_cache()
    return result


FIXTURE_IDS = [82, 87, 74, 39, 184, 175, 214, 409, 305, 33, 71, 171, 84, 200, 158, 186, 380, 257, 94, 24, 110, 113, 240, 83]


def fixture_parity(root):
    """torch's own bf16-vs-fp32 (and fp16-vs-fp32) logits error on the reference fixtures (the same ids as
    Loupe.GpuBench), so Loupe's 16-bit error can be read against what the format itself costs in the peer."""
    rows = []
    ids = torch.tensor(FIXTURE_IDS, device="cuda").view(2, 12)
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.exists(os.path.join(folder, "model.safetensors")):
            continue
        try:
            logits = {}
            for dt, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
                try:
                    model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype, attn_implementation="eager")
                except Exception:
                    model = transformers.AutoModelForMaskedLM.from_pretrained(folder, torch_dtype=dtype, attn_implementation="eager")
                model = model.cuda().eval()
                with torch.no_grad():
                    logits[dt] = model(ids).logits.float()
                del model
            rel = ((logits["bf16"] - logits["fp32"]).abs().max() / logits["fp32"].abs().max()).item()
            rel_l2 = ((logits["bf16"] - logits["fp32"]).norm() / logits["fp32"].norm()).item()
            rel16 = ((logits["fp16"] - logits["fp32"]).abs().max() / logits["fp32"].abs().max()).item()
            print(f"torch bf16 vs fp32 {name:<10} logits {rel:.2e} (max), {rel_l2:.2e} (norm); fp16 vs fp32 {rel16:.2e} (max)")
            rows.append(dict(fixture=name, logits_rel=rel, logits_rel_l2=rel_l2, fp16_logits_rel=rel16))
        except Exception as e:  # one fixture the installed transformers cannot load must not stop the rest
            print(f"torch bf16 vs fp32 {name:<10} skipped: {type(e).__name__}: {e}")
    return rows


def probe_eval(rows, width, classes, warmup, reps):
    """The logistic probe's objective in torch: mean cross-entropy of z·Wᵀ + b plus (λ/2)‖W‖², and its gradient."""
    z = torch.randn(rows, width, device="cuda")
    y = torch.randint(0, classes, (rows,), device="cuda")
    w = (0.01 * torch.randn(classes, width, device="cuda")).requires_grad_(True)
    b = torch.zeros(classes, device="cuda", requires_grad=True)

    def step():
        w.grad = None
        b.grad = None
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, y) + 0.5e-3 * (w * w).sum()
        loss.backward()
        loss.item()

    ms = timed(warmup, reps, step)
    print(f"probe_eval {rows} x {width}, {classes} classes: {ms:.2f} ms")
    return dict(rows=rows, width=width, classes=classes, ms=ms)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="gpt2-small,llama-3.2-1b")
    p.add_argument("--dtypes", default="fp32,bf16,fp16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--sae", action="store_true", help="also time a TopK SAE training step")
    p.add_argument("--fixtures", help="reference fixture folders: also report torch's bf16-vs-fp32 logits error on each")
    p.add_argument("--sae-shape", default="2048,65536,64,4096", help="d_in,d_sae,k,batch")
    p.add_argument("--probe-shape", help="rows,width,classes: also time a logistic probe's objective (e.g. 100000,2048,12)")
    a = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}")
    for name in a.models.split(","):
        for dt in a.dtypes.split(","):
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
            model, blocks, vocab = build(name, dtype)
            ids = torch.randint(0, vocab, (a.batch, a.seq), device="cuda")

            def forward():
                with torch.no_grad():
                    model(ids, use_cache=False)

            inputs = []

            def keep_input(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                x.requires_grad_(True)
                x.retain_grad()
                inputs.append(x)

            def fwd_bwd():
                inputs.clear()
                handles = [b.register_forward_pre_hook(keep_input, with_kwargs=True) for b in blocks]
                emb = model.get_input_embeddings()(ids)
                emb.requires_grad_(True)
                if name.startswith("gpt2"):
                    out = model(inputs_embeds=emb, use_cache=False)
                else:
                    out = model(inputs_embeds=emb, use_cache=False)
                logits = out.logits
                (logits[:, -1, 17] - logits[:, -1, 42]).sum().backward()
                for h in handles:
                    h.remove()

            f = timed(a.warmup, a.reps, forward)
            b = timed(a.warmup, a.reps, fwd_bwd)
            tokens = a.batch * a.seq
            print(f"{name:<14} {dt:<5} forward {f:8.2f} ms {tokens / f * 1000:10.0f} tok/s   fwd+bwd {b:8.2f} ms {tokens / b * 1000:10.0f} tok/s")
            rows.append(dict(model=name, dtype=dt, batch=a.batch, seq=a.seq, forward_ms=f, forward_tok_s=tokens / f * 1000,
                             fwd_bwd_ms=b, fwd_bwd_tok_s=tokens / b * 1000))
            del model
            torch.cuda.empty_cache()
    report = dict(torch=torch.__version__, transformers=transformers.__version__, speed=rows)
    if a.fixtures and os.path.isdir(a.fixtures):
        report["bf16_parity"] = fixture_parity(a.fixtures)
    if a.sae:
        d_in, d_sae, k, batch = (int(v) for v in a.sae_shape.split(","))
        report["sae_step"] = sae_step(d_in, d_sae, k, batch, a.warmup, a.reps)
        report["sae_step_aux"] = sae_step(d_in, d_sae, k, batch, a.warmup, a.reps, aux=True)
        try:  # a failure here must not cost the measurements above
            report["crosscoder_step"] = crosscoder_step(d_in, max(2, d_sae // 2), k, batch, a.warmup, a.reps)
        except Exception as e:  # noqa: BLE001
            print(f"crosscoder_step FAILED: {type(e).__name__}: {e}")
    if a.probe_shape:
        rows, width, classes = (int(v) for v in a.probe_shape.split(","))
        report["probe_eval"] = probe_eval(rows, width, classes, a.warmup, a.reps)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
