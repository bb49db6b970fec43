using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Loupe.Attribution;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe attribute</c>: a prompt's attribution graph through transcoders, as circuit-tracer / Neuronpedia JSON and safetensors.</summary>
static class AttributeCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var transcoders = new Option<string>("--transcoders", "-t")
        {
            Description = "What replaces every MLP: a cross-layer transcoder folder (Loupe cfg.json + clt_weights.safetensors, or circuit-tracer W_enc_ℓ/W_dec_ℓ), circuit-tracer per-layer transcoders (layer_ℓ.safetensors), or SAELens transcoder folders, one per layer (layer_0, layer_1, … or comma-separated). Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache",
            Required = true,
        };
        var input = CliSupport.InputOptions.Create("The prompt (tokenized with the model's tokenizer)");
        var maxLogits = new Option<int>("--max-logits") { Description = "At most this many logit targets", DefaultValueFactory = _ => 10 };
        var logitProb = new Option<double>("--logit-prob") { Description = "Logit targets until their cumulative probability reaches this", DefaultValueFactory = _ => 0.95 };
        var target = new Option<string[]>("--target")
        {
            Description = "Explain this next token instead of the most likely ones: one token's text (e.g. \" Austin\") or #ID; repeat for several (circuit-tracer's attribution_targets)",
        };
        var logitDiff = new Option<string[]>("--logit-diff")
        {
            Description = "Explain logit(X) − logit(Y): two tokens (text or #ID), the direction u_X − u_Y weighted |p_X − p_Y| (after any --target)",
            Arity = new ArgumentArity(2, 2), AllowMultipleArgumentsPerToken = true,
        };
        var maxFeatures = new Option<int?>("--max-feature-nodes") { Description = "At most this many feature nodes, chosen greedily by influence on the logits (default: every active feature)" };
        var batch = new Option<int>("--batch-size") { Description = "Target rows per batched backward pass", DefaultValueFactory = _ => 256 };
        var nodeThreshold = new Option<double>("--node-threshold") { Description = "Node-influence pruning threshold", DefaultValueFactory = _ => 0.8 };
        var edgeThreshold = new Option<double>("--edge-threshold") { Description = "Edge-influence pruning threshold", DefaultValueFactory = _ => 0.98 };
        var maxMemory = new Option<string?>("--max-memory") { Description = "Memory the attribution rows may take before they are streamed to a scratch file (e.g. 4GB, 512MB; default: half of the available memory)" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: {slug}.json (Neuronpedia graph), graph-metadata.json and {slug}.safetensors (the raw graph)", Required = true };
        var perHead = new Option<bool>("--per-head") { Description = "Also split every kept edge by the attention heads that carried it ({slug}.heads.json)" };
        var slug = new Option<string>("--slug") { Description = "The graph's name (file names and id)", DefaultValueFactory = _ => "graph" };
        var zeroPositions = new Option<int?>("--zero-positions")
        {
            Description = "Leading positions whose features and errors are not sources (default: 1, the BOS; 4 for a Gemma 3 prompt that starts with its chat prefix <bos><start_of_turn>user\\n, as circuit-tracer does)",
        };
        var scan = new Option<string?>("--scan")
        {
            Description = "metadata.scan of the graph JSON: the name Neuronpedia knows the transcoder set by (e.g. gemma-2-2b). Default: for hf: transcoders ORG/NAME[//PATH][@REVISION], as circuit-tracer names a hub set; otherwise custom-<hash of the transcoder list>",
        };
        var decoders = CliSupport.DecodersOption();
        var deviceDecoders = CliSupport.DeviceDecodersOption();
        var command = new Command("attribute",
            "Trace a prompt through a replacement model (attention and norms frozen, MLPs replaced by transcoders plus error nodes): " +
            "the direct effect of every active feature, error and token on every feature and top logit, pruned by influence, " +
            "written as circuit-tracer / Neuronpedia graph JSON (open it in their graph viewer) and as safetensors.\n\n" +
            "Examples:\n" +
            "  loupe attribute --model ../shared/models/stories260K --transcoders tc/ --prompt \"Once upon a time, Lily\" --out graphs\n" +
            "  loupe attribute --model gpt2 --transcoders tc/ --tokens \"50256,464,3139\" --max-feature-nodes 4096 --out graphs --slug capital\n" +
            "  loupe attribute --model gemma-2-2b --transcoders hf:mntss/gemma-scope-transcoders --prompt \"Fact: the capital of the state containing Dallas is\" --logit-diff \" Austin\" \" Dallas\" --out graphs\n" +
            "  loupe attribute --model gpt2 --transcoders tc/ --prompt \"The capital of France is\" --device cuda --out graphs")
        { model, transcoders, decoders, deviceDecoders, input.Prompt, input.Tokens, maxLogits, logitProb, target, logitDiff, maxFeatures, batch, nodeThreshold, edgeThreshold, maxMemory, perHead, output, slug, scan, zeroPositions };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            string name = parse.GetValue(slug)!;
            if (!Loupe.Attribution.Graph.NeuronpediaGraphJson.IsPlainSlug(name))
                throw InputError.Expected("argument", "--slug", "a plain file name (no folder separators), e.g. \"my-graph\"", name);
            var settings = new AttributionSettings
            {
                MaxLogits = CliSupport.Int(parse, maxLogits, 1),
                LogitProbability = CliSupport.Double(parse, logitProb, double.Epsilon, 1),
                MaxFeatureNodes = CliSupport.Int(parse, maxFeatures, 0),
                BatchSize = CliSupport.Int(parse, batch, 1, 1 << 16),
                MaxMemoryBytes = parse.GetValue(maxMemory) is string mem ? ParseBytes(mem, maxMemory.Name) : null,
                ZeroPositions = CliSupport.Int(parse, zeroPositions, 1),
                Log = line => Console.Error.WriteLine(line),
            };
            double nodes = CliSupport.Double(parse, nodeThreshold, 0, 1), edges = CliSupport.Double(parse, edgeThreshold, 0, 1);
            // On a device the transcoders' weights go there once; the graph's rows come back once per batch.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var tc = CliSupport.LoadTranscoders(parse, transcoders, decoders, deviceDecoders, m);
            settings = settings with { Targets = Targets(m, parse.GetValue(target), parse.GetValue(logitDiff)) };
            var tokens = input.Read(parse, m);
            if (tokens.Batch != 1) throw new InputError($"argument: --tokens: an attribution graph is for one prompt; got {tokens.Batch} rows");
            var result = AttributionExperiment.Run(m, tc, tokens.Ids, input.Text(parse), settings, nodes, edges, folder, name, parse.GetValue(perHead),
                parse.GetValue(scan) ?? HubScan(parse.GetValue(transcoders)!));
            var s = result.Stats;
            var g = result.Graph;
            Console.WriteLine($"nodes: {g.SelectedFeatures.Length} features of {s.ActiveFeatures} active, {g.Layers * g.Positions} errors, {g.Positions} tokens, {g.LogitTokens.Length} logits (p = {g.LogitProbabilities.Sum().ToString("0.###", CultureInfo.InvariantCulture)})");
            Console.WriteLine($"pruned: {result.Pruning.KeptNodes().Length} nodes, {result.Pruning.KeptEdgeCount()} edges (node threshold {nodes}, edge threshold {edges})");
            Console.WriteLine($"logit targets: {string.Join(", ", g.LogitTokens.Zip(g.LogitProbabilities).Take(5).Select((t, j) => $"{(g.LogitLabels?[j] is { } label ? JsonSerializer.Serialize(label, s_quoted) : CliSupport.Show(m, t.First))} {t.Second.ToString("0.###", CultureInfo.InvariantCulture)}"))}");
            var influential = Enumerable.Range(0, g.SelectedFeatures.Length).OrderByDescending(i => result.Pruning.NodeInfluence[i]).Take(8)
                .Select(i => g.Node(i)).Select(n => $"{n.Layer}:{n.Position}:{n.Index} (a {n.Value.ToString("0.##", CultureInfo.InvariantCulture)})");
            Console.WriteLine($"most influential features (layer:position:feature): {string.Join(", ", influential)}");
            Console.WriteLine($"scores: replacement {result.Scores.Replacement.ToString("0.####", CultureInfo.InvariantCulture)}, completeness {result.Scores.Completeness.ToString("0.####", CultureInfo.InvariantCulture)}");
            Console.WriteLine($"cost: {s.Elapsed.TotalSeconds.ToString("0.##", CultureInfo.InvariantCulture)} s, {s.Batches} batched backward passes, {s.PassEquivalents.ToString("0.#", CultureInfo.InvariantCulture)} forward-pass equivalents; estimated memory {s.EstimatedBytes / (1024.0 * 1024):0.#} MiB");
            Console.WriteLine($"wrote {result.GraphJson} and {result.GraphSafetensors}{(result.HeadsJson is { } h ? " and " + h : "")}");
            return 0;
        }));
        return command;
    }

    static readonly JsonSerializerOptions s_quoted = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>--target and --logit-diff as attribution targets; null (the salient tokens) when neither is given.</summary>
    static IReadOnlyList<AttributionTarget>? Targets(HookedTransformer m, string[]? tokens, string[]? difference)
    {
        if ((tokens?.Length ?? 0) == 0 && (difference?.Length ?? 0) == 0) return null;
        var list = (tokens ?? []).Select(t => AttributionTarget.Token(Token(m, t, "--target"))).ToList();
        if (difference is { Length: 2 }) list.Add(AttributionTarget.Difference(Token(m, difference[0], "--logit-diff"), Token(m, difference[1], "--logit-diff")));
        return list;
    }

    /// <summary>#ID, or a text that is one token.</summary>
    static int Token(HookedTransformer m, string text, string option) =>
        AttributionTarget.TryParseId(text, out int id)
            ? CliSupport.OutputToken(m, id, option)
            : CliSupport.SingleToken(m, text, option, "#ID");

    /// <summary>circuit-tracer's scan name for a hub transcoder set: <c>ORG/NAME[//PATH][@REVISION]</c>; null for local folders.</summary>
    static string? HubScan(string value)
    {
        if (!value.StartsWith("hf:", StringComparison.Ordinal) || value.Contains(',')) return null;
        var (repo, path, revision) = CliSupport.HubSpec(value, "--transcoders");
        return repo + (path.Length > 0 ? "//" + path.Trim('/') : "") + (value.Contains('@') ? "@" + revision : "");
    }

    /// <summary>"4GB", "512MB", "1.5GiB", "1000000" (bytes).</summary>
    /// <exception cref="InputError">Not a positive size.</exception>
    internal static long ParseBytes(string text, string option)
    {
        string t = text.Trim().ToUpperInvariant().Replace("IB", "B", StringComparison.Ordinal);
        (string unit, long factor) = t.EndsWith("GB", StringComparison.Ordinal) ? ("GB", 1L << 30)
            : t.EndsWith("MB", StringComparison.Ordinal) ? ("MB", 1L << 20)
            : t.EndsWith("KB", StringComparison.Ordinal) ? ("KB", 1L << 10)
            : t.EndsWith('B') ? ("B", 1L) : ("", 1L);
        string number = t[..^unit.Length].Trim();
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !(value >= 0) || double.IsInfinity(value * factor))
            throw InputError.Expected("argument", option, "a size such as 4GB, 512MB or a number of bytes", text);
        return (long)(value * factor);
    }
}
