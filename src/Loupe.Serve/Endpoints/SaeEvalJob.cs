using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Splice;
using Loupe.Dictionaries.Sae;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Loupe.Serve;

/// <summary>An SAE evaluation to run as a job (as <c>loupe sae eval</c>) of the dictionary given with --sae.</summary>
/// <param name="Artifact">A served text artifact (.txt under --graphs, by id) to read, one document per paragraph; or give <paramref name="Texts"/>.</param>
/// <param name="Texts">The documents themselves (the request body is bounded).</param>
/// <param name="ContextSize">Tokens per context, BOS included (default 128, at most n_ctx).</param>
/// <param name="MaxContexts">Contexts evaluated at most (1–4096, default 64).</param>
/// <param name="BatchSize">Contexts per forward pass (1–64, default 8).</param>
/// <param name="Seed">Seed for shuffling the contexts (default 0).</param>
/// <param name="Name">The report's folder under evals/ (letters, digits, - and _; default: a fresh name).</param>
public sealed record SaeEvalJobRequest(string? Artifact, string[]? Texts, int? ContextSize, int? MaxContexts, int? BatchSize, int? Seed, string? Name);

/// <summary>What an SAE-evaluation job measured.</summary>
/// <param name="Report">Where eval.json was written under the served folder, or null without --graphs.</param>
/// <param name="Metrics">Every metric, as <c>loupe sae eval</c> writes them into eval.json.</param>
/// <param name="Warning">The dictionary was trained on a model loaded with other weight processing where that changes the values
/// at its hook (what <c>loupe sae eval</c> warns about: its numbers then measure a mismatch), or null.</param>
public sealed record SaeEvalJobResult(string? Report, SaeEvalResult Metrics, string? Warning = null);

public static partial class JobEndpoints
{
    /// <summary>POST /api/jobs/sae-eval: the dictionary spliced into the model over the given text, as the CLI's <c>sae eval</c>.</summary>
    static void MapSaeEval(RouteGroupBuilder api, ModelGate gate, JobManager jobs, ServeOptions options, Workspace workspace)
    {
        var model = gate.Model;
        api.MapPost("/sae-eval", async (SaeEvalJobRequest body, CancellationToken requestCancel) =>
        {
            string saePath = options.SaePath ?? throw new NoPlaceException("an SAE evaluation splices the dictionary given with --sae: start the server with --sae DIR");
            var (documents, description) = await Documents(workspace, body.Artifact, body.Texts, requestCancel);
            var (splice, config) = SaeSplice.Load(model, saePath);
            int contextSize = Math.Clamp(body.ContextSize ?? 128, 2, model.Config.NCtx);
            int seed = body.Seed ?? 0;
            var contexts = ContextBuilder.ForModel(model, new InMemoryTextSource(documents, description), contextSize, seed, Math.Clamp(body.MaxContexts ?? 64, 1, 4096));
            // a Matryoshka SAE's inner levels are measured alone, as loupe sae eval does by default
            var evalOptions = new SaeEvalOptions
            {
                BatchSize = Math.Clamp(body.BatchSize ?? 8, 1, 64),
                Levels = config.MatryoshkaLevels() is { Length: > 1 } levels ? levels[..^1] : [],
            };
            string? folder = workspace.Root is { } root ? Path.Combine(root, "evals", Name(body.Name, "name")) : null;
            if (folder is not null && Directory.Exists(folder)) throw new InputError($"name: an evaluation named '{Path.GetFileName(folder)}' already exists; choose another name");

            return Started(jobs, options, "sae-eval", async (job, cancel) =>
            {
                // The evaluator reports after every batch on its own thread: a cancelled job stops there.
                var progress = new Progress(p =>
                {
                    job.Report(new JobEvent("progress", p.ContextsDone, Math.Max(1, p.TotalContexts), $"evaluated {p.ContextsDone} of {p.TotalContexts} contexts"));
                    cancel.ThrowIfCancellationRequested();
                });
                var result = await gate.RunAsync(m => SaeEvaluator.Evaluate(m, splice, contexts, evalOptions, progress), cancel, longRunning: true);
                cancel.ThrowIfCancellationRequested();
                string? report = null;
                if (folder is not null)
                {
                    Directory.CreateDirectory(folder);
                    report = Path.GetRelativePath(workspace.Root!, SaeEvalReport.Write(folder, result, model.Source ?? "", config.ModelName, saePath, seed));
                    workspace.Scan();
                }
                return new SaeEvalJobResult(report, result, ProcessingAgreement.Mismatch(model, splice.InputHook, config));
            });
        }).WithSummary("Starts an SAE evaluation (as loupe sae eval) of the --sae dictionary over a served .txt artifact or texts in the body: L0, variance explained, loss recovered, KL, dead/dense features, density histogram; progress at /api/jobs/{id}/events; with --graphs the report is written to evals/NAME/eval.json + density.svg");
    }

    /// <summary>Reports on the caller's thread, in order.</summary>
    sealed class Progress(Action<SaeEvalProgress> report) : IProgress<SaeEvalProgress>
    {
        public void Report(SaeEvalProgress value) => report(value);
    }
}
