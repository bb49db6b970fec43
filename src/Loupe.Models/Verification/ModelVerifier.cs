using System.Text.Json.Nodes;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Verification;

/// <summary>One verified quantity.</summary>
/// <param name="Group">invariants, float64, gradients or reference.</param>
/// <param name="Name">What was compared (e.g. <c>resid_post.3</c>, <c>pattern·v = z, layer 1</c>).</param>
/// <param name="Error">The error, as <paramref name="Measure"/> says.</param>
/// <param name="Tolerance">The largest error that passes.</param>
/// <param name="Measure">How <paramref name="Error"/> is measured (e.g. <c>max |Δ| / max |ref|</c>, <c>mismatches</c>).</param>
public sealed record VerifyCheck(string Group, string Name, double Error, double Tolerance, string Measure)
{
    /// <summary>Whether the error is within the tolerance (NaN fails).</summary>
    public bool Passed => Error <= Tolerance;
}

/// <summary>What <see cref="ModelVerifier.Run"/> checks and on what.</summary>
public sealed record VerifyOptions
{
    /// <summary>Prompts of random tokens (used when <see cref="Tokens"/> is null).</summary>
    public int Prompts { get; init; } = 2;
    /// <summary>Tokens per random prompt.</summary>
    public int Length { get; init; } = 12;
    /// <summary>Seed of the random prompts and of the gradient probes.</summary>
    public int Seed { get; init; }
    /// <summary>Explicit prompts (one batch of equal-length rows) instead of random ones.</summary>
    public TokenBatch? Tokens { get; init; }
    /// <summary>Tolerance of the fast path against float64 and against a reference file (max |Δ| / max |reference|).</summary>
    public double Tolerance { get; init; } = 1e-4;
    /// <summary>Finite-difference probes per checked layer.</summary>
    public int GradientProbes { get; init; } = 4;
    /// <summary>Tokens generated greedily with the KV cache and compared with full-sequence argmax.</summary>
    public int GreedyTokens { get; init; } = 6;
    /// <summary>A reference file in the layout of <c>tools/make_reference.py</c> (Hugging Face's outputs), or null.</summary>
    public string? ReferencePath { get; init; }
}

/// <summary>A model's certificate: every check, and whether all passed.</summary>
/// <param name="Model">Where the model came from.</param>
/// <param name="Architecture">Its family.</param>
/// <param name="Device">The device it ran on (cpu, cuda:0, emulated): every checked number of the model's own run was computed there.</param>
/// <param name="Backend">The backend that computed them, as it names itself (e.g. its GPU's name).</param>
/// <param name="WeightType">The element type its matrix weights were kept in (F32, or BF16/F16 on a GPU).</param>
/// <param name="Prompts">The token ids checked.</param>
/// <param name="Checks">Every check, in order.</param>
public sealed record VerifyReport(string Model, string Architecture, string Device, string Backend, string WeightType, int[][] Prompts, IReadOnlyList<VerifyCheck> Checks)
{
    /// <summary>Whether every check passed.</summary>
    public bool Passed => Checks.All(c => c.Passed);

    /// <summary>The report as JSON (what <c>loupe verify --out</c> writes).</summary>
    public JsonObject ToJson() => new()
    {
        ["model"] = Model,
        ["architecture"] = Architecture,
        ["device"] = Device,
        ["backend"] = Backend,
        ["weight_type"] = WeightType,
        ["passed"] = Passed,
        ["prompts"] = new JsonArray([.. Prompts.Select(p => (JsonNode)new JsonArray([.. p.Select(t => (JsonNode)t)]))]),
        ["checks"] = new JsonArray([.. Checks.Select(c => (JsonNode)new JsonObject
        {
            ["group"] = c.Group, ["name"] = c.Name, ["error"] = double.IsFinite(c.Error) ? c.Error : null, ["tolerance"] = c.Tolerance,
            ["measure"] = c.Measure, ["passed"] = c.Passed,
        })]),
    };
}

/// <summary>
/// Certifies that a loaded model computes what it should, on this machine:
/// (a) invariants of its own run — residual-stream bookkeeping per block, attention rows summing to 1,
/// <c>pattern·v = z</c>, the next block reading exactly what the last one wrote, and greedy generation with the
/// KV cache choosing the full-sequence argmax at every step;
/// (b) the fast path against <see cref="Float64Reference"/> over the same weights (logits, every resid_post, every pattern);
/// (c) gradients of a logit difference at resid_pre of the first, middle and last block against central finite
/// differences of the float64 path;
/// (d) with a reference file, every tensor in it against the fast path (Hugging Face's outputs, written by
/// <c>tools/make_reference.py</c> in the layout of ../shared/fixtures/reference).
/// The fast path runs on the model's backend — on a GPU the checks certify the GPU's numbers: the cached activations,
/// logits and gradients are read back explicitly (<c>ToCpu</c>) and compared on the host, where the float64 path runs.
/// </summary>
public static class ModelVerifier
{
    const double InvariantTolerance = 1e-5;
    const double GradientTolerance = 2e-3;

    /// <exception cref="InputError">The reference file is unreadable or does not fit the model (the message names the tensor).</exception>
    /// <exception cref="ArgumentException">Explicit prompts use tokens outside the vocabulary.</exception>
    public static VerifyReport Run(HookedTransformer model, VerifyOptions? options = null, IProgress<string>? progress = null)
    {
        options ??= new VerifyOptions();
        // The float64 path and the bookkeeping checks walk pre-norm blocks; post-norm encoders are not yet covered.
        model.RequireResidualSum("loupe verify");
        var cfg = model.Config;
        var checks = new List<VerifyCheck>();
        TokenBatch tokens;
        SafeTensorsFile? reference = null;
        try
        {
            if (options.ReferencePath is { } path)
            {
                reference = SafeTensorsFile.Open(path);
                tokens = ReferenceTokens(reference, path);
            }
            else tokens = options.Tokens ?? RandomPrompts(cfg.DVocab, options.Prompts, Math.Min(options.Length, cfg.NCtx), options.Seed);
            foreach (int id in tokens.Ids)
                if ((uint)id >= (uint)cfg.DVocab) throw new ArgumentException($"token {id} is outside the vocabulary (d_vocab = {cfg.DVocab})");

            progress?.Report("invariants of the model's own run …");
            string[] wanted = [".hook_resid_pre", ".hook_resid_mid", ".hook_resid_post", ".hook_attn_out", ".hook_mlp_out", ".attn.hook_pattern", ".attn.hook_v", ".attn.hook_z"];
            var hooks = model.HookPointNames.Where(n => (n.StartsWith("blocks.", StringComparison.Ordinal) && wanted.Any(w => n.EndsWith(w, StringComparison.Ordinal)))
                || n == HookNames.FinalNormalized);
            var run = model.RunWithCache(tokens, string.Join(",", hooks));
            var cache = run.Cache.Names.ToDictionary(n => n, n => run.Cache[n].ToCpu().Span.ToArray(), StringComparer.Ordinal);
            var logits = run.Logits.ToCpu().Span.ToArray();
            Invariants(model, tokens, cache, checks);
            Greedy(model, tokens, options.GreedyTokens, checks);

            progress?.Report("float64 reference path …");
            var f64 = Float64Reference.Run(model, tokens);
            checks.Add(Compare("float64", "logits", f64.Logits, logits, options.Tolerance));
            for (int l = 0; l < cfg.NLayers; l++)
            {
                checks.Add(Compare("float64", $"resid_post.{l}", f64.Activations[HookNames.ResidPost(l)], cache[HookNames.ResidPost(l)], options.Tolerance));
                checks.Add(Compare("float64", $"pattern.{l}", f64.Activations[HookNames.Pattern(l)], cache[HookNames.Pattern(l)], options.Tolerance));
            }

            progress?.Report("gradients against finite differences …");
            Gradients(model, tokens, f64, logits, options, checks);

            if (reference is not null)
            {
                progress?.Report($"reference file {options.ReferencePath} …");
                ReferenceFile(model, reference, options.ReferencePath!, tokens, cache, logits, options.Tolerance, checks);
            }
        }
        finally { reference?.Dispose(); }
        return new VerifyReport(model.Source ?? cfg.SourcePath ?? "(in memory)", cfg.Architecture, model.Backend.Device.ToString(),
            model.Backend.Name, model.Backend.WeightElementType.ToString(),
            [.. Enumerable.Range(0, tokens.Batch).Select(b => tokens.Ids.AsSpan(b * tokens.Length, tokens.Length).ToArray())], checks);
    }

    static TokenBatch RandomPrompts(int vocab, int prompts, int length, int seed)
    {
        var random = new Random(seed);
        var ids = new int[prompts * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = random.Next(vocab);
        return new TokenBatch(ids, prompts, length);
    }

    static void Invariants(HookedTransformer model, TokenBatch tokens, Dictionary<string, float[]> cache, List<VerifyCheck> checks)
    {
        var cfg = model.Config;
        int B = tokens.Batch, T = tokens.Length, D = cfg.DModel, H = cfg.NHeads, KV = cfg.KvHeads, E = cfg.DHead;
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var a = model.Anatomy(l);
            var pre = cache[HookNames.ResidPre(l)];
            var post = cache[HookNames.ResidPost(l)];
            var attnOut = cache[HookNames.AttnOut(l)];
            double scale = MaxAbs(post);
            if (a.Parallel)
            {
                var mlpOut = cache[HookNames.MlpOut(l)];
                double worst = 0;
                for (int i = 0; i < post.Length; i++) worst = Math.Max(worst, Math.Abs(post[i] - ((double)pre[i] + attnOut[i] + mlpOut[i])));
                checks.Add(new("invariants", $"resid_post = resid_pre + attn_out + mlp_out, layer {l}", worst / scale, InvariantTolerance, "max |Δ| / max |resid|"));
            }
            else if (a.Mlp is not null)
            {
                var mid = cache[HookNames.ResidMid(l)];
                var mlpOut = cache[HookNames.MlpOut(l)];
                double w1 = 0, w2 = 0;
                for (int i = 0; i < post.Length; i++)
                {
                    w1 = Math.Max(w1, Math.Abs(mid[i] - ((double)pre[i] + attnOut[i])));
                    w2 = Math.Max(w2, Math.Abs(post[i] - ((double)mid[i] + mlpOut[i])));
                }
                checks.Add(new("invariants", $"resid_mid = resid_pre + attn_out, layer {l}", w1 / scale, InvariantTolerance, "max |Δ| / max |resid|"));
                checks.Add(new("invariants", $"resid_post = resid_mid + mlp_out, layer {l}", w2 / scale, InvariantTolerance, "max |Δ| / max |resid|"));
            }
            else
            {
                double worst = 0;
                for (int i = 0; i < post.Length; i++) worst = Math.Max(worst, Math.Abs(post[i] - ((double)pre[i] + attnOut[i])));
                checks.Add(new("invariants", $"resid_post = resid_pre + attn_out, layer {l}", worst / scale, InvariantTolerance, "max |Δ| / max |resid|"));
            }
            if (l + 1 < cfg.NLayers)
            {
                var next = cache[HookNames.ResidPre(l + 1)];
                double worst = 0;
                for (int i = 0; i < post.Length; i++) worst = Math.Max(worst, Math.Abs(next[i] - post[i]));
                checks.Add(new("invariants", $"resid_pre.{l + 1} = resid_post.{l}", worst, 0, "max |Δ|"));
            }

            var pattern = cache[HookNames.Pattern(l)];
            var v = cache[HookNames.V(l)];
            var z = cache[HookNames.Z(l)];
            double rowError = 0, zError = 0, zScale = Math.Max(MaxAbs(z), 1e-30);
            int group = H / KV;
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++)
                    for (int i = 0; i < T; i++)
                    {
                        var row = pattern.AsSpan(((b * H + h) * T + i) * T, T);
                        double sum = 0;
                        foreach (float p in row) sum += p;
                        rowError = Math.Max(rowError, Math.Abs(sum - 1));
                        for (int e = 0; e < E; e++)
                        {
                            double expected = 0;
                            for (int j = 0; j < T; j++) expected += row[j] * (double)v[((b * T + j) * KV + h / group) * E + e];
                            zError = Math.Max(zError, Math.Abs(expected - z[((b * T + i) * H + h) * E + e]));
                        }
                    }
            checks.Add(new("invariants", $"pattern rows sum to 1, layer {l}", rowError, InvariantTolerance, "max |Σ_k p − 1|"));
            checks.Add(new("invariants", $"pattern·v = z, layer {l}", zError / zScale, InvariantTolerance, "max |Δ| / max |z|"));
        }
    }

    /// <summary>Greedy generation with the KV cache must pick, at every step, the argmax of a full forward pass over the sequence so far.</summary>
    static void Greedy(HookedTransformer model, TokenBatch tokens, int count, List<VerifyCheck> checks)
    {
        if (count <= 0) return;
        int T = tokens.Length, n = Math.Min(count, model.Config.NCtx - T);
        // With dynamic NTK rope, keys cached before the sequence outgrew the original context keep their old rotation (as in
        // Hugging Face): past that point a cached generation is not the full pass's argmax by design, so stop there.
        if (model.Config.RopeScaling is { Type: "dynamic" } dynamic) n = Math.Min(n, dynamic.OriginalMaxPositions - T);
        if (n <= 0) return;
        var prompts = Enumerable.Range(0, tokens.Batch).Select(b => tokens.Ids.AsSpan(b * T, T).ToArray()).ToList();
        var generated = model.Generate(prompts, new GenerationOptions(MaxNewTokens: n, Temperature: 0, StopAtEos: false));
        int mismatches = 0, steps = 0;
        double closest = double.PositiveInfinity;
        for (int b = 0; b < prompts.Count; b++)
        {
            int[] sequence = [.. prompts[b], .. generated[b]]; // Generate returns the new tokens only
            var full = model.Run(TokenBatch.Single(sequence)).Logits.ToCpu();
            int V = full.Dim(2);
            var span = full.Span;
            for (int s = T; s < sequence.Length; s++)
            {
                var row = span.Slice((s - 1) * V, V);
                int best = 0;
                for (int v = 1; v < V; v++) if (row[v] > row[best]) best = v;
                steps++;
                if (best == sequence[s]) continue;
                // A near-tie may be broken either way by different summation orders: count only clear disagreements.
                double gap = row[best] - row[sequence[s]];
                closest = Math.Min(closest, gap);
                if (gap > 1e-3 * Math.Max(1, Math.Abs(row[best]))) mismatches++;
            }
        }
        if (steps == 0) return;
        checks.Add(new("invariants", $"greedy generation (KV cache) = full-sequence argmax, {steps} steps", mismatches, 0, "clear mismatches"));
    }

    static void Gradients(HookedTransformer model, TokenBatch tokens, Float64Run f64, float[] logits, VerifyOptions options, List<VerifyCheck> checks)
    {
        var cfg = model.Config;
        int B = tokens.Batch, T = tokens.Length, V = cfg.VocabOut, D = cfg.DModel, L = cfg.NLayers;
        // Metric: per row, logit(top) − logit(second) at the last position, summed over rows (each row's own gradient).
        var answers = new int[B];
        var wrongs = new int[B];
        for (int b = 0; b < B; b++)
        {
            var row = logits.AsSpan(((b * T) + T - 1) * V, V);
            int first = 0, second = -1;
            for (int v = 1; v < V; v++)
                if (row[v] > row[first]) { second = first; first = v; }
                else if (second < 0 || row[v] > row[second]) second = v;
            (answers[b], wrongs[b]) = (first, second < 0 ? (first + 1) % V : second);
        }
        double Metric(Float64Run run)
        {
            double sum = 0;
            for (int b = 0; b < B; b++)
            {
                long at = ((long)b * T + T - 1) * V;
                sum += run.Logits[at + answers[b]] - run.Logits[at + wrongs[b]];
            }
            return sum;
        }
        var layers = new SortedSet<int> { 0, L / 2, L - 1 };
        var result = model.RunWithGradients(tokens, new LogitDiff(answers, wrongs), string.Join(",", layers.Select(HookNames.ResidPre)));
        var random = new Random(options.Seed + 1);
        foreach (int l in layers)
        {
            var grad = result.Gradients[HookNames.ResidPre(l)].ToCpu().Span.ToArray();
            var x = f64.Activations[HookNames.ResidPre(l)];
            double gScale = MaxAbs(grad);
            // Probes: the largest gradient entries (signal) and random ones (anything).
            var probes = Enumerable.Range(0, grad.Length).OrderByDescending(i => Math.Abs(grad[i])).Take(options.GradientProbes / 2)
                .Concat(Enumerable.Range(0, options.GradientProbes - options.GradientProbes / 2).Select(_ => random.Next(grad.Length))).Distinct().ToArray();
            double worst = 0;
            foreach (int i in probes)
            {
                int b = i / (T * D), p = i / D % T, d = i % D;
                double eps = 1e-4 * Math.Max(1, Math.Abs(x[i]));
                double up = Metric(Float64Reference.Run(model, tokens, new ResidualNudge(l, b, p, d, eps), record: false));
                double down = Metric(Float64Reference.Run(model, tokens, new ResidualNudge(l, b, p, d, -eps), record: false));
                double fd = (up - down) / (2 * eps);
                worst = Math.Max(worst, Math.Abs(fd - grad[i]) / Math.Max(gScale, 1e-12));
            }
            checks.Add(new("gradients", $"d logit-diff / d resid_pre.{l}, {probes.Length} probes", worst, GradientTolerance, "max |g − finite difference| / max |g|"));
        }
    }

    static TokenBatch ReferenceTokens(SafeTensorsFile reference, string path)
    {
        if (!reference.TryGetInfo("input_ids", out var info) || info.Shape.Length != 2)
            throw new InputError($"{path}: expected an I64 tensor 'input_ids' [batch, pos] (the layout tools/make_reference.py writes)");
        var ids = reference.GetInt64("input_ids");
        foreach (long id in ids)
            if (id < 0 || id > int.MaxValue) throw new InputError($"{path}: input_ids: token {id} is not a valid id");
        return new TokenBatch([.. ids.Select(i => (int)i)], (int)info.Shape[0], (int)info.Shape[1]);
    }

    static void ReferenceFile(HookedTransformer model, SafeTensorsFile reference, string path, TokenBatch tokens,
        Dictionary<string, float[]> cache, float[] logits, double tolerance, List<VerifyCheck> checks)
    {
        var cfg = model.Config;
        bool sandwich = Enumerable.Range(0, cfg.NLayers).Any(l => model.Anatomy(l).AttentionPostNorm is not null);
        var ours = new Dictionary<string, float[]>(StringComparer.Ordinal) { ["logits"] = logits };
        for (int l = 0; l < cfg.NLayers; l++)
        {
            ours[$"resid_pre.{l}"] = cache[HookNames.ResidPre(l)];
            ours[$"resid_post.{l}"] = cache[HookNames.ResidPost(l)];
            ours[$"attn_probs.{l}"] = cache[HookNames.Pattern(l)];
            // HF's attn_out/mlp_out are before Gemma's post-norms; Loupe's hooks after them: compare only where they mean the same.
            if (!sandwich)
            {
                ours[$"attn_out.{l}"] = cache[HookNames.AttnOut(l)];
                if (cache.TryGetValue(HookNames.MlpOut(l), out var mlp)) ours[$"mlp_out.{l}"] = mlp;
            }
        }
        ours["final_norm_in"] = cache[HookNames.ResidPost(cfg.NLayers - 1)];
        // ln_final.hook_normalized is before an RMSNorm's weight (TransformerLens); HF's final_norm_out is the norm's output.
        if (cache.TryGetValue(HookNames.FinalNormalized, out var normed) && model.FinalNormLayer is { } finalNorm)
            ours["final_norm_out"] = finalNorm.OutputFromNormalized(CpuBackend.Instance, Tensor.FromArray(normed, normed.Length / cfg.DModel, cfg.DModel)).ToCpu().Span.ToArray();
        if (reference.TryGetInfo("metric_tokens", out _))
        {
            var metricTokens = reference.GetInt64("metric_tokens");
            if (metricTokens.Length == 2 && metricTokens.All(t => t >= 0 && t < cfg.VocabOut))
            {
                var grads = model.RunWithGradients(tokens, new LogitDiff((int)metricTokens[0], (int)metricTokens[1]), "blocks.*.hook_resid_pre");
                for (int l = 0; l < cfg.NLayers; l++) ours[$"grad.resid_pre.{l}"] = grads.Gradients[HookNames.ResidPre(l)].ToCpu().Span.ToArray();
            }
        }
        int compared = 0;
        foreach (var (name, mine) in ours)
        {
            if (!reference.TryGetInfo(name, out var info)) continue;
            var expected = reference.GetFloat32(name).ToArray();
            if (expected.Length != mine.Length)
                throw new InputError($"{path}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}] ({expected.Length} values); the model gives {mine.Length} — is it this model's reference?");
            checks.Add(Compare("reference", name, expected.Select(x => (double)x).ToArray(), mine, tolerance));
            compared++;
        }
        if (compared == 0) throw new InputError($"{path}: none of the tensors Loupe compares (logits, resid_pre.i, attn_probs.i, …) is in the file");
    }

    static VerifyCheck Compare(string group, string name, double[] expected, float[] actual, double tolerance)
    {
        double worst = 0, scale = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = Math.Abs(actual[i] - expected[i]);
            if (double.IsNaN(diff)) { worst = double.NaN; break; }
            worst = Math.Max(worst, diff);
            scale = Math.Max(scale, Math.Abs(expected[i]));
        }
        return new(group, name, worst / Math.Max(scale, 1e-30), tolerance, "max |Δ| / max |ref|");
    }

    static double MaxAbs(float[] x)
    {
        double m = 0;
        foreach (float v in x) m = Math.Max(m, Math.Abs(v));
        return Math.Max(m, 1e-30);
    }
}
