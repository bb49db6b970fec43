using System.CommandLine;
using Loupe.Causal.Lens;
using Loupe.Causal.Reports;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe lens</c>: direct logit attribution and the logit lens for one prompt.</summary>
static class LensCommand
{
    // One stage: the answer's logit, probability and rank (and logit difference), the entropy and the KL to the final stage.
    static string StageLine(LensStage s, bool withWrong) =>
        $"  {s.Label,-22} logit {s.AnswerLogit,9:F3}  p {s.AnswerProb,10:0.00000}  rank {s.AnswerRank,6}" + (withWrong ? $"  diff {s.LogitDiff,8:F3}" : "") +
        $"  H {s.Entropy,6:F3}  KL→final {s.KlToFinal,7:F3}";

    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "The prompt (tokenized with the model's tokenizer, BOS as its template says)" };
        var tokens = new Option<string?>("--tokens") { Description = "Raw token ids instead of a prompt, e.g. \"5,17,113\" (one row; no BOS added)" };
        var answer = new Option<string?>("--answer") { Description = "The token to explain; must be exactly one token" };
        var wrong = new Option<string?>("--wrong") { Description = "A competing token: explain logit(answer) − logit(wrong) instead" };
        var answerId = new Option<int?>("--answer-id") { Description = "The answer as a token id" };
        var wrongId = new Option<int?>("--wrong-id") { Description = "The competing token as an id" };
        var position = new Option<int>("--position") { Description = "The position to explain (negative counts from the end)", DefaultValueFactory = _ => -1 };
        var scale = new Option<string>("--scale") { Description = "Logit lens final-norm scale: real (recomputed per layer) or frozen (the final position's)", DefaultValueFactory = _ => "real" };
        var tunedLens = new Option<string?>("--tuned") { Description = "A tuned lens (a folder with params.safetensors or tuned-lens's params.pt, + config.json; or the file), e.g. from `loupe lens train`, or hf:spaces/AlignmentResearch/tuned-lens/lens/MODEL (tuned-lens's pretrained lenses): read beside the logit lens" };
        var output = new Option<string>("--out", "-o") { Description = "Folder for lens.json, dla.svg and logit_lens.svg", Required = true };
        var command = new Command("lens",
            "Direct logit attribution: split the final residual stream into embeddings, each head, each layer's b_O and each MLP, and " +
            "project each through the final norm (scale frozen) onto the answer's unembedding (minus the wrong token's). " +
            "Then the logit lens: the answer's logit, probability and rank read from the residual stream after each layer. " +
            "Gemma 2's final soft-cap is nonlinear, so DLA explains the logits before it. With --tuned, a tuned lens (Belrose et al. 2023) is read " +
            "beside it: each layer's residual through its trained affine translator first. `loupe lens train` trains one, `loupe lens eval` measures one.\n\n" +
            "Examples:\n" +
            "  loupe lens --model ../shared/models/stories260K --prompt \"Once upon a time, there was a little girl named Lily. One day,\" --answer Lily --wrong Tim --out lens-out\n" +
            "  loupe lens --model ../shared/models/grokking-modadd-p113-main --tokens \"5,17,113\" --answer-id 22 --out lens-out\n" +
            "  loupe lens --model tests/data/reference/gpt2 --tokens \"82,87,74,39\" --answer-id 17 --wrong-id 42 --scale frozen --out lens-out\n" +
            "  loupe lens --model tests/data/reference/gpt2 --tokens \"82,87,74,39\" --answer-id 17 --device emulated --out lens-out\n" +
            "  loupe lens --model ../shared/models/stories260K --prompt \"Once upon a time, there was a little girl named Lily. One day,\" --answer Lily --tuned tuned/ --out lens-out")
        { model, prompt, tokens, answer, wrong, answerId, wrongId, position, scale, tunedLens, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            var lensScale = parse.GetValue(scale) switch
            {
                "real" => LensScale.Real,
                "frozen" => LensScale.Frozen,
                var s => throw InputError.Expected("argument", "--scale", "real or frozen", s),
            };
            string outDir = parse.GetValue(output)!;
            CliSupport.OutputFolder(outDir);
            // DLA and the logit lens run where the model is: on a device each reads back one result table.
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            string? text = parse.GetValue(prompt);
            var batch = CliSupport.PromptOrTokens(m, text, parse.GetValue(tokens), prompt.Name, tokens.Name);
            if (batch.Batch != 1) throw InputError.Expected("argument", "--tokens", "one row (lens explains one sequence)", $"{batch.Batch} rows");
            int a = PatchCommand.AnswerToken(m, parse.GetValue(answer), parse.GetValue(answerId), "--answer")
                ?? throw new InputError("argument: give the answer with --answer or --answer-id");
            int? w = PatchCommand.AnswerToken(m, parse.GetValue(wrong), parse.GetValue(wrongId), "--wrong");
            int pos = Check.InRange(parse.GetValue(position), -batch.Length, batch.Length - 1, "argument", "--position");

            var direction = w is int wv ? LogitDirection.Difference(m, a, wv) : LogitDirection.Token(m, a);
            var dla = CliSupport.Status.Status().Start("Attributing", _ => DirectLogitAttribution.Compute(m, batch, direction, pos));
            var lens = LogitLens.Run(m, batch, a, w, pos, scale: lensScale);
            var tunedFile = parse.GetValue(tunedLens) is string tunedPath ? TunedLens.Load(CliSupport.LocalPath(tunedPath, "--tuned")) : null;
            if (tunedFile?.ProcessingWarning(m) is { } processingWarning) Console.Error.WriteLine(processingWarning);
            var tuned = tunedFile is null ? null : LogitLens.Run(m, batch, a, w, pos, tuned: tunedFile);
            var labels = batch.Ids.Select(id => PatchCommand.TokenLabel(m, id)).ToArray();
            var args = new Dictionary<string, string?>
            {
                ["model"] = m.Source,
                ["weight_processing"] = m.Processing.Describe(),
                ["prompt"] = text,
                ["tokens"] = string.Join(",", batch.Ids),
                ["answer"] = CliSupport.Show(m, a),
                ["wrong"] = w is int wr ? CliSupport.Show(m, wr) : null,
                ["position"] = pos.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["scale"] = parse.GetValue(scale),
                ["tuned"] = parse.GetValue(tunedLens),
            };
            var (json, dlaSvg, lensSvg) = CausalReports.WriteLens(dla, lens, outDir, labels, args, tuned);

            string what = w is int w2 ? $"logit({CliSupport.Show(m, a)}) − logit({CliSupport.Show(m, w2)})" : $"logit({CliSupport.Show(m, a)})";
            Console.WriteLine($"{what} at position {dla.Position} ({labels[dla.Position]}): {dla.PreCapLogitDiff[0]:F4}" +
                (m.Config.FinalLogitSoftCap > 0 ? " (before the final soft-cap)" : ""));
            Console.WriteLine($"  = Σ DLA {dla.Total[0]:F4} + final-norm bias {dla.NormBias[0]:F4} + unembed bias {dla.UnembedBias[0]:F4}");
            Console.WriteLine("Largest direct contributions:");
            foreach (var (name, value) in dla.Components.Zip(dla.Values[0]).OrderByDescending(x => Math.Abs(x.Second)).Take(10))
                Console.WriteLine($"  {name,-12} {value,10:F4}");
            Console.WriteLine($"Logit lens ({lensScale.ToString().ToLowerInvariant()} scale):");
            foreach (var s in lens.Stages) Console.WriteLine(StageLine(s, w is not null));
            if (tuned is not null)
            {
                Console.WriteLine("Tuned lens:");
                foreach (var s in tuned.Stages) Console.WriteLine(StageLine(s, w is not null));
            }
            Console.WriteLine($"wrote {json}, {dlaSvg} and {lensSvg}");
            return 0;
        }));
        command.Subcommands.Add(TunedLensVerbs.Train());
        command.Subcommands.Add(TunedLensVerbs.Eval());
        return command;
    }
}
