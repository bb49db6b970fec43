using System.Text.Json;
using Loupe.Causal.Lens;
using Loupe.Causal.Patching;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Mcp;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Steering;
using static Loupe.Mcp.Tests.Mcp;

namespace Loupe.Mcp.Tests;

/// <summary>Every tool called by a real MCP client (over pipes, in process) on the tiny GPT-2 fixture, checked against the library.</summary>
[Collection("mcp")]
public sealed class McpToolTests(McpFixture f) : IClassFixture<McpFixture>
{
    static readonly int[] Tokens = [0, 360, 480, 161, 89, 311, 293, 431];

    [Fact]
    public async Task Lists_every_tool_with_its_input_schema()
    {
        var tools = await f.Client.ListToolsAsync();
        var byName = tools.ToDictionary(t => t.Name);
        foreach (var name in new[] { "list_artifacts", "model_info", "run", "lens", "cache_hook", "patch", "attribute", "feature_lookup", "steer", "monitor" })
            Assert.Contains(name, byName.Keys);
        var run = byName["run"].JsonSchema;
        Assert.Equal("object", run.GetProperty("type").GetString());
        foreach (var p in new[] { "prompt", "tokens", "topK", "maxNewTokens" }) Assert.True(run.GetProperty("properties").TryGetProperty(p, out _), p);
        Assert.Contains("hook", byName["cache_hook"].JsonSchema.GetProperty("required").EnumerateArray().Select(r => r.GetString()));
        Assert.False(string.IsNullOrWhiteSpace(byName["patch"].Description));
        // Typed outputs: each tool advertises the schema of its JSON result.
        var output = byName["run"].ProtocolTool.OutputSchema;
        Assert.NotNull(output);
        Assert.True(output.Value.GetProperty("properties").TryGetProperty("topNextTokens", out _), output.Value.GetRawText());
    }

    [Fact]
    public async Task Model_info_and_artifacts()
    {
        var info = await Call(f.Client, "model_info", []);
        Assert.Equal(3, info.GetProperty("layers").GetInt32());
        Assert.Equal(64, info.GetProperty("dModel").GetInt32());
        var hook = info.GetProperty("hookPoints").EnumerateArray().First(h => h.GetProperty("name").GetString() == "blocks.0.hook_resid_pre");
        Assert.Equal(["batch", "pos", "d_model"], hook.GetProperty("axes").EnumerateArray().Select(a => a.GetString()));
        var artifacts = await Call(f.Client, "list_artifacts", []);
        var kinds = artifacts.EnumerateArray().Select(a => (a.GetProperty("name").GetString(), a.GetProperty("kind").GetString())).ToList();
        Assert.Contains(("sae-l1", "sae"), kinds);
        Assert.Contains(("sae-l1", "feature_store"), kinds);
        Assert.Contains(("transcoders", "transcoders"), kinds);
        Assert.Contains(("persona.safetensors", "persona_vector"), kinds);
        Assert.Contains(("monitors/wobble.safetensors", "concept_monitor"), kinds);
        Assert.Contains(("lenses/gpt2-lens", "tuned_lens"), kinds);
        Assert.DoesNotContain(kinds, k => k.Item1!.EndsWith("params.safetensors", StringComparison.Ordinal)); // the lens's file is not a vector
        Assert.DoesNotContain(f.Root, artifacts.GetRawText()); // paths never leave the server
    }

    [Fact]
    public async Task Run_returns_the_library_top_tokens_and_greedy_continuation()
    {
        var reply = await Call(f.Client, "run", new() { ["tokens"] = Tokens, ["topK"] = 5, ["maxNewTokens"] = 6 });
        var expected = NextTokens.TopK(f.Model, Tokens, 5)[0];
        var top = reply.GetProperty("topNextTokens").EnumerateArray().ToArray();
        Assert.Equal(5, top.Length);
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(expected[i].Token, top[i].GetProperty("id").GetInt32());
            Close(expected[i].Probability, top[i].GetProperty("value").GetDouble());
        }
        var greedy = f.Model.Generate([Tokens], new GenerationOptions(6, 0f))[0];
        Assert.Equal(greedy, reply.GetProperty("continuation").EnumerateArray().Select(x => x.GetInt32()));
    }

    [Fact]
    public async Task Cache_hook_summarises_the_activation_and_reads_one_position()
    {
        const string hook = "blocks.1.hook_resid_post";
        var reply = await Call(f.Client, "cache_hook", new() { ["hook"] = hook, ["tokens"] = Tokens, ["position"] = -1 });
        var t = f.Model.RunWithCache(TokenBatch.Single(Tokens), hook, new RunOptions { CacheOn = CacheLocation.Host }).Cache[hook];
        var data = t.Data.ToArray();
        Assert.Equal([1, Tokens.Length, 64], reply.GetProperty("shape").EnumerateArray().Select(x => x.GetInt32()));
        var stats = reply.GetProperty("stats");
        Close(data.Average(x => (double)x), stats.GetProperty("mean").GetDouble(), 1e-4);
        Close(data.Max(), stats.GetProperty("max").GetDouble());
        Close(Math.Sqrt(data.Sum(x => (double)x * x)), stats.GetProperty("l2Norm").GetDouble(), 1e-4);
        Assert.Equal(Tokens.Length - 1, reply.GetProperty("position").GetInt32());
        var values = reply.GetProperty("valuesAtPosition").EnumerateArray().Select(x => x.GetSingle()).ToArray();
        Assert.Equal(64, values.Length);
        for (int i = 0; i < 64; i++) Close(data[(Tokens.Length - 1) * 64 + i], values[i]);
    }

    [Fact]
    public async Task Patch_cells_equal_activation_patching()
    {
        int[] corrupt = [.. Tokens[..^1], 300];
        var reply = await Call(f.Client, "patch", new() { ["cleanTokens"] = Tokens, ["corruptTokens"] = corrupt, ["answerId"] = 17, ["wrongId"] = 42 });
        var expected = ActivationPatching.Sweep(f.Model, TokenBatch.Single(Tokens), TokenBatch.Single(corrupt), new LogitDiff(17, 42, -1), PatchTarget.ResidPre);
        Close(expected.CleanValue, reply.GetProperty("cleanValue").GetDouble());
        Close(expected.CorruptValue, reply.GetProperty("corruptValue").GetDouble());
        var cells = reply.GetProperty("cells").EnumerateArray().ToArray();
        Assert.Equal(expected.Cells.Length, cells.Length);
        Assert.Equal(3 * Tokens.Length, cells.Length);
        for (int i = 0; i < cells.Length; i++)
        {
            Assert.Equal(expected.Cells[i].Layer, cells[i].GetProperty("layer").GetInt32());
            Assert.Equal(expected.Cells[i].Position, cells[i].GetProperty("position").GetInt32());
            Close(expected.Values[i], cells[i].GetProperty("value").GetDouble(), 1e-4);
            Close(expected.Normalized[i], cells[i].GetProperty("normalized").GetDouble(), 1e-3);
        }

        // Identical prompts: nothing to restore, so no normalised value (JSON has no NaN) — and still an answer.
        reply = await Call(f.Client, "patch", new() { ["cleanTokens"] = Tokens, ["corruptTokens"] = Tokens, ["answerId"] = 17, ["wrongId"] = 42 });
        Assert.All(reply.GetProperty("cells").EnumerateArray(), c => Assert.True(!c.TryGetProperty("normalized", out var n) || n.ValueKind == JsonValueKind.Null));
    }

    [Fact]
    public async Task Attribute_summarises_the_graph_circuit_tracer_made()
    {
        var reply = await Call(f.Client, "attribute", new() { ["tokens"] = Tokens, ["top"] = 5 });
        Assert.Equal(38, reply.GetProperty("keptNodes").GetInt32()); // as `loupe attribute` on this fixture
        Assert.Equal(351, reply.GetProperty("keptEdges").GetInt64());
        Assert.Equal(5, reply.GetProperty("topFeatures").GetArrayLength());
        var path = reply.GetProperty("pathToTopLogit").EnumerateArray().ToArray();
        Assert.True(path.Length >= 2);
        Assert.Equal("logit", path[^1].GetProperty("kind").GetString());
        Assert.Equal(reply.GetProperty("logitTargets")[0].GetProperty("id").GetInt32(), path[^1].GetProperty("index").GetInt32());
        Assert.Contains(path[0].GetProperty("kind").GetString(), new[] { "token", "error", "feature" });
    }

    [Fact]
    public async Task Attribute_explains_named_targets_and_a_contrast()
    {
        var reply = await Call(f.Client, "attribute", new() { ["tokens"] = Tokens, ["targets"] = new[] { "#42" }, ["contrast"] = new[] { "#42", "#17" } });
        var targets = reply.GetProperty("logitTargets").EnumerateArray().ToArray();
        Assert.Equal([42, 512 + 1], targets.Select(t => t.GetProperty("id").GetInt32()));
        Assert.Equal("logit(<42>)-logit(<17>)", targets[1].GetProperty("text").GetString());
        Assert.Contains("targets", await CallFails(f.Client, "attribute", new() { ["tokens"] = Tokens, ["targets"] = new[] { "#512" } }));
        Assert.Contains("contrast", await CallFails(f.Client, "attribute", new() { ["tokens"] = Tokens, ["contrast"] = new[] { "#1" } }));
    }

    [Fact]
    public async Task Feature_lookup_reads_the_store()
    {
        using var store = FeatureStore.Open(Path.Combine(f.SaeDir, FeatureStoreSchema.DefaultFileName));
        int feature = store.Features("density", 1)[0].Feature;
        var summary = store.Feature(feature);
        var reply = await Call(f.Client, "feature_lookup", new() { ["store"] = "sae-l1", ["feature"] = feature, ["examples"] = 3 });
        Close(summary.Density, reply.GetProperty("density").GetDouble());
        Close(summary.MaxAct, reply.GetProperty("maxActivation").GetDouble());
        Assert.Equal(McpFixture.SaeHook, reply.GetProperty("hook").GetString());
        var examples = reply.GetProperty("topExamples").EnumerateArray().ToArray();
        Assert.Equal(Math.Min(3, store.Examples(feature, FeatureStoreSchema.Top).Count), examples.Length);
        Assert.All(examples, e => Assert.Contains("«", e.GetProperty("text").GetString()));
        Close(store.Examples(feature, FeatureStoreSchema.Top, 1)[0].Activation, examples[0].GetProperty("activation").GetDouble());
        Assert.Equal(store.Logits(feature, FeatureStoreSchema.Promoted).Take(10).Select(r => r.TokenId),
            reply.GetProperty("promotedTokens").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()));
    }

    [Fact]
    public async Task Steer_with_an_sae_feature_and_a_vector_file_matches_the_library()
    {
        var (dict, _) = DictionaryFile.Load(f.SaeDir);
        var direction = dict.P.WDec.AsSpan(2 * 64, 64).ToArray();
        var reply = await Call(f.Client, "steer", new() { ["tokens"] = Tokens, ["sae"] = "sae-l1", ["feature"] = 2, ["coefficient"] = 40f, ["maxNewTokens"] = 8 });
        var steered = f.Model.Generate([Tokens], new GenerationOptions(8, 0f), ActivationEdits.Options(f.Model, new SteeringVector(McpFixture.SaeHook, direction, 40f)))[0];
        var plain = f.Model.Generate([Tokens], new GenerationOptions(8, 0f))[0];
        Assert.Equal(steered, reply.GetProperty("steeredTokens").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(plain, reply.GetProperty("unsteeredTokens").EnumerateArray().Select(x => x.GetInt32()));
        Assert.NotEqual(plain, steered); // a strong edit changes this model's greedy output
        // Trained and used on the same unprocessed model: no processing warning (null or left out of the structured result).
        Assert.True(!reply.TryGetProperty("warning", out var warning) || warning.ValueKind == System.Text.Json.JsonValueKind.Null, warning.ToString());

        reply = await Call(f.Client, "steer", new() { ["tokens"] = Tokens, ["vector"] = "persona.safetensors", ["coefficient"] = -30f, ["maxNewTokens"] = 8 });
        Assert.Equal(McpFixture.SaeHook, reply.GetProperty("hook").GetString());
        var byVector = f.Model.Generate([Tokens], new GenerationOptions(8, 0f), ActivationEdits.Options(f.Model, f.Persona.Steer(-30f)))[0];
        Assert.Equal(byVector, reply.GetProperty("steeredTokens").EnumerateArray().Select(x => x.GetInt32()));
    }

    [Fact]
    public async Task Monitor_readings_equal_the_library()
    {
        var reply = await Call(f.Client, "monitor", new() { ["monitor"] = "monitors/wobble.safetensors", ["tokens"] = Tokens });
        var expected = f.Monitor.Read(f.Model, Tokens);
        Assert.Equal("wobble", reply.GetProperty("concept").GetString());
        var projections = reply.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("projection").GetDouble()).ToArray();
        Assert.Equal(expected.Projections.Length, projections.Length);
        for (int i = 0; i < projections.Length; i++) Close(expected.Projections[i], projections[i]);
        Close(expected.Mean, reply.GetProperty("mean").GetDouble());
        Assert.Equal(expected.ExpressesTrait, reply.GetProperty("flagged").GetBoolean());

        reply = await Call(f.Client, "monitor", new() { ["monitor"] = "persona.safetensors", ["tokens"] = Tokens, ["generate"] = 4 });
        var generated = f.Model.Generate([Tokens], new GenerationOptions(4, 0f, StopAtEos: false))[0];
        var persona = f.Persona.Monitor(f.Model, [.. Tokens, .. generated]);
        Assert.Equal(Tokens.Length + 4, reply.GetProperty("tokens").GetArrayLength());
        Close(persona.Mean, reply.GetProperty("mean").GetDouble());
        Assert.Equal(persona.ExpressesTrait, reply.GetProperty("flagged").GetBoolean());
    }

    [Fact]
    public async Task Lens_reads_the_logit_lens_and_a_served_tuned_lens_as_the_library_does()
    {
        var reply = await Call(f.Client, "lens", new() { ["tokens"] = Tokens, ["answerId"] = 17, ["wrongId"] = 42, ["position"] = -2, ["tunedLens"] = "lenses/gpt2-lens" });
        var batch = TokenBatch.Single(Tokens);
        foreach (var (property, expected) in new[]
        {
            ("logitLens", LogitLens.Run(f.Model, batch, 17, 42, Tokens.Length - 2)),
            ("tunedLensStages", LogitLens.Run(f.Model, batch, 17, 42, Tokens.Length - 2, tuned: f.Lens)),
        })
        {
            var stages = reply.GetProperty(property).EnumerateArray().ToArray();
            Assert.Equal(expected.Stages.Length, stages.Length);
            for (int s = 0; s < stages.Length; s++)
            {
                Assert.Equal(expected.Stages[s].Label, stages[s].GetProperty("stage").GetString());
                Close(expected.Stages[s].AnswerLogit, stages[s].GetProperty("answerLogit").GetDouble());
                Close(expected.Stages[s].LogitDiff, stages[s].GetProperty("logitDiff").GetDouble());
                Assert.Equal(expected.Stages[s].AnswerRank, stages[s].GetProperty("answerRank").GetInt32());
                Assert.Equal(expected.Stages[s].TopToken, stages[s].GetProperty("topToken").GetInt32());
            }
        }
        Assert.Equal(Tokens.Length - 2, reply.GetProperty("position").GetInt32());

        // Without an answer: the model's own top token at the position; without a tuned lens: none.
        reply = await Call(f.Client, "lens", new() { ["tokens"] = Tokens });
        int top = NextTokens.TopK(f.Model, Tokens, 1)[0][0].Token;
        Assert.Equal(top, reply.GetProperty("answer").GetInt32());
        Assert.Equal(0, reply.GetProperty("logitLens").EnumerateArray().Last().GetProperty("answerRank").GetInt32());
        Assert.False(reply.TryGetProperty("tunedLensStages", out var stagesWithout) && stagesWithout.ValueKind != JsonValueKind.Null);
        Assert.Contains("no tuned_lens named 'persona.safetensors'", await CallFails(f.Client, "lens", new() { ["tokens"] = Tokens, ["tunedLens"] = "persona.safetensors" }));
    }

    [Fact]
    public async Task Bad_arguments_are_tool_errors_and_the_server_keeps_serving()
    {
        Assert.Contains("not a hook point", await CallFails(f.Client, "cache_hook", new() { ["hook"] = "blocks.9.nope", ["tokens"] = Tokens }));
        Assert.Contains("exactly one of prompt or tokens", await CallFails(f.Client, "run", []));
        Assert.Contains("no tokenizer", await CallFails(f.Client, "run", new() { ["prompt"] = "hello" }));
        Assert.Contains("outside [0, 511]", await CallFails(f.Client, "run", new() { ["tokens"] = new[] { 1, 9999 } }));
        Assert.Contains("is served; served: monitors/wobble.safetensors, persona.safetensors", await CallFails(f.Client, "steer", new() { ["tokens"] = Tokens, ["vector"] = "/etc/passwd", ["coefficient"] = 1f }));
        Assert.Contains("no feature_store named", await CallFails(f.Client, "feature_lookup", new() { ["store"] = "../sae-l1", ["feature"] = 0 }));
        Assert.Contains("feature", await CallFails(f.Client, "feature_lookup", new() { ["store"] = "sae-l1", ["feature"] = McpFixture.DSae }));
        Assert.Contains("same number of tokens", await CallFails(f.Client, "patch", new() { ["cleanTokens"] = Tokens, ["corruptTokens"] = new[] { 1, 2 }, ["answerId"] = 1 }));
        Assert.Contains("generate", await CallFails(f.Client, "monitor", new() { ["monitor"] = "persona.safetensors", ["tokens"] = Tokens, ["generate"] = 999 }));
        var reply = await Call(f.Client, "run", new() { ["tokens"] = Tokens, ["topK"] = 1 });
        Assert.Equal(NextTokens.TopK(f.Model, Tokens, 1)[0][0].Token, reply.GetProperty("topNextTokens")[0].GetProperty("id").GetInt32());
    }

    /// <summary>
    /// Arguments the SDK could not bind used to come back as a bare "An error occurred invoking 'run'." (fuzz parser "mcp"):
    /// now the reply names the argument, what was expected and what was sent.
    /// </summary>
    [Fact]
    public async Task Arguments_of_the_wrong_type_are_named_in_the_error()
    {
        Assert.Equal("run: argument 'topK': expected an integer between −2³¹ and 2³¹ − 1, found 1.5",
            await CallFails(f.Client, "run", new() { ["tokens"] = Tokens, ["topK"] = 1.5 }));
        Assert.Equal("run: argument 'tokens[1]': expected an integer between −2³¹ and 2³¹ − 1, found 9.2E+18",
            await CallFails(f.Client, "run", new() { ["tokens"] = new object[] { 1, 9.2e18 } }));
        Assert.Equal("monitor: argument 'tokens': expected an array (or null), found 2147483647",
            await CallFails(f.Client, "monitor", new() { ["monitor"] = "persona.safetensors", ["tokens"] = int.MaxValue }));
        Assert.Equal("feature_lookup: argument 'store' is required", await CallFails(f.Client, "feature_lookup", new() { ["feature"] = 0 }));
        Assert.Equal("steer: argument 'coefficient': expected a finite number, found the string \"NaN\"",
            await CallFails(f.Client, "steer", new() { ["tokens"] = Tokens, ["vector"] = "persona.safetensors", ["coefficient"] = "NaN" }));
        await Call(f.Client, "run", new() { ["tokens"] = Tokens, ["topK"] = 2 }); // and the server answers on
    }

    [Fact]
    public async Task Attribute_without_transcoders_is_a_tool_error()
    {
        using var stop = new CancellationTokenSource();
        Task? server = null;
        using var model = ModelLoader.LoadFolder(McpFixture.ModelDir);
        await using var client = await McpFixture.Connect(LoupeMcpServer.Tools(model, McpArtifacts.Index([], null, [])), stop.Token, s => server = s);
        Assert.Contains("--transcoders", await CallFails(client, "attribute", new() { ["tokens"] = Tokens }));
        Assert.Contains("without any", await CallFails(client, "monitor", new() { ["monitor"] = "x", ["tokens"] = Tokens }));
        Assert.Equal(3, (await Call(client, "model_info", [])).GetProperty("layers").GetInt32());
        await stop.CancelAsync();
    }
}
