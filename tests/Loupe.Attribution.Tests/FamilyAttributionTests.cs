using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Tensors.Gpu;
using Loupe.Testing;

namespace Loupe.Attribution.Tests;

/// <summary>
/// Every family's block wiring (grouped-query attention, rotary, RMSNorm, Gemma 2's sandwich norms and
/// soft-caps, GPT-NeoX's parallel residual) through the attribution engine, checked against interventions
/// in the real model (frozen patterns, scales and MLP outputs), with random per-layer transcoders;
/// the greedy feature selection, the rows streamed to disk and the emulated GPU against the plain run.
/// </summary>
public sealed class FamilyAttributionTests
{
    static readonly int[] Prompt = [1, 37, 211, 5, 88, 400, 12];

    /// <param name="input">What each layer's transcoder reads: <c>ln2</c> (<c>ln2.hook_normalized</c>, before an RMSNorm's weight),
    /// <c>mlp.hook_in</c> (the MLP's input) or <c>hook_mlp_in</c> (TransformerLens's: the stream before ln2).</param>
    internal static PerLayerTranscoders RandomTranscoders(HookedTransformer model, int features = 24, int seed = 3, string input = "ln2")
    {
        int L = model.Config.NLayers, D = model.Config.DModel;
        var dicts = new List<SparseDictionary>();
        for (int l = 0; l < L; l++)
        {
            var d = new SparseDictionary(SaeShape.Transcoder(D, features, D), new ReluActivation());
            d.Initialize(seed + l, decoderNorm: 0.5f);
            var rng = new Random(seed * 31 + l);
            for (int i = 0; i < d.P.WEnc.Length; i++) d.P.WEnc[i] = (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 2f;
            for (int f = 0; f < features; f++) d.P.BEnc[f] = (float)(rng.NextDouble() * 0.4 - 0.3);
            dicts.Add(d);
        }
        return new PerLayerTranscoders(dicts,
            [.. Enumerable.Range(0, L).Select(l => input switch
            {
                "ln2" => model.Anatomy(l).Ln2!.NormalizedHook,
                "mlp.hook_in" => HookNames.MlpIn(l),
                "hook_mlp_in" => HookNames.HookMlpIn(l),
                _ => throw new ArgumentOutOfRangeException(nameof(input), input, "ln2, mlp.hook_in or hook_mlp_in"),
            })],
            [.. Enumerable.Range(0, L).Select(HookNames.MlpOut)], "random");
    }

    /// <summary><see cref="RandomTranscoders"/> (seed 11) with a random skip path x·W_skip in every layer, reading ln2's output or resid_mid.</summary>
    internal static PerLayerTranscoders RandomSkipTranscoders(HookedTransformer model, bool readsResidMid)
    {
        int L = model.Config.NLayers, D = model.Config.DModel;
        var plain = RandomTranscoders(model, seed: 11);
        var rng = new Random(29);
        var dicts = Enumerable.Range(0, L).Select(l =>
        {
            var d = new SparseDictionary(SaeShape.Transcoder(D, plain[l].Shape.DSae, D, skip: true), plain[l].Activation);
            plain[l].P.WEnc.CopyTo(d.P.WEnc, 0); plain[l].P.BEnc.CopyTo(d.P.BEnc, 0); plain[l].P.WDec.CopyTo(d.P.WDec, 0); plain[l].P.BDec.CopyTo(d.P.BDec, 0);
            for (int i = 0; i < d.P.WSkip.Length; i++) d.P.WSkip[i] = (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 0.8f;
            return d;
        }).ToList();
        return new PerLayerTranscoders(dicts,
            [.. Enumerable.Range(0, L).Select(l => readsResidMid ? HookNames.ResidMid(l) : model.Anatomy(l).Ln2!.NormalizedHook)],
            [.. Enumerable.Range(0, L).Select(HookNames.MlpOut)], "random skip");
    }

    static HookedTransformer Load(string arch, Tensors.Backends.IComputeBackend? backend = null) =>
        ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)), backend);

    [Theory]
    [InlineData("gpt2", "ln2")]
    [InlineData("llama", "ln2")]
    [InlineData("qwen2", "ln2")]
    [InlineData("gemma2", "ln2")]
    [InlineData("gpt_neox", "ln2")]
    [InlineData("llama", "mlp.hook_in")]   // RMSNorm: mlp.hook_in is after ln2's weight, ln2.hook_normalized before it
    [InlineData("gemma2", "mlp.hook_in")]
    [InlineData("llama", "hook_mlp_in")]   // the stream before ln2: resid_mid
    [InlineData("gpt_neox", "hook_mlp_in")] // resid_pre, in a parallel block
    public void Every_family_edges_match_interventions_in_the_real_model(string arch, string input)
    {
        using var model = Load(arch);
        var tc = RandomTranscoders(model, input: input);
        var graph = new Attributor(model, tc, new AttributionSettings { BatchSize = 16, CausalBlock = 2 }).Attribute(Prompt);
        Assert.True(graph.SelectedFeatures.Length > 10, $"{graph.SelectedFeatures.Length} active features");
        var replacement = new ReplacementModel(model, tc);
        var frozen = replacement.Freeze(Prompt);
        var directions = FrozenProbe.LogitDirections(model, graph);
        var cache = FrozenProbe.Cache;
        var clean = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, cache: cache));
        double worst = 0, largest = 0;
        var rng = new Random(1);
        var sources = Enumerable.Range(0, graph.LogitOffset).Where(_ => rng.Next(4) == 0);
        foreach (int source in sources)
        {
            var changed = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, additions: FrozenProbe.SourceVector(model, tc, graph, source), cache: cache));
            foreach (int t in Enumerable.Range(0, graph.ErrorOffset).Concat(Enumerable.Range(graph.LogitOffset, graph.LogitTokens.Length)))
            {
                worst = Math.Max(worst, Math.Abs(changed[t] - clean[t] - graph.Edge(t, source)));
                largest = Math.Max(largest, Math.Abs(graph.Edge(t, source)));
            }
        }
        Assert.True(largest > 0.01, $"largest edge {largest}");
        Assert.True(worst <= 1e-4 * Math.Max(1, largest), $"{arch}: max |Δ − A| = {worst:g3} (largest edge {largest:g3})");
    }

    /// <summary>
    /// Skip transcoders (circuit-tracer's Llama and Qwen3 presets, Gemma Scope 2's affine ones) and transcoders that read
    /// <c>hook_resid_mid</c> (circuit-tracer's Llama transcoders and CLTs): the skip path x·W_skip stays live in the replacement
    /// model, so an edge may pass through it; a frozen run keeps it live too (the prompt's MLP output + (x − x_prompt)·W_skip).
    /// </summary>
    [Theory]
    [InlineData("llama", false)]
    [InlineData("gemma2", false)]
    [InlineData("gpt_neox", false)]
    [InlineData("llama", true)]
    [InlineData("gpt2", true)]
    public void Skip_transcoder_edges_match_interventions_in_the_real_model(string arch, bool readsResidMid)
    {
        using var model = Load(arch);
        int L = model.Config.NLayers;
        var plain = RandomTranscoders(model, seed: 11);
        var tc = RandomSkipTranscoders(model, readsResidMid);
        var rng = new Random(29);
        var graph = new Attributor(model, tc, new AttributionSettings { BatchSize = 16, CausalBlock = 2 }).Attribute(Prompt);
        var noSkip = new Attributor(model, new PerLayerTranscoders([.. Enumerable.Range(0, L).Select(l => plain[l])],
            [.. Enumerable.Range(0, L).Select(tc.InputHook)], [.. Enumerable.Range(0, L).Select(HookNames.MlpOut)], "random"),
            new AttributionSettings { BatchSize = 16 }).Attribute(Prompt);
        var replacement = new ReplacementModel(model, tc);
        var frozen = replacement.Freeze(Prompt);
        var directions = FrozenProbe.LogitDirections(model, graph);
        var clean = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, cache: FrozenProbe.Cache));
        double worst = 0, largest = 0, changedBySkip = 0;
        foreach (int source in Enumerable.Range(0, graph.LogitOffset).Where(_ => rng.Next(3) == 0))
        {
            var changed = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, additions: FrozenProbe.SourceVector(model, tc, graph, source), cache: FrozenProbe.Cache));
            worst = Math.Max(worst, FrozenProbe.ColumnError(graph, source, clean, changed));
            for (int t = 0; t < graph.NodeCount; t++) largest = Math.Max(largest, Math.Abs(graph.Edge(t, source)));
            if (source >= graph.ErrorOffset && graph.NodeCount == noSkip.NodeCount)
                for (int t = graph.LogitOffset; t < graph.NodeCount; t++) changedBySkip = Math.Max(changedBySkip, Math.Abs(graph.Edge(t, source) - noSkip.Edge(t, source)));
        }
        Assert.True(largest > 0.01, $"largest edge {largest}");
        Assert.True(worst <= 1e-4 * Math.Max(1, largest), $"{arch}: max |Δ − A| = {worst:g3} (largest edge {largest:g3})");
        Assert.True(changedBySkip > 1e-3, $"the skip paths changed token/error → logit edges by at most {changedBySkip:g3}");
    }

    [Fact]
    public void Leading_positions_that_are_not_sources_have_no_features_or_errors_and_the_edges_still_match_interventions()
    {
        // circuit-tracer zeroes Gemma 3's chat prefix <bos><start_of_turn>user\n (four positions) on -it models, the BOS otherwise.
        Assert.Equal(4, AttributionSettings.DefaultZeroPositions("gemma3", [2, 105, 2364, 107, 9]));
        Assert.Equal(1, AttributionSettings.DefaultZeroPositions("gemma3", [2, 105, 2364, 107]));   // nothing after the prefix
        Assert.Equal(1, AttributionSettings.DefaultZeroPositions("gemma3", [2, 651, 6037, 107, 9]));
        Assert.Equal(1, AttributionSettings.DefaultZeroPositions("llama", [2, 105, 2364, 107, 9]));

        using var model = Load("llama");
        var tc = RandomTranscoders(model);
        var graph = new Attributor(model, tc, new AttributionSettings { BatchSize = 16, ZeroPositions = 3 }).Attribute(Prompt);
        int L = model.Config.NLayers, D = model.Config.DModel, T = Prompt.Length;
        Assert.All(graph.ActiveFeatures, a => Assert.True(a.Position >= 3, $"a feature at position {a.Position}"));
        Assert.Contains(graph.ActiveFeatures, a => a.Position == 3);
        for (int l = 0; l < L; l++)
            for (int p = 0; p < 3; p++) Assert.All(graph.ErrorVectors!.AsSpan((l * T + p) * D, D).ToArray(), v => Assert.Equal(0f, v));
        var replacement = new ReplacementModel(model, tc);
        var frozen = replacement.Freeze(Prompt);
        var directions = FrozenProbe.LogitDirections(model, graph);
        var clean = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, cache: FrozenProbe.Cache));
        double worst = 0, largest = 0;
        foreach (int source in Enumerable.Range(0, graph.LogitOffset).Where(i => i % 3 == 0))
        {
            var changed = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, additions: FrozenProbe.SourceVector(model, tc, graph, source), cache: FrozenProbe.Cache));
            worst = Math.Max(worst, FrozenProbe.ColumnError(graph, source, clean, changed));
            for (int t = 0; t < graph.NodeCount; t++) largest = Math.Max(largest, Math.Abs(graph.Edge(t, source)));
        }
        Assert.True(worst <= 1e-4 * Math.Max(1, largest), $"max |Δ − A| = {worst:g3} (largest edge {largest:g3})");
        Assert.Throws<InputError>(() => new Attributor(model, tc, new AttributionSettings { ZeroPositions = 7 }).Attribute(Prompt));
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt_neox")]
    public void Cross_layer_transcoder_edges_match_interventions_in_the_real_model(string arch)
    {
        // A feature of layer ℓ writes every MLP output ℓ…L−1: its column is the sum over those targets.
        using var model = Load(arch);
        int L = model.Config.NLayers;
        var clt = Devices.DeviceAttributionGraphTests.RandomClt(model, 16);
        var rng = new Random(17);
        var graph = new Attributor(model, clt, new AttributionSettings { BatchSize = 8, CausalBlock = 3 }).Attribute(Prompt);
        Assert.Contains(graph.SelectedFeatures, a => graph.ActiveFeatures[a].Layer < L - 1);
        var replacement = new ReplacementModel(model, clt);
        var frozen = replacement.Freeze(Prompt);
        var directions = FrozenProbe.LogitDirections(model, graph);
        var clean = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, cache: FrozenProbe.Cache));
        double worst = 0, largest = 0;
        foreach (int source in Enumerable.Range(0, graph.LogitOffset).Where(_ => rng.Next(3) == 0))
        {
            var changed = FrozenProbe.Targets(replacement, graph, directions, replacement.Run(Prompt, frozen: frozen, additions: FrozenProbe.SourceVector(model, clt, graph, source), cache: FrozenProbe.Cache));
            worst = Math.Max(worst, FrozenProbe.ColumnError(graph, source, clean, changed));
            for (int t = 0; t < graph.NodeCount; t++) largest = Math.Max(largest, Math.Abs(graph.Edge(t, source)));
        }
        Assert.True(largest > 0.01, $"largest edge {largest}");
        Assert.True(worst <= 1e-4 * Math.Max(1, largest), $"{arch}: max |Δ − A| = {worst:g3} (largest edge {largest:g3})");
        // Doubling a layer-0 feature in a frozen run moves the logits by its column: the sum over every MLP output it writes.
        int first = Enumerable.Range(0, graph.SelectedFeatures.Length).First(i => graph.Node(i).Layer == 0);
        var node = graph.Node(first);
        var doubled = FrozenProbe.Targets(replacement, graph, directions,
            replacement.Run(Prompt, [new FeatureIntervention(0, node.Position, node.Index, 2f, InterventionKind.Scale)], frozen, cache: FrozenProbe.Cache));
        Assert.True(FrozenProbe.ColumnError(graph, first, clean, doubled) <= 1e-4 * Math.Max(1, largest));
    }

    [Fact]
    public void A_Gemma_Scope_2_cross_layer_transcoder_with_a_skip_path_on_gemma3_matches_interventions_in_the_real_model()
    {
        // Gemma Scope 2's layout (params_layer_ℓ.safetensors, w_dec [F, L, d], affine skip), read with its decoders mapped;
        // features read hook_resid_mid and write hook_mlp_out, as circuit-tracer reads these files.
        using var model = Load("gemma3");
        int L = model.Config.NLayers, D = model.Config.DModel, F = 16;
        var clt = Devices.DeviceAttributionGraphTests.RandomClt(model, F);
        var rng = new Random(23);
        var folder = Directory.CreateTempSubdirectory("loupe-gs2-attr-");
        var skips = new float[L][];
        try
        {
            for (int l = 0; l < L; l++)
            {
                var wDec = PublishedDictionaryFiles.GemmaScope2CltDecoder(clt.P.WDec[l], l, L, F, D);
                var skip = skips[l] = Enumerable.Range(0, D * D).Select(_ => (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(D) * 0.8f).ToArray();
                PublishedDictionaryFiles.WriteGemmaScope2CltLayer(folder.FullName, l, L, D, F, D, clt.P.WEnc[l], clt.P.BEnc[l], wDec, clt.P.BDec[l],
                    Enumerable.Repeat(0.02f, F).ToArray(), skip);
            }
            using var gs2 = Assert.IsType<MappedCrossLayerTranscoder>(MlpReplacements.Load(folder.FullName, model));
            Assert.True(gs2.HasSkip);
            Assert.Equal("blocks.0.hook_resid_mid", gs2.InputHook(0));
            var graph = new Attributor(model, gs2, new AttributionSettings { BatchSize = 8 }).Attribute(Prompt);
            Assert.Contains(graph.SelectedFeatures, a => graph.ActiveFeatures[a].Layer < L - 1);
            var (worst, largest) = FrozenProbe.CheckColumns(model, gs2, graph, Prompt, Enumerable.Range(0, graph.LogitOffset).Where(_ => rng.Next(3) == 0));
            Assert.True(largest > 0.01, $"largest edge {largest}");
            Assert.True(worst <= 1e-4 * Math.Max(1, largest), $"max |Δ − A| = {worst:g3} (largest edge {largest:g3})");

            // Against the same CLT without the skip path (Loupe's, in memory): each error vector is smaller by exactly
            // x·A (x = the layer's hook_resid_mid), and the skip path changes the token → logit edges (the tokens' values are
            // the same in both; only the path through x·A differs).
            var same = new CrossLayerTranscoder(clt.Shape, new JumpReluActivation(), GemmaScope2Clt.DefaultInputHook, GemmaScope2Clt.DefaultOutputHook);
            foreach (var ((_, from), (_, to)) in clt.P.All().Zip(same.P.All())) from.CopyTo(to, 0);
            for (int l = 0; l < L; l++) Array.Copy(gs2.P.Act[l].LogThreshold, same.P.Act[l].LogThreshold, F);
            var plain = new Attributor(model, same, new AttributionSettings { BatchSize = 8 }).Attribute(Prompt);
            var cache = model.Run(TokenBatch.Single(Prompt), new RunOptions { CacheFilter = n => n.EndsWith(".hook_resid_mid", StringComparison.Ordinal) }).Cache;
            int T = Prompt.Length;
            double errorMismatch = 0, changedBySkip = 0;
            for (int l = 0; l < L; l++)
            {
                var x = cache[HookNames.ResidMid(l)].ToCpu().Span;
                for (int p = 1; p < T; p++)
                    for (int j = 0; j < D; j++)
                    {
                        double xa = 0;
                        for (int i = 0; i < D; i++) xa += x[p * D + i] * skips[l][i * D + j];
                        int at = (l * T + p) * D + j;
                        errorMismatch = Math.Max(errorMismatch, Math.Abs(plain.ErrorVectors![at] - graph.ErrorVectors![at] - xa));
                    }
            }
            Assert.True(errorMismatch <= 1e-3, $"error vectors differ from the plain CLT's by x·A to {errorMismatch:g3}");
            Assert.Equal(plain.NodeCount - plain.TokenOffset, graph.NodeCount - graph.TokenOffset);
            for (int p = 0; p < T; p++)
                for (int t = 0; t < graph.NodeCount - graph.LogitOffset; t++)
                    changedBySkip = Math.Max(changedBySkip, Math.Abs(graph.Edge(graph.LogitOffset + t, graph.TokenOffset + p) - plain.Edge(plain.LogitOffset + t, plain.TokenOffset + p)));
            Assert.True(changedBySkip > 1e-3, $"the skip paths changed token → logit edges by at most {changedBySkip:g3}");
        }
        finally { folder.Delete(recursive: true); }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Transcoders_with_mapped_decoders_give_the_graph_and_interventions_of_the_ones_in_memory(bool crossLayer)
    {
        using var model = Load("llama");
        var folder = Directory.CreateTempSubdirectory("loupe-mapped-attr-");
        try
        {
            IMlpReplacement memory;
            if (crossLayer)
            {
                CltFiles.SaveCircuitTracer(folder.FullName, Devices.DeviceAttributionGraphTests.RandomClt(model, 16));
                memory = CltFiles.Load(folder.FullName);
            }
            else
            {
                // circuit-tracer's per-layer files (mlp.hook_in → hook_mlp_out, what its config.yaml records)
                var random = RandomTranscoders(model, input: "mlp.hook_in");
                new CircuitTracerTranscoders([.. Enumerable.Range(0, random.Layers).Select(l => random[l])], "blocks.{layer}.mlp.hook_in", "blocks.{layer}.hook_mlp_out").Save(folder.FullName);
                memory = CircuitTracerTranscoders.Load(folder.FullName);
            }
            using var mapped = (IDisposable)MlpReplacements.Load(folder.FullName, model, decoders: DecoderStorage.Mapped);
            Assert.IsType(crossLayer ? typeof(MappedCrossLayerTranscoder) : typeof(MappedPerLayerTranscoders), mapped);
            var settings = new AttributionSettings { BatchSize = 8 };
            var a = new Attributor(model, memory, settings).Attribute(Prompt);
            var b = new Attributor(model, (IMlpReplacement)mapped, settings).Attribute(Prompt);
            Assert.Equal(a.SelectedFeatures, b.SelectedFeatures);
            Assert.Equal(a.NodeCount, b.NodeCount);
            double largest = 0;
            for (int t = 0; t < a.NodeCount; t++)
                for (int s = 0; s < a.NodeCount; s++)
                {
                    largest = Math.Max(largest, Math.Abs(a.Edge(t, s)));
                    Assert.True(Math.Abs(a.Edge(t, s) - b.Edge(t, s)) <= 1e-5 * (1 + Math.Abs(a.Edge(t, s))), $"edge {t} ← {s}: {a.Edge(t, s)} in memory, {b.Edge(t, s)} mapped");
                }
            Assert.True(largest > 0.01, $"largest edge {largest}");
            Assert.Equal(a.Provenance!.TranscoderFingerprint, b.Provenance!.TranscoderFingerprint);
            // An intervention through the replacement model: the same logits.
            var node = a.Node(0);
            FeatureIntervention[] edit = [new(node.Layer, node.Position, node.Index, 0f, InterventionKind.Set)];
            var la = new ReplacementModel(model, memory).Run(Prompt, edit).LastLogits;
            var lb = new ReplacementModel(model, (IMlpReplacement)mapped).Run(Prompt, edit).LastLogits;
            for (int i = 0; i < la.Length; i++) Assert.True(Math.Abs(la[i] - lb[i]) <= 1e-4 * (1 + Math.Abs(la[i])), $"logit {i}: {la[i]} vs {lb[i]}");
        }
        finally { folder.Delete(recursive: true); }
    }

    [Fact]
    public void Greedy_selection_keeps_the_full_graphs_edges_and_streaming_to_disk_changes_nothing()
    {
        using var model = Load("llama");
        var tc = RandomTranscoders(model);
        var full = new Attributor(model, tc).Attribute(Prompt);
        var scratch = Directory.CreateTempSubdirectory("loupe-attr-");
        try
        {
            var settings = new AttributionSettings { MaxFeatureNodes = 12, BatchSize = 5, UpdateInterval = 1, MaxMemoryBytes = 0, ScratchDirectory = scratch.FullName };
            var attributor = new Attributor(model, tc, settings);
            var small = attributor.Attribute(Prompt);
            Assert.Equal(12, small.SelectedFeatures.Length);
            Assert.Empty(scratch.GetFiles()); // the scratch file is gone
            // Rows and columns of the selected features, and every other node, are the full graph's.
            int[] map = [.. small.SelectedFeatures.Select(f => Array.IndexOf(full.SelectedFeatures, f)),
                .. Enumerable.Range(full.ErrorOffset, full.NodeCount - full.ErrorOffset)];
            for (int t = 0; t < small.NodeCount; t++)
                for (int s = 0; s < small.NodeCount; s++)
                    Assert.True(Math.Abs(small.Edge(t, s) - full.Edge(map[t], map[s])) <= 1e-6, $"edge {t} ← {s}");
            // The greedy picks: the first batch are the features most influential on the logits, by the logit rows alone.
            var byLogits = InfluenceFromLogitRows(full);
            var firstBatch = byLogits.Take(5).ToHashSet();
            Assert.True(firstBatch.IsSubsetOf(small.SelectedFeatures), "the first greedy batch is the top-5 by influence through the logit rows");
        }
        finally { scratch.Delete(true); }
    }

    [Fact]
    public void The_emulated_gpu_gives_the_cpu_graph()
    {
        // Llama: grouped-query attention, rotary, RMSNorm — every kernel the engine uses (ILGPU on the CPU is slow: one family).
        const string arch = "llama";
        using var cpu = Load(arch);
        using var backend = ComputeBackends.Create(new Device(DeviceKind.Emulated));
        using var device = Load(arch, backend);
        var expected = new Attributor(cpu, RandomTranscoders(cpu)).Attribute(Prompt);
        var actual = new Attributor(device, RandomTranscoders(device)).Attribute(Prompt);
        Assert.Equal(expected.SelectedFeatures, actual.SelectedFeatures);
        float[] expectedA = expected.DenseAdjacency(), actualA = actual.DenseAdjacency();
        float largest = expectedA.Max(Math.Abs);
        for (int i = 0; i < expectedA.Length; i++)
            Assert.True(Math.Abs(expectedA[i] - actualA[i]) <= 1e-5 * largest, $"entry {i}: cpu {expectedA[i]}, device {actualA[i]}");
    }

    [Fact]
    public void Transcoders_for_another_model_and_bad_prompts_are_refused()
    {
        using var model = Load("gpt2");
        using var other = Load("gemma2");
        var ex = Assert.Throws<InputError>(() => new Attributor(model, RandomTranscoders(other)).Attribute(Prompt));
        Assert.Contains("replace 4 layers", ex.Message);
        var wide = new PerLayerTranscoders(
            [.. Enumerable.Range(0, 3).Select(_ => new SparseDictionary(SaeShape.Transcoder(32, 8, 32), new ReluActivation()))],
            [.. Enumerable.Range(0, 3).Select(l => $"blocks.{l}.ln2.hook_normalized")], [.. Enumerable.Range(0, 3).Select(HookNames.MlpOut)], "narrow");
        Assert.Contains("d_model 64", Assert.Throws<InputError>(() => new Attributor(model, wide).Attribute(Prompt)).Message);
        var tc = RandomTranscoders(model);
        Assert.Contains("n_ctx", Assert.Throws<InputError>(() => new Attributor(model, tc).Attribute(new int[model.Config.NCtx + 1])).Message);
        Assert.Contains("outside the vocabulary", Assert.Throws<InputError>(() => new Attributor(model, tc).Attribute([0, 99999])).Message);
        Assert.Contains("empty", Assert.Throws<InputError>(() => new Attributor(model, tc).Attribute([])).Message);
        // Encoders that never fire: nothing to attribute.
        var silent = RandomTranscoders(model);
        for (int l = 0; l < 3; l++) Array.Fill(silent[l].P.BEnc, -100f);
        Assert.Contains("no feature", Assert.Throws<InputError>(() => new Attributor(model, silent).Attribute(Prompt)).Message);
        // A NaN encoder weight: named, not a NaN graph.
        var broken = RandomTranscoders(model);
        broken[1].P.WEnc[5] = float.NaN;
        Assert.Contains("non-finite", Assert.Throws<InputError>(() => new Attributor(model, broken).Attribute(Prompt)).Message);
    }

    /// <summary>Features ranked by influence through the logit rows only (an independent power series, dense).</summary>
    static int[] InfluenceFromLogitRows(AttributionGraph g)
    {
        int n = g.NodeCount;
        var influence = new double[n];
        for (int j = 0; j < g.LogitTokens.Length; j++)
        {
            int t = g.LogitOffset + j;
            double sum = 0;
            for (int s = 0; s < n; s++) sum += Math.Abs(g.Edge(t, s));
            for (int s = 0; s < n; s++) influence[s] += g.LogitProbabilities[j] * Math.Abs(g.Edge(t, s)) / Math.Max(sum, 1e-8);
        }
        return [.. Enumerable.Range(0, g.SelectedFeatures.Length).OrderByDescending(i => influence[i]).ThenBy(i => i).Select(i => g.SelectedFeatures[i])];
    }
}
