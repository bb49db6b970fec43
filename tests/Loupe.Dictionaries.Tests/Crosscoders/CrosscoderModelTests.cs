using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Testing;
using Loupe.Tensors;

namespace Loupe.Dictionaries.Tests.Crosscoders;

/// <summary>
/// Crosscoders on models: the L1 penalty's gradient against finite differences, the evaluation against quantities computed
/// here from the models' own runs, and training on two tiny models (the gpt2 and llama reference fixtures, d_model 64,
/// vocab 512): a crosscoder over one model read twice learns shared latents, one over two unrelated models learns
/// exclusive ones.
/// </summary>
public sealed class CrosscoderModelTests : IDisposable
{
    const string Hook = "blocks.1.hook_resid_post";
    const int D = 64;
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-crosscoder-models-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    static HookedTransformer Gpt2() => ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
    static HookedTransformer Llama() => ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));

    // gpt2 and llama (the reference fixtures) at Hook, as a model diff's two sources
    static (CrosscoderSource[] Sources, PairedActivations Paired) Paired(HookedTransformer a, HookedTransformer b)
    {
        CrosscoderSource[] sources = [new("gpt2", Hook), new("llama", Hook)];
        return (sources, new PairedActivations(sources, D, new Dictionary<string, HookedTransformer> { ["gpt2"] = a, ["llama"] = b }));
    }

    static CrosscoderTrainingOptions SmallTraining(string architecture, int dSae, int k, int steps, int seed) => new()
    {
        DSae = dSae, Architecture = architecture, K = k, BatchSize = 4,
        Training = new SaeTrainingOptions { Steps = steps, BatchSize = 16, LearningRate = 3e-3f, SparsityCoefficient = architecture == "relu" ? 0.3f : 0f, BDecInit = BDecInit.Zeros, Seed = seed },
    };

    [Theory]
    [InlineData("relu")]
    [InlineData("batchtopk")]
    public void Rows_read_on_the_fly_train_exactly_as_rows_held_in_memory(string architecture)
    {
        using var a = Gpt2();
        using var b = Llama();
        var (sources, paired) = Paired(a, b);
        var contexts = Contexts(10, 9, seed: 21);
        var options = SmallTraining(architecture, dSae: 32, k: 4, steps: 25, seed: 4);
        var rows = CrosscoderTraining.CollectRows(paired, contexts, 4);
        var scales = CrosscoderTraining.EstimateScales(paired, contexts, options, maxContexts: 10);
        Assert.Equal(PairedActivations.NormScales(rows, D), scales);
        var (held, heldSteps) = CrosscoderTraining.Train(sources, D, rows, options, scales);
        var (streamed, streamedSteps) = CrosscoderTraining.Train(sources, D, new PairedRows(paired, contexts, scales, contextsPerWindow: 10, batchSize: 4), options, scales);
        Assert.Equal(heldSteps, streamedSteps);
        Assert.Equal(held.Dictionary.P.WDec, streamed.Dictionary.P.WDec);
        Assert.Equal(held.Dictionary.P.LogThreshold, streamed.Dictionary.P.LogThreshold);
        Assert.Equal(held.BatchTopKThreshold, streamed.BatchTopKThreshold);

        // in windows of 4 contexts: window 1 holds contexts 4–7's rows, scaled and concatenated
        var windows = new PairedRows(paired, contexts, scales, contextsPerWindow: 4, batchSize: 4); // the batches CollectRows ran (a GEMM's rounding depends on its rows)
        Assert.Equal(3, windows.WindowCount);
        var all = held.Concatenate(rows, 10 * 8);
        Assert.Equal(all.AsSpan(4 * 8 * 2 * D, 4 * 8 * 2 * D).ToArray(), windows.Load(0, 1).Inputs);
        Assert.Equal(all.AsSpan(8 * 8 * 2 * D).ToArray(), windows.Load(3, 2).Inputs);
        Assert.Contains("scales", windows.Description);
    }

    [Theory]
    [InlineData("relu")]
    [InlineData("batchtopk")]
    public void A_killed_run_resumes_from_its_checkpoint_to_the_same_crosscoder(string architecture)
    {
        using var a = Gpt2();
        using var b = Llama();
        var (sources, paired) = Paired(a, b);
        var contexts = Contexts(8, 9, seed: 22);
        var options = SmallTraining(architecture, dSae: 24, k: 3, steps: 30, seed: 5);
        var scales = CrosscoderTraining.EstimateScales(paired, contexts, options);
        PairedRows Rows() => new(paired, contexts, scales, contextsPerWindow: 3, batchSize: 4); // several windows: the cursor must resume too
        string straight = Path.Combine(_dir, "straight-" + architecture), killed = Path.Combine(_dir, "killed-" + architecture);
        var whole = CrosscoderTraining.TrainInFolder(sources, D, Rows(), options, scales, straight, checkpointEvery: 10, resume: false);

        using (var cancel = new CancellationTokenSource())
        {
            var progress = new SyncProgress(p => { if (p.Metrics.Step == 14) cancel.Cancel(); });
            Assert.Throws<OperationCanceledException>(() => CrosscoderTraining.TrainInFolder(sources, D, Rows(), options, scales, killed, 10, false, null, null, progress, cancel.Token));
        }
        Assert.True(File.Exists(Path.Combine(killed, SaeTrainingRun.CheckpointFile)));
        Assert.Contains("--resume", Assert.Throws<InputError>(() => CrosscoderTraining.TrainInFolder(sources, D, Rows(), options, scales, killed, 10, resume: false)).Message);
        var resumed = CrosscoderTraining.TrainInFolder(sources, D, Rows(), options, scales, killed, 10, resume: true);
        Assert.Equal(whole.Dictionary.P.WDec, resumed.Dictionary.P.WDec);
        Assert.Equal(whole.Dictionary.P.LogThreshold, resumed.Dictionary.P.LogThreshold);
        Assert.Equal(whole.BatchTopKThreshold, resumed.BatchTopKThreshold);
        Assert.Equal(CrosscoderFiles.Load(straight).Dictionary.P.WEnc, CrosscoderFiles.Load(killed).Dictionary.P.WEnc);
        Assert.Equal(File.ReadAllLines(Path.Combine(straight, SaeTrainingRun.LogFile)), File.ReadAllLines(Path.Combine(killed, SaeTrainingRun.LogFile)));
        // other rows (scales) are refused by name rather than continued
        var other = new PairedRows(paired, contexts, [.. scales.Select(c => c * 2)], contextsPerWindow: 3, batchSize: 4);
        Assert.ThrowsAny<InputError>(() => CrosscoderTraining.TrainInFolder(sources, D, other, options, [.. scales.Select(c => c * 2)], straight, 10, resume: true));
    }

    sealed class SyncProgress(Action<SaeTrainingProgress> report) : IProgress<SaeTrainingProgress>
    {
        public void Report(SaeTrainingProgress value) => report(value);
    }

    static HarvestContexts Contexts(int count, int length, int seed)
    {
        var random = new Random(seed);
        return HarvestContexts.FromRows(Enumerable.Range(0, count)
            .Select(_ => Enumerable.Range(0, length).Select(t => t == 0 ? 1 : random.Next(3, 512)).ToArray()).ToArray(), "random tokens", seed);
    }

    [Fact]
    public void The_penalty_sums_each_sources_decoder_norm_and_its_gradient_is_the_finite_differences()
    {
        const int n = 3, d = 4, f = 7, batch = 5;
        var dict = new SparseDictionary(SaeShape.Sae(n * d, f, applyBDecToInput: false), new CrosscoderReluActivation(n));
        dict.Initialize(seed: 3, decoderNorm: 0.8f);
        var rng = new Random(4);
        foreach (var (_, data) in dict.P.Trainable(dict.Activation))
            for (int i = 0; i < data.Length; i++) data[i] += 0.3f * SparseDictionary.Gaussian(rng);
        for (int j = 0; j < d; j++) dict.P.WDec[2 * n * d + d + j] = 0;     // latent 2 writes nothing to source 1
        var x = Enumerable.Range(0, batch * n * d).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
        const float lambda = 0.4f;

        // the penalty, computed here: λ/B Σ_b Σ_i f[b,i]·Σ_s ‖W_dec^s[i]‖
        var acts = dict.Encode(x, batch);
        double want = 0;
        for (int b = 0; b < batch; b++)
            for (int i = 0; i < f; i++)
            {
                double norms = 0;
                for (int s = 0; s < n; s++)
                {
                    double sq = 0;
                    for (int j = 0; j < d; j++) sq += Math.Pow(dict.P.WDec[i * n * d + s * d + j], 2);
                    norms += Math.Sqrt(sq);
                }
                want += acts[b * f + i] * norms;
            }
        want *= lambda / batch;
        var loss = dict.ForwardBackward(x, x, batch, lambda, null);
        Assert.Equal(want, loss.Sparsity, 1e-4 * (1 + want));

        var g = new SaeParameters(dict.Shape);
        dict.ForwardBackward(x, x, batch, lambda, g);
        var grads = g.Trainable(dict.Activation).ToDictionary(t => t.Name, t => t.Data);
        int checkedCount = 0;
        foreach (var (name, data) in dict.P.Trainable(dict.Activation))
            for (int i = 0; i < data.Length; i++)
            {
                if (name == "W_dec" && i / d == 2 * n + 1) continue;          // the zero segment: ‖·‖ has no derivative at 0
                float keep = data[i];
                const float h = 1e-3f;
                data[i] = keep + h;
                double up = dict.ForwardBackward(x, x, batch, lambda, null).Loss;
                data[i] = keep - h;
                double down = dict.ForwardBackward(x, x, batch, lambda, null).Loss;
                data[i] = keep;
                double fd = (up - down) / (2 * h), an = grads[name][i];
                Assert.True(Math.Abs(fd - an) <= 2e-2 + 2e-2 * Math.Abs(fd), $"{name}[{i}] analytic {an} vs finite difference {fd}");
                checkedCount++;
            }
        Assert.True(checkedCount > 150);
    }

    [Fact]
    public void BatchTopK_keeps_the_k_batch_largest_latents_weighed_by_their_summed_decoder_norms()
    {
        const int n = 2, d = 3, f = 9, batch = 4, k = 2;
        var act = new CrosscoderBatchTopKActivation(k, n, momentum: 0.5f);
        var p = new SaeParameters(SaeShape.Sae(n * d, f, applyBDecToInput: false));
        var rng = new Random(8);
        for (int i = 0; i < p.WDec.Length; i++) p.WDec[i] = SparseDictionary.Gaussian(rng) * (1 + (i / (n * d)) % 3);
        var pre = Enumerable.Range(0, batch * f).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
        // n_i and the ranking, computed here
        var norms = Enumerable.Range(0, f).Select(i => Enumerable.Range(0, n).Sum(s =>
            Math.Sqrt(Enumerable.Range(0, d).Sum(j => Math.Pow(p.WDec[i * n * d + s * d + j], 2))))).ToArray();
        var ranked = Enumerable.Range(0, batch * f).Where(e => pre[e] > 0).OrderByDescending(e => pre[e] * norms[e % f]).Take(k * batch).ToHashSet();
        var acts = new float[batch * f];
        act.Forward(pre, acts, batch, f, training: true, p);
        for (int e = 0; e < acts.Length; e++) Assert.Equal(ranked.Contains(e) ? pre[e] : 0f, acts[e]);
        // the threshold: the smallest kept f·n_i, then its running mean
        act.AfterTrainingForward(acts, batch, f, p);
        double smallest = ranked.Min(e => pre[e] * norms[e % f]);
        Assert.Equal(smallest, p.Threshold[0], 1e-5);
        // inference: f kept where f·n_i > θ
        act.Forward(pre, acts, batch, f, training: false, p);
        for (int e = 0; e < acts.Length; e++) Assert.Equal(pre[e] > 0 && pre[e] * norms[e % f] > smallest + 1e-6 ? pre[e] : 0f, acts[e], 1e-6);
    }

    // d_sae = 2·S·d, W_enc = [I, −I] per source, W_dec its transpose: x̂ = relu(x) − relu(−x) = x for every source.
    static Crosscoder Identity(IReadOnlyList<CrosscoderSource> sources, int d)
    {
        int n = sources.Count, f = 2 * n * d;
        var dict = new SparseDictionary(SaeShape.Sae(n * d, f, applyBDecToInput: false), new ReluActivation());
        for (int j = 0; j < n * d; j++)
        {
            dict.P.WEnc[j * f + j] = 1;
            dict.P.WEnc[j * f + n * d + j] = -1;
            dict.P.WDec[j * n * d + j] = 1;
            dict.P.WDec[(n * d + j) * n * d + j] = -1;
        }
        return new Crosscoder(sources, d, dict);
    }

    [Fact]
    public void Evaluation_measures_each_source_and_model_against_their_own_runs()
    {
        using var a = Gpt2();
        using var b = Llama();
        var models = new Dictionary<string, HookedTransformer> { ["gpt2"] = a, ["llama"] = b };
        CrosscoderSource[] sources = [new("gpt2", Hook), new("llama", Hook)];
        var contexts = Contexts(6, 9, seed: 1);

        // an exact crosscoder: nothing is lost, so the spliced losses are the clean ones
        var exact = CrosscoderEvaluator.Evaluate(Identity(sources, D), models, contexts, new CrosscoderEvalOptions { BatchSize = 4 });
        Assert.Equal(6 * 8, exact.Rows);
        Assert.All(exact.Sources, s => Assert.True(s.Fvu < 1e-10 && s.CosineSimilarity > 1 - 1e-6, $"{s.Source}: FVU {s.Fvu}, cos {s.CosineSimilarity}"));
        foreach (var m in exact.Models)
        {
            Assert.Equal(m.CeClean, m.CeSpliced, 1e-4);
            Assert.Equal(1.0, m.LossRecovered, 1e-3);
            // clean and zero-ablated losses, computed here from the models' own runs
            var model = models[m.Model];
            double clean = 0, zero = 0;
            foreach (var ctx in contexts.Contexts)
            {
                clean += NextTokenLoss(model.Run(ctx).Logits, ctx);
                zero += NextTokenLoss(model.Run(ctx, new RunOptions().AddHook(Hook, (act, _) => Tensor.Zeros(act.Shape.ToArray()))).Logits, ctx);
            }
            Assert.Equal(clean / (6 * 8), m.CeClean, 1e-4);
            Assert.Equal(zero / (6 * 8), m.CeZeroAblated, 1e-4);
        }

        // a crosscoder whose llama reconstruction is 0: llama's FVU is Σ‖x‖² / Σ‖x − x̄‖², gpt2's still 0
        var half = Identity(sources, D);
        for (int i = 0; i < half.DSae; i++) half.Dictionary.P.WDec.AsSpan(i * 2 * D + D, D).Clear();
        var r = CrosscoderEvaluator.Evaluate(half, models, contexts, new CrosscoderEvalOptions { BatchSize = 4, Losses = false });
        var x = new List<float[]>();
        foreach (var ctx in contexts.Contexts)
        {
            var act = b.Run(ctx, new RunOptions { CacheFilter = h => h == Hook }).Cache[Hook].ToCpu().Span;
            for (int t = 1; t < ctx.Length; t++) x.Add(act.Slice(t * D, D).ToArray());
        }
        var mean = Enumerable.Range(0, D).Select(j => x.Average(v => (double)v[j])).ToArray();
        double energy = x.Sum(v => v.Sum(q => (double)q * q)), spread = x.Sum(v => v.Select((q, j) => (q - mean[j]) * (q - mean[j])).Sum());
        Assert.True(r.Sources[0].Fvu < 1e-10);
        Assert.Equal(energy / spread, r.Sources[1].Fvu, 1e-4 * energy / spread);
        Assert.Empty(r.Models);
        Assert.Equal(D * 2.0, r.L0, 1.0);                                  // one latent of each ± pair per dimension and source
    }

    [Fact]
    public void Latent_scaling_is_the_least_squares_scale_of_the_latent_against_each_models_activations()
    {
        using var a = Gpt2();
        using var b = Llama();
        var contexts = Contexts(4, 9, seed: 4);
        float[] scales = [2f, 0.5f];
        CrosscoderSource[] sources = [new("gpt2", Hook), new("llama", Hook)];
        // the identity crosscoder's latent D + k reads and writes llama's dimension k alone (its positive part)
        var exact = Identity(sources, D);
        var cc = new Crosscoder(sources, D, exact.Dictionary, scales);
        int[] ks = [0, 5, 17];
        var result = CrosscoderEvaluator.Evaluate(cc, new Dictionary<string, HookedTransformer> { ["gpt2"] = a, ["llama"] = b }, contexts,
            new CrosscoderEvalOptions { Losses = false, LatentScaling = [.. ks.Select(k => D + k)] });

        float[] Acts(HookedTransformer m) => [.. contexts.Contexts.SelectMany(ctx => m.Run(ctx, new RunOptions { CacheFilter = h => h == Hook }).Cache[Hook].ToCpu().Span[D..].ToArray())];
        var xa = Acts(a);
        var xb = Acts(b);
        for (int i = 0; i < ks.Length; i++)
        {
            var s = result.LatentScales[i];
            int k = ks[i];
            Assert.Equal((D + k, "llama", "gpt2"), (s.Index, s.Owner, s.Other));
            // computed here in the crosscoder's units: f = relu(c_B·x_B[k]), d = e_k
            double num = 0, den = 0;
            long active = 0;
            for (int r = 0; r < xa.Length / D; r++)
            {
                double f = Math.Max(0, scales[1] * xb[r * D + k]);
                if (f > 0) active++;
                num += f * scales[0] * xa[r * D + k];
                den += f * f;
            }
            Assert.Equal(active, s.ActiveRows);
            Assert.Equal(1.0, s.BetaErrorOwner, 1e-5);                     // the latent is all of llama's k-th direction
            Assert.Equal(0.0, s.BetaErrorOther, 1e-6);                     // gpt2's error is 0: the crosscoder is exact
            Assert.Equal(1.0, s.BetaReconOwner, 1e-5);
            Assert.Equal(num / den, s.BetaReconOther, 1e-4 * (1 + Math.Abs(num / den)));
            Assert.Equal(num / den, s.NuReconstruction, 1e-4 * (1 + Math.Abs(num / den)));
        }

        // gpt2 read twice: what the latent carries is all there in the other source: ν^r = c_A / c_B
        var twice = CrosscoderEvaluator.Evaluate(new Crosscoder([new("A", Hook), new("B", Hook)], D, exact.Dictionary, scales),
            new Dictionary<string, HookedTransformer> { ["A"] = a, ["B"] = a }, contexts, new CrosscoderEvalOptions { Losses = false, LatentScaling = [D + 3] });
        Assert.Equal(scales[0] / scales[1], twice.LatentScales[0].NuReconstruction, 1e-4);
        Assert.Equal(0.0, twice.LatentScales[0].NuError, 1e-6);
        Assert.Contains("two sources", Assert.Throws<InputError>(() => new CrosscoderLatentScaling(Identity([new("A", Hook), new("B", Hook), new("C", Hook)], 4), [0])).Message);
    }

    [Fact]
    public void A_feature_store_of_a_crosscoder_holds_each_latents_activations_over_both_models()
    {
        using var a = Gpt2();
        using var b = Llama();
        var contexts = Contexts(6, 9, seed: 6);
        CrosscoderSource[] sources = [new("gpt2", Hook), new("llama", Hook)];
        var cc = Identity(sources, D);
        var models = new Dictionary<string, HookedTransformer> { ["gpt2"] = a, ["llama"] = b };
        string db = Path.Combine(_dir, "features.db");
        Directory.CreateDirectory(_dir);
        var summary = CrosscoderFeatures.Build(cc, new PairedActivations(sources, D, models), contexts, db,
            new Loupe.Dictionaries.Features.FeatureBuildOptions { TopK = 3, Window = 2, CheckpointSeconds = null });
        Assert.Equal(6L * 8, summary.Tokens);

        // identity latent s·D + k is relu(x_s[k]); computed here from each model's cached activations
        (int Context, int Position, float Value)[] Values(HookedTransformer m, int k, int sign) =>
            [.. contexts.Contexts.SelectMany((ctx, c) =>
            {
                var act = m.Run(ctx, new RunOptions { CacheFilter = h => h == Hook }).Cache[Hook].ToCpu().Span.ToArray();
                return Enumerable.Range(1, ctx.Length - 1).Select(p => (c, p, Math.Max(0f, sign * act[p * D + k])));
            })];
        using var store = Loupe.Dictionaries.Features.FeatureStore.Open(db);
        Assert.Equal("gpt2:blocks.1.hook_resid_post+llama:blocks.1.hook_resid_post", store.Hook);
        foreach (var (latent, model, k, sign) in new[] { (3, a, 3, 1), (D + 7, b, 7, 1), (2 * D + D + 9, b, 9, -1) })
        {
            var want = Values(model, k, sign);
            var f = store.Feature(latent);
            Assert.Equal(want.Count(v => v.Value > 0), f.NActive);
            Assert.Equal(want.Max(v => v.Value), f.MaxAct, 1e-5);
            var top = store.Examples(latent);
            var best = want.OrderByDescending(v => v.Value).First();
            Assert.Equal((best.Context, best.Position), (top[0].ContextId, top[0].Position));
        }
    }

    static double NextTokenLoss(Tensor logits, int[] ids)
    {
        int v = logits.Dim(-1);
        var all = logits.ToCpu().Span;
        double total = 0;
        for (int t = 0; t + 1 < ids.Length; t++)
        {
            var row = all.Slice(t * v, v);
            double max = row.ToArray().Max(), z = row.ToArray().Sum(q => Math.Exp(q - max));
            total += max + Math.Log(z) - row[ids[t + 1]];
        }
        return total;
    }

    // The gpt2 fixture with `direction` added to the embedding of every token in `tokens`: a "fine-tune" that introduced one
    // concept, which blocks.0.hook_resid_pre (embedding + position) carries exactly.
    HookedTransformer FineTuned(float[] direction, ISet<int> tokens)
    {
        string folder = Path.Combine(_dir, "fine-tuned");
        Directory.CreateDirectory(folder);
        string from = SharedData.TestData("reference/gpt2");
        File.Copy(Path.Combine(from, "config.json"), Path.Combine(folder, "config.json"), overwrite: true);
        var entries = new List<SafeTensorEntry>();
        using (var file = SafeTensorsFile.Open(Path.Combine(from, "model.safetensors")))
            foreach (var name in file.Names)
            {
                var data = file.GetFloat32(name).ToArray();
                var shape = file.GetInfo(name).Shape.Select(v => (int)v).ToArray();
                if (name.EndsWith("wte.weight", StringComparison.Ordinal))
                    foreach (int t in tokens)
                        for (int j = 0; j < D; j++) data[t * D + j] += direction[j];
                entries.Add(SafeTensorEntry.F32(name, shape, data));
            }
        SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), entries);
        return ModelLoader.LoadFolder(folder);
    }

    [Fact]
    public void A_concept_only_the_fine_tune_has_becomes_a_latent_only_it_uses_and_one_model_read_twice_shares_its_latents()
    {
        const string embedHook = "blocks.0.hook_resid_pre";
        using var a = Gpt2();
        var rng = new Random(11);
        var direction = Enumerable.Range(0, D).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
        float scale = 2f / System.Numerics.Tensors.TensorPrimitives.Norm(direction);
        for (int j = 0; j < D; j++) direction[j] *= scale;
        var concept = Enumerable.Range(3, 509).Where(t => t % 4 == 0).ToHashSet();
        using var b = FineTuned(direction, concept);
        var contexts = Contexts(48, 17, seed: 2);
        var options = new CrosscoderTrainingOptions
        {
            DSae = 96,
            Training = new SaeTrainingOptions { Steps = 600, BatchSize = 64, LearningRate = 5e-3f, SparsityCoefficient = 0.5f, SparsityWarmupSteps = 100, BDecInit = BDecInit.Zeros, Seed = 7 },
        };
        (Crosscoder, CrosscoderDiffResult, CrosscoderEvalResult) Train(HookedTransformer second, string hook)
        {
            var models = new Dictionary<string, HookedTransformer> { ["base"] = a, ["chat"] = second };
            CrosscoderSource[] sources = [new("base", hook), new("chat", hook)];
            var rows = CrosscoderTraining.CollectRows(new PairedActivations(sources, D, models), contexts, batchSize: 8);
            var (cc, steps) = CrosscoderTraining.Train(sources, D, rows, options);
            Assert.True(steps[^1].Mse < steps[0].Mse / 3, $"mse {steps[0].Mse} → {steps[^1].Mse}");
            return (cc, CrosscoderDiff.Compute(cc), CrosscoderEvaluator.Evaluate(cc, models, contexts, new CrosscoderEvalOptions { Losses = false }));
        }

        // one model read as both sources: the same vectors, so every latent is shared and its two decoders agree
        var (_, sameDiff, sameEval) = Train(a, Hook);
        var live = sameDiff.Latents.Where(l => l.Class != "dead").ToArray();
        Assert.True(live.Count(l => l.Class == "shared") > 0.9 * live.Length, $"{live.Count(l => l.Class == "shared")} of {live.Length} latents shared");
        Assert.All(live.Where(l => l.Class == "shared"), l => Assert.True(l.Cosine > 0.95, $"latent {l.Index}: cosine {l.Cosine}"));
        Assert.All(sameEval.Sources, s => Assert.True(s.ExplainedVariance > 0.5, $"{s.Source}: explained variance {s.ExplainedVariance}"));

        // the fine-tune's concept: some latent only chat uses, along the added direction
        var (tuned, diff, eval) = Train(b, embedHook);
        var chatOnly = diff.Latents.Where(l => l.Class == "chat only").ToArray();
        Assert.NotEmpty(chatOnly);
        double best = chatOnly.Max(l => Cosine(tuned.DecoderVector(l.Index, 1), direction));
        Assert.True(best > 0.9, $"best cosine of a chat-only latent with the added direction: {best}");
        Assert.Equal(chatOnly[0].Index, diff.Top["chat only"][0]);
        Assert.All(eval.Sources, s => Assert.True(s.ExplainedVariance > 0.5, $"{s.Source}: explained variance {s.ExplainedVariance}"));

        // BatchTopK (what Minder et al. recommend) finds the concept too; saved as BatchTopKCrossCoder and read back, it encodes the same
        var rows = CrosscoderTraining.CollectRows(new PairedActivations([new("base", embedHook), new("chat", embedHook)], D,
            new Dictionary<string, HookedTransformer> { ["base"] = a, ["chat"] = b }), contexts, batchSize: 8);
        var (topk, topkSteps) = CrosscoderTraining.Train([new("base", embedHook), new("chat", embedHook)], D, rows,
            options with { Architecture = "batchtopk", K = 4, Training = options.Training with { SparsityCoefficient = 0 } });
        Assert.True(topkSteps[^1].Mse < topkSteps[0].Mse / 3, $"mse {topkSteps[0].Mse} → {topkSteps[^1].Mse}");
        Assert.Equal("batchtopk", topk.Architecture);
        var topkDiff = CrosscoderDiff.Compute(topk);
        var topkChat = topkDiff.Latents.Where(l => l.Class == "chat only").ToArray();
        Assert.NotEmpty(topkChat);
        Assert.True(topkChat.Max(l => Cosine(topk.DecoderVector(l.Index, 1), direction)) > 0.9);
        string savedTopk = Path.Combine(_dir, "crosscoder-topk");
        CrosscoderFiles.Save(savedTopk, topk);
        var topkBack = CrosscoderFiles.Load(savedTopk);
        Assert.Equal(("batchtopk", topk.BatchTopKThreshold, 4), (topkBack.Architecture, topkBack.BatchTopKThreshold, topkBack.K));
        int probe = 64;
        var sample = rows.Select(r => r[..(probe * D)]).ToArray();
        Assert.Equal(topk.Encode(sample, probe), topkBack.Encode(sample, probe));
        var l0 = topk.Encode(sample, probe).Count(v => v > 0) / (double)probe;
        Assert.InRange(l0, 1, 12);                                          // about k per row at the learned threshold

        // saved and read back, with its sources and scales
        string saved = Path.Combine(_dir, "crosscoder");
        CrosscoderFiles.Save(saved, tuned);
        var back = CrosscoderFiles.Load(saved);
        Assert.Equal(tuned.Sources, back.Sources);
        Assert.Equal(tuned.InputScales, back.InputScales);
        var again = CrosscoderEvaluator.Evaluate(back, new Dictionary<string, HookedTransformer> { ["base"] = a, ["chat"] = b }, contexts, new CrosscoderEvalOptions { Losses = false });
        for (int s = 0; s < 2; s++) Assert.Equal(eval.Sources[s].Fvu, again.Sources[s].Fvu, 1e-6);
    }

    static double Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b) =>
        System.Numerics.Tensors.TensorPrimitives.CosineSimilarity(a, b);

    [Fact]
    public void A_cross_layer_crosscoder_reads_one_model_once_and_reconstructs_every_layer()
    {
        using var a = Gpt2();
        var contexts = Contexts(24, 13, seed: 9);
        CrosscoderSource[] layers = [new("gpt2", "blocks.0.hook_resid_post"), new("gpt2", "blocks.1.hook_resid_post"), new("gpt2", "blocks.2.hook_resid_post")];
        var models = new Dictionary<string, HookedTransformer> { ["gpt2"] = a };
        var paired = new PairedActivations(layers, D, models);
        Assert.Single(paired.Models);
        var rows = CrosscoderTraining.CollectRows(paired, contexts, batchSize: 8);
        // each source's rows are its own hook's activations past BOS
        var want = a.Run(contexts.Contexts[0], new RunOptions { CacheFilter = h => h.EndsWith("hook_resid_post", StringComparison.Ordinal) }).Cache;
        for (int s = 0; s < 3; s++)
        {
            var single = want[layers[s].Hook].ToCpu().Span[D..(13 * D)].ToArray();   // one context alone vs in a batch of 8: GEMM rounding
            for (int i = 0; i < single.Length; i++) Assert.True(Math.Abs(single[i] - rows[s][i]) <= 1e-5f * (1 + Math.Abs(single[i])), $"{layers[s].Hook} [{i}]: {single[i]} vs {rows[s][i]}");
        }
        var (cc, _) = CrosscoderTraining.Train(layers, D, rows, new CrosscoderTrainingOptions
        {
            DSae = 128, Architecture = "batchtopk", K = 16,
            Training = new SaeTrainingOptions { Steps = 400, BatchSize = 64, LearningRate = 5e-3f, BDecInit = BDecInit.Zeros, Seed = 3 },
        });
        var eval = CrosscoderEvaluator.Evaluate(cc, models, contexts, new CrosscoderEvalOptions { BatchSize = 8 });
        Assert.All(eval.Sources, s => Assert.True(s.ExplainedVariance > 0.6, $"{s.Source}: {s.ExplainedVariance}"));
        var m = Assert.Single(eval.Models);
        Assert.True(m.LossRecovered > 0.5, $"loss recovered with all three layers replaced: {m.LossRecovered}");
        var diff = CrosscoderDiff.Compute(cc);
        Assert.Equal(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"], diff.Sources);
        Assert.All(diff.Latents.Where(l => l.Class != "dead"), l => Assert.StartsWith("peak blocks.", l.Class));
    }

    [Fact]
    public void Models_that_do_not_fit_are_refused_by_name()
    {
        using var a = Gpt2();
        var cc = Identity([new("A", Hook), new("B", Hook)], D);
        var contexts = Contexts(1, 4, 3);
        Assert.Contains("no model labelled 'B'", Assert.Throws<InputError>(() => CrosscoderEvaluator.Evaluate(cc, new Dictionary<string, HookedTransformer> { ["A"] = a }, contexts)).Message);
        var wrongHook = Identity([new("A", "blocks.9.hook_resid_post"), new("B", Hook)], D);
        Assert.Contains("not a hook point", Assert.Throws<InputError>(() => CrosscoderEvaluator.Evaluate(wrongHook, new Dictionary<string, HookedTransformer> { ["A"] = a, ["B"] = a }, contexts)).Message);
        var pattern = Identity([new("A", "blocks.1.attn.hook_pattern"), new("B", Hook)], D);
        Assert.Contains("per-position vectors", Assert.Throws<InputError>(() => CrosscoderEvaluator.Evaluate(pattern, new Dictionary<string, HookedTransformer> { ["A"] = a, ["B"] = a }, contexts)).Message);
        var wide = Identity([new("A", Hook), new("B", Hook)], 32);
        Assert.Contains("[batch, pos, 32]", Assert.Throws<InputError>(() => CrosscoderEvaluator.Evaluate(wide, new Dictionary<string, HookedTransformer> { ["A"] = a, ["B"] = a }, contexts)).Message);
        var noHook = Identity([new("A", ""), new("B", "")], D);
        Assert.Contains("--hooks", Assert.Throws<InputError>(() => CrosscoderEvaluator.Evaluate(noHook, new Dictionary<string, HookedTransformer> { ["A"] = a, ["B"] = a }, contexts)).Message);
    }
}
