using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Serve.Endpoints;
using Loupe.Steering;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

/// <summary>
/// <c>loupe serve --openai</c> with a TopK SAE trained here on stories260K's block-2 residual stream, served from the
/// vectors folder: steering by an SAE feature × coefficient gives exactly the library's steered greedy output, and an SAE
/// feature monitor's per-token readings equal the SAE's encoder applied to a cached run of the same tokens (with and
/// without steering).
/// </summary>
public class OpenAiSaeTests
{
    const string Hook = "blocks.2.hook_resid_post";
    const string SaeId = "res2";
    const string Prompt = "Once upon a time, there was a little girl named Lily. One day, she";
    const int NewTokens = 32;

    static readonly Lazy<string> s_vectors = new(TrainSae);

    /// <summary>A folder holding a TopK SAE (64 → 32, k = 4) trained on text sampled from stories260K, as <c>res2/</c>.</summary>
    static string TrainSae()
    {
        var model = Servers.Stories;
        string dir = Directory.CreateTempSubdirectory("loupe-openai-sae-").FullName;
        var contexts = ContextBuilder.ForModel(model, new ModelSampledSource(model, 120, 40, seed: 4), 32, seed: 4, maxContexts: 120);
        var dict = new SparseDictionary(SaeShape.Sae(model.Config.DModel, 32), new TopKActivation(4));
        dict.Initialize(seed: 1);
        var trainer = new SaeTrainer(dict, new SaeTrainingOptions
        {
            Steps = 300, BatchSize = 256, LearningRate = 2e-3f, LrWarmupSteps = 10, NormalizeExpectedAverage = true, Seed = 1,
        });
        trainer.Begin(new ModelRows(model, contexts, Hook, contextsPerWindow: 40));
        SaeStepMetrics last = null!;
        while (!trainer.IsComplete) last = trainer.Step();
        trainer.Finish();
        Assert.True(last.ExplainedVariance > 0.5, $"the SAE did not train: explained variance {last.ExplainedVariance:F3}");
        SaeLensFormat.Save(Path.Combine(dir, SaeId), dict, new SaeLensConfig { DIn = model.Config.DModel, DSae = 32, DOut = model.Config.DModel, HookName = Hook, ApplyBDecToInput = dict.Shape.ApplyBDecToInput });
        return dir;
    }

    static async Task<ServeHost> Start(HookedTransformer model) =>
        await Servers.StartAsync(model, new ServeOptions { OpenAi = OpenAiMode.Only, VectorsDir = s_vectors.Value });

    static int[] Greedy(HookedTransformer m, int[] ids, RunOptions? options = null) => m.Generate([ids], new GenerationOptions(NewTokens, 0f), options)[0];

    static SteeringVector FeatureSteer(SparseDictionary sae, int feature, float coefficient) =>
        new(Hook, sae.P.WDec.AsSpan(feature * sae.Shape.DOut, sae.Shape.DOut), coefficient);

    static int[] Tokens(System.Text.Json.JsonElement body) => [.. body.GetProperty("loupe").GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32())];

    [RequiresSharedFact("models/stories260K")]
    public async Task Steering_by_an_sae_feature_equals_the_library()
    {
        var m = Servers.Stories;
        var (sae, _) = DictionaryFile.Load(Path.Combine(s_vectors.Value, SaeId));
        int[] ids = m.Tokenizer!.Encode(Prompt);
        int[] plain = Greedy(m, ids);
        // Features in order; the first two whose steering changes the library's greedy output (a feature that changes
        // nothing would test nothing), each at two coefficients of opposite sign.
        var cases = Enumerable.Range(0, sae.Shape.DSae)
            .Select(f => (Feature: f, Expected: Greedy(m, ids, ActivationEdits.Options(m, FeatureSteer(sae, f, 6f)))))
            .Where(c => !c.Expected.SequenceEqual(plain)).Take(2).ToList();
        Assert.Equal(2, cases.Count);

        await using var host = await Start(m);
        using var http = Servers.Client(host);
        foreach (var (feature, expected) in cases)
        {
            foreach (float coefficient in new[] { 6f, -3f })
            {
                var body = await Servers.PostJson(http, "v1/completions", new
                {
                    model = "stories260K", prompt = Prompt, max_tokens = NewTokens, temperature = 0,
                    loupe = new { steer = new[] { new { sae = SaeId, feature, coefficient = (double)coefficient } } },
                });
                int[] want = coefficient == 6f ? expected : Greedy(m, ids, ActivationEdits.Options(m, FeatureSteer(sae, feature, coefficient)));
                Assert.Equal(want, Tokens(body));
                Assert.Equal(m.Tokenizer.Decode(want.TakeWhile(t => t != m.Config.EosTokenId).ToArray(), skipSpecialTokens: true),
                    body.GetProperty("choices")[0].GetProperty("text").GetString());
            }
        }
        // Steering 'new' positions only: the library's edit on the generated positions.
        int f0 = cases[0].Feature;
        var fromPrompt = await Servers.PostJson(http, "v1/completions", new
        {
            model = "stories260K", prompt = Prompt, max_tokens = NewTokens, temperature = 0,
            loupe = new { steer = new[] { new { sae = SaeId, feature = f0, coefficient = 6.0, positions = "new" } } },
        });
        var newOnly = FeatureSteer(sae, f0, 6f).WithPositions(SteeringPositions.NewTokens);
        Assert.Equal(Greedy(m, ids, ActivationEdits.Options(m, newOnly)), Tokens(fromPrompt));
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task An_sae_feature_monitor_reads_the_encoder_on_the_cached_run()
    {
        var m = Servers.Stories;
        var (sae, _) = DictionaryFile.Load(Path.Combine(s_vectors.Value, SaeId));
        int[] ids = m.Tokenizer!.Encode(Prompt);
        int d = m.Config.DModel, dSae = sae.Shape.DSae;

        // The library's activations of every feature on the unsteered greedy run; the monitor watches the feature active
        // on the most generated positions, so its readings are not all zero.
        int[] plain = Greedy(m, ids);
        float[] Acts(int[] generated, RunOptions options)
        {
            int[] sequence = [.. ids, .. generated[..^1]];
            var cached = m.RunWithCache(TokenBatch.Single(sequence), Hook, options).Cache[Hook].ToCpu();
            return sae.Encode(cached.Span, sequence.Length); // [positions, d_sae]
        }
        var plainActs = Acts(plain, new RunOptions());
        int feature = Enumerable.Range(0, dSae).MaxBy(f => Enumerable.Range(ids.Length - 1, plain.Length).Count(p => plainActs[p * dSae + f] > 0));
        int steerFeature = (feature + 1) % dSae;

        await using var host = await Start(m);
        using var http = Servers.Client(host);
        foreach (bool steered in new[] { false, true })
        {
            object loupe = steered
                ? new { steer = new[] { new { sae = SaeId, feature = steerFeature, coefficient = 4.0 } }, monitors = new[] { new { sae = SaeId, feature, name = "f", threshold = 0.0, action = "flag" } } }
                : new { monitors = new[] { new { sae = SaeId, feature, name = "f", threshold = 0.0, action = "flag" } } };
            var body = await Servers.PostJson(http, "v1/completions", new { model = "stories260K", prompt = Prompt, max_tokens = NewTokens, temperature = 0, loupe });
            int[] tokens = Tokens(body);
            var options = steered ? ActivationEdits.Options(m, FeatureSteer(sae, steerFeature, 4f)) : new RunOptions();
            Assert.Equal(Greedy(m, ids, steered ? ActivationEdits.Options(m, FeatureSteer(sae, steerFeature, 4f)) : null), tokens);
            var monitor = body.GetProperty("loupe").GetProperty("monitors")[0];
            double[] readings = [.. monitor.GetProperty("readings").EnumerateArray().Select(e => e.GetDouble())];
            Assert.Equal(tokens.Length, readings.Length);
            var acts = Acts(tokens, options);
            int active = 0;
            for (int i = 0; i < readings.Length; i++)
            {
                // Reading i is taken at the position that picked token i: the prompt's last, then each generated token's.
                double want = acts[(ids.Length - 1 + i) * dSae + feature];
                Assert.InRange(readings[i], want - 1e-3 - 1e-4 * Math.Abs(want), want + 1e-3 + 1e-4 * Math.Abs(want));
                if (want > 0) active++;
            }
            Assert.True(active > 0, $"feature {feature} never fired on the {(steered ? "steered" : "plain")} run");
            // Flagged at the first token where the feature fires (threshold 0: any activation), the generation left running.
            Assert.Equal(Enumerable.Range(0, readings.Length).First(i => readings[i] > 0), monitor.GetProperty("first_crossing").GetInt32());
            Assert.True(monitor.GetProperty("flagged").GetBoolean());
        }
        // The manual encoder, for one active position of the plain run: (x − b_dec)·W_enc + b_enc, which TopK keeps as is.
        int pos = Enumerable.Range(ids.Length - 1, plain.Length).First(p => plainActs[p * dSae + feature] > 0);
        int[] seq = [.. ids, .. plain[..^1]];
        var x = m.RunWithCache(TokenBatch.Single(seq), Hook).Cache[Hook].ToCpu().Span.Slice(pos * d, d).ToArray();
        double pre = sae.P.BEnc[feature];
        for (int j = 0; j < d; j++) pre += (x[j] - (sae.Shape.ApplyBDecToInput ? sae.P.BDec[j] : 0)) * sae.P.WEnc[j * dSae + feature];
        Assert.InRange(plainActs[pos * dSae + feature], pre - 1e-3 - 1e-4 * Math.Abs(pre), pre + 1e-3 + 1e-4 * Math.Abs(pre));
    }
}
