using System.CommandLine;
using System.Diagnostics;
using Loupe.Cli.Commands;
using Loupe.Testing;
using static Loupe.Cli.Tests.CliHarness;

namespace Loupe.Cli.Tests;

/// <summary>
/// Abused arguments, verb by verb: each is a clean refusal (exit code 2, one <c>error:</c> line naming the
/// option, no stack trace), while an unexpected exception still escapes as a bug with its stack trace.
/// Most refusals happen before the model loads, so a model path that does not exist is fine there.
/// </summary>
[Collection("console")]
public sealed class CliRefusalTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-cli-refusal").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Gpt2 => SharedData.TestData(Path.Combine("reference", "gpt2")); // no tokenizer: token ids only

    string Out(string name) => Path.Combine(_dir, name);

    [Theory]
    [InlineData("--temperature", "abc", "--temperature")]
    [InlineData("--temperature", "NaN", "--temperature")]
    [InlineData("--temperature", "-1", "--temperature")]
    [InlineData("--temperature", "Infinity", "--temperature")]
    [InlineData("--top-p", "0", "--top-p")]
    [InlineData("--top-p", "1.5", "--top-p")]
    [InlineData("--top-p", "NaN", "--top-p")]
    [InlineData("--top-k", "-1", "--top-k")]
    [InlineData("--max-new-tokens", "-1", "--max-new-tokens")]
    [InlineData("--max-new-tokens", "99999999999", "--max-new-tokens")]
    [InlineData("--seed", "99999999999", "--seed")]
    [InlineData("--top", "-3", "--top")]
    [InlineData("--no-such-option", "1", "--no-such-option")]
    public void RunRefusesBadSamplingArguments(string option, string value, string named) =>
        AssertRefused(RunLoupe("run", "--model", Gpt2, "--tokens", "1,2,3", option, value), named);

    [Theory]
    [InlineData("1,2;3,4", "one row")]
    [InlineData("1,x", "'x'")]
    [InlineData("1,99999", "99999")]
    [InlineData("1,-4", "-4")]
    [InlineData("1,2;3", "different lengths")]
    public void RunRefusesBadTokens(string tokens, string named) =>
        AssertRefused(RunLoupe("run", "--model", Gpt2, "--tokens", tokens, "-n", "1"), "--tokens", named);

    [Fact]
    public void RunRefusesTooManyTokensForTheContext()
    {
        string tokens = string.Join(",", Enumerable.Repeat(1, 5000));
        AssertRefused(RunLoupe("run", "--model", Gpt2, "--tokens", tokens, "-n", "1"), "--tokens", "n_ctx");
    }

    [Fact]
    public void PromptAndTokensTogetherOrAPromptWithoutATokenizerAreRefused()
    {
        AssertRefused(RunLoupe("run", "--model", Gpt2, "--tokens", "1,2", "--prompt", "hi"), "--prompt", "--tokens");
        AssertRefused(RunLoupe("run", "--model", Gpt2), "--prompt", "--tokens");
        AssertRefused(RunLoupe("run", "--model", Gpt2, "--prompt", "hi"), "no tokenizer");
        AssertRefused(RunLoupe("tokenize", "--model", Gpt2, "--text", "hi"), "no tokenizer");
        // A TransformerLens folder whose config names its tokenizer's repository: the message says which and how to get it.
        string toy = SharedData.TestData(Path.Combine("transformer_lens", "shortformer-attn-only-2l"));
        AssertRefused(RunLoupe("run", "--model", toy, "--prompt", "hi"), "no tokenizer", "tokenizer_name 'NeelNanda/gpt-neox-tokenizer-digits'");
        AssertRefused(RunLoupe("tokenize", "--model", toy, "--text", "hi"), "tokenizer_name 'NeelNanda/gpt-neox-tokenizer-digits'");
    }

    [Fact]
    public void CacheAndGradRefuseUnknownHooksBadMetricsAndTokens()
    {
        AssertRefused(RunLoupe("cache", "--model", Gpt2, "--tokens", "1,2,3", "--hooks", "hook_embed,blocks.*.hook_nope", "--out", Out("c.safetensors")),
            "--hooks", "blocks.*.hook_nope");
        AssertRefused(RunLoupe("cache", "--model", Gpt2, "--tokens", "1,2,3", "--hooks", " , ", "--out", Out("c.safetensors")), "--hooks");
        AssertRefused(RunLoupe("grad", "--model", Gpt2, "--tokens", "1,2,3", "--metric", "logit_diff:17,-1", "--hooks", "hook_embed", "--out", Out("g.safetensors")),
            "--metric token", "-1");
        AssertRefused(RunLoupe("grad", "--model", Gpt2, "--tokens", "1,2,3", "--metric", "entropy", "--hooks", "hook_embed", "--out", Out("g.safetensors")), "--metric");
        AssertRefused(RunLoupe("grad", "--model", Gpt2, "--tokens", "1,2,3", "--metric", "loss", "--hooks", "blocks.7.hook_resid_pre", "--out", Out("g.safetensors")),
            "--hooks", "blocks.7.hook_resid_pre");
        Assert.Empty(Directory.GetFiles(_dir));
    }

    [Theory]
    [InlineData("--method", "guess", "--method")]
    [InlineData("--target", "resid_typo", "--target")]
    [InlineData("--max-rows", "0", "--max-rows")]
    [InlineData("--max-rows", "abc", "--max-rows")]
    [InlineData("--position", "12", "--position")]
    [InlineData("--position", "-13", "--position")]
    [InlineData("--answer-id", "-1", "--answer-id")]
    [InlineData("--answer-id", "512", "--answer-id")]
    public void PatchRefusesBadArguments(string option, string value, string named)
    {
        var args = new List<string> { "patch", "--model", Gpt2, "--clean-tokens", "82,87,74,39,184,175,214,409,305,33,71,171",
            "--corrupt-tokens", "82,87,74,300,184,175,214,12,305,33,71,171", "--wrong-id", "42", "--out", Out("patch") };
        if (option != "--answer-id") args.AddRange(["--answer-id", "17"]);
        args.AddRange([option, value]);
        AssertRefused(RunLoupe([.. args]), named);
    }

    [Fact]
    public void PatchRefusesMismatchedPromptsAndAFileAsItsOutputFolder()
    {
        AssertRefused(RunLoupe("patch", "--model", Gpt2, "--clean-tokens", "1,2,3", "--corrupt-tokens", "1,2", "--answer-id", "1", "--out", Out("p")),
            "--clean", "--corrupt", "same number of tokens");
        string file = Out("a-file");
        File.WriteAllText(file, "keep me");
        AssertRefused(RunLoupe("patch", "--model", Gpt2, "--clean-tokens", "1,2,3", "--corrupt-tokens", "1,2,4", "--answer-id", "1", "--out", file),
            "--out", "not a folder");
        Assert.Equal("keep me", File.ReadAllText(file));
    }

    [Theory]
    [InlineData("--scale", "sideways", "--scale")]
    [InlineData("--position", "4", "--position")]
    [InlineData("--position", "99999999999", "--position")]
    [InlineData("--answer-id", "99999", "--answer-id")]
    [InlineData("--tokens", "1,2;3,4", "one row")]
    public void LensRefusesBadArguments(string option, string value, string named)
    {
        var args = new List<string> { "lens", "--model", Gpt2, "--out", Out("lens") };
        if (option != "--tokens") args.AddRange(["--tokens", "82,87,74,39"]);
        if (option != "--answer-id") args.AddRange(["--answer-id", "17"]);
        args.AddRange([option, value]);
        AssertRefused(RunLoupe([.. args]), named);
    }

    [Theory]
    [InlineData("--positions", "later", "--positions")]
    [InlineData("--positions", "from:99999999999", "--positions")]
    [InlineData("--positions", "from:-2", "--positions")]
    [InlineData("--coeff", "NaN", "--coeff")]
    [InlineData("--coeff", "Infinity", "--coeff")]
    [InlineData("--samples", "0", "--samples")]
    [InlineData("--seed", "2147483647", "--seed")] // with --samples 2, seed + 1 would overflow
    [InlineData("--temperature", "NaN", "--temperature")]
    [InlineData("--top-p", "2", "--top-p")]
    [InlineData("--max-new-tokens", "-5", "--max-new-tokens")]
    public void SteerRefusesBadArgumentsBeforeLoadingTheModel(string option, string value, string named)
    {
        var args = new List<string> { "steer", "--model", Out("no-model"), "--prompt", "Once", "--vector", "v.safetensors" };
        if (option != "--coeff") args.AddRange(["--coeff", "2"]);
        if (option != "--samples") args.AddRange(["--samples", "2"]);
        args.AddRange([option, value]);
        AssertRefused(RunLoupe([.. args]), named);
    }

    [Theory]
    [InlineData("--coeffs", "1,x", "--coeffs")]
    [InlineData("--coeffs", "NaN", "--coeffs")]
    [InlineData("--coeffs", ",", "--coeffs")]
    [InlineData("--layer", "-1", "--layer")]
    [InlineData("--layer", "99999999999", "--layer")]
    [InlineData("--held-out", "1", "--held-out")]
    [InlineData("--held-out", "NaN", "--held-out")]
    [InlineData("--seeds", "0", "--seeds")]
    [InlineData("--temperature", "-0.5", "--temperature")]
    [InlineData("--top-k", "-1", "--top-k")]
    [InlineData("--positions", "sometimes", "--positions")]
    public void PersonaRefusesBadArgumentsBeforeLoadingTheModel(string option, string value, string named) =>
        AssertRefused(RunLoupe("persona", "--model", Out("no-model"), "--positive", Out("p.txt"), "--negative", Out("n.txt"),
            "--prompt", "Once", "--out", Out("persona"), option, value), named);

    [Fact]
    public void PersonaNamesAWordListWithTooFewTexts()
    {
        File.WriteAllText(Out("p.txt"), "only one\n");
        File.WriteAllText(Out("n.txt"), "one\ntwo\n");
        AssertRefused(RunLoupe("persona", "--model", Out("no-model"), "--positive", Out("p.txt"), "--negative", Out("n.txt"),
            "--prompt", "Once", "--out", Out("persona")), "p.txt", "at least two texts");
    }

    [Theory]
    [InlineData("--held-out", "1.5", "--held-out")]
    [InlineData("--held-out", "NaN", "--held-out")]
    [InlineData("--l2", "NaN", "--l2")]
    [InlineData("--l2", "-1", "--l2")]
    [InlineData("--max-iterations", "-1", "--max-iterations")]
    [InlineData("--max-sentences", "1", "--max-sentences")]
    [InlineData("--probe", "svm", "--probe")]
    [InlineData("--dataset", "conll:x", "--dataset")]
    public void ProbeRefusesBadArgumentsBeforeReadingTheCorpus(string option, string value, string named)
    {
        var args = new List<string> { "probe", "--model", Out("no-model"), "--out", Out("probe") };
        if (option != "--dataset") args.AddRange(["--dataset", "brown:" + Out("no-corpus")]);
        args.AddRange([option, value]);
        AssertRefused(RunLoupe([.. args]), named);
    }

    [Theory]
    [InlineData("harvest", "--batch-size", "abc")]
    [InlineData("harvest", "--context-size", "99999999999")]
    [InlineData("harvest", "--shard-tokens", "1e9")]
    [InlineData("sae train", "--d-sae", "abc")]
    [InlineData("sae train", "--lr", "fast")]
    [InlineData("sae train", "--steps", "99999999999")]
    [InlineData("sae eval", "--batch-size", "0")]
    [InlineData("sae eval", "--max-contexts", "0")]
    [InlineData("sae eval", "--dense-threshold", "NaN")]
    [InlineData("sae eval", "--exclude-tokens", "1,x")]
    [InlineData("features build", "--batch-size", "lots")]
    [InlineData("features top", "--n", "-1")]
    [InlineData("features top", "--context", "-1")]
    [InlineData("features list", "--n", "-1")]
    public void DictionaryVerbsRefuseBadNumbers(string verb, string option, string value)
    {
        var args = new List<string>(verb.Split(' '));
        args.AddRange(verb switch
        {
            "harvest" => ["--model", Out("m"), "--source", "generate:2", "--hooks", "hook_embed", "--out", Out("o")],
            "sae train" => ["--activations", Out("acts"), "--out", Out("o")],
            "sae eval" => ["--model", Out("m"), "--sae", Out("sae"), "--source", "generate:2", "--out", Out("o")],
            "features build" => ["--model", Out("m"), "--sae", Out("sae"), "--source", "generate:2"],
            _ => ["--db", Out("features.db"), "--feature", "0"],
        });
        if (verb == "features list") args.Remove("--feature");
        if (verb == "features list") args.Remove("0");
        args.AddRange([option, value]);
        AssertRefused(RunLoupe([.. args]), option);
    }

    [Theory]
    [InlineData("--words", "dog,dog", "--words")] // once an ArgumentException: the words key a dictionary of concept vectors
    [InlineData("--layers", ",", "--layers")]
    [InlineData("--strengths", ",", "--strengths")]
    [InlineData("--judge", "/tmp/judge", "--judge")] // the chat client's own refusal named --endpoint
    public void IntrospectRefusesBadArgumentsBeforeLoadingTheModel(string option, string value, string named) =>
        AssertRefused(RunLoupe("introspect", "--model", Out("no-model"), "--out", Out("introspect"), option, value), named);

    [Fact]
    public void AnEmptyValueIsOnePlainLineNamingTheOption()
    {
        var run = RunLoupe("info", "--model", "");
        AssertRefused(run, "argument: --model", "a non-empty value");
        Assert.DoesNotContain("Loupe.InputError", run.Err); // the exception's ToString() once leaked its type name
    }

    [Fact]
    public void FeatureStoreVerbsNeedExactlyOneSource() =>
        AssertRefused(RunLoupe("features", "list", "--db", Out("a.db"), "--sae", Out("sae")), "--sae", "--db");

    [Fact]
    public void AnOutputThatIsAFifoADeviceOrALinkIsNeverReplaced()
    {
        string target = Out("target.safetensors");
        File.WriteAllText(target, "original");
        string link = Out("link.safetensors");
        File.CreateSymbolicLink(link, target);
        string[] cache = ["cache", "--model", Gpt2, "--tokens", "1,2,3", "--hooks", "hook_embed", "--out"];
        AssertRefused(RunLoupe([.. cache, link]), link, "symbolic link");
        Assert.NotNull(new FileInfo(link).LinkTarget);
        Assert.Equal("original", File.ReadAllText(target));

        AssertRefused(RunLoupe([.. cache, _dir]), "folder");
        AssertRefused(RunLoupe("grad", "--model", Gpt2, "--tokens", "1,2,3", "--metric", "loss", "--hooks", "hook_embed", "--out", "/dev/null"), "/dev/null");
        Assert.Equal(OutputFiles.EntryKind.Other, OutputFiles.KindOf("/dev/null"));

        if (OperatingSystem.IsWindows()) return;
        string fifo = Out("fifo");
        using (var mkfifo = Process.Start(new ProcessStartInfo("mkfifo", [fifo]) { UseShellExecute = false })!)
            mkfifo.WaitForExit();
        AssertRefused(RunLoupe([.. cache, fifo]), fifo, "not a regular file");
        Assert.Equal(OutputFiles.EntryKind.Other, OutputFiles.KindOf(fifo));
        AssertRefused(RunLoupe("steer", "--model", Out("no-model"), "--prompt", "Once", "--coeff", "1", "--vector", "v", "--out", fifo), "--out", "not a folder");
    }

    [Fact]
    public void ANaNWeightIsNeverANormalLookingAnswer()
    {
        // The gpt2 fixture with one NaN in the final norm's scale: refused at load or at the logits, never a NaN table with exit code 0.
        string folder = Out("nan-gpt2");
        Directory.CreateDirectory(folder);
        File.Copy(Path.Combine(Gpt2, "config.json"), Path.Combine(folder, "config.json"));
        byte[] bytes = File.ReadAllBytes(Path.Combine(Gpt2, "model.safetensors"));
        long headerLength = BitConverter.ToInt64(bytes, 0);
        using (var header = System.Text.Json.JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength)))
        {
            long begin = header.RootElement.GetProperty("transformer.ln_f.weight").GetProperty("data_offsets")[0].GetInt64();
            BitConverter.TryWriteBytes(bytes.AsSpan((int)(8 + headerLength + begin), 4), float.NaN);
        }
        File.WriteAllBytes(Path.Combine(folder, "model.safetensors"), bytes);
        var result = RunLoupe("run", "--model", folder, "--tokens", "1,2,3", "-n", "2");
        Assert.DoesNotContain("NaN", result.Out);
        AssertRefused(result);
        Assert.Matches("(?i)nan|non-finite|not finite", result.Err);
    }

    /// <summary>stories260K with its context cut to 48 tokens: smaller than the default --context-size (128).</summary>
    string ShortContextModel()
    {
        string folder = Out("short-context");
        Directory.CreateDirectory(folder);
        string source = SharedData.Require("models/stories260K");
        foreach (var file in Directory.GetFiles(source)) File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!;
        config["max_position_embeddings"] = 48;
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        return folder;
    }

    [RequiresSharedFact("models/stories260K", "datasets/brown-corpus")]
    public void TheDefaultContextSizeShrinksToASmallModelWhileAGivenOneAboveNCtxIsRefused()
    {
        // The default used to be refused on such a model, naming an option the user never typed.
        string model = ShortContextModel(), brown = "brown:" + SharedData.Require("datasets/brown-corpus");
        string[] args = ["harvest", "--model", model, "--source", brown, "--hooks", "blocks.0.hook_resid_post", "--max-contexts", "2"];
        var run = RunLoupe([.. args, "--out", Out("acts")]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("94 tokens × 1 hooks", run.Out); // 2 contexts × 47 tokens (BOS skipped)
        AssertRefused(RunLoupe([.. args, "--out", Out("acts2"), "--context-size", "49"]), "--context-size", "n_ctx = 48");
    }

    [RequiresSharedFact("models/stories260K")]
    public void VerifyRefusesALengthAboveNCtx() =>
        AssertRefused(RunLoupe("verify", "--model", ShortContextModel(), "--length", "49"), "--length", "n_ctx = 48");

    [Theory]
    [InlineData("../outside")]
    [InlineData("a//b")]
    public void FeaturesNeuronpediaRefusesABadScanByItsOption(string scan) =>
        AssertRefused(RunLoupe("features", "neuronpedia", "--stores", Out("l0.db"), "--scan", scan, "--out", Out("np")), "--scan");

    [Fact]
    public void GuardTurnsBadInputIntoExitCode2AndLetsBugsEscape()
    {
        Assert.Equal(CliSupport.InputErrorExitCode, CliSupport.Guard(() => throw new InputError("argument: --x: expected 1, found 2")));
        Assert.Equal(CliSupport.InputErrorExitCode, CliSupport.Guard(() => throw new FileNotFoundException("no such file")));
        Assert.Throws<NullReferenceException>(() => CliSupport.Guard(() => throw new NullReferenceException()));
        Assert.Throws<ArgumentException>(() => CliSupport.Guard(() => throw new ArgumentException("a programmer's precondition")));
        Assert.Throws<EndOfStreamException>(() => CliSupport.Guard(() => throw new EndOfStreamException()));
    }

    [Fact]
    public void ABugThroughTheCommandLineKeepsItsStackTraceAndIsNotExitCode2()
    {
        var verb = new Command("explode");
        verb.SetAction(_ => CliSupport.Guard(() => throw new NullReferenceException("a bug")));
        var root = new RootCommand { verb };
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = root.Parse(["explode"]).Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
        Assert.NotEqual(0, code);
        Assert.NotEqual(CliSupport.InputErrorExitCode, code);
        Assert.Contains("NullReferenceException", stderr.ToString());
        Assert.Contains("   at ", stderr.ToString());
    }
}
