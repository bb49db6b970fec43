using System.CommandLine;
using Loupe.Circuits.Weights;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe weights</c>: circuit analysis from the weights alone (no forward pass on text).</summary>
static class WeightsCommand
{
    // Why under an explicit --device: these are products of the weight matrices themselves, computed once on the host from
    // the memory-mapped weights; there is no forward pass for a device to run.
    const string CpuOnly = "it analyses the weight matrices themselves (products of W_E, W_Q, W_K, W_V, W_O, W_U, computed on the host " +
        "from the memory-mapped weights) and runs no forward pass";

    public static Command Create()
    {
        var command = new Command("weights",
            "Weight-based circuit analysis (Elhage et al. 2021): composition scores between heads, positional attention.\n\n" +
            "Examples:\n" +
            "  loupe weights composition --model ../shared/models/gpt2-small-attention --out composition-out\n" +
            "  loupe weights composition --model tests/data/reference/gpt2");
        command.Subcommands.Add(Composition());
        command.Subcommands.Add(Full());
        return command;
    }

    static Command Full()
    {
        var model = new Option<string>("--model", "-m") { Description = "A model folder or hub id (its checkpoint must hold the token embedding)", Required = true };
        var layer = new Option<int?>("--layer") { Description = "Only this head's layer (with --head)" };
        var head = new Option<int?>("--head") { Description = "Only this head (with --layer)" };
        var token = new Option<int?>("--token") { Description = "With --layer/--head: list the full OV row (logits this token moves when attended to) and QK row (keys this query token prefers) of that token" };
        var tokens = new Option<int>("--tokens") { Description = "Tokens (the first N of the vocabulary, at most all of it) the diagonal scores are computed over", DefaultValueFactory = _ => 2048 };
        var fold = new Option<bool>("--no-fold") { Description = "Use the heads' weights as stored instead of folding ln1 into them (TransformerLens's fold_ln)" };
        var output = new Option<string?>("--out", "-o") { Description = "Folder for full_circuits.json" };
        var command = new Command("full",
            "Full OV (W_E·W_V·W_O·W_U) and QK (W_E·W_Q·W_Kᵀ·W_Eᵀ) circuits through the embedding and unembedding, kept factored: " +
            "for every head, how often a token's own entry is the largest in its row (OV: the head copies the token it attends to; " +
            "QK: a query token attends most to its own token), or one token's rows for one head.\n\n" +
            "Examples:\n  loupe weights full --model ../shared/models/induction-attn-only-2l\n  loupe weights full --model gpt2 --layer 5 --head 5 --token 1234")
        { model, layer, head, token, tokens, fold, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, cpuOnlyReason: CpuOnly);
            var embedding = FullCircuits.Embedding(m) ?? throw new InputError($"argument: --model: {m.Source} holds no token embedding (wte, embed_tokens, embed_in or W_E of [d_vocab, d_model]); full circuits need it");
            if (m.Config.VocabOut != m.Config.DVocab) throw new InputError($"argument: --model: d_vocab {m.Config.DVocab} ≠ d_vocab_out {m.Config.VocabOut}; the full OV circuit needs one vocabulary");
            var weights = AttentionWeights.FromModel(m);
            if (!parse.GetValue(fold)) weights = weights.FoldLayerNorm(centerWriting: false);
            int V = m.Config.DVocab, n = Math.Min(V, CliSupport.Int(parse, tokens, 1, int.MaxValue));
            var unembed = m.UnembedLayer;
            int? l = parse.GetValue(layer), h = parse.GetValue(head);
            if (l.HasValue != h.HasValue) throw new InputError("argument: --layer and --head go together");
            if (l is int ll && (ll < 0 || ll >= weights.NLayers)) throw InputError.Expected("argument", "--layer", $"0..{weights.NLayers - 1}", ll.ToString());
            if (h is int hh && (hh < 0 || hh >= weights.NHeads)) throw InputError.Expected("argument", "--head", $"0..{weights.NHeads - 1}", hh.ToString());
            if (parse.GetValue(token) is int t)
            {
                if (l is null) throw new InputError("argument: --token needs --layer and --head");
                if (t < 0 || t >= V) throw InputError.Expected("argument", "--token", $"a token id in 0..{V - 1}", t.ToString());
                var ovRow = FullCircuits.OV(weights, l.Value, h!.Value, embedding, unembed.Weight.Span, V, unembed.WeightIsOutIn).Row(t);
                var qkRow = FullCircuits.QK(weights, l.Value, h.Value, embedding, V).Row(t);
                Console.WriteLine($"L{l}H{h}, token {CliSupport.Show(m, t)}:");
                Console.WriteLine("  OV (logits raised when the head attends to it): " + string.Join(", ", Enumerable.Range(0, V).OrderByDescending(i => ovRow[i]).Take(10).Select(i => $"{CliSupport.Show(m, i)} {ovRow[i]:F2}")));
                Console.WriteLine("  QK (keys this query prefers):                   " + string.Join(", ", Enumerable.Range(0, V).OrderByDescending(i => qkRow[i]).Take(10).Select(i => $"{CliSupport.Show(m, i)} {qkRow[i]:F2}")));
                return 0;
            }
            var heads = l is int only ? [(only, h!.Value)] : Enumerable.Range(0, weights.NLayers).SelectMany(a => Enumerable.Range(0, weights.NHeads).Select(b => (a, b))).ToArray();
            var rows = CliSupport.Status.Status().Start($"Full circuits of {heads.Length} heads over {n} tokens", _ => heads.Select(x => (
                Ov: FullCircuits.Diagonal(FullCircuits.OV(weights, x.Item1, x.Item2, embedding, unembed.Weight.Span, V, unembed.WeightIsOutIn), x.Item1, x.Item2, n),
                Qk: FullCircuits.Diagonal(FullCircuits.QK(weights, x.Item1, x.Item2, embedding, V), x.Item1, x.Item2, n))).ToList());
            Console.WriteLine($"{m.Source}: full circuits over the first {n} tokens ({(parse.GetValue(fold) ? "weights as stored" : "ln1 folded into the heads")}; no final norm)");
            Console.WriteLine("head      OV top-1  OV top-5  OV mean rank   QK top-1  QK top-5");
            foreach (var (ov, qk) in rows.OrderByDescending(r => r.Ov.Top1))
                Console.WriteLine($"L{ov.Layer}H{ov.Head,-6} {ov.Top1,8:P1} {ov.Top5,9:P1} {ov.MeanDiagonalRank,12:F1} {qk.Top1,10:P1} {qk.Top5,9:P1}");
            if (parse.GetValue(output) is { } dir)
            {
                string path = Path.Combine(CliSupport.OutputFolder(dir), "full_circuits.json");
                Loupe.Reports.AtomicFile.WriteJson(path, new { model = m.Source, tokens = n, fold_ln = !parse.GetValue(fold), ov = rows.Select(r => r.Ov), qk = rows.Select(r => r.Qk) });
                Console.WriteLine($"wrote {path}");
            }
            return 0;
        }));
        return command;
    }

    static Command Composition()
    {
        var model = new Option<string>("--model", "-m")
        {
            Description = "A model folder or hub id, or a GPT-2-layout checkpoint (a .safetensors file or its folder) holding at least every layer's attention and ln_1",
            Required = true,
        };
        var output = new Option<string?>("--out", "-o") { Description = "Folder for composition.json and k_composition.svg" };
        var threshold = new Option<double>("--threshold") { Description = "Previous-token score (self excluded) a head needs to be listed", DefaultValueFactory = _ => 0.6 };
        var partners = new Option<int>("--partners") { Description = "K-composition partners listed per previous-token head", DefaultValueFactory = _ => 5 };
        var positions = new Option<int>("--positions") { Description = "Positions used for the positional patterns", DefaultValueFactory = _ => 128 };
        var command = new Command("composition",
            "Q-, K- and V-composition scores for every pair of heads (TransformerLens's all_composition_scores, on weights with fold_ln and " +
            "center_writing_weights), OV copying scores when the token embedding is there, previous-token heads found from learned positions alone (residual = W_pos passed through the attention " +
            "layers, token embedding and MLPs zero), and each such head's strongest K-composition partners in later layers. Works on checkpoints " +
            "that hold only attention (e.g. GPT-2 small without MLPs or token embedding).\n\n" +
            "Examples:\n" +
            "  loupe weights composition --model ../shared/models/gpt2-small-attention --out composition-out\n" +
            "  loupe weights composition --model ../shared/models/gpt2-small-attention/gpt2_partial.safetensors --threshold 0.8 --partners 3")
        { model, output, threshold, partners, positions };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string m = parse.GetValue(model)!;
            double minScore = CliSupport.Double(parse, threshold, 0, 1);
            int partnerCount = CliSupport.Int(parse, partners, 1, 10_000);
            int positionCount = CliSupport.Int(parse, positions, 2, 1 << 16);
            string? outDir = parse.GetValue(output);
            if (outDir is not null) CliSupport.OutputFolder(outDir);
            AttentionWeights weights;
            double[]? copying = null;
            if (AttentionWeights.IsModelFolder(m) || !(File.Exists(m) || Directory.Exists(m)))
            {
                using var loaded = CliSupport.LoadModel(m, cpuOnlyReason: CpuOnly);
                weights = AttentionWeights.FromModel(loaded);
                copying = CliSupport.Status.Status().Start("OV copying scores", _ => OvCopying.Compute(loaded, weights));
            }
            else if (!CliSupport.Processing.IsNone)
                throw new InputError($"argument: --process: '{m}' is a partial checkpoint read without loading a model; weight processing needs a model folder Loupe can load");
            else
            {
                CliSupport.RequireCpu(CpuOnly); // no model is loaded here, so LoadModel's check does not run
                weights = CliSupport.Status.Status().Start($"Reading {m}", _ => AttentionWeights.FromGpt2Checkpoint(m));
            }
            var report = CliSupport.Status.Status().Start("Scoring", _ => CompositionReport.Build(weights, minScore, partnerCount, positionCount, copying));

            Console.WriteLine($"{weights.Source}: {weights.NLayers} layers × {weights.NHeads} heads, d_model {weights.DModel}, d_head {weights.DHead}; " +
                              $"composition on {string.Join(" + ", report.Scores.Processing)}");
            if (report.Positional is null)
                Console.WriteLine("no learned positions: previous-token heads not searched");
            else if (report.PreviousTokenHeads.Count == 0)
                Console.WriteLine($"no head has a positional previous-token score above {minScore} (over {report.Positional.Positions} positions)");
            else
            {
                Console.WriteLine($"Previous-token heads (positions alone, score > {minScore}) and their strongest K-composition partners:");
                foreach (var head in report.PreviousTokenHeads)
                    Console.WriteLine($"  {head.Head,-7} {head.PreviousTokenScore:F3}  → " +
                                      string.Join("  ", head.KPartners.Select(p => $"{p.Head} {p.Score:F3}")));
            }
            if (copying is null) Console.WriteLine("OV copying scores: skipped (no token embedding / unembedding in these weights)");
            else
                Console.WriteLine("Highest OV copying scores: " + string.Join("  ", Enumerable.Range(0, copying.Length).OrderByDescending(i => copying[i]).Take(5)
                    .Select(i => $"{CompositionReport.Label(i / weights.NHeads, i % weights.NHeads)} {copying[i]:F3}")));
            if (outDir is not null)
            {
                var (json, svg) = report.Write(outDir);
                Console.WriteLine($"wrote {json} and {svg}");
            }
            return 0;
        }));
        return command;
    }
}
