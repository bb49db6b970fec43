using System.Text.Json;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Models.Processing;
using Loupe.Models.Verification;
using Loupe.Testing;

namespace Loupe.Models.Tests.Loading;

/// <summary>
/// TransformerLens models as its runs and NeelNanda's toy-model repositories leave them: config.json (HookedTransformerConfig
/// fields, or a NeelNanda training config) and a torch.save state dict (model_final.pth, or the folder's one .pth).
/// tests/data/transformer_lens/make_models.py wrote them with expected.json: logits from TransformerLens's forward pass
/// transcribed into Python (float64), and the gradient of a logit difference at hook_embed and hook_pos_embed by central
/// differences of that transcription.
/// </summary>
public sealed class TransformerLensCheckpointTests
{
    static string Folder(string name) => SharedData.TestData(Path.Combine("transformer_lens", name));

    sealed record Expected(int[] Tokens, double[] Logits, int[] MetricTokens, double[] GradEmbed, double[] GradPos);

    static Expected ExpectedOf(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedData.TestData("transformer_lens/expected.json")));
        var e = doc.RootElement.GetProperty(name);
        double[] Flat(string field) => [.. e.GetProperty(field).EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => v.GetDouble())];
        int[] Ints(string field) => [.. e.GetProperty(field).EnumerateArray().Select(v => v.GetInt32())];
        return new Expected(Ints("tokens"), Flat("logits"), Ints("metric_tokens"), Flat("grad.hook_embed"), Flat("grad.hook_pos_embed"));
    }

    static void AssertClose(double[] want, ReadOnlySpan<float> got, double relative, string what)
    {
        Assert.Equal(want.Length, got.Length);
        double scale = want.Max(Math.Abs);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(got[i] - want[i]) <= relative * scale, $"{what}[{i}]: {got[i]} vs {want[i]} (scale {scale:G4})");
    }

    public static TheoryData<string> Models => new() { "shortformer-attn-only-2l", "gelu-2l-lnpre", "gelu-1l-final-rms", "solu-2l" };

    [Theory, MemberData(nameof(Models))]
    public void Logits_and_gradients_are_transformer_lens_ones(string name)
    {
        var want = ExpectedOf(name);
        using var model = ModelLoader.LoadFolder(Folder(name));
        Assert.Equal("transformer_lens", model.Config.Architecture);
        var logits = model.Run(want.Tokens).Logits;
        AssertClose(want.Logits, logits.Span, 1e-5, $"{name} logits");

        var result = model.RunWithGradients(TokenBatch.Single(want.Tokens), new LogitDiff(want.MetricTokens[0], want.MetricTokens[1]),
            $"{HookNames.Embed},{HookNames.PosEmbed}");
        AssertClose(want.GradEmbed, result.Gradients[HookNames.Embed].Span, 1e-4, $"{name} d/d hook_embed");
        AssertClose(want.GradPos, result.Gradients[HookNames.PosEmbed].Span, 1e-4, $"{name} d/d hook_pos_embed");

        // loupe verify's float64 reference runs the same model
        var reference = Float64Reference.Run(model, TokenBatch.Single(want.Tokens), record: false);
        // (to 1e-8: the reference takes the norms' ε as stored, in float32)
        for (int i = 0; i < want.Logits.Length; i++) Assert.Equal(want.Logits[i], reference.Logits[i], 1e-8);
    }

    [Fact]
    public void A_shortformer_model_keeps_its_positions_out_of_the_stream()
    {
        var want = ExpectedOf("shortformer-attn-only-2l");
        using var model = ModelLoader.LoadFolder(Folder("shortformer-attn-only-2l"));
        Assert.True(model.Config.ShortformerPositions);
        Assert.Null(model.Anatomy(0).Ln2);
        var run = model.RunWithCache(TokenBatch.Single(want.Tokens), "hook_embed,hook_pos_embed,blocks.0.hook_resid_pre");
        Assert.Equal(run.Cache[HookNames.Embed].Span.ToArray(), run.Cache[HookNames.ResidPre(0)].Span.ToArray());

        // Greedy generation with the key/value cache gives what full forwards give, step by step.
        int[] prompt = want.Tokens[..4];
        var generated = model.Generate([prompt], new Loupe.Models.Generation.GenerationOptions(4, StopAtEos: false))[0];
        var sequence = prompt.ToList();
        foreach (int token in generated[prompt.Length..])
        {
            var full = model.Run([.. sequence]).Logits.Span;
            int V = model.Config.VocabOut;
            Assert.Equal(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(full.Slice((sequence.Count - 1) * V, V)), token);
            sequence.Add(token);
        }

        // Weight processing: fold_ln would move ln1 past the positions (refused, naming why); centring the writing weights is
        // exact because the positions, which never join the stream, are left as they are.
        var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(Folder("shortformer-attn-only-2l"), processing: WeightProcessing.Parse("fold_ln")));
        Assert.Contains("shortformer", e.Message);
        using var centred = ModelLoader.LoadFolder(Folder("shortformer-attn-only-2l"), processing: WeightProcessing.Parse("center_writing_weights,fold_value_biases"));
        AssertClose(want.Logits, centred.Run(want.Tokens).Logits.Span, 1e-5, "processed logits");
    }

    [Theory]
    [InlineData("blocks.1.hook_q_input")]                       // split pass: queries per head, keys and values from the stream
    [InlineData("blocks.0.hook_k_input,blocks.1.hook_attn_in")] // keys per head; every input a copy of hook_attn_in
    [InlineData("blocks.0.hook_v_input")]                       // values per head: the positions still reach queries and keys
    public void Per_head_input_hooks_split_the_pass_and_keep_the_positions_on_queries_and_keys(string perHead)
    {
        var want = ExpectedOf("shortformer-attn-only-2l");
        using var model = ModelLoader.LoadFolder(Folder("shortformer-attn-only-2l"));
        var result = model.RunWithGradients(TokenBatch.Single(want.Tokens), new LogitDiff(want.MetricTokens[0], want.MetricTokens[1]),
            $"{HookNames.Embed},{HookNames.PosEmbed},{perHead}");
        AssertClose(want.GradEmbed, result.Gradients[HookNames.Embed].Span, 1e-4, "d/d hook_embed");
        AssertClose(want.GradPos, result.Gradients[HookNames.PosEmbed].Span, 1e-4, "d/d hook_pos_embed");
        // an identity edit there splits the forward pass too: same logits
        var edited = model.Run(TokenBatch.Single(want.Tokens), new RunOptions().AddHook(perHead.Split(',')[0], (t, _) => t));
        AssertClose(want.Logits, edited.Logits.Span, 1e-5, "logits through the split pass");
    }

    [Fact]
    public void A_solu_model_has_transformer_lens_mlp_hooks_around_its_own_layer_norm()
    {
        var want = ExpectedOf("solu-2l");
        using var model = ModelLoader.LoadFolder(Folder("solu-2l"));
        var names = model.HookPointNames.ToList();
        string[] order = ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_mid", "blocks.1.mlp.ln.hook_scale", "blocks.1.mlp.ln.hook_normalized", "blocks.1.mlp.hook_post"];
        Assert.All(order, n => Assert.Contains(n, names));
        Assert.Equal(order, names.Where(order.Contains));
        var run = model.RunWithCache(TokenBatch.Single(want.Tokens), "blocks.1.mlp.*");
        var mid = run.Cache["blocks.1.mlp.hook_mid"].Span;
        var pre = run.Cache["blocks.1.mlp.hook_pre"].Span;
        Assert.Equal([1, want.Tokens.Length, 32], run.Cache["blocks.1.mlp.hook_post"].Shape.ToArray());
        // hook_mid = pre ⊙ softmax(pre) over d_mlp, at the last position
        int last = (want.Tokens.Length - 1) * 32;
        double max = double.NegativeInfinity, sum = 0;
        for (int i = 0; i < 32; i++) max = Math.Max(max, pre[last + i]);
        for (int i = 0; i < 32; i++) sum += Math.Exp(pre[last + i] - max);
        for (int i = 0; i < 32; i++) Assert.Equal(pre[last + i] * Math.Exp(pre[last + i] - max) / sum, mid[last + i], 1e-5);
        // its gradient, against finite differences through the model
        var metric = new LogitDiff(want.MetricTokens[0], want.MetricTokens[1]);
        var grad = model.RunWithGradients(TokenBatch.Single(want.Tokens), metric, "blocks.0.mlp.hook_mid").Gradients["blocks.0.mlp.hook_mid"].Span.ToArray();
        int at = 3 * 32 + 5;
        double Metric(float delta)
        {
            var options = new RunOptions().AddHook("blocks.0.mlp.hook_mid", (t, _) =>
            {
                var copy = t.ToCpu().Span.ToArray();
                copy[at] += delta;
                return Loupe.Tensors.Tensor.FromArray(copy, t.Shape.ToArray());
            });
            var l = model.Run(TokenBatch.Single(want.Tokens), options).Logits.Span;
            int V = model.Config.VocabOut, p = (want.Tokens.Length - 1) * V;
            return l[p + want.MetricTokens[0]] - l[p + want.MetricTokens[1]];
        }
        // hook_mid is small (softmax-weighted), so the LayerNorm after it curves at a small scale: a small step, a loose tolerance
        double fd = (Metric(1e-3f) - Metric(-1e-3f)) / 2e-3;
        Assert.Equal(fd, grad[at], 1e-2 * Math.Max(1, Math.Abs(fd)));
    }

    [Fact]
    public void Torch_save_files_are_picked_as_transformer_lens_picks_them()
    {
        Assert.EndsWith("model_final.pth", Loupe.Models.Families.TransformerLensModel.WeightsPath(Folder("shortformer-attn-only-2l")));
        Assert.EndsWith("model.pth", Loupe.Models.Families.TransformerLensModel.WeightsPath(Folder("gelu-2l-lnpre")));
        string dir = Directory.CreateTempSubdirectory("loupe-tl-").FullName;
        try
        {
            File.Copy(Path.Combine(Folder("gelu-2l-lnpre"), "config.json"), Path.Combine(dir, "config.json"));
            File.Copy(Path.Combine(Folder("gelu-2l-lnpre"), "model.pth"), Path.Combine(dir, "step_100.pth"));
            File.Copy(Path.Combine(Folder("gelu-2l-lnpre"), "model.pth"), Path.Combine(dir, "step_200.pth"));
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
            Assert.Contains("step_100.pth", e.Message);
            Assert.Contains("final.pth", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData("\"act_fn\": \"gelu\"", "\"act_fn\": \"solu\"", "act_fn")]
    [InlineData("\"use_local_attn\": false", "\"use_local_attn\": true", "use_local_attn")]
    [InlineData("\"positional_embedding_type\": \"standard\"", "\"positional_embedding_type\": \"rotary\"", "rotary")]
    [InlineData("\"normalization_type\": \"LNPre\"", "\"normalization_type\": \"BatchNorm\"", "normalization_type")]
    [InlineData("\"n_key_value_heads\": null", "\"n_key_value_heads\": 2", "n_key_value_heads")]
    [InlineData("\"parallel_attn_mlp\": false", "\"parallel_attn_mlp\": true", "parallel_attn_mlp")]
    public void What_this_family_does_not_run_is_refused_by_field(string from, string to, string named)
    {
        string dir = Directory.CreateTempSubdirectory("loupe-tl-").FullName;
        try
        {
            string config = File.ReadAllText(Path.Combine(Folder("gelu-2l-lnpre"), "config.json"));
            Assert.Contains(from, config);
            File.WriteAllText(Path.Combine(dir, "config.json"), config.Replace(from, to));
            File.Copy(Path.Combine(Folder("gelu-2l-lnpre"), "model.pth"), Path.Combine(dir, "model.pth"));
            var e = Assert.Throws<InputError>(() => ModelLoader.LoadFolder(dir));
            Assert.Contains(named, e.Message);
            Assert.Contains("config.json", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
