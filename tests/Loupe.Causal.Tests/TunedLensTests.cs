using Loupe.Causal.Lens;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Tensors;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Causal.Tests;

/// <summary>
/// The tuned lens: untrained it is the logit lens; its translators act before the final norm; the objective's gradient
/// against finite differences; training on the real TinyStories model beats the logit lens on held-out text; a killed
/// run resumes to the same lens bit for bit; tuned-lens's file layout read and written, bad files refused by name.
/// </summary>
public class TunedLensTests(ITestOutputHelper output)
{
    const int Answer = 17, Wrong = 42;
    const string Stories = "models/stories260K";

    static TokenBatch Tokens() => TokenBatch.FromRows(TestInputs.ReferenceIds);

    static TunedLens RandomLens(HookedTransformer model, int seed, float weightScale, float biasScale)
    {
        var random = new Random(seed);
        int d = model.Config.DModel;
        var weights = Enumerable.Range(0, model.Config.NLayers).Select(_ => Enumerable.Range(0, d * d).Select(_ => (float)(random.NextDouble() * 2 - 1) * weightScale / MathF.Sqrt(d)).ToArray()).ToArray();
        var biases = Enumerable.Range(0, model.Config.NLayers).Select(_ => Enumerable.Range(0, d).Select(_ => (float)(random.NextDouble() * 2 - 1) * biasScale).ToArray()).ToArray();
        return TunedLens.FromTranslators(weights, biases);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")] // final soft-cap
    public void An_untrained_tuned_lens_is_the_logit_lens(string arch)
    {
        using var model = TestInputs.Fixture(arch);
        var identity = TunedLens.Identity(model);
        var logit = LogitLens.Run(model, Tokens(), Answer, Wrong, position: 7, row: 1);
        var tuned = LogitLens.Run(model, Tokens(), Answer, Wrong, position: 7, row: 1, tuned: identity);
        Assert.True(tuned.Tuned);
        Assert.Equal(logit.Stages, tuned.Stages);
        var logitGrid = LogitLens.Grid(model, Tokens(), row: 1);
        var tunedGrid = LogitLens.Grid(model, Tokens(), row: 1, tuned: identity);
        for (int s = 0; s < logitGrid.Labels.Length; s++)
        {
            Assert.Equal(logitGrid.TopToken[s], tunedGrid.TopToken[s]);
            Assert.Equal(logitGrid.TopProb[s], tunedGrid.TopProb[s]);
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma2")]
    public void Translators_act_before_the_final_norm(string arch)
    {
        // W = −I and b = v send every stage's residual to v: every stage before the final one then reads the lens
        // of v alone, which the final norm and unembedding give directly.
        using var model = TestInputs.Fixture(arch);
        int d = model.Config.DModel, layers = model.Config.NLayers;
        var random = new Random(3);
        var minusIdentity = new float[d * d];
        for (int i = 0; i < d; i++) minusIdentity[i * d + i] = -1f;
        var v = Enumerable.Range(0, d).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        var lens = TunedLens.FromTranslators([.. Enumerable.Repeat(minusIdentity, layers)], [.. Enumerable.Repeat(v, layers)]);

        var expected = Logits(model, v);
        var result = LogitLens.Run(model, Tokens(), Answer, Wrong, position: 4, tuned: lens);
        double max = expected.Max(), sum = expected.Sum(z => Math.Exp(z - max));
        for (int s = 0; s < layers; s++)
        {
            var stage = result.Stages[s];
            Assert.InRange(Math.Abs(stage.AnswerLogit - expected[Answer]), 0, 1e-4 * (1 + Math.Abs(expected[Answer])));
            Assert.InRange(Math.Abs(stage.LogitDiff - (expected[Answer] - expected[Wrong])), 0, 1e-4 * (1 + Math.Abs(expected[Answer])));
            Assert.InRange(Math.Abs(stage.AnswerProb - Math.Exp(expected[Answer] - max) / sum), 0, 1e-5);
        }
        // The final stage is the model's own output, never translated.
        var logit = LogitLens.Run(model, Tokens(), Answer, Wrong, position: 4);
        Assert.Equal(logit.Stages[^1], result.Stages[^1]);
    }

    // softcap(W_U·ln_final(v) + b_U) in double, from the weights.
    static double[] Logits(HookedTransformer model, float[] v)
    {
        var norm = model.FinalNormLayer!;
        int d = v.Length, vocab = model.Config.VocabOut;
        double mean = norm.Kind == NormKind.LayerNorm ? v.Average(x => (double)x) : 0;
        double sigma = Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / d + norm.Eps);
        var w = norm.Weight.Span;
        var b = norm.Bias.Span;
        var normed = new double[d];
        for (int i = 0; i < d; i++) normed[i] = (v[i] - mean) / sigma * ((w.IsEmpty ? 1 : w[i]) + norm.WeightOffset) + (b.IsEmpty ? 0 : b[i]);
        var unembed = model.UnembedLayer;
        var wu = unembed.Weight.Span;
        var bu = unembed.Bias.Span;
        var logits = new double[vocab];
        for (int t = 0; t < vocab; t++)
        {
            double z = bu.IsEmpty ? 0 : bu[t];
            for (int i = 0; i < d; i++) z += normed[i] * (unembed.WeightIsOutIn ? wu[t * d + i] : wu[i * vocab + t]);
            float cap = model.Config.FinalLogitSoftCap;
            logits[t] = cap > 0 ? cap * Math.Tanh(z / cap) : z;
        }
        return logits;
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    public void The_gradient_matches_finite_differences(string arch)
    {
        using var model = TestInputs.Fixture(arch);
        var start = RandomLens(model, seed: 11, weightScale: 0.3f, biasScale: 0.2f);
        var tokens = Tokens();
        int tokenCount = tokens.Batch * tokens.Length, L = model.Config.NLayers, d = model.Config.DModel;
        var objective = new TunedLensObjective(model, start);
        var table = model.Backend.Zeros(objective.LossSlots);
        objective.Accumulate(tokens, table, 0, 1f / tokenCount);
        var gradW = objective.WeightGrads.Select(g => g.ToCpu().Span.ToArray()).ToArray();
        var gradB = objective.BiasGrads.Select(g => g.ToCpu().Span.ToArray()).ToArray();

        // Directional derivatives, central differences in double of the summed mean KL: along the gradient
        // itself (= ‖g‖²) and along a random direction.
        var random = new Random(5);
        var randomW = gradW.Select(g => g.Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray()).ToArray();
        var randomB = gradB.Select(g => g.Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray()).ToArray();
        double gradNorm = Math.Sqrt(gradW.Sum(a => a.Sum(x => (double)x * x)) + gradB.Sum(a => a.Sum(x => (double)x * x)));
        foreach (var (dirW, dirB, name) in new[] { (gradW, gradB, "gradient"), (randomW, randomB, "random") })
        {
            double norm = Math.Sqrt(dirW.Sum(a => a.Sum(x => (double)x * x)) + dirB.Sum(a => a.Sum(x => (double)x * x)));
            double analytic = 0;
            for (int l = 0; l < L; l++)
            {
                for (int i = 0; i < d * d; i++) analytic += (double)gradW[l][i] * dirW[l][i] / norm;
                for (int i = 0; i < d; i++) analytic += (double)gradB[l][i] * dirB[l][i] / norm;
            }
            const double h = 2e-2;
            double plus = Loss(model, Shift(start, dirW, dirB, h / norm), tokens), minus = Loss(model, Shift(start, dirW, dirB, -h / norm), tokens);
            double numeric = (plus - minus) / (2 * h);
            output.WriteLine($"{arch} along the {name}: analytic {analytic:G6}, finite differences {numeric:G6}");
            // Float sums and the third derivative over the step limit the agreement; relative to ‖g‖, the slope's natural scale.
            Assert.InRange(Math.Abs(analytic - numeric), 0, 1e-3 * Math.Abs(analytic) + 2e-4 * gradNorm);
        }
    }

    static TunedLens Shift(TunedLens lens, float[][] dirW, float[][] dirB, double step) =>
        TunedLens.FromTranslators(
            [.. Enumerable.Range(0, lens.Layers).Select(l => lens.Weight(l).ToArray().Select((w, i) => (float)(w + step * dirW[l][i])).ToArray())],
            [.. Enumerable.Range(0, lens.Layers).Select(l => lens.Bias(l).ToArray().Select((b, i) => (float)(b + step * dirB[l][i])).ToArray())]);

    // Σ over layers of the mean KL, from the objective's sums.
    static double Loss(HookedTransformer model, TunedLens lens, TokenBatch tokens)
    {
        var objective = new TunedLensObjective(model, lens);
        var table = model.Backend.Zeros(objective.LossSlots);
        objective.Accumulate(tokens, table, 0, null);
        var sums = table.ToCpu().Span;
        int L = model.Config.NLayers;
        double total = 0;
        for (int l = 0; l < L; l++) total += (double)sums[l] - sums[L];
        return total / (tokens.Batch * tokens.Length);
    }

    [Fact]
    public void Tuned_lens_params_pt_is_read_as_tuned_lens_saved_it()
    {
        // tests/data/pytorch/make_files.py writes params.pt as torch.save(layer_translators.state_dict()) and expected.json.
        string folder = SharedData.TestData("pytorch/tuned-lens");
        using var expected = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(SharedData.TestData("pytorch/expected.json")));
        var want = expected.RootElement.GetProperty("tuned-lens/params.pt");
        foreach (var path in new[] { folder, Path.Combine(folder, "params.pt") })
        {
            var lens = TunedLens.Load(path);
            Assert.Equal(4, lens.DModel);
            Assert.Equal(2, lens.Layers);
            Assert.Equal("stories-d4", lens.BaseModel);
            for (int l = 0; l < 2; l++)
            {
                var w = want.GetProperty($"{l}.weight").GetProperty("values").EnumerateArray().Select(v => v.GetDouble()).ToArray();
                var b = want.GetProperty($"{l}.bias").GetProperty("values").EnumerateArray().Select(v => v.GetDouble()).ToArray();
                for (int i = 0; i < 16; i++) Assert.True(Math.Abs(lens.Weight(l)[i] - w[i]) <= 1e-7, $"{l}.weight[{i}]");
                for (int i = 0; i < 4; i++) Assert.True(Math.Abs(lens.Bias(l)[i] - b[i]) <= 1e-7, $"{l}.bias[{i}]");
            }
        }
    }

    [Fact]
    public void The_loss_is_the_mean_KL_from_the_models_distribution()
    {
        // Independent of the objective's sums: KL(p ‖ q) per token in double from the model's logits and the lens's logits.
        using var model = TestInputs.Fixture("llama");
        var lens = RandomLens(model, seed: 2, weightScale: 0.5f, biasScale: 0.3f);
        var tokens = TokenBatch.FromRows([TestInputs.ReferenceIds[0]]);
        var run = model.Run(tokens, new RunOptions { CacheFilter = name => name.EndsWith("hook_resid_pre", StringComparison.Ordinal) });
        int T = tokens.Length, V = model.Config.VocabOut, d = model.Config.DModel;
        var logits = run.Logits.ToCpu().Span;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            double kl = 0;
            var resid = run.Cache[HookNames.ResidPre(l)].ToCpu().Span;
            for (int t = 0; t < T; t++)
            {
                var q = Logits(model, lens.Translate(resid.Slice(t * d, d), l));
                var p = logits.Slice(t * V, V).ToArray().Select(x => (double)x).ToArray();
                double pm = p.Max(), ps = Math.Log(p.Sum(x => Math.Exp(x - pm))) + pm;
                double qm = q.Max(), qs = Math.Log(q.Sum(x => Math.Exp(x - qm))) + qm;
                for (int v = 0; v < V; v++) kl += Math.Exp(p[v] - ps) * ((p[v] - ps) - (q[v] - qs));
            }
            kl /= T;
            // The lens's own KL to the final stage, per position, averages to the same number.
            double perPosition = Enumerable.Range(0, T).Average(t => LogitLens.Run(model, tokens, 17, position: t, tuned: lens).Stages[l].KlToFinal);
            Assert.InRange(Math.Abs(perPosition - kl), 0, 1e-4 * (1 + kl));
            var objective = new TunedLensObjective(model, lens);
            var table = model.Backend.Zeros(objective.LossSlots);
            objective.Accumulate(tokens, table, 0, null);
            var sums = table.ToCpu().Span;
            double actual = ((double)sums[l] - sums[model.Config.NLayers]) / T;
            Assert.InRange(Math.Abs(actual - kl), 0, 1e-4 * (1 + kl));
        }
    }

    // Story text written for these tests: the training half and a held-out half.
    const string Train =
        "Once upon a time, there was a little girl named Lily. She loved to play in the park with her red ball. One day, she saw a big dog " +
        "under a tree. The dog was sad because it was lost. Lily said, \"Do not be sad, dog. I will help you find your home.\" They walked " +
        "and walked until they found a small house with a blue door. A kind old man opened the door and smiled. \"Thank you for bringing my " +
        "dog home,\" he said. Lily was happy. She went back to the park and played with her ball until the sun went down. " +
        "Once there was a boy named Tim. Tim had a toy car that he liked very much. He took the car everywhere he went. One day, Tim went " +
        "to the beach with his mom. He played with his car in the sand. A big wave came and took the car away. Tim was very sad and he " +
        "cried. His mom gave him a hug and said, \"We can look for it together.\" They looked and looked, and then Tim saw his car next to " +
        "a rock. He was so happy that he jumped up and down. From that day on, Tim was careful with his toys. " +
        "Sue and Ben were friends. They liked to bake cookies with their grandma. Grandma gave them flour, sugar and eggs. Sue mixed the " +
        "flour and Ben added the eggs. They put the cookies in the oven and waited. The kitchen smelled warm and sweet. When the cookies " +
        "were ready, they shared them with their friends at school. Everyone said the cookies were the best they ever had.";

    const string HeldOut =
        "One sunny day, a little bird named Max flew over the hill. He saw a girl who was crying near a big tree. Max asked, \"Why are you " +
        "sad?\" The girl said she lost her kite in the wind. Max flew high into the sky and found the kite stuck in a tall tree. He pulled " +
        "it with his beak and brought it back to the girl. She smiled and said thank you. They became good friends and played every day.";

    static int[][] Contexts(HookedTransformer model, string text, int size)
    {
        var ids = model.Tokenizer!.Encode(text, addSpecialTokens: false);
        int bos = model.Config.BosTokenId ?? 1;
        return [.. Enumerable.Range(0, ids.Length / (size - 1)).Select(i => new[] { bos }.Concat(ids.Skip(i * (size - 1)).Take(size - 1)).ToArray())];
    }

    [RequiresSharedFact(Stories)]
    public void Training_on_TinyStories_beats_the_logit_lens_on_held_out_text()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require(Stories));
        var train = Contexts(model, Train, 32);
        var heldOut = Contexts(model, HeldOut, 32);
        var options = new TunedLensTrainingOptions { Steps = 60, TokensPerStep = 4 * 32, BatchContexts = 4, LearningRateScale = 1.0 };
        var result = TunedLensTraining.Train(model, train, options);
        var first = result.History[0].Kl;
        var last = result.History[^1].Kl;
        output.WriteLine($"{train.Length} training contexts, {heldOut.Length} held out; train KL per layer step 0: {string.Join(", ", first.Select(x => x.ToString("F3")))}; step {options.Steps - 1}: {string.Join(", ", last.Select(x => x.ToString("F3")))}");
        var evaluation = TunedLensEvaluation.Run(model, result.Lens, heldOut);
        foreach (var layer in evaluation.Layers)
            output.WriteLine($"{layer.Label}: held-out KL logit lens {layer.LogitLensKl:F3} → tuned {layer.TunedLensKl:F3}; top-1 agreement {layer.LogitLensTop1:P0} → {layer.TunedLensTop1:P0}");
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            Assert.True(last[l] < first[l], $"layer {l}: training KL {first[l]} → {last[l]}");
            var layer = evaluation.Layers[l];
            Assert.True(layer.TunedLensKl < layer.LogitLensKl, $"{layer.Label}: held-out KL tuned {layer.TunedLensKl} ≥ logit lens {layer.LogitLensKl}");
        }
        // The logit lens's KL at step 0 is the untrained lens's: the evaluation of the identity reads the same number.
        var identity = TunedLensEvaluation.Run(model, TunedLens.Identity(model), train.Take(4).ToArray(), batchContexts: 4);
        for (int l = 0; l < model.Config.NLayers; l++)
            Assert.InRange(Math.Abs(identity.Layers[l].TunedLensKl - first[l]), 0, 1e-4 * (1 + first[l]));
    }

    [Fact]
    public void The_update_is_torchs_SGD_with_Nesterov_momentum_and_weight_decay()
    {
        // torch.optim.SGD(nesterov=True, dampening=0): g ← g + λθ; buf ← μ·buf + g (buf = g at the first step); θ ← θ − lr·(g + μ·buf),
        // worked by hand for θ = 1, g = 0.5 twice, λ = 0.1, μ = 0.9, lr = 0.1, and a clip factor of 0.5 on a gradient of 1.
        var be = Loupe.Tensors.Backends.CpuBackend.Instance;
        var options = new TunedLensTrainingOptions { WeightDecay = 0.1, Momentum = 0.9 };
        var p = Tensor.FromArray([1f], 1);
        var buf = Tensor.FromArray([0f], 1);
        var scratch = Tensor.FromArray([0f], 1);
        var noClip = Tensor.FromArray([1f], 1);
        TunedLensTraining.SgdNesterov(be, p, Tensor.FromArray([0.5f], 1), buf, scratch, noClip, options, 0.1f);
        Assert.Equal(0.886, p.Span[0], 1e-6);
        Assert.Equal(0.6, buf.Span[0], 1e-6);
        TunedLensTraining.SgdNesterov(be, p, Tensor.FromArray([0.5f], 1), buf, scratch, noClip, options, 0.1f);
        Assert.Equal(1.1286, buf.Span[0], 1e-6);
        Assert.Equal(0.725566, p.Span[0], 1e-6);
        var q = Tensor.FromArray([1f], 1);
        TunedLensTraining.SgdNesterov(be, q, Tensor.FromArray([1f], 1), Tensor.FromArray([0f], 1), scratch, Tensor.FromArray([0.5f], 1), options, 0.1f);
        Assert.Equal(0.886, q.Span[0], 1e-6); // the clipped gradient 0.5: the first step again
        // The rate: scale·(1 − μ), decayed linearly to 0 (tuned-lens: no warm-up for SGD).
        var schedule = new TunedLensTrainingOptions { Steps = 4, LearningRateScale = 2, Momentum = 0.9 };
        Assert.Equal([0.2, 0.15, 0.1, 0.05], Enumerable.Range(0, 4).Select(s => Math.Round(schedule.LearningRate(s), 12)));
    }

    [Fact]
    public void A_killed_run_resumes_to_the_same_lens_bit_for_bit()
    {
        using var model = TestInputs.Fixture("gpt2");
        var contexts = TestInputs.ReferenceIds.Concat(TestInputs.ReferenceIds.Select(r => r.Reverse().ToArray())).ToArray();
        var options = new TunedLensTrainingOptions { Steps = 6, TokensPerStep = 24, BatchContexts = 1, CheckpointEvery = 2 };
        var whole = TunedLensTraining.Train(model, contexts, options);

        string dir = Directory.CreateTempSubdirectory("loupe-tuned-").FullName;
        try
        {
            using var kill = new CancellationTokenSource();
            Assert.Throws<OperationCanceledException>(() => TunedLensTraining.Train(model, contexts, options, dir, resume: false,
                progress: s => { if (s.Step == 3) kill.Cancel(); }, cancel: kill.Token));
            Assert.True(File.Exists(Path.Combine(dir, TunedLensTraining.CheckpointFile)));
            var resumed = TunedLensTraining.Train(model, contexts, options, dir, resume: true);
            Assert.Equal(4, resumed.ResumedFrom);
            for (int l = 0; l < whole.Lens.Layers; l++)
            {
                Assert.True(whole.Lens.Weight(l).SequenceEqual(resumed.Lens.Weight(l)), $"layer {l} weight differs after resuming");
                Assert.True(whole.Lens.Bias(l).SequenceEqual(resumed.Lens.Bias(l)), $"layer {l} bias differs after resuming");
            }
            Assert.Equal(whole.History.Select(h => h.Kl), resumed.History.Select(h => h.Kl));

            // Starting afresh over the checkpoint: refused, not overwritten.
            Assert.Contains("pass --resume", Assert.Throws<InputError>(() => TunedLensTraining.Train(model, contexts, options, dir)).Message);
            // Other options or other contexts: refused by name.
            var error = Assert.Throws<InputError>(() => TunedLensTraining.Train(model, contexts, options with { WeightDecay = 0 }, dir, resume: true));
            Assert.Contains("weight_decay=0", error.Message);
            error = Assert.Throws<InputError>(() => TunedLensTraining.Train(model, contexts.Reverse().ToArray(), options, dir, resume: true));
            Assert.Contains("other contexts", error.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void A_lens_remembers_the_weight_processing_it_was_trained_with()
    {
        using var plain = TestInputs.Fixture("gpt2");
        using var processed = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")), processing: Loupe.Models.Processing.WeightProcessing.TransformerLensDefaults);
        var options = new TunedLensTrainingOptions { Steps = 2, TokensPerStep = 12, CheckpointEvery = 1 };
        string dir = Directory.CreateTempSubdirectory("loupe-tuned-").FullName;
        try
        {
            var result = TunedLensTraining.Train(processed, TestInputs.ReferenceIds, options, dir);
            Assert.Equal(processed.Processing.Describe(), result.Lens.WeightProcessing);
            result.Lens.Save(dir);
            var back = TunedLens.Load(dir);
            Assert.Equal(processed.Processing.Describe(), back.WeightProcessing);
            Assert.Null(back.ProcessingWarning(processed));
            Assert.Contains($"--process {processed.Processing.Describe()}", back.ProcessingWarning(plain));
            // A lens whose config does not say (tuned-lens's own): no warning.
            Assert.Null(TunedLens.FromTranslators([back.Weight(0).ToArray()], [back.Bias(0).ToArray()]).ProcessingWarning(plain));
            // Resuming the processed run's checkpoint on the unprocessed model: refused.
            var error = Assert.Throws<InputError>(() => TunedLensTraining.Train(plain, TestInputs.ReferenceIds, options with { Steps = 2 }, dir, resume: true));
            Assert.Contains("weight processing", error.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Lenses_are_written_and_read_in_tuned_lens_layout()
    {
        using var model = TestInputs.Fixture("llama");
        var lens = RandomLens(model, seed: 4, weightScale: 1, biasScale: 1);
        string dir = Directory.CreateTempSubdirectory("loupe-tuned-").FullName;
        try
        {
            lens.Save(dir);
            using (var file = SafeTensorsFile.Open(Path.Combine(dir, TunedLens.ParamsFile)))
                Assert.Equal(Enumerable.Range(0, model.Config.NLayers).SelectMany(l => new[] { $"{l}.bias", $"{l}.weight" }).Order(StringComparer.Ordinal), file.Names.Order(StringComparer.Ordinal));
            string config = File.ReadAllText(Path.Combine(dir, TunedLens.ConfigFile));
            Assert.Contains("\"lens_type\": \"linear_tuned_lens\"", config);
            Assert.Contains($"\"num_hidden_layers\": {model.Config.NLayers}", config);
            foreach (var path in new[] { dir, Path.Combine(dir, TunedLens.ParamsFile) })
            {
                var back = TunedLens.Load(path);
                for (int l = 0; l < lens.Layers; l++)
                {
                    Assert.True(lens.Weight(l).SequenceEqual(back.Weight(l)));
                    Assert.True(lens.Bias(l).SequenceEqual(back.Bias(l)));
                }
            }

            // An old whole-lens state dict: layer_translators.{ℓ}.* beside unembed.* copies, no config.
            string old = Path.Combine(dir, "old.safetensors");
            int d = model.Config.DModel;
            SafeTensorsWriter.Write(old, Enumerable.Range(0, lens.Layers).SelectMany(l => new (string, int[], ReadOnlyMemory<float>)[]
                {
                    ($"layer_translators.{l}.weight", [d, d], lens.Weight(l).ToArray()),
                    ($"layer_translators.{l}.bias", [d], lens.Bias(l).ToArray()),
                }).Append(("unembed.unembedding.weight", [3, d], new float[3 * d])));
            File.Delete(Path.Combine(dir, TunedLens.ConfigFile));
            Assert.True(lens.Weight(1).SequenceEqual(TunedLens.Load(old).Weight(1)));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Bad_lens_files_are_refused_by_name()
    {
        using var model = TestInputs.Fixture("gpt2");
        int d = model.Config.DModel;
        string dir = Directory.CreateTempSubdirectory("loupe-tuned-").FullName;
        try
        {
            string Write(params (string, int[], float[])[] tensors)
            {
                string path = Path.Combine(dir, "params.safetensors");
                SafeTensorsWriter.Write(path, tensors.Select(t => (t.Item1, t.Item2, (ReadOnlyMemory<float>)t.Item3)));
                return path;
            }
            var w = new float[d * d];
            var b = new float[d];

            var error = Assert.Throws<InputError>(() => TunedLens.Load(dir));
            Assert.Contains("params.safetensors", error.Message);
            Assert.Contains("params.pt", error.Message);
            File.WriteAllBytes(Path.Combine(dir, "params.pt"), [0x80, 2]);
            error = Assert.Throws<InputError>(() => TunedLens.Load(dir));
            Assert.Contains(Path.Combine(dir, "params.pt"), error.Message);
            File.Delete(Path.Combine(dir, "params.pt"));

            Write(("0.weight", [d, d], w), ("0.bias", [d], b), ("1.weight", [d, d + 1], new float[d * (d + 1)]), ("1.bias", [d], b));
            Assert.Contains("'1.weight' has shape", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);

            Write(("0.weight", [d, d], w), ("0.bias", [d], b), ("1.weight", [d, d], w));
            Assert.Contains("missing tensor '1.bias'", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);

            var nan = (float[])b.Clone();
            nan[5] = float.NaN;
            Write(("0.weight", [d, d], w), ("0.bias", [d], nan));
            Assert.Contains("'0.bias' holds NaN at element 5", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);

            Write(("0.weight", [d, d], w), ("0.bias", [d], b), ("probe.weight", [d], b));
            Assert.Contains("unexpected tensor 'probe.weight'", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);

            Write(("0.weight", [d, d], w), ("0.bias", [d], b));
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"d_model\": " + d + ", \"num_hidden_layers\": 1, \"bias\": false}");
            Assert.Contains("says bias: false", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"d_model\": " + d + ", \"num_hidden_layers\": 1, \"lens_type\": \"other\"}");
            Assert.Contains("lens_type", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"d_model\": \"64\", \"num_hidden_layers\": 1}");
            Assert.Contains("d_model", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);

            // A config claiming 2^31 − 1 translators: refused from the file's names, nothing allocated for them.
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"d_model\": " + d + ", \"num_hidden_layers\": 2147483647}");
            Assert.Contains("missing tensor '1.weight'", Assert.Throws<InputError>(() => TunedLens.Load(dir)).Message);

            // A lens of another shape than the model's.
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"d_model\": " + d + ", \"num_hidden_layers\": 1, \"base_model_name_or_path\": \"other-model\"}");
            var oneLayer = TunedLens.Load(dir);
            error = Assert.Throws<InputError>(() => LogitLens.Run(model, Tokens(), Answer, tuned: oneLayer));
            Assert.Contains("1 translators", error.Message);
            Assert.Contains("other-model", error.Message);
            Assert.Contains("frozen", Assert.Throws<InputError>(() => LogitLens.Run(model, Tokens(), Answer, scale: LensScale.Frozen, tuned: TunedLens.Identity(model))).Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
