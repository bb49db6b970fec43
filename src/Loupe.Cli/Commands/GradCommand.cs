using System.CommandLine;
using System.Globalization;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe grad</c>: gradients of a metric at chosen hook points, to a safetensors file.</summary>
static class GradCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var input = CliSupport.InputOptions.Create("Text to run (tokenized with the model's tokenizer)");
        var metric = new Option<string>("--metric")
        {
            Description = "logit_diff:A,B (logit of A minus B at the last position, summed over the batch), logprob:T, or loss (mean next-token loss); A, B, T are token ids or single-token strings",
            Required = true,
        };
        var hooks = new Option<string>("--hooks") { Description = "Comma-separated glob patterns over hook names, e.g. \"blocks.*.hook_resid_pre\"", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "The .safetensors file to write (atomically)", Required = true };
        var command = new Command("grad",
            "Run forward and backward and save d metric / d activation as 'grad.<hook>' for every matching hook, plus 'metric', 'logits' and 'tokens'.\n\n" +
            "Examples:\n" +
            "  loupe grad --model ../shared/models/stories260K --prompt \"Once upon a time\" --metric logit_diff:432,383 --hooks \"blocks.*.hook_resid_pre\" --out grads.safetensors\n" +
            "  loupe grad --model gpt2 --tokens \"464,3290,318\" --metric \"logit_diff: Paris, London\" --hooks \"blocks.*.attn.hook_z\" --out g.safetensors")
        { model, input.Prompt, input.Tokens, metric, hooks, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string path = CliSupport.OutputFile(parse.GetValue(output)!);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var batch = input.Read(parse, m);
            var selected = CliSupport.SelectHooks(m, parse.GetValue(hooks)!);
            var result = m.RunWithGradients(batch, ParseMetric(m, parse.GetValue(metric)!, batch), parse.GetValue(hooks), new RunOptions { CacheOn = CacheLocation.Host });
            var entries = selected.Select(name => SafeTensorEntry.F32("grad." + name, result.Gradients[name].Shape.ToArray(), result.Gradients[name].Data)).ToList();
            entries.Add(SafeTensorEntry.F32("metric", [1], new[] { (float)result.Metric }));
            entries.Add(SafeTensorEntry.F32("logits", result.Logits.Shape.ToArray(), result.Logits.ToCpu().Data));
            entries.Add(SafeTensorEntry.I64("tokens", [batch.Batch, batch.Length], batch.Ids.Select(i => (long)i).ToArray()));
            CliSupport.OutputFile(path);
            SafeTensorsWriter.Write(path, entries, new Dictionary<string, string>
            {
                ["model"] = m.Source ?? "",
                ["weight_processing"] = m.Processing.Describe(),
                ["metric"] = parse.GetValue(metric)!,
                ["format"] = "loupe-gradients",
            });
            Console.WriteLine($"metric = {result.Metric.ToString("G6", CultureInfo.InvariantCulture)}; wrote gradients at {selected.Count} hooks to {path}");
            return 0;
        }));
        return command;
    }

    /// <summary>Parses <c>logit_diff:A,B</c>, <c>logprob:T</c> or <c>loss</c>.</summary>
    /// <exception cref="InputError">Unknown metric, or a token that is not a single token or an id outside d_vocab_out.</exception>
    internal static IMetric ParseMetric(HookedTransformer model, string spec, TokenBatch tokens)
    {
        int colon = spec.IndexOf(':');
        string kind = (colon < 0 ? spec : spec[..colon]).Trim(), args = colon < 0 ? "" : spec[(colon + 1)..];
        switch (kind)
        {
            case "logit_diff":
                var parts = args.Split(',');
                if (parts.Length != 2) throw new InputError($"argument: --metric logit_diff needs two tokens, 'logit_diff:A,B'; got '{spec}'");
                return new LogitDiff(SingleToken(model, parts[0]), SingleToken(model, parts[1]));
            case "logprob":
                return new LogProb(SingleToken(model, args));
            case "loss":
                return new SpanLoss(tokens);
            default:
                throw new InputError($"argument: unknown --metric '{kind}'; use logit_diff:A,B, logprob:T or loss");
        }
    }

    /// <summary>A token id, or a string that must encode to exactly one token.</summary>
    internal static int SingleToken(HookedTransformer model, string text) =>
        int.TryParse(text.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int id) ? CliSupport.OutputToken(model, id, "--metric token")
            : CliSupport.SingleToken(model, text, "--metric token", "its token id");
}
