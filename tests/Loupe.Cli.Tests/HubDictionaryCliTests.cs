using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// <c>--sae hf:ORG/NAME/PATH</c>: a SAELens SAE in a folder of a hub repository (as SAE releases are published: one folder per
/// hook), fetched from <see cref="FakeHub"/> into the hub cache and used as a local folder would be.
/// </summary>
[Collection("console")]
public sealed class HubDictionaryCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-hub-sae-").FullName;
    readonly HubEnvironment _hub;

    public HubDictionaryCliTests() => _hub = new HubEnvironment(_dir);

    public void Dispose()
    {
        _hub.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>A hub repository of two SAEs on stories260K's residual stream, one folder each; the hub's endpoint and cache set.</summary>
    FakeHub HubWithSaes()
    {
        var files = new Dictionary<string, byte[]> { ["README.md"] = "# two SAEs"u8.ToArray() };
        foreach (int layer in new[] { 1, 2 })
        {
            var sae = new SparseDictionary(SaeShape.Sae(64, 128), new TopKActivation(8));
            sae.Initialize(seed: layer, decoderNorm: 1f);
            string folder = Path.Combine(_dir, $"sae-{layer}");
            SaeLensFormat.Save(folder, sae, new SaeLensConfig { HookName = $"blocks.{layer}.hook_resid_post", ContextSize = 32 });
            foreach (var file in Directory.GetFiles(folder)) files[$"blocks.{layer}.hook_resid_post/{Path.GetFileName(file)}"] = File.ReadAllBytes(file);
        }
        var hub = new FakeHub();
        hub.AddRepo("sae-org/stories-saes", files);
        return _hub.Use(hub);
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void SaeEvalReadsAnSaeFromAHubFolderAndFetchesItOnce()
    {
        using var hub = HubWithSaes();
        string[] args = ["sae", "eval", "--model", SharedData.Require("models/stories260K"), "--sae", "hf:sae-org/stories-saes/blocks.2.hook_resid_post",
            "--source", "brown:" + SharedData.Require("datasets/brown-corpus"), "--context-size", "32", "--max-contexts", "4", "--batch-size", "4"];
        var run = RunLoupe([.. args, "--out", Path.Combine(_dir, "eval")]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("--sae: 2 file(s) of sae-org/stories-saes/blocks.2.hook_resid_post", run.Err); // announced before the download
        var metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "eval", "eval.json")))!["metrics"]!;
        Assert.Equal("blocks.2.hook_resid_post", (string)metrics["hook"]!);
        Assert.Equal(0, hub.Count("GET", "blocks.1.hook_resid_post")); // the other SAE is not fetched

        int gets = hub.Count("GET", "/cdn/");
        run = RunLoupe([.. args, "--out", Path.Combine(_dir, "eval2")]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Equal(gets, hub.Count("GET", "/cdn/")); // cached: nothing downloaded again
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void SaeLensReleaseNamesResolveThroughItsRegistry()
    {
        using var hub = HubWithSaes();
        string registry = Path.Combine(_dir, "pretrained_saes.yaml");
        File.WriteAllText(registry, "stories-res:\n  model: stories260K\n  repo_id: sae-org/stories-saes\n  saes:\n  - id: layer-2\n    path: blocks.2.hook_resid_post\n");
        string? before = Environment.GetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable, registry);
            string[] args = ["sae", "eval", "--model", SharedData.Require("models/stories260K"), "--source", "brown:" + SharedData.Require("datasets/brown-corpus"),
                "--context-size", "32", "--max-contexts", "4", "--batch-size", "4", "--out", Path.Combine(_dir, "eval-saelens")];
            var run = RunLoupe([.. args, "--sae", "saelens:stories-res/layer-2"]);
            Assert.True(run.Code == 0, run.Err);
            Assert.Contains("saelens:stories-res/layer-2 → hf:sae-org/stories-saes/blocks.2.hook_resid_post (SAELens release stories-res for stories260K", run.Err);
            var metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "eval-saelens", "eval.json")))!["metrics"]!;
            Assert.Equal("blocks.2.hook_resid_post", (string)metrics["hook"]!);

            run = RunLoupe([.. args, "--sae", "saelens:stories-res/layer-3"]);
            Assert.Equal(2, run.Code);
            Assert.Contains("release stories-res has no SAE id 'layer-3'", run.Err);
            Environment.SetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable, Path.Combine(_dir, "nowhere.yaml"));
            run = RunLoupe([.. args, "--sae", "saelens:stories-res/layer-2"]);
            Assert.Equal(2, run.Code);
            Assert.Contains("SAELens registry not found", run.Err);
        }
        finally { Environment.SetEnvironmentVariable(SaeLensRegistry.EnvironmentVariable, before); }
    }

    [RequiresSharedFact("models/stories260K")]
    public void SteerReadsAVectorFileFromTheHubAndRefusesAFolderBeforeDownloading()
    {
        using var hub = HubWithSaes();
        string vectorFile = Path.Combine(_dir, "persona.safetensors");
        var v = Enumerable.Range(0, 64).Select(i => MathF.Sin(i)).ToArray();
        SafeTensorsWriter.Write(vectorFile, [("persona", [64], v)], new Dictionary<string, string> { ["hook"] = "blocks.2.hook_resid_post" });
        hub.AddRepo("vec-org/vectors", new Dictionary<string, byte[]> { ["happy/persona.safetensors"] = File.ReadAllBytes(vectorFile), ["README.md"] = "# vectors"u8.ToArray() });
        string model = SharedData.Require("models/stories260K");
        var run = RunLoupe("steer", "--model", model, "--prompt", "Once upon a time", "--vector", "hf:vec-org/vectors/happy/persona.safetensors:persona", "--coeff", "2", "-n", "2");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("--vector: 1 file(s) of vec-org/vectors/happy/persona.safetensors", run.Err);
        Assert.Contains("hf:vec-org/vectors/happy/persona.safetensors:persona", run.Out);

        int gets = hub.Count("GET", "/cdn/");
        run = RunLoupe("steer", "--model", model, "--prompt", "Once", "--vector", "hf:vec-org/vectors/happy", "--coeff", "2", "-n", "2");
        Assert.Equal(2, run.Code);
        Assert.Contains("hf:vec-org/vectors/happy is a folder of 1 file(s), not one file; nothing was downloaded", run.Err);
        run = RunLoupe("monitor", "read", "--model", model, "--monitor", "hf:vec-org/vectors", "--prompt", "Once");
        Assert.Equal(2, run.Code);
        Assert.Contains("--monitor: hf:vec-org/vectors is a folder of 2 file(s)", run.Err);
        run = RunLoupe("steer", "--model", model, "--prompt", "Once", "--vector", "hf:vec-org/vectors/happy/persona.safetensors:", "--coeff", "2");
        Assert.Equal(2, run.Code);
        Assert.Contains("--vector", run.Err);
        Assert.Equal(gets, hub.Count("GET", "/cdn/"));
    }

    [RequiresSharedFact("models/stories260K")]
    public void AHubModelDownloadIsAnnouncedBeforeItStarts()
    {
        using var hub = HubWithSaes();
        string stories = SharedData.Require("models/stories260K");
        hub.AddRepo("tiny-org/stories", new[] { "config.json", "model.safetensors", "tokenizer.json" }.ToDictionary(f => f, f => File.ReadAllBytes(Path.Combine(stories, f))));
        var run = RunLoupe("run", "--model", "tiny-org/stories", "--prompt", "Once upon a time", "-n", "2");
        Assert.True(run.Code == 0, run.Err);
        long bytes = new[] { "config.json", "model.safetensors", "tokenizer.json" }.Sum(f => new FileInfo(Path.Combine(stories, f)).Length);
        Assert.Contains($"--model: 3 file(s) of tiny-org/stories at ", run.Err);
        Assert.Contains(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / 1024.0 / 1024.0:0.0} MiB"), run.Err);
    }

    [Fact]
    public void HubLsShowsFoldersAndFilesWithSizesAndDownloadsNothing()
    {
        using var hub = HubWithSaes();
        var run = RunLoupe("hub", "ls", "hf:sae-org/stories-saes");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("sae-org/stories-saes at ", run.Out);
        Assert.Contains("2 folder(s), 1 file(s)", run.Out);
        Assert.Matches(@"blocks\.1\.hook_resid_post/\s+2 file\(s\)", run.Out);
        Assert.Contains("README.md", run.Out);
        run = RunLoupe("hub", "ls", "hf:sae-org/stories-saes/blocks.2.hook_resid_post");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("cfg.json", run.Out);
        Assert.Contains("sae_weights.safetensors", run.Out);
        Assert.Equal(0, hub.Count("GET", "/cdn/") + hub.Count("HEAD", "/resolve/"));
        AssertRefused(RunLoupe("hub", "ls", "hf:sae-org/stories-saes/nope"), "blocks.1.hook_resid_post/");
        AssertRefused(RunLoupe("hub", "ls", "sae-org/stories-saes"), "path", "hf:ORG/NAME");
    }

    [Fact]
    public void AHubPathThatIsNotThereOrNotAPathIsRefusedNamingTheOption()
    {
        using var hub = HubWithSaes();
        var run = RunLoupe("features", "build", "--model", Path.Combine(_dir, "no-model"), "--sae", "hf:sae-org/stories-saes/blocks.9.hook_resid_post",
            "--source", "generate:2", "--out", Path.Combine(_dir, "f.db"));
        AssertRefused(run, "blocks.1.hook_resid_post/, blocks.2.hook_resid_post/");
        AssertRefused(RunLoupe("sae", "eval", "--model", "m", "--sae", "hf:just-a-name", "--source", "generate:2", "--out", Path.Combine(_dir, "e")), "--sae", "hf:ORG/NAME");
        // The default store would go beside the dictionary, inside the hub cache: --out is asked for instead.
        AssertRefused(RunLoupe("features", "build", "--model", Path.Combine(_dir, "no-model"), "--sae", "hf:sae-org/stories-saes/blocks.1.hook_resid_post",
            "--source", "generate:2"), "--out", "hub cache");
    }

    [Fact]
    public void AReleaseRootIsRefusedFromItsListingBeforeAnythingIsDownloaded()
    {
        using var hub = HubWithSaes();
        // A whole release named where one dictionary is loaded: refused with the dictionaries it holds, nothing fetched.
        string model = SharedData.TestData(Path.Combine("reference", "gpt2"));
        AssertRefused(RunLoupe("sae", "eval", "--model", model, "--sae", "hf:sae-org/stories-saes", "--source", "generate:2", "--out", Path.Combine(_dir, "e")),
            "--sae", "nothing was downloaded", "hf:sae-org/stories-saes/blocks.1.hook_resid_post");
        // Gemma Scope's layout (layer_L/width_W/average_l0_N/params.npz) named as a transcoder set: one per layer must be chosen.
        var weights = new Dictionary<string, byte[]>();
        foreach (var l0 in new[] { 7, 99 })
            for (int l = 0; l < 3; l++) weights[$"layer_{l}/width_32/average_l0_{l0}/params.npz"] = [1, 2, 3];
        hub.AddRepo("weights-org/scope", weights);
        AssertRefused(RunLoupe("attribute", "--model", model, "--transcoders", "hf:weights-org/scope", "--tokens", "1,2", "--out", Path.Combine(_dir, "g")),
            "--transcoders", "nothing was downloaded", "hf:weights-org/scope/layer_0/width_32/average_l0_7", "config.yaml");
        Assert.Equal(0, hub.Count("GET", "/cdn/"));
    }
    /// <summary>
    /// circuit-tracer's preset layout: a small repository whose config.yaml lists each layer's Gemma Scope params.npz in another
    /// repository as hf:// (how its Gemma 2 transcoders are published). The graph is circuit-tracer's fixture graph.
    /// </summary>
    [Fact]
    public void AttributeFetchesTheTranscodersAHubConfigListsFromAnotherRepository()
    {
        using var hub = HubWithSaes();
        var weights = new Dictionary<string, byte[]>();
        var config = new System.Text.StringBuilder("model_kind: transcoder_set\nfeature_input_hook: \"ln2.hook_normalized\"\nfeature_output_hook: \"hook_mlp_out\"\ntranscoders:\n");
        for (int l = 0; l < 3; l++)
        {
            var (d, _) = SaeLensFormat.Load(SharedData.TestData(Path.Combine("attribution", "transcoders", $"layer_{l}")));
            var s = d.Shape;
            string file = Path.Combine(_dir, $"npz{l}", "params.npz");
            PublishedDictionaryFiles.WriteGemmaScopeNpz(file, s.DIn, s.DSae, s.DOut, d.P.WEnc, d.P.BEnc, d.P.WDec, d.P.BDec, new float[s.DSae]);
            weights[$"layer_{l}/width_32/average_l0_7/params.npz"] = File.ReadAllBytes(file);
            config.Append($"  - \"hf://weights-org/tc-weights/layer_{l}/width_32/average_l0_7/params.npz\"\n");
        }
        weights["layer_0/width_32/average_l0_99/params.npz"] = weights["layer_0/width_32/average_l0_7/params.npz"]; // another variant: not fetched
        hub.AddRepo("weights-org/tc-weights", weights);
        hub.AddRepo("ct-org/tc-set", new Dictionary<string, byte[]> { ["config.yaml"] = System.Text.Encoding.UTF8.GetBytes(config.ToString()) });
        string[] args = ["attribute", "--model", SharedData.TestData(Path.Combine("reference", "gpt2")), "--transcoders", "hf:ct-org/tc-set",
            "--tokens", "0,360,480,161,89,311,293,431", "--slug", "fixture"];
        var run = RunLoupe([.. args, "--out", Path.Combine(_dir, "graph")]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("pruned: 38 nodes, 351 edges", run.Out);
        Assert.Contains("lists 3 transcoder file(s); fetching the 3 not cached", run.Err); // announced before the download
        Assert.Contains("--transcoders: 3 transcoders listed in", run.Err);                 // and the memory they take, before loading
        Assert.Contains(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"≈ {3 * (64 * 32 * 2 + 32 + 64 + 32) * 4 / 1024.0:0.0} KiB in memory"), run.Err);
        Assert.Equal(0, hub.Count("GET", "average_l0_99"));
        Assert.Equal(1, hub.Count("GET", "/api/models/weights-org/tc-weights")); // one listing for the three files
        var metadata = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "graph", "fixture.json")))!["metadata"]!;
        Assert.Equal("ct-org/tc-set", (string)metadata["scan"]!); // circuit-tracer's name for a hub set
        Assert.Equal("hf://weights-org/tc-weights/layer_2/width_32/average_l0_7/params.npz", (string)metadata["transcoder_list"]![2]!);

        int gets = hub.Count("GET", "/cdn/");
        run = RunLoupe([.. args, "--out", Path.Combine(_dir, "graph2")]);
        Assert.True(run.Code == 0, run.Err);
        Assert.DoesNotContain("fetching", run.Err);
        Assert.Equal(gets, hub.Count("GET", "/cdn/")); // cached: nothing downloaded again
    }

    [Fact]
    public void A_tuned_lens_is_read_from_a_folder_of_a_space_as_tuned_lens_publishes_its_own()
    {
        string modelDir = SharedData.TestData("reference/llama");
        using (var model = Loupe.Models.ModelLoader.LoadFolder(modelDir))
            Loupe.Causal.Lens.TunedLens.Identity(model).Save(Path.Combine(_dir, "lens"));
        var files = new Dictionary<string, byte[]> { ["app.py"] = "import gradio"u8.ToArray() };
        foreach (var file in Directory.GetFiles(Path.Combine(_dir, "lens"))) files[$"lens/llama/{Path.GetFileName(file)}"] = File.ReadAllBytes(file);
        using var hub = _hub.Use(new FakeHub());
        hub.AddRepo("spaces/lens-org/tuned-lens", files);

        var run = RunLoupe("lens", "--model", modelDir, "--tokens", "1,2,3,4", "--answer-id", "5", "--tuned", "hf:spaces/lens-org/tuned-lens/lens/llama", "--out", Path.Combine(_dir, "lens-out"));
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("--tuned: 2 file(s) of spaces/lens-org/tuned-lens/lens/llama", run.Err);
        Assert.Equal(0, hub.Count("GET", "app.py"));

        // The space's root holds no lens at its top: refused from the listing, the lens deeper named.
        AssertRefused(RunLoupe("lens", "--model", modelDir, "--tokens", "1,2,3,4", "--answer-id", "5", "--tuned", "hf:spaces/lens-org/tuned-lens", "--out", Path.Combine(_dir, "lens-out2")),
            "not a tuned lens (params.pt or params.safetensors) at its top", "hf:spaces/lens-org/tuned-lens/lens/llama");
    }

    // Twelve rows of ten token ids (BOS first) as one parquet shard, the list as pyarrow lays it out: input_ids (LIST) { list { element } }.
    static async Task<byte[]> TokenShard()
    {
        var random = new Random(2);
        long[][] rows = [.. Enumerable.Range(0, 12).Select(_ => Enumerable.Range(0, 10).Select(t => (long)(t == 0 ? 1 : random.Next(3, 512))).ToArray())];
        var schema = new Parquet.Schema.ParquetSchema(new Parquet.Schema.ListField("input_ids", new Parquet.Schema.DataField<long?>("element")));
        var ids = schema.GetDataFields()[0];
        using var buffer = new MemoryStream();
        await using (var writer = await Parquet.ParquetWriter.CreateAsync(schema, buffer))
        using (var group = writer.CreateRowGroup())
            await group.WriteAsync<long>(ids, rows.SelectMany(r => r.Select(v => (long?)v)).ToArray().AsMemory(), rows.SelectMany(r => r.Select((_, i) => i == 0 ? 0 : 1)).ToArray().AsMemory());
        return buffer.ToArray();
    }

    [Fact]
    public async Task A_pretokenized_datasets_tokenizer_must_have_the_models_vocabulary()
    {
        // stories260K (its torch.save copy, with its tokenizer.json) and the tokenizers two datasets name, on the hub
        string model = SharedData.TestData("pytorch/stories260K-bin");
        using var hub = _hub.Use(new FakeHub());
        hub.AddRepo("tok-org/stories", new Dictionary<string, byte[]> { ["tokenizer.json"] = File.ReadAllBytes(Path.Combine(model, "tokenizer.json")) });
        hub.AddRepo("tok-org/minilm", new Dictionary<string, byte[]> { ["tokenizer.json"] = File.ReadAllBytes(SharedData.TestData("reference/minilm/tokenizer.json")) });
        byte[] shard = await TokenShard();
        foreach (var (tokenizer, same) in new[] { ("tok-org/stories", true), ("tok-org/minilm", false) })
        {
            string repo = $"datasets/corpus-org/tokenized-{tokenizer.Split('/')[1]}";
            hub.AddRepo(repo, new Dictionary<string, byte[]>
            {
                ["sae_lens.json"] = System.Text.Encoding.UTF8.GetBytes($$"""{"tokenizer_name": "{{tokenizer}}", "context_size": 10}"""),
                ["data/train-00000-of-00001.parquet"] = shard,
            });
            var run = RunLoupe("harvest", "--model", model, "--source", $"parquet:hf:{repo}/data", "--context-size", "8",
                "--hooks", "blocks.0.hook_resid_post", "--out", Path.Combine(_dir, "acts-" + tokenizer.Split('/')[1]));
            if (same)
            {
                Assert.True(run.Code == 0, run.Err);
                Assert.Contains("whose vocabulary is this model's (512 tokens)", run.Err);
            }
            else
            {
                Assert.True(run.Code == 2, run.Err);
                Assert.Contains("whose vocabulary is not this model's (id 0:", run.Err);
                Assert.DoesNotContain("   at ", run.Err);
            }
        }
    }

    [Fact]
    public async Task A_pretokenized_dataset_is_read_from_the_hub_as_parquet_shards()
    {
        // a dataset repository as SAELens's pretokenize runner publishes one: parquet shards of input_ids rows under data/
        byte[] shard = await TokenShard();
        using var hub = _hub.Use(new FakeHub());
        hub.AddRepo("datasets/corpus-org/tiny-tokenized", new Dictionary<string, byte[]>
        {
            ["README.md"] = "# tokenized"u8.ToArray(),
            ["sae_lens.json"] = """{"tokenizer_name": "openai-community/gpt2", "context_size": 10, "begin_batch_token": "bos"}"""u8.ToArray(),
            ["data/train-00000-of-00001.parquet"] = shard,
        });

        // the gpt2 fixture has no tokenizer: token rows need none
        string output = Path.Combine(_dir, "acts");
        var run = RunLoupe("harvest", "--model", SharedData.TestData("reference/gpt2"), "--source", "parquet:hf:datasets/corpus-org/tiny-tokenized/data#input_ids",
            "--context-size", "8", "--hooks", "blocks.0.hook_resid_post", "--out", output);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("--source: 1 file(s) of datasets/corpus-org/tiny-tokenized/data", run.Err);
        Assert.Equal(0, hub.Count("GET", "README.md"));
        Assert.Contains("the rows were tokenized with openai-community/gpt2", run.Err);   // sae_lens.json, fetched from the top
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "manifest.json")))!;
        Assert.Equal(12, (int)manifest["total_contexts"]!);
        Assert.Contains("column \"input_ids\" of token ids (tokenized with openai-community/gpt2, rows of 10, sae_lens.json): the first 8 ids of each row", (string)manifest["source"]!);

        // a path with nothing a source reads is refused from the listing
        run = RunLoupe("harvest", "--model", SharedData.TestData("reference/gpt2"), "--source", "parquet:hf:datasets/corpus-org/tiny-tokenized",
            "--context-size", "8", "--hooks", "blocks.0.hook_resid_post", "--out", Path.Combine(_dir, "acts2"));
        Assert.True(run.Code == 0, run.Err);   // the repository root holds the shard too
        hub.AddRepo("datasets/corpus-org/card-only", new Dictionary<string, byte[]> { ["README.md"] = "# nothing"u8.ToArray(), ["dataset_infos.json"] = "{}"u8.ToArray() });
        run = RunLoupe("harvest", "--model", SharedData.TestData("reference/gpt2"), "--source", "parquet:hf:datasets/corpus-org/card-only",
            "--context-size", "8", "--hooks", "blocks.0.hook_resid_post", "--out", Path.Combine(_dir, "acts3"));
        Assert.Equal(2, run.Code);
        Assert.Contains("no .parquet, .jsonl(.gz/.zst) or .txt file; nothing was downloaded", run.Err);
    }
}
