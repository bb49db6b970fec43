using System.Net;
using System.Text.Json;
using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Splice;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

/// <summary>The SAE-evaluation job: the CLI's <c>sae eval</c> numbers through the web API, its report written as the CLI writes it.</summary>
public class SaeEvalJobTests
{
    [RequiresSharedFact("models/stories260K")]
    public async Task An_sae_eval_job_reports_the_library_evaluation_and_writes_its_files()
    {
        var model = Servers.Stories;
        string graphs = Directory.CreateTempSubdirectory("loupe-serve-sae-eval-").FullName;
        string[] texts = JobApiTests.Texts(model, 12);
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, SaePath = FeatureStores.SaeFolder });
        using var client = Servers.Client(host);
        Assert.True(JsonDocument.Parse(await client.GetStringAsync("/api/jobs/kinds")).RootElement.GetProperty("sae_eval").GetProperty("available").GetBoolean());

        string id = await JobApiTests.Start(client, "sae-eval", new { texts, context_size = 32, max_contexts = 12, batch_size = 4, name = "stories-eval" });
        var events = await SteeringApiTests.ReadEvents(client, $"/api/jobs/{id}/events");
        Assert.Equal("result", events[^1].Type);
        Assert.Equal([4, 8, 12], events.Where(e => e.Type == "progress").Select(e => e.Data.GetProperty("done").GetInt32()).ToArray());
        var result = events[^1].Data.GetProperty("data");
        var metrics = result.GetProperty("metrics");

        // The library's evaluation over the same contexts.
        var (splice, _) = SaeSplice.Load(model, FeatureStores.SaeFolder);
        var contexts = ContextBuilder.ForModel(model, new InMemoryTextSource(texts, "same"), 32, 0, 12);
        var want = SaeEvaluator.Evaluate(model, splice, contexts, new SaeEvalOptions { BatchSize = 4 });
        foreach (var (name, value) in new[] { ("l0", want.L0), ("explained_variance", want.ExplainedVariance), ("ce_loss_clean", want.CeLossClean),
                     ("ce_loss_with_sae", want.CeLossWithSae), ("loss_recovered", want.LossRecovered), ("kl_with_sae", want.KlWithSae) })
        {
            double got = metrics.GetProperty(name).GetDouble();
            Assert.True(Math.Abs(got - value) <= 1e-9 + 1e-9 * Math.Abs(value), $"{name}: served {got}, library {value}");
        }
        Assert.Equal(want.DeadFeatures, metrics.GetProperty("dead_features").GetInt32());
        Assert.Equal(JsonValueKind.Null, result.GetProperty("warning").ValueKind); // trained and served on the same (unprocessed) model

        // The report files, as `loupe sae eval` writes them.
        string report = Path.Combine(graphs, result.GetProperty("report").GetString()!);
        Assert.Equal(Path.Combine(graphs, "evals", "stories-eval", "eval.json"), report);
        var json = JsonDocument.Parse(File.ReadAllText(report)).RootElement;
        Assert.Equal(want.L0, json.GetProperty("metrics").GetProperty("l0").GetDouble(), 1e-9);
        Assert.True(File.Exists(Path.Combine(graphs, "evals", "stories-eval", "density.svg")));

        // The same name again, and neither source, are refused; without --sae there is nothing to evaluate.
        Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/sae-eval", Json(new { texts, name = "stories-eval" }))).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/sae-eval", Json(new { name = "x" }))).StatusCode);
        await using var bare = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs });
        using var bareClient = Servers.Client(bare);
        Assert.Equal(HttpStatusCode.Conflict, (await bareClient.PostAsync("/api/jobs/sae-eval", Json(new { texts }))).StatusCode);
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task A_dictionary_trained_under_other_weight_processing_is_warned_about()
    {
        // An SAE on hook_z whose training model had its attention matrices refactored (SAELens's model_from_pretrained_kwargs);
        // the served model is not processed, so hook_z holds other values than the SAE was trained on: `loupe sae eval` warns, so does the job.
        var model = Servers.Stories;
        string folder = Directory.CreateTempSubdirectory("loupe-serve-processing-").FullName;
        try
        {
            int width = model.Config.NHeads * model.Config.DHead;
            var sae = new SparseDictionary(SaeShape.Sae(width, 16), new ReluActivation());
            sae.Initialize(1, decoderNorm: 1f);
            SaeLensFormat.Save(folder, sae, new SaeLensConfig { HookName = "blocks.1.attn.hook_z" });
            string cfg = Path.Combine(folder, "cfg.json");
            File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"metadata\": {", "\"metadata\": {\n    \"model_from_pretrained_kwargs\": {\"refactor_factored_attn_matrices\": true},", StringComparison.Ordinal));
            await using var host = await Servers.StartAsync(model, new ServeOptions { SaePath = folder });
            using var client = Servers.Client(host);
            string id = await JobApiTests.Start(client, "sae-eval", new { texts = JobApiTests.Texts(model, 4), context_size = 16, max_contexts = 4 });
            var events = await SteeringApiTests.ReadEvents(client, $"/api/jobs/{id}/events");
            Assert.Equal("result", events[^1].Type);
            string warning = events[^1].Data.GetProperty("data").GetProperty("warning").GetString()!;
            Assert.Contains("blocks.1.attn.hook_z", warning);
            Assert.Contains("refactor_factored_attn_matrices on in training, off here", warning);
            Assert.Contains("--process refactor_factored_attn_matrices", warning);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    static StringContent Json(object body) => new(JsonSerializer.Serialize(body), System.Text.Encoding.UTF8, "application/json");

    [RequiresSharedFact("models/stories260K")]
    public async Task A_matryoshka_dictionarys_levels_are_measured_alone()
    {
        // a finished Matryoshka SAE (saved as SAELens does, JumpReLU, with its levels under metadata) served with --sae
        var model = Servers.Stories;
        string folder = Directory.CreateTempSubdirectory("loupe-serve-matryoshka-").FullName;
        try
        {
            var sae = new SparseDictionary(SaeShape.Sae(model.Config.DModel, 64), new MatryoshkaBatchTopKActivation(8, [8, 24, 64]));
            sae.Initialize(1, decoderNorm: 1f);
            sae.P.Threshold[0] = 0.05f;
            SaeLensFormat.Save(folder, sae, new SaeLensConfig { HookName = "blocks.2.hook_resid_post" });
            await using var host = await Servers.StartAsync(model, new ServeOptions { SaePath = folder });
            using var client = Servers.Client(host);
            string[] texts = JobApiTests.Texts(model, 4);
            string id = await JobApiTests.Start(client, "sae-eval", new { texts, context_size = 16, max_contexts = 4, batch_size = 4 });
            var events = await SteeringApiTests.ReadEvents(client, $"/api/jobs/{id}/events");
            Assert.Equal("result", events[^1].Type);
            var levels = events[^1].Data.GetProperty("data").GetProperty("metrics").GetProperty("levels").EnumerateArray().ToList();
            var (splice, _) = SaeSplice.Load(model, folder);
            var want = SaeEvaluator.Evaluate(model, splice, ContextBuilder.ForModel(model, new InMemoryTextSource(texts, "same"), 16, 0, 4),
                new SaeEvalOptions { BatchSize = 4, Levels = [8, 24] });
            Assert.Equal([8, 24], levels.Select(l => l.GetProperty("width").GetInt32()));
            for (int l = 0; l < 2; l++)
                Assert.Equal(want.Levels[l].ExplainedVariance, levels[l].GetProperty("explained_variance").GetDouble(), 1e-9);
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }
}
