using System.Text.Json;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Testing;
using Microsoft.Data.Sqlite;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// A seeded SAE folder for the HF-checked llama fixture (no tokenizer) with its feature store built by the
/// library, so <c>features top</c> and <c>list</c> are tested without ../shared.
/// </summary>
public sealed class LlamaFeatureStore : IDisposable
{
    public const int DSae = 24;

    public LlamaFeatureStore()
    {
        Folder = Directory.CreateTempSubdirectory("loupe-features-cli").FullName;
        var dict = new SparseDictionary(SaeShape.Sae(64, DSae, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 2, decoderNorm: 1f);
        for (int f = 0; f < DSae; f++) dict.P.BEnc[f] = -0.05f * f;
        var cfg = new SaeLensConfig { HookName = "blocks.1.hook_resid_post" };
        SaeLensFormat.Save(Folder, dict, cfg);
        var rng = new Random(1);
        var docs = Enumerable.Range(0, 40).Select(_ => Enumerable.Range(0, rng.Next(4, 18)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        var contexts = ContextBuilder.Build(docs, new ContextOptions(16, BosTokenId: 1, SeparatorTokenId: 2), "random ids");
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        var (loaded, loadedCfg) = DictionaryFile.Load(Folder);
        FeatureDashboardBuilder.Build(model, loaded, loadedCfg, contexts, Db, new FeatureBuildOptions { TopK = 5, Window = 4 }, Folder);
        using var store = FeatureStore.Open(Db);
        Densest = store.Features("density", 1)[0].Feature;
    }

    public string Folder { get; }
    public string Db => Path.Combine(Folder, FeatureStoreSchema.DefaultFileName);
    public int Densest { get; }

    public void Dispose() => Directory.Delete(Folder, recursive: true);
}

/// <summary><c>loupe features build | top | list</c>, run in-process with captured output.</summary>
[Collection("console")]
public class FeaturesCommandTests(LlamaFeatureStore store) : IClassFixture<LlamaFeatureStore>
{
    [Fact]
    public void HelpShowsExamples()
    {
        foreach (var args in new[] { new[] { "features", "--help" }, ["features", "build", "--help"], ["features", "top", "--help"], ["features", "list", "--help"] })
        {
            var (_, stdout, _) = RunLoupe(args);
            Assert.Contains("Examples:", stdout);
            Assert.Contains("loupe features", stdout);
        }
    }

    [Fact]
    public void Top_ShowsStatistics_MarkedContexts_Sparkline_AndLogits()
    {
        int f = store.Densest;
        var (code, stdout, err) = RunLoupe("features", "top", "--sae", store.Folder, "--feature", f.ToString(), "--n", "3", "--quantiles");
        Assert.True(code == 0, err);
        Assert.Contains($"feature {f} of {LlamaFeatureStore.DSae} at blocks.1.hook_resid_post", stdout);
        Assert.Contains("density ", stdout);
        Assert.Contains("activations ", stdout);
        Assert.Contains("50 bins over (0, ", stdout);
        Assert.Contains("top activations", stdout);
        Assert.Contains("    3  ", stdout);
        Assert.DoesNotContain("    4  ", stdout.Split("interval")[0]);
        Assert.Matches("«<[0-9]+>»", stdout); // no tokenizer: ids in angle brackets, the example token marked
        Assert.Contains("interval (", stdout);
        Assert.Contains("promoted logits", stdout);
        Assert.Contains("suppressed logits", stdout);

        using var db = FeatureStore.Open(store.Db);
        var best = db.Examples(f)[0];
        Assert.Contains($"{best.Activation:F3}  ", stdout);
        Assert.Contains($"«<{best.ContextTokens[best.Position]}>»", stdout);
    }

    [Fact]
    public void TopJson_HoldsEverythingStoredForTheFeature()
    {
        int f = store.Densest;
        var (code, stdout, err) = RunLoupe("features", "top", "--db", store.Db, "-f", f.ToString(), "--n", "4", "--json");
        Assert.True(code == 0, err);
        using var json = JsonDocument.Parse(stdout);
        var root = json.RootElement;
        Assert.Equal(f, root.GetProperty("feature").GetInt32());
        Assert.Equal(LlamaFeatureStore.DSae, root.GetProperty("d_sae").GetInt32());
        var top = root.GetProperty("top").EnumerateArray().ToList();
        Assert.Equal(4, top.Count);
        foreach (var e in top)
        {
            int length = e.GetProperty("tokens").GetArrayLength();
            Assert.Equal(length, e.GetProperty("acts").GetArrayLength());
            Assert.InRange(length, 5, 9); // ±4, clipped at the context's ends
            int at = e.GetProperty("position").GetInt32() - e.GetProperty("window_start").GetInt32();
            Assert.Equal(e.GetProperty("activation").GetDouble(), e.GetProperty("acts")[at].GetDouble(), 1e-5);
        }
        Assert.Equal(10, root.GetProperty("promoted").GetArrayLength());
        Assert.Equal(10, root.GetProperty("quantiles").GetArrayLength());
        long histogramTotal = root.GetProperty("acts_histogram").GetProperty("counts").EnumerateArray().Sum(c => c.GetInt64());
        Assert.Equal(root.GetProperty("n_active").GetInt64(), histogramTotal);
    }

    [Fact]
    public void List_SortsByDensity_AndPrintsJsonLines()
    {
        var (code, stdout, err) = RunLoupe("features", "list", "--sae", Path.Combine(store.Folder, "cfg.json"), "--n", "5");
        Assert.True(code == 0, err);
        Assert.Contains($"{LlamaFeatureStore.DSae} features at blocks.1.hook_resid_post", stdout);
        var (jsonCode, lines, jsonErr) = RunLoupe("features", "list", "--db", store.Db, "--n", "6", "--json");
        Assert.True(jsonCode == 0, jsonErr);
        var densities = lines.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("density").GetDouble()).ToList();
        Assert.Equal(6, densities.Count);
        Assert.Equal(densities.OrderDescending(), densities);
    }

    [Fact]
    public void Errors_NameTheRange_TheFile_AndTheVersion()
    {
        var (code, _, err) = RunLoupe("features", "top", "--db", store.Db, "--feature", "24");
        Assert.Equal(2, code); // bad input: one line, exit code 2
        Assert.Contains("feature: expected an index in [0, 23]", err);
        Assert.Contains("d_sae = 24", err);
        Assert.Contains("found 24", err);

        string dir = Directory.CreateTempSubdirectory("loupe-features-cli-err").FullName;
        (code, _, err) = RunLoupe("features", "top", "--db", Path.Combine(dir, "nothing.db"), "--feature", "0");
        Assert.Equal(2, code);
        Assert.Contains("feature store not found", err);
        Assert.Contains("nothing.db", err);

        (code, _, err) = RunLoupe("features", "top", "--db", store.Db, "--sae", store.Folder, "--feature", "0");
        Assert.Equal(2, code);
        Assert.Contains("exactly one of --sae", err);

        string old = Path.Combine(dir, "old.db");
        File.Copy(store.Db, old);
        using (var db = new SqliteConnection($"Data Source={old};Pooling=False"))
        {
            db.Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "UPDATE meta SET value = '0' WHERE key = 'schema_version'";
            cmd.ExecuteNonQuery();
        }
        (code, _, err) = RunLoupe("features", "list", "--db", old);
        Assert.Equal(2, code);
        Assert.Contains("schema_version is 0", err);
        Directory.Delete(dir, recursive: true);
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void Build_OnBrown_ThenTopShowsTokenText()
    {
        string model = SharedData.Require("models/stories260K"), brown = SharedData.Require("datasets/brown-corpus");
        string folder = Directory.CreateTempSubdirectory("loupe-features-260k").FullName;
        try
        {
            var dict = new SparseDictionary(SaeShape.Sae(64, 32), new ReluActivation());
            dict.Initialize(seed: 9, decoderNorm: 1f);
            for (int f = 0; f < 32; f++) dict.P.BEnc[f] = -0.2f - 0.05f * f;
            SaeLensFormat.Save(folder, dict, new SaeLensConfig { HookName = "blocks.2.hook_resid_post", ContextSize = 32 });

            var (code, stdout, err) = RunLoupe("features", "build", "--model", model, "--sae", folder, "--source", "brown:" + brown,
                "--max-contexts", "24", "--top", "5", "--window", "6");
            Assert.True(code == 0, err);
            Assert.Contains("32 features × 744 tokens at blocks.2.hook_resid_post", stdout); // 24 contexts × 31 tokens (BOS left out)
            Assert.Equal([FeatureStoreSchema.DefaultFileName], Directory.GetFiles(folder, "features*").Select(Path.GetFileName));

            using (var db = FeatureStore.Open(Path.Combine(folder, FeatureStoreSchema.DefaultFileName)))
            {
                Assert.Equal("32", db.Meta["context_size"]);
                Assert.Contains("Brown corpus", db.Meta["source"]);
                Assert.Equal(" the", db.TokenText(TheToken(model))); // the leading space survives
                int f = db.Features("density", 1)[0].Feature;
                (code, stdout, err) = RunLoupe("features", "top", "--sae", folder, "--feature", f.ToString(), "--n", "2");
                Assert.True(code == 0, err);
                Assert.Matches("«[^<»]+»", stdout); // token text, not ids
                Assert.Matches("\\+[0-9.]+  \"[^\"]+\"", stdout); // a promoted token with its text
            }

            (code, _, err) = RunLoupe("features", "build", "--model", model, "--sae", folder, "--hook", "blocks.2.hook_resid_pots",
                "--source", "brown:" + brown, "--max-contexts", "2");
            Assert.Equal(2, code);
            Assert.Contains("hook 'blocks.2.hook_resid_pots' does not exist", err);
            Assert.Contains("blocks.2.hook_resid_post", err);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    static int TheToken(string modelFolder)
    {
        using var m = ModelLoader.LoadFolder(modelFolder);
        var ids = m.Tokenizer!.Encode("a the", addSpecialTokens: false);
        return ids[^1];
    }
}
