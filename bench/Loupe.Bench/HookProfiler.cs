using System.Diagnostics;
using System.Runtime.CompilerServices;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Bench;

/// <summary>One operation of the forward pass: its median time summed over all layers.</summary>
/// <param name="Operation">What ran (e.g. "softmax", "MLP in + bias").</param>
/// <param name="PlainMs">Time in a forward with no cache.</param>
/// <param name="CacheMs">Time in a forward that caches every hook point.</param>
/// <param name="SgemmAloneMs">For a matrix product: the same products timed alone through Gemm.Sgemm; null otherwise.</param>
public sealed record ProfileRow(string Operation, bool IsGemm, double PlainMs, double CacheMs, double? SgemmAloneMs);

/// <summary>
/// Where the time of a forward pass goes, measured with hooks and no changes to the model:
/// 1. register a hook at every hook point that only records a timestamp (it returns null, so
///    nothing is replaced);
/// 2. the time between two consecutive hook points is the cost of the operation that produced
///    the second one's activation (hook_q ← the QKV product, hook_pattern ← softmax, …);
///    the time after the last hook (ln_final.hook_normalized) is the unembedding;
/// 3. sum each operation over layers, take the median over repetitions.
/// In the plain profile, hook_result gets no hook: a hook there makes the model compute the
/// per-head outputs, which a plain Run does not. The recording costs a delegate call and a
/// timestamp per hook point (≈ 200 per forward) — microseconds against milliseconds.
/// </summary>
public sealed class HookProfiler
{
    readonly List<(string Name, long Ticks)> _marks = new(1024);

    /// <summary>Per-operation medians (ms) of one mode, and the median total.</summary>
    public sealed record ModeProfile(Dictionary<string, double> Ms, double TotalMs);

    /// <summary>
    /// Profiles <paramref name="reps"/> forwards of each mode (after one warm-up), alternating the
    /// plain and the cache-everything forward so both see the same machine load. Returns the
    /// per-operation medians of each mode and, per operation, its GEMM label (or null).
    /// </summary>
    public (ModeProfile Plain, ModeProfile Cache, Dictionary<string, string?> GemmOf) Profile(HookedTransformer model, TokenBatch tokens, int reps)
    {
        var plain = new RunOptions();
        var cache = new RunOptions().CacheAll();
        foreach (var name in model.HookPointNames)
        {
            if (!name.EndsWith(".hook_result", StringComparison.Ordinal)) plain.AddHook(name, Mark);
            cache.AddHook(name, Mark);
        }
        var gemmOf = new Dictionary<string, string?>(StringComparer.Ordinal);
        var samples = new[] { new List<Dictionary<string, double>>(), new List<Dictionary<string, double>>() };
        var totals = new[] { new List<double>(), new List<double>() };
        for (int rep = -1; rep < reps; rep++)
        {
            for (int mode = 0; mode < 2; mode++)
            {
                var (start, end) = TimedRun(model, tokens, mode == 0 ? plain : cache);
                if (rep < 0) continue; // warm-up
                var sums = new Dictionary<string, double>(StringComparer.Ordinal);
                long previous = start;
                foreach (var (name, ticks) in _marks.Append(("<end>", end)))
                {
                    var (op, gemm) = Operation(name, model.Config.ActFn);
                    sums[op] = sums.GetValueOrDefault(op) + (ticks - previous) * 1000.0 / Stopwatch.Frequency;
                    gemmOf[op] = gemm;
                    previous = ticks;
                }
                samples[mode].Add(sums);
                totals[mode].Add((end - start) * 1000.0 / Stopwatch.Frequency);
            }
        }
        ModeProfile Summarize(int mode) => new(
            samples[mode].SelectMany(d => d.Keys).Distinct()
                .ToDictionary(op => op, op => Stats.Median(samples[mode].Select(d => d.GetValueOrDefault(op)))),
            Stats.Median(totals[mode]));
        return (Summarize(0), Summarize(1), gemmOf);
    }

    /// <summary>
    /// One forward whose result is dead when this returns (not inlined, so no stack slot of the
    /// caller keeps a gigabyte of cached activations alive into the next forward).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    (long Start, long End) TimedRun(HookedTransformer model, TokenBatch tokens, RunOptions options)
    {
        _marks.Clear();
        long start = Stopwatch.GetTimestamp();
        var result = model.Run(tokens, options);
        long end = Stopwatch.GetTimestamp();
        GC.KeepAlive(result);
        return (start, end);
    }

    Tensors.Tensor? Mark(Tensors.Tensor activation, HookContext context)
    {
        _marks.Add((context.Name, Stopwatch.GetTimestamp()));
        return null;
    }

    /// <summary>
    /// The operation that runs just before a hook point fires (see HookedTransformer, AttentionLayer,
    /// MlpLayer, Norm), and the GEMM label of <see cref="Flops.Products"/> when it is a matrix product.
    /// </summary>
    static (string Op, string? Gemm) Operation(string hook, string? activation)
    {
        int dot = hook.StartsWith("blocks.", StringComparison.Ordinal) ? hook.IndexOf('.', 7) : -1;
        string suffix = dot > 0 ? hook[(dot + 1)..] : hook;
        return suffix switch
        {
            "hook_embed" => ("embedding gather (+ token checks)", null),
            "hook_pos_embed" => ("position-embedding gather", null),
            "hook_resid_pre" => ("residual adds", null),          // block 0: embed + pos; later blocks: nothing
            "hook_resid_mid" or "hook_resid_post" => ("residual adds", null),
            "hook_mlp_in" => ("hook_mlp_in: copy of the MLP branch's input (cache only)", null),
            "ln1.hook_scale" or "ln2.hook_scale" or "ln_final.hook_scale" => ("LayerNorm", null),
            // An RMSNorm whose hook_normalized (x/σ) is read applies its weight after it, before the MLP's input.
            "mlp.hook_in" => ("LayerNorm", null),
            "attn.hook_q" => ("QKV product + bias + split", "qkv"),
            "attn.hook_rot_q" or "attn.hook_rot_k" => ("rotary (clone + rotate q, k)", null),
            "attn.hook_attn_scores" => ("scores q·kᵀ + causal mask", "scores q·kᵀ"),
            "attn.hook_pattern" => ("softmax", null),
            "attn.hook_z" => ("pattern·v", "pattern·v"),
            "attn.hook_result" => ("hook_result: per-head W_O (cache only)", null),
            "hook_attn_out" => ("W_O product + bias", "W_O"),
            "mlp.hook_pre" => ("MLP in product + bias", "mlp in"),
            "mlp.hook_post" => ($"activation ({activation})", null),
            "hook_mlp_out" => ("MLP out product + bias", "mlp out"),
            "<end>" => ("unembed product (+ logits)", "unembed"),
            _ => ("hook bookkeeping (between adjacent hooks)", null), // hook_normalized, hook_k, hook_v, …
        };
    }
}
