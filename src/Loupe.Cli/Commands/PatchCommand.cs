using Loupe.Reports;
using System.CommandLine;
using Loupe.Causal.Attribution;
using Loupe.Causal.Patching;
using Loupe.Causal.Reports;
using Loupe.Models;
using Loupe.Models.Metrics;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe patch</c>: activation patching between a clean and a corrupt prompt.</summary>
static class PatchCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var clean = new Option<string?>("--clean") { Description = "The clean prompt (tokenized with the model's tokenizer, BOS as its template says)" };
        var corrupt = new Option<string?>("--corrupt") { Description = "The corrupt prompt; must tokenize to as many tokens as the clean one" };
        var cleanTokens = new Option<string?>("--clean-tokens") { Description = "Clean token ids instead of --clean, e.g. \"5,17,113\" (rows separated by ';'; no BOS added)" };
        var corruptTokens = new Option<string?>("--corrupt-tokens") { Description = "Corrupt token ids instead of --corrupt" };
        var answer = new Option<string?>("--answer") { Description = "The answer the clean prompt should lead to; must be exactly one token (e.g. \" Paris\")" };
        var wrong = new Option<string?>("--wrong") { Description = "The competing answer (the corrupt prompt's); the metric is then logit(answer) − logit(wrong)" };
        var answerId = new Option<int?>("--answer-id") { Description = "The answer as a token id instead of --answer" };
        var wrongId = new Option<int?>("--wrong-id") { Description = "The competing answer as a token id instead of --wrong" };
        var target = new Option<string>("--target") { Description = $"What to patch: {string.Join(", ", PatchTarget.Named.Keys)}", DefaultValueFactory = _ => "resid_pre" };
        var method = new Option<string>("--method") { Description = "activation (one patched forward per cell, batched), attribution (gradient × difference estimate: 2 forwards + 1 backward for the whole sweep), or both (also reports their Spearman rank correlation)", DefaultValueFactory = _ => "activation" };
        var noising = new Option<bool>("--noising") { Description = "Patch corrupt activations into the clean run instead of clean into corrupt" };
        var position = new Option<int>("--position") { Description = "Where the metric reads the logits (negative counts from the end)", DefaultValueFactory = _ => -1 };
        var maxRows = new Option<int>("--max-rows") { Description = "Rows per batched forward pass", DefaultValueFactory = _ => 64 };
        var output = new Option<string>("--out", "-o") { Description = "Folder for patch.json and patch.svg", Required = true };
        var command = new Command("patch",
            "Activation patching: run the clean and corrupt prompts, then patch each cell of the target (layer × position, or layer × head) " +
            "from the clean run into the corrupt one and measure logit(answer) − logit(wrong) at the last position. Writes patch.json " +
            "(metric grid, clean/corrupt values, normalized grid (m − m_corrupt)/(m_clean − m_corrupt), labels, passes, seconds) and a patch.svg heatmap.\n\n" +
            "Examples:\n" +
            "  loupe patch --model ../shared/models/stories260K --clean \"Once upon a time, there was a little girl named Lily. One day,\" --corrupt \"Once upon a time, there was a little girl named Tim. One day,\" --answer Lily --wrong Tim --target resid_pre --out patch-out\n" +
            "  loupe patch --model ../shared/models/stories260K --clean \"…named Lily. One day,\" --corrupt \"…named Tim. One day,\" --answer Lily --wrong Tim --target head_out --noising --out heads-out\n" +
            "  loupe patch --model tests/data/reference/gpt2 --clean-tokens \"82,87,74,39\" --corrupt-tokens \"82,87,74,300\" --answer-id 17 --wrong-id 42 --target head_out --out out")
        { model, clean, corrupt, cleanTokens, corruptTokens, answer, wrong, answerId, wrongId, target, method, noising, position, maxRows, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string methodName = parse.GetValue(method)!;
            if (methodName is not ("activation" or "attribution" or "both"))
                throw InputError.Expected("argument", "--method", "activation, attribution or both", methodName);
            string targetName = parse.GetValue(target)!;
            if (!PatchTarget.Named.TryGetValue(targetName, out var patchTarget))
                throw InputError.Expected("argument", "--target", $"one of {string.Join(", ", PatchTarget.Named.Keys)}", targetName);
            int rowsPerPass = CliSupport.Int(parse, maxRows, 1);
            string dir = CliSupport.OutputFolder(parse.GetValue(output)!);

            // Both methods run where the model is: slices, metrics and the attribution sums stay on the device; one table comes back.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var cleanBatch = PromptOrTokens(m, parse.GetValue(clean), parse.GetValue(cleanTokens), "--clean");
            var corruptBatch = PromptOrTokens(m, parse.GetValue(corrupt), parse.GetValue(corruptTokens), "--corrupt");
            if (cleanBatch.Length != corruptBatch.Length || cleanBatch.Batch != corruptBatch.Batch)
                throw new InputError($"argument: --clean and --corrupt must have the same number of tokens to patch between them: " +
                    $"clean is {Describe(m, cleanBatch)}, corrupt is {Describe(m, corruptBatch)}");
            int a = AnswerToken(m, parse.GetValue(answer), parse.GetValue(answerId), "--answer")
                ?? throw new InputError("argument: give the answer with --answer or --answer-id");
            int? w = AnswerToken(m, parse.GetValue(wrong), parse.GetValue(wrongId), "--wrong");
            int pos = Check.InRange(parse.GetValue(position), -cleanBatch.Length, cleanBatch.Length - 1, "argument", "--position");
            IMetric metric = w is int wr ? new LogitDiff(a, wr, pos) : new LogProb(a, pos);

            PatchingResult? result = null, estimate = null;
            if (methodName != "activation")
                estimate = CliSupport.Status.Status().Start("attribution patching (2 forwards + 1 backward)",
                    _ => AttributionPatching.Sweep(m, cleanBatch, corruptBatch, metric, patchTarget, parse.GetValue(noising)));
            if (methodName != "attribution")
            CliSupport.Status.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask($"patching {targetName}", maxValue: 1);
                    var options = new PatchOptions
                    {
                        MaxRows = rowsPerPass,
                        Noising = parse.GetValue(noising),
                        LastPositionLogitsOnly = pos == -1,
                        Progress = (done, total) => { task.MaxValue = total; task.Value = done; },
                    };
                    result = ActivationPatching.Sweep(m, cleanBatch, corruptBatch, metric, patchTarget, options);
                });
            var labels = Enumerable.Range(0, cleanBatch.Length).Select(p => TokenLabel(m, cleanBatch.Ids[p])).ToArray();
            var args = new Dictionary<string, string?>
            {
                ["model"] = m.Source,
                ["weight_processing"] = m.Processing.Describe(),
                ["clean"] = parse.GetValue(clean),
                ["corrupt"] = parse.GetValue(corrupt),
                ["clean_tokens"] = string.Join(",", cleanBatch.Ids),
                ["corrupt_tokens"] = string.Join(",", corruptBatch.Ids),
                ["answer"] = CliSupport.Show(m, a),
                ["wrong"] = w is int wv ? CliSupport.Show(m, wv) : null,
                ["target"] = targetName,
                ["method"] = methodName,
                ["noising"] = parse.GetValue(noising) ? "true" : "false",
                ["position"] = pos.ToString(System.Globalization.CultureInfo.InvariantCulture),
            };
            result ??= estimate;
            if (methodName == "both")
            {
                double rho = RankCorrelation.Spearman(result!.Normalized, estimate!.Normalized);
                args["spearman_attribution_vs_activation"] = rho.ToString("F4", System.Globalization.CultureInfo.InvariantCulture);
                var (attributionJson, _) = CausalReports.WritePatching(estimate, Path.Combine(dir, "attribution"), labels, args);
                Console.WriteLine($"attribution patching: Spearman ρ with activation patching over {result.Cells.Length} cells = {CliSupport.Num(rho, "F3")} ({estimate.Seconds:F2} s vs {result.Seconds:F2} s); wrote {attributionJson}");
            }
            var (json, svg) = CausalReports.WritePatching(result!, dir, labels, args);

            Console.WriteLine($"{metric.Name}: clean {result!.CleanValue:F4}, corrupt {result.CorruptValue:F4}");
            // (m − m_corrupt) / (m_clean − m_corrupt) is NaN when the two runs agree, e.g. when the prompts differ only after --position.
            if (result.Normalized.All(double.IsNaN))
                Console.WriteLine($"note: clean and corrupt give the same {metric.Name}, so the normalized metric is undefined (n/a): the prompts must differ at or before --position {pos}");
            Console.WriteLine($"Top cells by normalized metric ({(result.Noising ? "noising: low = needed" : "denoising: 1 = clean restored")}):");
            var order = Enumerable.Range(0, result.Cells.Length)
                .OrderByDescending(i => result.Noising ? -result.Normalized[i] : result.Normalized[i]).Take(8);
            foreach (int i in order)
            {
                var c = result.Cells[i];
                string where = c.Position >= 0 ? $" at {labels[c.Position]}" : "";
                Console.WriteLine($"  {c,-12}{where,-24} {CliSupport.Num(result.Normalized[i], "F3"),8}   ({result.Values[i]:F4})");
            }
            Console.WriteLine($"{result.Cells.Length} cells in {result.ForwardPasses} forward passes ({result.CellsPerPass} cells per pass), {result.Seconds:F2} s");
            Console.WriteLine($"wrote {json} and {svg}");
            return 0;
        }));
        return command;
    }

    /// <summary>The batch from exactly one of a prompt or raw token ids.</summary>
    internal static TokenBatch PromptOrTokens(HookedTransformer model, string? text, string? ids, string option) =>
        CliSupport.PromptOrTokens(model, text, ids, option, option + "-tokens");

    /// <summary>
    /// A single token from text (tokenized without special tokens) or an id; null when neither is given.
    /// </summary>
    /// <exception cref="InputError">Both are given, the id is outside d_vocab_out, or the text is not exactly one token (the message shows how it tokenizes).</exception>
    internal static int? AnswerToken(HookedTransformer model, string? text, int? id, string option)
    {
        if (text is not null && id is not null) throw new InputError($"argument: give {option} or {option}-id, not both");
        if (id is int given) return CliSupport.OutputToken(model, given, option + "-id");
        return text is null ? null : CliSupport.SingleToken(model, text, option, $"{option}-id");
    }

    static string Describe(HookedTransformer model, TokenBatch batch) =>
        $"{batch.Length} tokens" + (batch.Batch > 1 ? $" × {batch.Batch} rows" : "") + " [" + string.Join(", ", batch.Row(0).ToArray().Select(i => CliSupport.Show(model, i))) + "]";

    /// <summary>A token as a column label: its text when there is a tokenizer, else its id.</summary>
    internal static string TokenLabel(HookedTransformer model, int id) =>
        model.Tokenizer is { } t && id < t.VocabSize ? t.Decode([id]).Replace("\n", "\\n", StringComparison.Ordinal) : id.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
