using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>
/// A metric that names the positions it reads lets the backward pass take the unembedding's backward at those rows
/// only; the gradients must be those of the full product.
/// </summary>
public class PositionedBackwardTests
{
    /// <summary>The same metric, but claiming it may read any position (the full unembedding backward).</summary>
    sealed class AnyPosition(IMetric inner) : IMetric
    {
        public string Name => inner.Name;
        public double Value(Tensor logits) => inner.Value(logits);
        public Tensor Gradient(Tensor logits) => inner.Gradient(logits);
    }

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var arch in new[] { "gpt2", "gemma2" })
            foreach (var metric in new[] { "logit_diff_last", "logit_diff_middle", "log_prob", "span_loss" })
                data.Add(arch, metric);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GradientsEqualTheFullUnembeddingBackward(string arch, string metricName)
    {
        using var reference = new ReferenceFixture(arch);
        using var model = ModelLoader.LoadFolder(reference.Folder);
        var tokens = reference.Tokens;
        int a = reference.MetricTokens[0], w = reference.MetricTokens[1];
        IMetric metric = metricName switch
        {
            "logit_diff_last" => new LogitDiff(a, w),
            "logit_diff_middle" => new LogitDiff(a, w, position: tokens.Length / 2),
            "log_prob" => new LogProb(a, position: -2),
            _ => new SpanLoss(tokens, tokens.Length - 3, tokens.Length - 1),
        };
        Assert.NotNull(metric.PositionsRead(tokens.Length));

        var rows = model.RunWithGradients(tokens, metric, "hook_embed,blocks.*.hook_resid_pre,ln_final.hook_normalized");
        var full = model.RunWithGradients(tokens, new AnyPosition(metric), "hook_embed,blocks.*.hook_resid_pre,ln_final.hook_normalized");

        Assert.Equal(full.Metric, rows.Metric);
        foreach (var name in full.Gradients.Names)
        {
            var expected = full.Gradients[name].Span;
            var actual = rows.Gradients[name].Span;
            float scale = 0, worst = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                scale = MathF.Max(scale, MathF.Abs(expected[i]));
                worst = MathF.Max(worst, MathF.Abs(expected[i] - actual[i]));
            }
            Assert.True(scale > 0, $"{name}: the gradient is zero, so the comparison says nothing");
            Assert.True(worst <= 1e-6f * scale, $"{arch} {metric.Name} {name}: max |Δ| {worst:G3} of max |g| {scale:G3}");
        }
    }
}
