using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Loupe.Causal.Patching;
using Loupe.Causal.Reports;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Metrics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Loupe.Serve;

/// <summary>A patching sweep to run as a job (as <c>loupe patch --method activation</c>).</summary>
/// <param name="Clean">The clean prompt's text (tokenized as prompts are), or give <paramref name="CleanTokens"/>.</param>
/// <param name="Corrupt">The corrupt prompt's text; it must have as many tokens as the clean one.</param>
/// <param name="CleanTokens">Clean token ids instead of text.</param>
/// <param name="CorruptTokens">Corrupt token ids instead of text.</param>
/// <param name="Answer">The answer token's text (exactly one token), or give <paramref name="AnswerId"/>.</param>
/// <param name="Wrong">The competing answer's text; the metric is then logit(answer) − logit(wrong), else log p(answer).</param>
/// <param name="AnswerId">The answer as a token id.</param>
/// <param name="WrongId">The competing answer as a token id.</param>
/// <param name="Target">What to patch: resid_pre (layer × position), head_out (layer × head), … (<see cref="PatchTarget.Named"/>; default resid_pre).</param>
/// <param name="Noising">Patch corrupt activations into the clean run instead.</param>
/// <param name="MaxRows">Rows per batched forward pass (1–256, default 16): smaller streams progress more often.</param>
/// <param name="Name">The artifact's folder under patching/ (letters, digits, - and _; default: the job id).</param>
public sealed record PatchingJobRequest(string? Clean, string? Corrupt, int[]? CleanTokens, int[]? CorruptTokens, string? Answer, string? Wrong,
    int? AnswerId, int? WrongId, string? Target, bool? Noising, int? MaxRows, string? Name);

/// <summary>What a patching job made.</summary>
/// <param name="ArtifactId">The patch.json's id in the workspace index (the Circuits page opens it).</param>
/// <param name="Name">Its path under the served folder.</param>
/// <param name="Metric">The metric.</param>
/// <param name="CleanValue">The metric on the clean run.</param>
/// <param name="CorruptValue">The metric on the corrupt run.</param>
/// <param name="Cells">Cells patched.</param>
/// <param name="ForwardPasses">Forward passes run.</param>
/// <param name="Seconds">Wall time of the sweep.</param>
public sealed record PatchingJobResult(string ArtifactId, string Name, string Metric, double CleanValue, double CorruptValue, int Cells, int ForwardPasses, double Seconds);

/// <summary>A feature-store build to run as a job (as <c>loupe features build</c>) over the dictionary given with --sae.</summary>
/// <param name="Artifact">A served text artifact (.txt under --graphs, by id) to read, one document per paragraph; or give <paramref name="Texts"/>.</param>
/// <param name="Texts">The documents themselves (the request body is bounded).</param>
/// <param name="ContextSize">Tokens per context, BOS included (default: the dictionary's context size, at most 128 and n_ctx).</param>
/// <param name="MaxContexts">Contexts used at most (1–4096, default 512).</param>
/// <param name="Top">Top-activating examples kept per feature (1–100, default 20).</param>
/// <param name="Name">The store's file name stem (letters, digits, - and _; default: the job id): stores/NAME.features.db.</param>
public sealed record FeatureStoreJobRequest(string? Artifact, string[]? Texts, int? ContextSize, int? MaxContexts, int? Top, string? Name);

/// <summary>What a feature-store job built.</summary>
/// <param name="StoreId">The store's id among the served stores (the Features page opens it).</param>
/// <param name="Name">The store's name as the store list shows it.</param>
/// <param name="Hook">The hook the dictionary reads.</param>
/// <param name="DSae">Features.</param>
/// <param name="Tokens">Tokens the statistics cover.</param>
/// <param name="DeadFeatures">Features never active.</param>
/// <param name="Contexts">Contexts run.</param>
/// <param name="Seconds">Wall time of the build.</param>
/// <param name="Warning">The dictionary was trained on a model loaded with other weight processing where that changes the values
/// at its hook (<c>ProcessingAgreement</c>: what <c>loupe features build</c> warns about), or null.</param>
public sealed record FeatureStoreJobResult(string StoreId, string Name, string Hook, int DSae, long Tokens, int DeadFeatures, int Contexts, double Seconds,
    string? Warning = null);

/// <summary>Whether a job kind can run here.</summary>
/// <param name="Available">Whether it can.</param>
/// <param name="Reason">Why not, and what to start the server with.</param>
public sealed record JobKindView(bool Available, string? Reason);

/// <summary>The job kinds beside head detection.</summary>
/// <param name="PatchingSweep">The patching sweep (needs --graphs).</param>
/// <param name="FeatureStore">The feature-store build (needs --sae).</param>
/// <param name="Targets">Patch targets by name.</param>
/// <param name="Texts">Served .txt files a build can read.</param>
/// <param name="SaeEval">The SAE evaluation (needs --sae).</param>
/// <param name="Graph">The attribution graph (needs --transcoders and --graphs).</param>
public sealed record JobKindsView(JobKindView PatchingSweep, JobKindView FeatureStore, string[] Targets, ArtifactView[] Texts, JobKindView SaeEval, JobKindView Graph);

/// <summary>
/// Long work beside the head-detection job: a patching sweep written as a workspace artifact, and a feature-store build
/// registered with the served stores. Both stream progress through /api/jobs/{id}/events and stop at the next unit of
/// work when cancelled; they hold the model for their run (other requests wait in the model's queue).
/// </summary>
public static partial class JobEndpoints
{
    /// <summary>Longest text artifact a build reads (the request body is bounded by the server's body limit).</summary>
    public const long MaxTextArtifactBytes = 16L << 20;

    public static void Map(WebApplication app, ModelGate gate, JobManager jobs, ServeOptions options, Workspace workspace, ServedStores stores,
        Loupe.Attribution.ReplacementModel? replacement)
    {
        var model = gate.Model;
        var api = app.MapGroup("/api/jobs");

        api.MapGet("/kinds", () =>
        {
            workspace.Scan();
            return new JobKindsView(
                new JobKindView(workspace.Root is not null, workspace.Root is null ? "start the server with --graphs DIR to write sweeps into" : null),
                new JobKindView(options.SaePath is not null, options.SaePath is null ? "start the server with --sae DIR (the dictionary to harvest)" : null),
                [.. PatchTarget.Named.Keys], [.. workspace.List().Where(a => a.Kind == "text")],
                new JobKindView(options.SaePath is not null, options.SaePath is null ? "start the server with --sae DIR (the dictionary to evaluate)" : null),
                new JobKindView(replacement is not null && workspace.Root is not null,
                    replacement is null ? "start the server with --transcoders DIR (the MLP replacements a graph traces through)"
                    : workspace.Root is null ? "start the server with --graphs DIR to write graphs into" : null));
        }).WithSummary("Which job kinds this server can run (and why not), the patch targets, and the served text files a feature-store build can read");

        api.MapPost("/patching-sweep", (PatchingJobRequest body) =>
        {
            string root = workspace.Root ?? throw new NoPlaceException("a patching sweep is written into the served folder: start the server with --graphs DIR");
            var target = PatchTarget.Parse(body.Target ?? "resid_pre");
            int[] clean = Analyses.Tokens(model, body.Clean, body.CleanTokens, options);
            int[] corrupt = Analyses.Tokens(model, body.Corrupt, body.CorruptTokens, options);
            if (clean.Length != corrupt.Length)
                throw new InputError($"clean and corrupt must have as many tokens to patch between them: clean has {clean.Length}, corrupt {corrupt.Length}");
            int answer = AnswerToken(model, body.Answer, body.AnswerId, "answer") ?? throw new InputError("give the answer: \"answer\" (one token's text) or \"answer_id\"");
            int? wrong = AnswerToken(model, body.Wrong, body.WrongId, "wrong");
            IMetric metric = wrong is int w ? new LogitDiff(answer, w, -1) : new LogProb(answer, -1);
            int maxRows = Math.Clamp(body.MaxRows ?? 16, 1, 256);
            bool noising = body.Noising ?? false;
            string rel = Path.Combine("patching", Name(body.Name, "name"), "patch.json");

            return Started(jobs, options, "patching-sweep", async (job, cancel) =>
            {
                var patchOptions = new PatchOptions
                {
                    MaxRows = maxRows, Noising = noising, LastPositionLogitsOnly = true, Cancel = cancel,
                    Progress = (done, total) => job.Report(new JobEvent("progress", done, total, $"patched {done} of {total} cells")),
                };
                var result = await gate.RunAsync(m => ActivationPatching.Sweep(m, TokenBatch.Single(clean), TokenBatch.Single(corrupt), metric, target, patchOptions), cancel, longRunning: true);
                cancel.ThrowIfCancellationRequested();
                var labels = clean.Select(id => Analyses.Text(model, id).Replace("\n", "\\n", StringComparison.Ordinal)).ToArray();
                var args = new Dictionary<string, string?>
                {
                    ["model"] = model.Source,
                    ["weight_processing"] = model.Processing.Describe(),
                    ["clean"] = body.Clean,
                    ["corrupt"] = body.Corrupt,
                    ["clean_tokens"] = string.Join(",", clean),
                    ["corrupt_tokens"] = string.Join(",", corrupt),
                    ["answer"] = Analyses.Text(model, answer),
                    ["wrong"] = wrong is int wv ? Analyses.Text(model, wv) : null,
                    ["target"] = target.Name,
                    ["method"] = "activation",
                    ["noising"] = noising ? "true" : "false",
                    ["position"] = "-1",
                    ["made_by"] = "loupe serve (patching-sweep job)",
                };
                // patch.json is written atomically (and patch.svg beside it), then the index learns of it.
                string dir = Path.Combine(root, Path.GetDirectoryName(rel)!);
                Directory.CreateDirectory(dir);
                CausalReports.WritePatching(result, dir, labels, args);
                workspace.Scan();
                var artifact = workspace.FindByName(rel) ?? throw new InvalidOperationException($"{rel} was written but is not in the index");
                return new PatchingJobResult(artifact.Id, artifact.Name, result.Metric, result.CleanValue, result.CorruptValue, result.Cells.Length, result.ForwardPasses, result.Seconds);
            });
        }).WithSummary("Starts an activation-patching sweep (clean/corrupt prompts, answer and wrong tokens, a target such as resid_pre or head_out); progress per patched cell at /api/jobs/{id}/events; the result names the patch.json artifact it wrote");

        api.MapPost("/feature-store", async (FeatureStoreJobRequest body, CancellationToken requestCancel) =>
        {
            string saePath = options.SaePath ?? throw new NoPlaceException("a feature-store build harvests the dictionary given with --sae: start the server with --sae DIR");
            var (documents, description) = await Documents(workspace, body.Artifact, body.Texts, requestCancel);
            int maxContexts = Math.Clamp(body.MaxContexts ?? 512, 1, 4096);
            var buildOptions = new FeatureBuildOptions { TopK = Math.Clamp(body.Top ?? 20, 1, 100), CheckpointSeconds = null }; // a job in the workspace: cancelled on purpose, never resumed
            bool npz = saePath.EndsWith(".npz", StringComparison.OrdinalIgnoreCase)
                || (Directory.Exists(saePath) && !File.Exists(Path.Combine(saePath, SaeLensFormat.ConfigFile)));
            string? hook = npz ? stores.All.Select(s => s.Read(st => st.Hook)).FirstOrDefault() : null;
            var (dictionary, config) = DictionaryFile.Load(saePath, hook);
            FeatureDashboardBuilder.ResolveHook(model, config, buildOptions.Hook); // a bad hook is a 400, not a failed job
            int contextSize = Math.Clamp(body.ContextSize ?? Math.Min(config.ContextSize > 0 ? config.ContextSize : 128, 128), 2, model.Config.NCtx);
            var contexts = ContextBuilder.ForModel(model, new InMemoryTextSource(documents, description), contextSize, 0, maxContexts);
            string name = Name(body.Name, "name");
            string folder = Path.Combine(workspace.Root ?? s_scratch.Value, "stores");
            string file = Path.Combine(folder, name + "." + FeatureStoreSchema.DefaultFileName);
            if (File.Exists(file) || stores.All.Any(s => s.Store.Path == file)) throw new InputError($"name: a store named '{name}' already exists; choose another name");

            return Started(jobs, options, "feature-store", async (job, cancel) =>
            {
                Directory.CreateDirectory(folder);
                var progress = new SyncProgress(p => job.Report(new JobEvent("progress", (int)Math.Min(p.Done, int.MaxValue), (int)Math.Min(Math.Max(1, p.Total), int.MaxValue),
                    p.Stage + (p.TokensPerSecond > 0 ? $", {p.TokensPerSecond.ToString("F0", CultureInfo.InvariantCulture)} tok/s" : ""))));
                // The library writes the store to a temporary file and moves it into place at the end; a cancelled or failed
                // build leaves neither, and only a finished store is registered.
                var summary = await gate.RunAsync(m => FeatureDashboardBuilder.Build(m, dictionary, config, contexts, file, buildOptions, saePath, progress, cancel), cancel, longRunning: true);
                var served = stores.Add(file, saePath);
                return new FeatureStoreJobResult(served.Id, served.Name, summary.Hook, summary.DSae, summary.Tokens, summary.DeadFeatures, contexts.Count, summary.Seconds,
                    ProcessingAgreement.Mismatch(model, summary.Hook, config));
            });
        }).WithSummary("Starts a feature-store build (as loupe features build) of the --sae dictionary over a served .txt artifact or texts in the body; progress at /api/jobs/{id}/events; a finished store is served (the result names it); a cancelled one leaves no file");

        MapSaeEval(api, gate, jobs, options, workspace);
        MapGraph(api, gate, jobs, options, workspace, replacement);
    }

    /// <summary>The documents a job reads: a served .txt artifact (one document per paragraph) or texts from the request.</summary>
    /// <exception cref="InputError">Both or neither given, an unknown or oversized artifact, too many texts, or no text at all.</exception>
    static async Task<(IReadOnlyList<string> Documents, string Description)> Documents(Workspace workspace, string? artifactId, string[]? texts, CancellationToken cancel)
    {
        if ((artifactId is null) == (texts is null)) throw new InputError("give exactly one of \"artifact\" (a served .txt file's id) or \"texts\"");
        IReadOnlyList<string> documents;
        string description;
        if (artifactId is { } id)
        {
            var artifact = workspace.List().FirstOrDefault(a => a.Id == id);
            if (artifact is not { Kind: "text" }) throw new InputError("artifact: no served text file (.txt) with that id");
            if (artifact.Bytes > MaxTextArtifactBytes) throw new InputError($"artifact: {artifact.Name} has {artifact.Bytes} bytes; at most {MaxTextArtifactBytes} are read");
            await using var stream = workspace.OpenById(id) ?? throw new InputError("artifact: no served text file with that id");
            using var reader = new StreamReader(stream, Encoding.UTF8);
            documents = Paragraphs().Split(await reader.ReadToEndAsync(cancel));
            description = $"served text: {artifact.Name}";
        }
        else
        {
            documents = texts!;
            if (documents.Count > 100_000) throw new InputError("texts: at most 100,000 documents");
            description = $"texts sent to loupe serve: {documents.Count} document(s)";
        }
        if (!documents.Any(d => !string.IsNullOrWhiteSpace(d))) throw new InputError("the text is empty");
        return (documents, description);
    }

    // Without --graphs the stores a build makes go to a folder of this server's own.
    static readonly Lazy<string> s_scratch = new(() => Directory.CreateTempSubdirectory("loupe-serve-stores-").FullName);

    [GeneratedRegex(@"\r?\n\s*\r?\n")]
    private static partial Regex Paragraphs();

    static IResult Started(JobManager jobs, ServeOptions options, string kind, Func<Job, CancellationToken, Task<object>> work)
    {
        var job = jobs.Start(kind, work);
        return job is null
            ? Results.Json(new { error = $"{options.MaxRunningJobs} jobs are already running; cancel one or wait" }, ServeHost.Json, statusCode: 429)
            : Results.Json(new JobView(job.Id, job.Kind, job.State), ServeHost.Json, statusCode: 202);
    }

    static readonly Regex s_name = new("^[A-Za-z0-9_-]{1,64}$", RegexOptions.CultureInvariant);

    /// <summary>A name that becomes part of a file name: checked, never a path; a fresh one when not given.</summary>
    /// <exception cref="InputError">Anything but 1–64 letters, digits, '-' and '_'.</exception>
    static string Name(string? given, string field) =>
        given is null ? DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture) + "-" + Guid.NewGuid().ToString("N")[..6]
        : s_name.IsMatch(given) ? given : throw new InputError($"{field}: expected 1–64 letters, digits, '-' or '_', got {InputError.Show(given)}");

    /// <summary>One token from its text (exactly one token, no special tokens) or its id; null when neither is given.</summary>
    /// <exception cref="InputError">Both given, an id outside the output vocabulary, or text that is not exactly one token.</exception>
    static int? AnswerToken(HookedTransformer model, string? text, int? id, string field)
    {
        if (text is not null && id is not null) throw new InputError($"give \"{field}\" or \"{field}_id\", not both");
        if (id is int given) return (uint)given < (uint)model.Config.VocabOut ? given : throw new InputError($"{field}_id: {given} is outside [0, {model.Config.VocabOut - 1}]");
        if (text is null) return null;
        var tokenizer = model.Tokenizer ?? throw new InputError($"this model has no tokenizer; give \"{field}_id\"");
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        return ids.Length == 1 ? ids[0]
            : throw new InputError($"{field}: {InputError.Show(text)} must be exactly one token but tokenizes to {ids.Length} ({string.Join(", ", ids.Select(i => InputError.Show(Analyses.Text(model, i))))}); try it with or without a leading space");
    }

    /// <summary>Reports on the caller's thread (Progress&lt;T&gt; would post to the pool and could reorder events).</summary>
    sealed class SyncProgress(Action<FeatureBuildProgress> report) : IProgress<FeatureBuildProgress>
    {
        public void Report(FeatureBuildProgress value) => report(value);
    }
}

/// <summary>Answered 409: the server was not started with what this request needs (e.g. --graphs, --sae).</summary>
public sealed class NoPlaceException(string message) : Exception(message);
