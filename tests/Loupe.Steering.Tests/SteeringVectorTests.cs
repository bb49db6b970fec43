using System.Numerics.Tensors;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Tensor = Loupe.Tensors.Tensor;

namespace Loupe.Steering.Tests;

/// <summary>Activation addition and projection-out on the tiny llama fixture: exact effects, positions, generation.</summary>
public class SteeringVectorTests
{
    static HookedTransformer Model => TestModels.Llama;
    const int D = 64;

    static void Close(double expected, double actual, double tolerance = 1e-5) =>
        Assert.True(Math.Abs(expected - actual) <= tolerance * (1 + Math.Abs(expected)), $"expected {expected}, got {actual}");

    static float[] Row(Tensor t, int b, int pos) => t.Span.Slice((b * t.Dim(1) + pos) * t.Dim(2), t.Dim(2)).ToArray();

    [Fact]
    public void AddingAVectorShiftsTheNextBlocksInputByExactlyCoeffTimesV()
    {
        var tokens = TokenBatch.FromRows([TestModels.Tokens(9, 1), TestModels.Tokens(9, 2)]);
        var v = TestModels.RandomVector(D, 7);
        const float c = 2.5f;
        string next = HookNames.ResidPre(2);
        var plain = Model.RunWithCache(tokens, next).Cache[next];
        var options = ActivationEdits.Options(Model, new SteeringVector(HookNames.ResidPost(1), v, c));
        var steered = Model.RunWithCache(tokens, next, options).Cache[next];
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < 9; t++)
            {
                float[] before = Row(plain, b, t), after = Row(steered, b, t);
                for (int j = 0; j < D; j++) Close(before[j] + c * v[j], after[j]);
            }
    }

    [Fact]
    public void SteeringTheMlpInputShiftsWhatTheMlpReadsAndNotTheNormalizedValueBeforeIt()
    {
        // blocks.L.mlp.hook_in is d_model wide and comes after ln2's weight: ln2.hook_normalized (x/σ, before it) is untouched.
        Assert.Equal((D, "d_model"), ActivationEdits.HookWidth(Model.Config, HookNames.MlpIn(1)));
        var tokens = TokenBatch.Single(TestModels.Tokens(6, 2));
        var v = TestModels.RandomVector(D, 12);
        string hooks = $"{HookNames.MlpIn(1)},{HookNames.NormNormalized(1, "ln2")}";
        var plain = Model.RunWithCache(tokens, hooks).Cache;
        var steered = Model.RunWithCache(tokens, hooks, ActivationEdits.Options(Model, new SteeringVector(HookNames.MlpIn(1), v, 1f))).Cache;
        Assert.Equal(plain[HookNames.NormNormalized(1, "ln2")].Span.ToArray(), steered[HookNames.NormNormalized(1, "ln2")].Span.ToArray());
        for (int t = 0; t < 6; t++)
        {
            float[] before = Row(plain[HookNames.MlpIn(1)], 0, t), after = Row(steered[HookNames.MlpIn(1)], 0, t);
            for (int j = 0; j < D; j++) Close(before[j] + v[j], after[j]);
        }
    }

    [Fact]
    public void FromPositionLeavesEarlierPositionsAlone()
    {
        var tokens = TokenBatch.Single(TestModels.Tokens(8, 3));
        var v = TestModels.RandomVector(D, 8);
        string hook = HookNames.ResidPost(0), next = HookNames.ResidPre(1);
        var plain = Model.RunWithCache(tokens, next).Cache[next];
        var options = ActivationEdits.Options(Model, new SteeringVector(hook, v, 1f, SteeringPositions.From(5)));
        var steered = Model.RunWithCache(tokens, next, options).Cache[next];
        for (int t = 0; t < 8; t++)
            for (int j = 0; j < D; j++)
                Close(Row(plain, 0, t)[j] + (t >= 5 ? v[j] : 0f), Row(steered, 0, t)[j]);
    }

    [Fact]
    public void CoefficientZeroIsTheIdentity()
    {
        var tokens = TokenBatch.Single(TestModels.Tokens(6, 4));
        var plain = Model.Run(tokens).Logits.Span.ToArray();
        var zero = Model.Run(tokens, ActivationEdits.Options(Model, new SteeringVector(HookNames.ResidPost(1), TestModels.RandomVector(D, 9), 0f))).Logits.Span.ToArray();
        Assert.Equal(plain, zero);
    }

    [Fact]
    public void ProjectOutLeavesNoComponentAlongTheDirectionAndKeepsTheRest()
    {
        var tokens = TokenBatch.FromRows([TestModels.Tokens(7, 5), TestModels.Tokens(7, 6)]);
        var v = TestModels.RandomVector(D, 10, 3f);
        var unit = v.Select(x => x / TensorPrimitives.Norm(v)).ToArray();
        string hook = HookNames.ResidPost(1), next = HookNames.ResidPre(2);
        var plain = Model.RunWithCache(tokens, next).Cache[next];
        var removed = Model.RunWithCache(tokens, next, ActivationEdits.Options(Model, new ProjectOut(hook, v))).Cache[next];
        var halved = Model.RunWithCache(tokens, next, ActivationEdits.Options(Model, new ProjectOut(hook, v, 0.5f))).Cache[next];
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < 7; t++)
            {
                float[] x = Row(plain, b, t), y = Row(removed, b, t), h = Row(halved, b, t);
                float along = TensorPrimitives.Dot(x, unit);
                Assert.True(MathF.Abs(along) > 1e-2f, "the test needs a component to remove");
                Assert.True(MathF.Abs(TensorPrimitives.Dot(y, unit)) < 1e-5f * TensorPrimitives.Norm(x), $"component left at [{b}, {t}]: {TensorPrimitives.Dot(y, unit)}");
                Close(along / 2, TensorPrimitives.Dot(h, unit), 1e-4);
                for (int j = 0; j < D; j++) Close(x[j] - along * unit[j], y[j]); // the orthogonal part is untouched
            }
    }

    [Fact]
    public void EditsDoNotWriteIntoTheActivationTheyReceive()
    {
        // resid_post of block 0 is also block 1's resid_pre: an in-place edit at resid_pre would corrupt the cached resid_post.
        var tokens = TokenBatch.Single(TestModels.Tokens(5, 11));
        string post = HookNames.ResidPost(0);
        var plain = Model.RunWithCache(tokens, post).Cache[post].Span.ToArray();
        var options = ActivationEdits.Options(Model, new SteeringVector(HookNames.ResidPre(1), TestModels.RandomVector(D, 12), 4f));
        var cached = Model.RunWithCache(tokens, post, options).Cache[post].Span.ToArray();
        Assert.Equal(plain, cached);
    }

    [Fact]
    public void SteeringIsActiveOnEveryGenerationStepAndMatchesAFullSteeredForward()
    {
        var prompt = TestModels.Tokens(6, 13);
        var edit = new RecordingEdit(new SteeringVector(HookNames.ResidPost(1), TestModels.RandomVector(D, 14), 6f));
        var greedy = new GenerationOptions(MaxNewTokens: 10, StopAtEos: false);
        var plain = Model.Generate([prompt], greedy)[0];
        var steered = Model.Generate([prompt], greedy, ActivationEdits.Options(Model, edit))[0];
        Assert.NotEqual(plain, steered);
        Assert.Equal(Enumerable.Range(0, 10), edit.Steps); // the prompt pass (0) and every KV-cache step
        Assert.All(edit.Shapes.Skip(1), shape => Assert.Equal("[1, 1, 64]", shape));

        // Each steered token is the argmax of a steered forward over the whole sequence: the KV-cache steps were steered like the prompt.
        var full = prompt.Concat(steered).ToArray();
        var logits = Model.Run(full, ActivationEdits.Options(Model, edit.Inner)).Logits;
        int V = Model.Config.VocabOut;
        for (int i = 0; i < steered.Length; i++)
            Assert.Equal(steered[i], TensorPrimitives.IndexOfMax(logits.Span.Slice((prompt.Length - 1 + i) * V, V)));
    }

    [Fact]
    public void NewTokensPositionsSkipThePromptPass()
    {
        var prompt = TestModels.Tokens(6, 15);
        var vector = new SteeringVector(HookNames.ResidPost(1), TestModels.RandomVector(D, 16), 6f, SteeringPositions.NewTokens);
        var edit = new RecordingEdit(vector);
        var greedy = new GenerationOptions(MaxNewTokens: 6, StopAtEos: false);
        var plain = Model.Generate([prompt], greedy)[0];
        var steered = Model.Generate([prompt], greedy, ActivationEdits.Options(Model, edit))[0];
        Assert.Equal(plain[0], steered[0]); // the first token comes from the unedited prompt pass
        Assert.Equal([false, true, true, true, true, true], edit.Changed);
        // A plain forward is not edited at all.
        var tokens = TokenBatch.Single(prompt);
        Assert.Equal(Model.Run(tokens).Logits.Span.ToArray(), Model.Run(tokens, ActivationEdits.Options(Model, vector)).Logits.Span.ToArray());
    }

    [Fact]
    public void MlpPostAndPerHeadHooksTakeTheirOwnWidths()
    {
        var tokens = TokenBatch.Single(TestModels.Tokens(5, 17));
        // mlp.hook_post is d_mlp wide.
        var mlp = TestModels.RandomVector(Model.Config.DMlp, 18);
        Model.Run(tokens, ActivationEdits.Options(Model, new SteeringVector(HookNames.MlpPost(0), mlp)));
        // attn.hook_z is [batch, pos, head_index, d_head]: the vector is added to every head.
        string z = HookNames.Z(0);
        var v = TestModels.RandomVector(Model.Config.DHead, 19);
        var plain = Model.RunWithCache(tokens, z).Cache[z];
        var steered = Model.RunWithCache(tokens, z, ActivationEdits.Options(Model, new SteeringVector(z, v, 2f))).Cache[z];
        for (int i = 0; i < plain.Length; i++) Close(plain.Span[i] + 2f * v[i % v.Length], steered.Span[i]);
    }

    /// <summary>Wraps an edit and records the generation step and shape of every call, and whether it changed anything.</summary>
    sealed class RecordingEdit(IActivationEdit inner) : IActivationEdit
    {
        public IActivationEdit Inner => inner;
        public List<int> Steps { get; } = [];
        public List<string> Shapes { get; } = [];
        public List<bool> Changed { get; } = [];
        public string HookName => inner.HookName;
        public int? Width => inner.Width;

        public Tensor Apply(Tensor activation, HookContext context)
        {
            Steps.Add(context.GenerationStep);
            Shapes.Add(activation.ShapeString);
            var result = inner.Apply(activation, context);
            Changed.Add(!ReferenceEquals(result, activation));
            return result;
        }
    }
}
