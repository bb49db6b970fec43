using Loupe.Cli;

namespace Loupe.Explain.Tests;

/// <summary><c>loupe explain</c> and <c>loupe features top</c> in-process against the scripted server.</summary>
[Collection("console")]
public class ExplainCliTests
{
    static readonly Lock s_console = new();

    static (int Code, string Out, string Err) Loupe(params string[] args)
    {
        lock (s_console) return global::Loupe.Cli.Tests.CliHarness.RunLoupe(args);
    }

    [Fact]
    public void Explain_then_features_top_shows_the_explanation_and_scores()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        string prices = folder.File("prices.json");
        File.WriteAllText(prices, """{"scripted-model": {"input_per_million": 1, "output_per_million": 4}}""");
        using var server = new ScriptedServer();
        var (code, output, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model",
            "--api-key-env", "LOUPE_EXPLAIN_TEST_UNSET_KEY", "--features", "0-2", "--examples", "6", "--score-examples", "4", "--batch", "4",
            "--prices", prices, "--cache", folder.File("cache.db"), "--seed", "1");
        Assert.True(code == 0, $"exit {code}\n{output}\n{err}");
        Assert.Contains("the token \"apple\"", output);
        Assert.Contains("3 features explained, 0 already stored", output);
        Assert.Contains("$", output);
        Assert.All(server.Log, r => Assert.Null(r.Authorization));

        var top = Loupe("features", "top", "--db", store, "-f", "0");
        Assert.True(top.Code == 0, top.Err);
        Assert.Contains("explanation (scripted-model): \"the token \"apple\"\"", top.Out);
        Assert.Contains("detection acc 1.00 F1 1.00 AUROC 1.00", top.Out);
        Assert.Contains("fuzzing acc 1.00", top.Out);

        var again = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model", "--features", "0-2,6",
            "--examples", "6", "--score-examples", "4", "--batch", "4", "--prices", prices, "--cache", folder.File("cache.db"), "--seed", "1");
        Assert.Contains("0 features explained, 3 already stored, 1 dead (skipped)", again.Out);
    }

    [Fact]
    public void The_embedding_scorer_runs_all_MiniLM_from_NuGet_and_shows_in_features_top()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        var (code, output, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model",
            "--features", "0-1", "--examples", "6", "--score-examples", "4", "--batch", "4", "--scorers", "embedding",
            "--cache", folder.File("cache.db"), "--seed", "1");
        Assert.True(code == 0, $"exit {code}\n{output}\n{err}");
        Assert.Contains("emb AUC", output);
        Assert.Contains("embedding AUROC 1.00", output);
        Assert.Equal(2, server.Log.Count);   // the two explainer requests; the scorer asks nothing
        var top = Loupe("features", "top", "--db", store, "-f", "1");
        Assert.True(top.Code == 0, top.Err);
        Assert.Contains("embedding acc", top.Out);

        // detection against the windows most like the activating ones, found by the same encoder
        (code, output, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model", "--features", "3",
            "--scorers", "detection", "--negatives", "similar", "--score-examples", "3", "--cache", folder.File("cache.db"), "--seed", "1");
        Assert.True(code == 0, $"exit {code}\n{output}\n{err}");
        Assert.Contains("1 features explained", output);
        (code, _, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model", "--features", "3", "--negatives", "hard");
        Assert.NotEqual(0, code);
        Assert.Contains("--negatives", err);

        (code, _, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model", "--features", "2",
            "--scorers", "embedding", "--embedder", folder.File("no-such-encoder"), "--cache", folder.File("cache.db"));
        Assert.NotEqual(0, code);
        Assert.Contains("--embedder", err);
        Assert.Contains("no-such-encoder", err);
    }

    [Fact]
    public void The_simulation_scorer_shows_its_correlation_in_the_summary_and_features_top()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        var (code, output, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model",
            "--features", "0-1", "--examples", "6", "--score-examples", "3", "--scorers", "simulation", "--top-logprobs", "0",
            "--cache", folder.File("cache.db"), "--seed", "1");
        Assert.True(code == 0, $"exit {code}\n{output}\n{err}");
        Assert.Contains("sim r", output);
        Assert.Contains("(0 undefined)", output);
        Assert.Equal(2 + 2 * 6, server.Log.Count);   // per feature: the explainer, then one request per window (3 activating + 3 not)
        var top = Loupe("features", "top", "--db", store, "-f", "1");
        Assert.True(top.Code == 0, top.Err);
        Assert.Matches(@"simulation r 0\.\d\d \(activating windows 0\.\d\d\)", top.Out);

        (code, _, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "scripted-model", "--features", "2",
            "--scorers", "simulate", "--cache", folder.File("cache.db"));
        Assert.NotEqual(0, code);
        Assert.Contains("detection, fuzzing, simulation and/or embedding", err);
    }

    [Fact]
    public void A_refusing_endpoint_is_one_error_line()
    {
        using var folder = new TestFolder();
        string store = SyntheticStore.Write(folder.File("features.db"));
        using var server = new ScriptedServer();
        server.Enqueue(Fault.BadRequest);
        var (code, _, err) = Loupe("explain", "--store", store, "--endpoint", server.BaseUrl, "--model", "nope", "--features", "0",
            "--concurrency", "1", "--prices", folder.File("prices.json"), "--cache", folder.File("cache.db"));
        Assert.Equal(2, code);
        Assert.DoesNotContain("   at ", err);
        Assert.Contains("error: ", err);
        Assert.Contains("HTTP 400", err);
        Assert.Contains("does not exist", err);
        Assert.Contains("no price for model 'nope'", err);
        Assert.True(File.Exists(folder.File("prices.json")));
    }
}
