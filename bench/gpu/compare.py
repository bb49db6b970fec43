#!/usr/bin/env python3
"""Side by side: Loupe.GpuBench JSON vs torch_peer.py JSON (same shapes, same GPU)."""
import json, sys

loupe = json.load(open(sys.argv[1]))
torch = json.load(open(sys.argv[2]))
peer = {(r["model"], r["dtype"]): r for r in torch.get("speed", [])}
print(f"device: {loupe['device']}; peer: torch {torch['torch']}, transformers {torch['transformers']} (eager)")
print(f"{'model':<14} {'dtype':<5} {'fwd Loupe':>10} {'fwd torch':>10} {'ratio':>6}   {'f+b Loupe':>10} {'f+b torch':>10} {'ratio':>6}")
for r in loupe.get("speed", []):
    p = peer.get((r["model"], "bf16" if r["dtype"] == "bf16r" else r["dtype"]))  # bf16r: Loupe's rounded activations, torch's bf16 arithmetic
    if not p:
        continue
    print(f"{r['model']:<14} {r['dtype']:<5} {r['forward_ms']:10.2f} {p['forward_ms']:10.2f} {p['forward_ms'] / r['forward_ms']:6.2f}   "
          f"{r['fwd_bwd_ms']:10.2f} {p['fwd_bwd_ms']:10.2f} {p['fwd_bwd_ms'] / r['fwd_bwd_ms']:6.2f}")
for key in ("sae_step", "sae_step_aux"):
    if key in loupe and key in torch:
        ls, ts = loupe[key], torch[key]
        same = all(ls[f] == ts[f] for f in ("d_in", "d_sae", "k", "batch"))
        print(f"{key:<14} {'fp32':<5} {ls['ms']:10.2f} {ts['ms']:10.2f} {ts['ms'] / ls['ms']:6.2f}   "
              f"d_in {ls['d_in']} d_sae {ls['d_sae']} k {ls['k']} batch {ls['batch']}{'' if same else ' (torch ran other sizes: ratio not comparable)'}")
if "crosscoder_step" in loupe and "crosscoder_step" in torch:
    lc, tc = loupe["crosscoder_step"], torch["crosscoder_step"]
    same = all(lc[f] == tc[f] for f in ("d", "d_sae", "k", "batch"))
    print(f"{'crosscoder':<14} {'fp32':<5} {lc['ms']:10.2f} {tc['ms']:10.2f} {tc['ms'] / lc['ms']:6.2f}   "
          f"BatchTopK, 2 x d {lc['d']}, d_sae {lc['d_sae']}, k {lc['k']}, batch {lc['batch']}{'' if same else ' (torch ran other sizes)'}")
if "probe_eval" in loupe and "probe_eval" in torch:
    lp, tp = loupe["probe_eval"], torch["probe_eval"]
    same = all(lp[f] == tp[f] for f in ("rows", "width", "classes"))
    print(f"{'probe_eval':<14} {'fp32':<5} {lp['ms']:10.2f} {tp['ms']:10.2f} {tp['ms'] / lp['ms']:6.2f}   "
          f"{lp['rows']} x {lp['width']}, {lp['classes']} classes (Loupe's includes W, b in and the gradient out){'' if same else ' (torch ran other sizes)'}")
if "matryoshka" in loupe:
    m = loupe["matryoshka"]
    print(f"matryoshka: step {m['matryoshka_ms']:.2f} ms vs BatchTopK {m['batchtopk_ms']:.2f} ms ({m['ratio']:.2f}x, levels {m['levels']}); "
          f"device vs host: loss {m['parity_loss_rel']:.1e}, W_dec {m['parity_w_dec_rel']:.1e} (target 1e-3) {'ok' if max(m['parity_loss_rel'], m['parity_w_dec_rel']) <= 1e-3 else 'MISSED'}")
print("ratio = torch ms / Loupe ms (above 1: Loupe is faster); bf16: bf16 weights, fp32 activations split in two bf16 parts "
      "(two tensor-core products); bf16r: activations rounded to bf16 (one product, as torch's bf16); both against torch's bf16; "
      "fp16: fp16 weights, activation rows scaled by powers of two into fp16's range and split, against torch's fp16")
peer_bf16 = {r["fixture"]: r["logits_rel"] for r in torch.get("bf16_parity", [])}
peer_fp16 = {r["fixture"]: r["fp16_logits_rel"] for r in torch.get("bf16_parity", []) if "fp16_logits_rel" in r}
peer_bf16_l2 = {r["fixture"]: r["logits_rel_l2"] for r in torch.get("bf16_parity", []) if "logits_rel_l2" in r}
for row in loupe.get("parity", []):
    if "error" in row:
        print(f"parity {row['fixture']:<10} {row['weights']}: FAILED {row['error']}")
        continue
    limit = 1e-4 if row["weights"] == "fp32" else 1e-2
    # bf16 against the fp32 CPU run costs the format's own rounding of the weights, which torch's bf16 pays too (its
    # bf16-vs-fp32 error on the same fixture is printed beside it); the target applies to the device's arithmetic: the
    # bf16 run against the CPU computing with the same bf16-rounded weights.
    same = "logits_rel_same_weights" in row
    error = max(row["logits_rel_same_weights"], row["gradients_rel_same_weights"]) if same else max(row["logits_rel"], row["gradients_rel"])
    ok = error <= limit
    peer_note = f"; torch bf16 vs fp32 logits {peer_bf16[row['fixture']]:.2e}" if row["weights"] == "bf16" and row["fixture"] in peer_bf16 else ""
    if row["weights"] == "fp16" and row["fixture"] in peer_fp16:
        peer_note = f"; torch fp16 vs fp32 logits {peer_fp16[row['fixture']]:.2e}"
    if peer_note and row["fixture"] in peer_bf16_l2:
        peer_note += f" (‖Δ‖/‖fp32‖ {peer_bf16_l2[row['fixture']]:.2e})"
    same_note = f"; same 16-bit weights on the CPU: logits {row['logits_rel_same_weights']:.2e} gradients {row['gradients_rel_same_weights']:.2e}" if same else ""
    if "logits_rel_weight_rounding" in row:
        same_note += f"; 16-bit weights alone (CPU vs CPU): logits {row['logits_rel_weight_rounding']:.2e} gradients {row['gradients_rel_weight_rounding']:.2e}"
    l2_note = f"; ‖Δ‖/‖cpu‖ logits {row['logits_rel_l2']:.2e} gradients {row['gradients_rel_l2']:.2e}" if "logits_rel_l2" in row else ""
    print(f"parity {row['fixture']:<10} {row['weights']}: max|Δ|/max|cpu| logits {row['logits_rel']:.2e} gradients {row['gradients_rel']:.2e}{l2_note}{same_note} (target {limit:g}) {'ok' if ok else 'MISSED'}{peer_note}")
