using Loupe.Attribution;
using Loupe.Dictionaries.Transcoders;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Loupe.Serve;

/// <summary>An attribution graph to make as a job (as <c>loupe attribute</c>) through the --transcoders replacement.</summary>
/// <param name="Prompt">The prompt's text (tokenized as prompts are), or give <paramref name="Tokens"/>.</param>
/// <param name="Tokens">Token ids instead of text.</param>
/// <param name="MaxFeatureNodes">At most this many feature nodes, chosen by influence (1–65,536; default 4,096).</param>
/// <param name="NodeThreshold">Node-influence pruning threshold (default 0.8, circuit-tracer's).</param>
/// <param name="EdgeThreshold">Edge-influence pruning threshold (default 0.98).</param>
/// <param name="MaxLogits">At most this many logit targets (1–64, default 10).</param>
/// <param name="Name">The graph's name (letters, digits, - and _; default: a fresh name): graphs/NAME.json under the served folder.</param>
/// <param name="Targets">Next tokens to explain instead of the most likely ones, each one token's text or #ID (as <c>loupe attribute --target</c>).</param>
/// <param name="LogitDiff">Two tokens X and Y (text or #ID): also explain logit(X) − logit(Y) (as <c>--logit-diff</c>).</param>
public sealed record GraphJobRequest(string? Prompt, int[]? Tokens, int? MaxFeatureNodes, double? NodeThreshold, double? EdgeThreshold, int? MaxLogits, string? Name,
    string[]? Targets = null, string[]? LogitDiff = null);

/// <summary>What a graph job made.</summary>
/// <param name="ArtifactId">The graph JSON's id in the workspace index (the Graph page opens it).</param>
/// <param name="Name">Its path under the served folder.</param>
/// <param name="ActiveFeatures">Transcoder features active on the prompt.</param>
/// <param name="FeatureNodes">Feature nodes attributed.</param>
/// <param name="KeptNodes">Nodes kept by pruning (features, errors, tokens, logits).</param>
/// <param name="ReplacementScore">Share of the logits' influence that flows from tokens rather than error nodes.</param>
/// <param name="CompletenessScore">Share of every node's input that comes from non-error nodes.</param>
/// <param name="Seconds">Wall time of the attribution.</param>
public sealed record GraphJobResult(string ArtifactId, string Name, int ActiveFeatures, int FeatureNodes, int KeptNodes, double ReplacementScore, double CompletenessScore, double Seconds);

public static partial class JobEndpoints
{
    [System.Text.RegularExpressions.GeneratedRegex(@"(\d+)/(\d+) feature rows")]
    private static partial System.Text.RegularExpressions.Regex FeatureRows();

    /// <summary>POST /api/jobs/graph: an attribution graph of a prompt, written as Neuronpedia graph JSON into the served folder.</summary>
    static void MapGraph(RouteGroupBuilder api, ModelGate gate, JobManager jobs, ServeOptions options, Workspace workspace, ReplacementModel? replacement)
    {
        var model = gate.Model;
        // On a device the transcoders' weights are uploaded once, by the first graph job, and every later job reuses them.
        var onDevice = replacement is null || model.Backend.Device.IsCpu ? null
            : new Lazy<DeviceMlpReplacement>(() => DeviceMlpReplacement.Upload(replacement.Transcoders, model.Backend));
        api.MapPost("/graph", (GraphJobRequest body) =>
        {
            var transcoders = replacement?.Transcoders ?? throw new NoPlaceException("a graph traces through the MLP replacements given with --transcoders: start the server with --transcoders DIR");
            string root = workspace.Root ?? throw new NoPlaceException("a graph is written into the served folder: start the server with --graphs DIR");
            int[] tokens = Analyses.Tokens(model, body.Prompt, body.Tokens, options);
            if (tokens.Length < 2) throw new InputError("a graph needs a prompt of at least 2 tokens (position 0 has no features)");
            double nodeThreshold = body.NodeThreshold ?? 0.8, edgeThreshold = body.EdgeThreshold ?? 0.98;
            if (!(nodeThreshold is > 0 and <= 1)) throw new InputError($"node_threshold: expected a number in (0, 1], got {nodeThreshold}");
            if (!(edgeThreshold is > 0 and <= 1)) throw new InputError($"edge_threshold: expected a number in (0, 1], got {edgeThreshold}");
            string slug = Name(body.Name, "name");
            string folder = Path.Combine(root, "graphs");
            if (File.Exists(Path.Combine(folder, slug + ".json"))) throw new InputError($"name: a graph named '{slug}' already exists; choose another name");
            if (body.LogitDiff is { Length: not 2 }) throw new InputError($"logit_diff: expected two token texts, got {body.LogitDiff.Length}");
            if (body.Targets?.Length > 64) throw new InputError($"targets: expected at most 64, got {body.Targets.Length}");
            // a target token: one token's text, or #ID
            int Target(string text, string field) =>
                AttributionTarget.TryParseId(text, out int id)
                    ? (uint)id < (uint)model.Config.VocabOut ? id : throw new InputError($"{field}: #{id} is outside [0, {model.Config.VocabOut - 1}]")
                    : model.Tokenizer is null ? throw new InputError($"{field}: this model has no tokenizer; give token ids as #ID")
                    : AnswerToken(model, text, null, field)!.Value;
            List<AttributionTarget>? targets = body.Targets is { Length: > 0 } || body.LogitDiff is not null
                ? [.. (body.Targets ?? []).Select(t => AttributionTarget.Token(Target(t, "targets")))]
                : null;
            if (body.LogitDiff is { } diff) targets!.Add(AttributionTarget.Difference(Target(diff[0], "logit_diff"), Target(diff[1], "logit_diff")));

            return Started(jobs, options, "graph", async (job, cancel) =>
            {
                // The attributor logs after every batch of feature rows: progress, and where a cancelled job stops.
                var settings = new AttributionSettings
                {
                    MaxFeatureNodes = Math.Clamp(body.MaxFeatureNodes ?? 4096, 1, 65_536),
                    MaxLogits = Math.Clamp(body.MaxLogits ?? 10, 1, 64),
                    Targets = targets,
                    Log = line =>
                    {
                        cancel.ThrowIfCancellationRequested();
                        var rows = FeatureRows().Match(line);
                        job.Report(rows.Success
                            ? new JobEvent("progress", int.Parse(rows.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), Math.Max(1, int.Parse(rows.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture)), line)
                            : new JobEvent("progress", 0, 1, line));
                    },
                };
                Directory.CreateDirectory(folder);
                var made = await gate.RunAsync(m => onDevice is not null
                        ? AttributionExperiment.Run(m, onDevice.Value, tokens, body.Prompt, settings, nodeThreshold, edgeThreshold, folder, slug)
                        : AttributionExperiment.Run(m, transcoders, tokens, body.Prompt, settings, nodeThreshold, edgeThreshold, folder, slug),
                    cancel, longRunning: true);
                workspace.Scan();
                string rel = Path.Combine("graphs", slug + ".json");
                var artifact = workspace.FindByName(rel) ?? throw new InvalidOperationException($"{rel} was written but is not in the index");
                return new GraphJobResult(artifact.Id, artifact.Name, made.Stats.ActiveFeatures, made.Stats.FeatureNodes, made.Pruning.KeptNodes().Length,
                    made.Scores.Replacement, made.Scores.Completeness, made.Stats.Elapsed.TotalSeconds);
            });
        }).WithSummary("Starts an attribution graph (as loupe attribute) of a prompt through the --transcoders replacement; progress per batch of feature rows at /api/jobs/{id}/events; the graph is written to graphs/NAME.json under --graphs (atomically) and the result names the artifact the Graph page opens");
    }
}
