#!/usr/bin/env python3
"""Side by side: Loupe.GpuBench JSON vs torch_peer.py JSON (same shapes, same GPU)."""
import json, sys

loupe = json.load(open(sys.argv[1]))
torch = json.load(open(sys.argv[2]))
peer = {(r["model"], r["dtype"]): r for r in torch["speed"]}
print(f"device: {loupe['device']}; peer: torch {torch['torch']}, transformers {torch['transformers']} (eager)")
print(f"{'model':<14} {'dtype':<5} {'fwd Loupe':>10} {'fwd torch':>10} {'ratio':>6}   {'f+b Loupe':>10} {'f+b torch':>10} {'ratio':>6}")
for r in loupe["speed"]:
    p = peer.get((r["model"], r["dtype"]))
    if not p:
        continue
    print(f"{r['model']:<14} {r['dtype']:<5} {r['forward_ms']:10.2f} {p['forward_ms']:10.2f} {p['forward_ms'] / r['forward_ms']:6.2f}   "
          f"{r['fwd_bwd_ms']:10.2f} {p['fwd_bwd_ms']:10.2f} {p['fwd_bwd_ms'] / r['fwd_bwd_ms']:6.2f}")
if "sae_step" in loupe and "sae_step" in torch:
    ls, ts = loupe["sae_step"], torch["sae_step"]
    same = all(ls[key] == ts[key] for key in ("d_in", "d_sae", "k", "batch"))
    print(f"{'sae_step':<14} {'fp32':<5} {ls['ms']:10.2f} {ts['ms']:10.2f} {ts['ms'] / ls['ms']:6.2f}   "
          f"d_in {ls['d_in']} d_sae {ls['d_sae']} k {ls['k']} batch {ls['batch']}{'' if same else ' (torch ran other sizes: ratio not comparable)'}")
print("ratio = torch ms / Loupe ms (above 1: Loupe is faster)")
peer_bf16 = {r["fixture"]: r["logits_rel"] for r in torch.get("bf16_parity", [])}
for row in loupe.get("parity", []):
    if "error" in row:
        print(f"parity {row['fixture']:<10} {row['weights']}: FAILED {row['error']}")
        continue
    limit = 1e-4 if row["weights"] == "fp32" else 1e-2
    ok = max(row["logits_rel"], row["gradients_rel"]) <= limit
    # bf16 against fp32 costs the format's own rounding: torch's bf16-vs-fp32 error on the same fixture is the yardstick.
    peer_note = f"; torch bf16 vs fp32 logits {peer_bf16[row['fixture']]:.2e}" if row["weights"] == "bf16" and row["fixture"] in peer_bf16 else ""
    print(f"parity {row['fixture']:<10} {row['weights']}: logits {row['logits_rel']:.2e} gradients {row['gradients_rel']:.2e} (target {limit:g}) {'ok' if ok else 'MISSED'}{peer_note}")
