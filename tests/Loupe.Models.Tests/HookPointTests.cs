using System.Diagnostics;
using System.Text.Json;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Models.Tests;

/// <summary>
/// Hook points declared from the config (<see cref="HookPoints.Declare"/>) against what a forward pass
/// really reaches: the same names in the same order, and every cached activation of the declared shape.
/// </summary>
public class HookPointTests(ITestOutputHelper output)
{
    /// <summary>Every family and block variant there is a small model of: the committed fixtures, edited copies, and TransformerLens checkpoints written here.</summary>
    public static TheoryData<string> Variants() =>
    [
        "gpt2", "gpt_neox", "gpt_neox sequential", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "gpt_neo",
        "transformer_lens LN", "transformer_lens RMS gelu", "transformer_lens no-norm attn-only", "transformer_lens LN attn-only",
    ];

    static string Folder(string variant) => variant switch
    {
        "gpt_neox sequential" => TestModels.Copy("gpt_neox", c => c.Replace("\"use_parallel_residual\": true", "\"use_parallel_residual\": false")),
        "phi3" => SharedData.TestData("phi3-longrope"),
        "mistral" => TestModels.Copy("llama", c => c.Replace("\"model_type\": \"llama\"", "\"model_type\": \"mistral\", \"sliding_window\": 3")),
        "transformer_lens LN" => TransformerLensCheckpoint("LN", attnOnly: false, "relu"),
        "transformer_lens RMS gelu" => TransformerLensCheckpoint("RMS", attnOnly: false, "gelu"),
        "transformer_lens no-norm attn-only" => TransformerLensCheckpoint(null, attnOnly: true, null),
        "transformer_lens LN attn-only" => TransformerLensCheckpoint("LN", attnOnly: true, null),
        _ => TestModels.Fixture(variant),
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void DeclaredHookPointsAreWhatAForwardPassReaches(string variant)
    {
        using var model = ModelLoader.LoadFolder(Folder(variant));
        // The edits took: each variant is the block it is named after.
        Assert.Equal(variant.Split(' ')[0], model.Config.Architecture);
        if (variant.StartsWith("gpt_neox", StringComparison.Ordinal)) Assert.Equal(!variant.EndsWith("sequential", StringComparison.Ordinal), model.Config.ParallelAttnMlp);
        if (variant.StartsWith("transformer_lens", StringComparison.Ordinal)) Assert.Equal(variant.EndsWith("attn-only", StringComparison.Ordinal), model.Config.AttnOnly);
        AssertDeclarationMatchesForward(model, variant);
    }

    [RequiresSharedTheory("models")]
    [InlineData("stories260K")]
    [InlineData("induction-attn-only-2l")]
    [InlineData("grokking-modadd-p113-main")]
    [InlineData("addition-5digit-1l")]
    public void DeclaredHookPointsMatchTheSharedModels(string name)
    {
        string? folder = SharedData.Path_(Path.Combine("models", name));
        if (folder is null) return;
        using var model = ModelLoader.LoadFolder(folder);
        AssertDeclarationMatchesForward(model, name);
    }

    void AssertDeclarationMatchesForward(HookedTransformer model, string variant)
    {
        var cfg = model.Config;
        int batch = 2, positions = Math.Min(5, cfg.NCtx);
        var ids = Enumerable.Range(0, batch * positions).Select(i => (i * 7 + 3) % cfg.DVocab).ToArray();
        // Every hook point, the per-head copies of the stream included (a cache of "everything" leaves those out).
        var cache = model.Run(new TokenBatch(ids, batch, positions), new RunOptions { CacheFilter = static _ => true }).Cache;
        var declared = model.HookPoints;

        Assert.Equal(cache.Names, declared.Select(p => p.Name));
        Assert.Equal(cache.Names, model.HookPointNames);
        foreach (var point in declared)
        {
            var shape = cache[point.Name].Shape.ToArray();
            Assert.True(point.Fits(shape), $"{variant}: {point.Describe()} does not fit the cached shape [{string.Join(", ", shape)}]");
            Assert.Equal(point.Shape(batch, positions), shape);
            Assert.Equal(point.Name.StartsWith("blocks.", StringComparison.Ordinal) ? int.Parse(point.Name.Split('.')[1]) : -1, point.Layer);
            for (int axis = 0; axis < point.Rank; axis++)
                Assert.Equal(point.Sizes[axis] is null, point.Axes[axis] is HookAxis.Batch or HookAxis.Pos or HookAxis.QueryPos or HookAxis.KeyPos);
        }
        output.WriteLine($"{variant}: {declared.Count} hook points, {declared.Count(p => p.Layer == 0)} per block");
    }

    /// <summary>A splice that counts the forward passes it sees and otherwise passes the activation on unchanged.</summary>
    sealed class CountingSplice(string hook) : IHookSplice
    {
        public int Runs;
        public string InputHook => hook;
        public string OutputHook => hook;
        public IReadOnlyList<string> SubHookNames => [hook + ".hook_counted"];

        public SpliceOutput Forward(Tensor input, Tensor original, int layer, ForwardContext ctx)
        {
            Runs++;
            return new SpliceOutput(ctx.Hook(SubHookNames[0], layer, original), null);
        }

        public SpliceGradient Backward(object? saved, Tensor dOutput, int layer, ForwardContext ctx) => new(dOutput, null);
    }

    [Fact]
    public void ListingHookPointsRunsNoForwardPass()
    {
        using var model = TestModels.Load("llama");
        var splice = new CountingSplice(HookNames.ResidPost(1));
        using (model.AddSplice(splice))
        {
            Assert.Equal(1, splice.Runs); // the one-token check that the splice fits
            var names = model.HookPointNames;
            _ = model.HookPoints;
            _ = model.HookPointNamesWith(new RunOptions());
            Assert.Equal(1, splice.Runs);
            // The splice's sub-hook follows the hook it replaces, as a forward pass records it.
            var order = names.ToList();
            Assert.Equal(order.IndexOf(HookNames.ResidPost(1)) + 1, order.IndexOf(splice.SubHookNames[0]));
            Assert.Equal(model.RunWithCache(TokenBatch.Single([5, 6, 7])).Cache.Names, names.Where(n => !HookNames.IsPerHeadInput(n)));
            Assert.DoesNotContain(model.HookPoints, p => p.Name == splice.SubHookNames[0]);
        }
        Assert.DoesNotContain(splice.SubHookNames[0], model.HookPointNames);
    }

    [Fact]
    public void AnEightBillionParameterConfigDeclaresItsHooksInstantly()
    {
        // Llama-3-8B's shape; no weights exist, so nothing could run.
        var cfg = new ModelConfig
        {
            Architecture = "llama", NLayers = 32, DModel = 4096, NHeads = 32, NKeyValueHeads = 8, DHead = 128, DMlp = 14336,
            DVocab = 128256, NCtx = 8192, ActFn = "silu", GatedMlp = true, Normalization = NormKind.RmsNorm, RotaryDim = 128,
        };
        var clock = Stopwatch.StartNew();
        var points = HookPoints.Declare(cfg);
        output.WriteLine($"declared {points.Count} hook points in {clock.Elapsed.TotalMilliseconds:F2} ms");
        // hook_embed, 32 × (resid_pre, q/k/v_input (no attn_in: grouped-query attention), ln1 ×2, q k v rot_q rot_k scores pattern z result, attn_out, resid_mid, hook_mlp_in, ln2 ×2, mlp in pre pre_linear post, mlp_out, resid_post), ln_final ×2
        Assert.Equal(1 + 32 * 26 + 2, points.Count);
        var q = points.Single(p => p.Name == "blocks.7.attn.hook_q");
        Assert.Equal("blocks.7.attn.hook_q [batch, pos, head_index=32, d_head=128]", q.Describe());
        Assert.Equal(7, q.Layer);
        Assert.Equal("blocks.7.attn.hook_rot_k [batch, pos, head_index=8, d_head=128]", points.Single(p => p.Name == "blocks.7.attn.hook_rot_k").Describe());
        Assert.Equal("blocks.0.attn.hook_pattern [batch, head_index=32, query_pos, key_pos]", points.Single(p => p.Name == "blocks.0.attn.hook_pattern").Describe());
        Assert.Equal("blocks.0.attn.hook_result [batch, pos, head_index=32, d_model=4096]", points.Single(p => p.Name == "blocks.0.attn.hook_result").Describe());
        Assert.Equal("blocks.31.mlp.hook_pre_linear [batch, pos, d_mlp=14336]", points.Single(p => p.Name == "blocks.31.mlp.hook_pre_linear").Describe());
        Assert.Equal("ln_final.hook_scale [batch, pos, 1]", points[^2].Describe());
        Assert.Equal(-1, points[^1].Layer);
        Assert.Equal("float32", q.DType);
    }

    [Fact]
    public void AxesAreFoundByName()
    {
        var z = new HookPoint("blocks.0.attn.hook_z", 0, [HookAxis.Batch, HookAxis.Pos, HookAxis.HeadIndex, HookAxis.DHead], [null, null, 4, 16]);
        Assert.Equal(2, z.AxisIndex(HookAxis.HeadIndex));
        Assert.Equal(4, z.Size(HookAxis.HeadIndex));
        Assert.Null(z.Size(HookAxis.Pos));
        Assert.True(z.HasAxis(HookAxis.DHead));
        Assert.False(z.HasAxis(HookAxis.DModel));
        var e = Assert.Throws<ArgumentException>(() => z.AxisIndex(HookAxis.DModel));
        Assert.Contains("blocks.0.attn.hook_z has no axis 'd_model'; its axes are [batch, pos, head_index, d_head]", e.Message);
        Assert.Equal([3, 7, 4, 16], z.Shape(3, 7));
        Assert.True(z.Fits([1, 2, 4, 16]));
        Assert.False(z.Fits([1, 2, 2, 16]));
        Assert.False(z.Fits([1, 2, 64]));
        // Value equality, although axes and sizes are lists.
        Assert.Equal(z, new HookPoint(z.Name, 0, [.. z.Axes], [.. z.Sizes]));
        Assert.NotEqual(z, new HookPoint(z.Name, 0, [.. z.Axes], [null, null, 2, 16]));
    }

    [Fact]
    public void MalformedHookPointsAreRefused()
    {
        Assert.Throws<ArgumentException>(() => new HookPoint("h", 0, [HookAxis.Batch, HookAxis.Pos], [null]));
        Assert.Throws<ArgumentException>(() => new HookPoint("h", 0, [HookAxis.Batch, HookAxis.DModel], [null, 0]));
        Assert.Throws<ArgumentException>(() => new HookPoint("h", 0, [HookAxis.Pos, HookAxis.Pos], [null, null]));
        Assert.Throws<ArgumentException>(() => new HookPoint("", 0, [], []));
    }

    /// <summary>A random 2-layer checkpoint in TransformerLens's layout (d_model 16, 2 heads of 8, d_mlp 24, vocab 20, n_ctx 8).</summary>
    static string TransformerLensCheckpoint(string? normalization, bool attnOnly, string? actFn)
    {
        const int L = 2, D = 16, H = 2, dh = 8, M = 24, V = 20, ctx = 8;
        var random = new Random(3);
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>();
        void Add(string name, params int[] shape) =>
            tensors.Add((name, shape, Enumerable.Range(0, shape.Aggregate(1, (a, b) => a * b)).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray()));
        void Norm(string prefix)
        {
            if (normalization is null) return;
            Add(prefix + ".w", D);
            if (normalization == "LN") Add(prefix + ".b", D);
        }
        Add("embed.W_E", V, D);
        Add("pos_embed.W_pos", ctx, D);
        for (int l = 0; l < L; l++)
        {
            string b = $"blocks.{l}.";
            Norm(b + "ln1");
            Norm(b + "ln2");
            foreach (var w in new[] { "Q", "K", "V" })
            {
                Add(b + "attn.W_" + w, H, D, dh);
                Add(b + "attn.b_" + w, H, dh);
            }
            Add(b + "attn.W_O", H, dh, D);
            Add(b + "attn.b_O", D);
            if (attnOnly) continue;
            Add(b + "mlp.W_in", D, M);
            Add(b + "mlp.b_in", M);
            Add(b + "mlp.W_out", M, D);
            Add(b + "mlp.b_out", D);
        }
        Norm("ln_final");
        Add("unembed.W_U", D, V);
        string dir = Directory.CreateTempSubdirectory("loupe-test-tl").FullName;
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["format"] = "transformer_lens", ["n_layers"] = L, ["d_model"] = D, ["n_ctx"] = ctx, ["d_head"] = dh, ["n_heads"] = H,
            ["d_mlp"] = attnOnly ? null : M, ["d_vocab"] = V, ["act_fn"] = actFn, ["normalization_type"] = normalization, ["attn_only"] = attnOnly,
        }));
        return dir;
    }
}
