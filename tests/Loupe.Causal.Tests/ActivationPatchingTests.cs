using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Causal.Tests;

public class ActivationPatchingTests
{
    /// <summary>
    /// The obvious implementation: one forward pass per cell, a hook that walks every element of
    /// the activation and copies the clean value where the head / position index matches.
    /// </summary>
    static double NaivePatch(HookedTransformer model, TokenBatch baseTokens, ActivationCache source, IMetric metric, string hook, int? headAxis, int head, int? positionAxis, int position)
    {
        var options = new RunOptions().AddHook(hook, (act, _) =>
        {
            var src = source[hook];
            var shape = act.Shape.ToArray();
            var index = new int[shape.Length];
            for (int i = 0; i < act.Length; i++)
            {
                for (int a = shape.Length - 1, rest = i; a >= 0; rest /= shape[a], a--) index[a] = rest % shape[a];
                bool inCell = (headAxis is not int ha || head < 0 || index[ha] == head) && (positionAxis is not int pa || position < 0 || index[pa] == position);
                if (inCell) act.Span[i] = src.Span[i];
            }
            return act;
        });
        return metric.Value(model.Run(baseTokens, options).Logits);
    }

    public static TheoryData<string, string> Targets() => new()
    {
        { "gpt2", "resid_pre" }, { "gpt2", "attn_out" }, { "gpt2", "mlp_out" }, { "gpt2", "head_out" },
        { "gpt2", "head_out_by_pos" }, { "gpt2", "head_pattern" },
        { "llama", "resid_pre" }, { "llama", "head_out" }, { "llama", "head_pattern" }, { "llama", "hook_k" },
        { "gemma2", "head_out_by_pos" },
        // TransformerLens's per-head inputs: each cell patches one head's copy of the stream (the split pass).
        { "gpt2", "q_input" }, { "llama", "k_input" }, { "gpt_neox", "v_input" },
    };

    [Theory]
    [InlineData("gpt2", "q")]
    [InlineData("llama", "k")]
    [InlineData("gpt_neox", "v")]
    public void PatchingEachHeadsInputEqualsPatchingItsProjection(string arch, string which)
    {
        // TransformerLens-style sweeps over hook_q_input (head by head, position by position) patch head h's query input only:
        // the same as patching head h's hook_q, which is ln1(input)·W_Q[h] + b_Q[h]. Batched rows carry different cells.
        using var model = TestInputs.Fixture(arch);
        var (clean, corrupt) = TestInputs.FixturePair();
        var metric = new LogitDiff(17, 42);
        var options = new PatchOptions { MaxRows = 7 };
        var viaInput = ActivationPatching.Sweep(model, clean, corrupt, metric,
            PatchTarget.Custom($"blocks.{{layer}}.hook_{which}_input", headAxis: 2, positionAxis: 1) with { Layers = [1] }, options);
        var viaProjection = ActivationPatching.Sweep(model, clean, corrupt, metric,
            PatchTarget.Custom($"blocks.{{layer}}.attn.hook_{which}", headAxis: 2, positionAxis: 1) with { Layers = [1] }, options);
        Assert.Equal(viaProjection.Cells, viaInput.Cells);
        for (int i = 0; i < viaInput.Values.Length; i++)
            Assert.True(Math.Abs(viaProjection.Values[i] - viaInput.Values[i]) <= 1e-4 * Math.Max(1, Math.Abs(viaProjection.Values[i])),
                $"{arch} {viaInput.Cells[i]}: via hook_{which}_input {viaInput.Values[i]}, via hook_{which} {viaProjection.Values[i]}");
        Assert.Contains(viaInput.Values, v => Math.Abs(v - viaInput.CorruptValue) > 1e-3); // the patches do something
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void BatchedSweepMatchesOneForwardPassPerCell(string arch, string targetName)
    {
        using var model = TestInputs.Fixture(arch);
        var (clean, corrupt) = TestInputs.FixturePair();
        var metric = new LogitDiff(17, 42);
        var target = targetName == "hook_k" ? PatchTarget.Custom("blocks.{layer}.attn.hook_k", headAxis: 2) : PatchTarget.Parse(targetName);
        var options = new PatchOptions { MaxRows = 7 }; // 3 cells of 2 rows per pass, so the last pass is often partial
        var result = ActivationPatching.Sweep(model, clean, corrupt, metric, target, options);

        var hooks = new HashSet<string>(result.Layers.Select(target.HookName));
        var cleanCache = model.Run(clean, new RunOptions { CacheFilter = hooks.Contains }).Cache;
        Assert.Equal(metric.Value(model.Run(clean).Logits), result.CleanValue, 1e-5);
        Assert.Equal(metric.Value(model.Run(corrupt).Logits), result.CorruptValue, 1e-5);
        for (int i = 0; i < result.Cells.Length; i++)
        {
            var cell = result.Cells[i];
            double naive = NaivePatch(model, corrupt, cleanCache, metric, target.HookName(cell.Layer), target.HeadAxis, cell.Head, target.PositionAxis, cell.Position);
            Assert.True(Math.Abs(naive - result.Values[i]) <= 1e-4 * Math.Max(1, Math.Abs(naive)), $"{cell}: naive {naive}, batched {result.Values[i]}");
            Assert.Equal((naive - result.CorruptValue) / (result.CleanValue - result.CorruptValue), result.Normalized[i], 1e-3);
        }
        Assert.Equal(3, result.CellsPerPass);
        Assert.Equal(2 + (result.Cells.Length + 2) / 3, result.ForwardPasses);
        int heads = target.HeadAxis is null ? 1 : target.HookName(0).EndsWith("hook_k", StringComparison.Ordinal) || target.HookName(0).EndsWith("hook_k_input", StringComparison.Ordinal)
            || target.HookName(0).EndsWith("hook_v_input", StringComparison.Ordinal) ? model.Config.KvHeads : model.Config.NHeads;
        int positions = target.PositionAxis is null ? 1 : clean.Length;
        Assert.Equal(model.Config.NLayers * heads * positions, result.Cells.Length);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gpt_neox")]
    public void PatchingAllOfResidPreRestoresCleanAndPatchingNothingChangesNothing(string arch)
    {
        using var model = TestInputs.Fixture(arch);
        var (clean, corrupt) = TestInputs.FixturePair();
        var metric = new LogitDiff(17, 42);
        var whole = PatchTarget.ResidPre with { PositionAxis = null };
        var denoise = ActivationPatching.Sweep(model, clean, corrupt, metric, whole);
        Assert.True(Math.Abs(denoise.CleanValue - denoise.CorruptValue) > 0.1, "the corruption should move the metric");
        foreach (int l in denoise.Layers) Assert.Equal(1.0, denoise.NormalizedValue(l), 1e-5);
        var noise = ActivationPatching.Sweep(model, clean, corrupt, metric, whole, new PatchOptions { Noising = true });
        foreach (int l in noise.Layers) Assert.Equal(0.0, noise.NormalizedValue(l), 1e-5);

        // Nothing patched: the corrupt run itself.
        Assert.Equal(denoise.CorruptValue, ActivationPatching.Run(model, corrupt, metric), 1e-5);
        // Position 0 holds the same token in both runs, so its residual stream is identical: patching it is patching nothing.
        var byPosition = ActivationPatching.ResidPre(model, clean, corrupt, metric);
        foreach (int l in byPosition.Layers)
        {
            Assert.Equal(0.0, byPosition.NormalizedValue(l, -1, 0), 1e-5);
            Assert.Equal(0.0, byPosition.NormalizedValue(l, -1, 2), 1e-5); // before the first corrupted position (3)
        }
    }

    [Fact]
    public void LastPositionLogitsGiveTheSameSweep()
    {
        using var model = TestInputs.Fixture("gpt2");
        var (clean, corrupt) = TestInputs.FixturePair();
        var metric = new LogitDiff(17, 42);
        var full = ActivationPatching.AttnOut(model, clean, corrupt, metric);
        var last = ActivationPatching.AttnOut(model, clean, corrupt, metric, new PatchOptions { LastPositionLogitsOnly = true });
        for (int i = 0; i < full.Values.Length; i++) Assert.Equal(full.Values[i], last.Values[i], 1e-4);
    }

    [Fact]
    public void GridsAndLabelsFollowTheCellOrder()
    {
        using var model = TestInputs.Fixture("gpt2");
        var (clean, corrupt) = TestInputs.FixturePair(1);
        var r = ActivationPatching.HeadOutByPosition(model, clean, corrupt, new LogitDiff(17, 42));
        var grid = r.Grid(r.Values);
        Assert.Equal(3 * 4, grid.Length);
        Assert.Equal(12, grid[0].Length);
        Assert.Equal(r.Value(1, 2, 5), grid[1 * 4 + 2][5]);
        Assert.Equal("L1H2", r.RowLabels()[6]);
        Assert.Equal("5: x", r.ColumnLabels(Enumerable.Repeat("x", 12).ToArray())[5]);
        Assert.Equal("layer × head", r.RowAxis);
    }

    [Fact]
    public void BadInputsAreClearErrors()
    {
        using var model = TestInputs.Fixture("gpt2");
        var (clean, corrupt) = TestInputs.FixturePair(1);
        var metric = new LogitDiff(17, 42);
        var shorter = TokenBatch.Single(TestInputs.ReferenceIds[0][..10]);
        var e = Assert.Throws<InputError>(() => ActivationPatching.ResidPre(model, clean, shorter, metric));
        Assert.Contains("[1, 12]", e.Message);
        Assert.Contains("[1, 10]", e.Message);

        e = Assert.Throws<InputError>(() => ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.Custom("blocks.{layer}.hook_nope")));
        Assert.Contains("blocks.0.hook_nope", e.Message);
        Assert.Contains("blocks.0.hook_resid_pre", e.Message); // lists what exists
        Assert.Throws<InputError>(() => PatchTarget.Custom("blocks.0.hook_resid_pre"));
        e = Assert.Throws<InputError>(() => PatchTarget.Parse("resid_post_typo"));
        Assert.Contains("resid_pre", e.Message);

        var range = Assert.Throws<InputError>(() => ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.ResidPre with { Layers = [0, 3] }));
        Assert.Contains("layer 3", range.Message);
        range = Assert.Throws<InputError>(() => ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.HeadOut with { Heads = [4] }));
        Assert.Contains("head 4", range.Message);
        range = Assert.Throws<InputError>(() => ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.ResidPre with { Positions = [12] }));
        Assert.Contains("position 12", range.Message);
        e = Assert.Throws<InputError>(() => ActivationPatching.Sweep(model, clean, corrupt, metric, PatchTarget.Custom("blocks.{layer}.hook_resid_pre", headAxis: 3)));
        Assert.Contains("head axis 3", e.Message);
        Assert.Throws<InputError>(() => ActivationPatching.Run(model, corrupt, metric, new Patch("blocks.9.hook_resid_pre", Tensor.Zeros(1, 12, 64))));
    }
}
