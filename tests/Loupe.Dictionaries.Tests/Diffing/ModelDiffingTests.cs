using Loupe.Dictionaries.Diffing;
using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Tensors.Backends;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Diffing;

/// <summary>
/// <see cref="ModelDiffing"/> against its definitions computed here from each model's own runs, and against a known answer:
/// a "fine-tune" of the gpt2 fixture whose embedding of every fourth token carries one added direction differs from it at
/// hook_resid_pre 0 by exactly that direction times the share of such tokens.
/// </summary>
public sealed class ModelDiffingTests(EmulatedDevice device) : IClassFixture<EmulatedDevice>, IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-model-diff").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    static readonly float[] Direction = [.. Enumerable.Range(0, 64).Select(j => MathF.Sin(j * 0.7f) * 0.3f)];

    // The gpt2 fixture with Direction added to the embedding of every token id divisible by 4 (from 4 on).
    string FineTuned()
    {
        string from = SharedData.TestData("reference/gpt2"), to = Path.Combine(_root, "gpt2-tuned");
        Directory.CreateDirectory(to);
        File.Copy(Path.Combine(from, "config.json"), Path.Combine(to, "config.json"));
        var entries = new List<SafeTensorEntry>();
        using (var file = SafeTensorsFile.Open(Path.Combine(from, "model.safetensors")))
            foreach (var name in file.Names)
            {
                var data = file.GetFloat32(name).ToArray();
                if (name.EndsWith("wte.weight", StringComparison.Ordinal))
                    for (int t = 4; t < 512; t += 4)
                        for (int j = 0; j < 64; j++) data[t * 64 + j] += Direction[j];
                entries.Add(SafeTensorEntry.F32(name, [.. file.GetInfo(name).Shape.Select(d => (int)d)], data));
            }
        SafeTensorsWriter.Write(Path.Combine(to, "model.safetensors"), entries);
        return to;
    }

    // position 0 holds `bos`: 8 is a marked token, so that the models differ there too and leaving it out is checked
    static HarvestContexts Contexts(int count, int length, int seed, int bos = 1)
    {
        var random = new Random(seed);
        return HarvestContexts.FromRows(Enumerable.Range(0, count)
            .Select(_ => Enumerable.Range(0, length).Select(t => t == 0 ? bos : random.Next(3, 512)).ToArray()).ToArray(), "random tokens", seed);
    }

    [Fact]
    public void Differences_and_divergence_equal_their_definitions_and_the_known_answer()
    {
        using var a = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        using var b = ModelLoader.LoadFolder(FineTuned());
        var contexts = Contexts(7, 10, seed: 4, bos: 8);
        string[] hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"];
        var result = ModelDiffing.Compute(a, b, contexts, hooks, new ModelDiffOptions { BatchSize = 3, Positions = 3, TopPositions = 5, LogitTokens = 4 });

        // known answer: at resid_pre 0, h_B − h_A = Direction where the token is a multiple of 4 (≥ 4), else 0
        int marked = contexts.Contexts.Sum(c => c.Skip(1).Count(t => t >= 4 && t % 4 == 0));
        var all = result.Vectors["blocks.0.hook_resid_pre"]["all"];
        double share = (double)marked / (7 * 9);
        for (int j = 0; j < 64; j++) Assert.Equal(Direction[j] * share, all[j], 1e-6);

        // definitions, from each model's own cached runs
        var cacheA = contexts.Contexts.Select(c => a.RunWithCache(new TokenBatch(c, 1, 10), string.Join(",", hooks))).ToArray();
        var cacheB = contexts.Contexts.Select(c => b.RunWithCache(new TokenBatch(c, 1, 10), string.Join(",", hooks))).ToArray();
        for (int t = 0; t < 3; t++)
        {
            var got = result.Vectors["blocks.1.hook_resid_post"][$"pos_{t}"];
            for (int j = 0; j < 64; j++)
            {
                double want = Enumerable.Range(0, 7).Average(c => (double)cacheB[c].Cache["blocks.1.hook_resid_post"].Span[t * 64 + j] - cacheA[c].Cache["blocks.1.hook_resid_post"].Span[t * 64 + j]);
                Assert.Equal(want, got[j], 1e-5);
            }
            var entry = result.Differences.Single(d => d.Hook == "blocks.1.hook_resid_post" && d.Position == t);
            double baseNorm = Enumerable.Range(0, 7).Average(c => System.Numerics.Tensors.TensorPrimitives.Norm(cacheA[c].Cache["blocks.1.hook_resid_post"].Span.Slice(t * 64, 64)));
            Assert.Equal(baseNorm, entry.BaseNorm, 1e-4);
            Assert.Equal(System.Numerics.Tensors.TensorPrimitives.Norm(got), entry.Norm, 1e-5);
            Assert.Equal(4, entry.PromotedA.Count);
            Assert.True(entry.PromotedB[0].Logit >= entry.PromotedB[^1].Logit && entry.SuppressedB[0].Logit <= entry.SuppressedB[^1].Logit);
        }

        // over every position past 0 (BOS left out)
        var allPast0 = result.Vectors["blocks.1.hook_resid_post"]["all"];
        for (int j = 0; j < 64; j++)
        {
            double want = Enumerable.Range(0, 7).SelectMany(c => Enumerable.Range(1, 9).Select(t =>
                (double)cacheB[c].Cache["blocks.1.hook_resid_post"].Span[t * 64 + j] - cacheA[c].Cache["blocks.1.hook_resid_post"].Span[t * 64 + j])).Average();
            Assert.Equal(want, allPast0[j], 1e-5);
        }

        // KL(p_B ‖ p_A) at every position, from the logits
        var kl = new double[7, 10];
        for (int c = 0; c < 7; c++)
            for (int t = 0; t < 10; t++)
            {
                var la = cacheA[c].Logits.Span.Slice(t * 512, 512).ToArray().Select(v => (double)v).ToArray();
                var lb = cacheB[c].Logits.Span.Slice(t * 512, 512).ToArray().Select(v => (double)v).ToArray();
                double za = Math.Log(la.Sum(v => Math.Exp(v - la.Max()))) + la.Max(), zb = Math.Log(lb.Sum(v => Math.Exp(v - lb.Max()))) + lb.Max();
                kl[c, t] = Enumerable.Range(0, 512).Sum(v => Math.Exp(lb[v] - zb) * ((lb[v] - zb) - (la[v] - za)));
            }
        for (int t = 0; t < 10; t++) Assert.Equal(Enumerable.Range(0, 7).Average(c => kl[c, t]), result.MeanKlByPosition[t], 1e-6);
        Assert.Equal(kl.Cast<double>().Average(), result.MeanKl, 1e-6);
        var best = result.TopPositions[0];
        Assert.Equal(kl.Cast<double>().Max(), best.Kl, 1e-6);
        Assert.Equal(kl[best.Context, best.Position], best.Kl, 1e-6);
        Assert.Equal(contexts.Contexts[best.Context][best.Position], best.Token);
        Assert.Equal(5, result.TopPositions.Count);
        Assert.True(result.TopPositions.Zip(result.TopPositions.Skip(1)).All(p => p.First.Kl >= p.Second.Kl));
        Assert.Equal(70, result.KlHistogramCounts.Sum());
        // each position with its window of context (it last) and the token that follows
        foreach (var p in result.TopPositions)
        {
            var row = contexts.Contexts[p.Context];
            Assert.Equal(row[Math.Max(0, p.Position - ModelDiffing.WindowTokens + 1)..(p.Position + 1)], p.Before);
            Assert.Equal(p.Position + 1 < 10 ? row[p.Position + 1] : -1, p.Next);
        }

        // diff.json: written and read back to the same numbers
        string json = Path.Combine(_root, "diff.json");
        ModelDiffFile.Of(result, "base", "tuned", tokenizer: null).Write(json);
        var read = ModelDiffFile.Read(_root);
        Assert.Equal(("base", "tuned"), (read.LabelA, read.LabelB));
        Assert.Empty(read.TokenStrings);
        var r = read.Result;
        Assert.Equal((result.MeanKl, result.Contexts, result.ContextSize), (r.MeanKl, r.Contexts, r.ContextSize));
        Assert.Equal(result.MeanKlByPosition, r.MeanKlByPosition);
        Assert.Equal(result.KlHistogramCounts, r.KlHistogramCounts);
        Assert.Equal(result.TopPositions.Select(p => (p with { Before = [] }, string.Join(",", p.Before))), r.TopPositions.Select(p => (p with { Before = [] }, string.Join(",", p.Before))));
        Assert.Equal(result.Differences.Select(d => (d.Hook, d.Position, d.Norm, d.BaseNorm, string.Join(",", d.PromotedB.Select(t => $"{t.Token}:{t.Logit}")))),
            r.Differences.Select(d => (d.Hook, d.Position, d.Norm, d.BaseNorm, string.Join(",", d.PromotedB.Select(t => $"{t.Token}:{t.Logit}")))));

        // the vectors as steering files: one per hook, the hook in the metadata
        var files = ModelDiffing.SaveVectors(Path.Combine(_root, "vectors"), result);
        using var saved = SafeTensorsFile.Open(files.Single(f => f.EndsWith("blocks.0.hook_resid_pre.safetensors", StringComparison.Ordinal)));
        Assert.Equal("blocks.0.hook_resid_pre", saved.Metadata["hook"]);
        Assert.Equal(all, saved.GetFloat32("all").ToArray());
        Assert.Equal(["all", "pos_0", "pos_1", "pos_2"], saved.Names.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void On_a_device_the_diff_equals_the_hosts_and_only_sums_come_back()
    {
        string tuned = FineTuned();
        using var a = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        using var b = ModelLoader.LoadFolder(tuned);
        using var ga = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"), device.Backend);
        using var gb = ModelLoader.LoadFolder(tuned, device.Backend);
        // an unmarked BOS: with a marked one every context's position 0 has the same KL, a tie that float rounding (which
        // depends on the batch's rows) breaks differently on the host and the device
        var contexts = Contexts(5, 8, seed: 6, bos: 1);
        string[] hooks = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"];
        var options = new ModelDiffOptions { BatchSize = 3, Positions = 2, TopPositions = 6 };
        var host = ModelDiffing.Compute(a, b, contexts, hooks, options);
        var before = device.Backend.Transfers.Snapshot();
        var onDevice = ModelDiffing.Compute(ga, gb, contexts, hooks, options);
        var moved = device.Backend.Transfers.Snapshot() - before;
        // per batch (2) one vector per hook, per context one vector of KL, argmaxes and probabilities: no hook or logit row
        Assert.True(moved.Out(TransferKind.Data) == 2 * hooks.Length + 5, $"read back: {moved}");
        Assert.True(moved.In(TransferKind.Data) == 0, $"uploaded: {moved}");

        Assert.Equal(host.MeanKl, onDevice.MeanKl, 1e-4 * (1 + host.MeanKl));
        for (int t = 0; t < 8; t++) Assert.Equal(host.MeanKlByPosition[t], onDevice.MeanKlByPosition[t], 1e-4 * (1 + host.MeanKlByPosition[t]));
        for (int i = 0; i < 6; i++)
        {
            var (x, y) = (host.TopPositions[i], onDevice.TopPositions[i]);
            Assert.Equal((x.Context, x.Position, x.Token, x.TopA, x.TopB), (y.Context, y.Position, y.Token, y.TopA, y.TopB));
            Assert.Equal(x.Kl, y.Kl, 1e-4 * (1 + x.Kl));
            Assert.Equal(x.ProbAOfTopB, y.ProbAOfTopB, 1e-5);
            Assert.Equal(x.ProbBOfTopB, y.ProbBOfTopB, 1e-5);
        }
        foreach (var hook in hooks)
            foreach (var (name, v) in host.Vectors[hook])
                for (int j = 0; j < v.Length; j++) Assert.True(Math.Abs(v[j] - onDevice.Vectors[hook][name][j]) <= 1e-5f * (1 + Math.Abs(v[j])), $"{hook} {name}[{j}]");
        foreach (var (x, y) in host.Differences.Zip(onDevice.Differences))
        {
            Assert.Equal(x.BaseNorm, y.BaseNorm, 1e-4 * (1 + x.BaseNorm));
            Assert.Equal(x.PromotedB.Select(t => t.Token), y.PromotedB.Select(t => t.Token));
        }
    }

    [Fact]
    public void A_model_against_itself_differs_by_nothing()
    {
        using var a = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        using var b = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        var result = ModelDiffing.Compute(a, b, Contexts(3, 6, seed: 1), ["blocks.2.hook_resid_post"]);
        Assert.Equal(0, result.MeanKl);
        Assert.All(result.Differences, d => Assert.Equal(0, d.Norm));
    }

    [Fact]
    public void Bad_hooks_and_contexts_are_refused_by_name()
    {
        using var a = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        using var b = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        var contexts = Contexts(2, 5, seed: 2);
        Assert.Contains("per-position", Assert.Throws<InputError>(() => ModelDiffing.Compute(a, b, contexts, ["blocks.0.attn.hook_pattern"])).Message);
        Assert.Contains("hook_resid_pree", Assert.Throws<InputError>(() => ModelDiffing.Compute(a, b, contexts, ["blocks.0.hook_resid_pree"])).Message);
        Assert.Contains("--positions", Assert.Throws<InputError>(() => ModelDiffing.Compute(a, b, contexts, ["blocks.0.hook_resid_pre"], new ModelDiffOptions { Positions = -1 })).Message);
        Assert.Contains("n_ctx", Assert.Throws<InputError>(() => ModelDiffing.Compute(a, b, Contexts(1, 100, seed: 3), ["blocks.0.hook_resid_pre"])).Message);
    }
}
