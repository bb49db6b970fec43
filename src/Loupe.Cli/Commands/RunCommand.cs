using System.CommandLine;
using Loupe.Models;
using Loupe.Models.Families;
using Loupe.Models.Generation;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe run</c>: generate a continuation and show the next-token distribution.</summary>
static class RunCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var input = CliSupport.InputOptions.Create("Text to continue (tokenized with the model's tokenizer)");
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => 48 };
        var temperature = new Option<float>("--temperature", "-t") { Description = "0 = greedy; otherwise sample at this temperature", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "Sample only among the k most likely tokens (0 = all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling: smallest set with this total probability", DefaultValueFactory = _ => 1f };
        var seed = new Option<int>("--seed") { Description = "Random seed for sampling", DefaultValueFactory = _ => 0 };
        var top = new Option<int>("--top") { Description = "How many next-token probabilities to print", DefaultValueFactory = _ => 10 };
        var command = new Command("run",
            "Continue a prompt and print the top next-token probabilities.\n\n" +
            "Examples:\n" +
            "  loupe run --model ../shared/models/stories260K --prompt \"Once upon a time\"\n" +
            "  loupe run --model gpt2 --prompt \"The Eiffel Tower is in\" -n 20 --temperature 0.8 --top-p 0.9 --seed 1\n" +
            "  loupe run --model ../shared/models/grokking-modadd-p113-main --tokens \"5,17,113\" -n 1")
        { model, input.Prompt, input.Tokens, maxNew, temperature, topK, topP, seed, top };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // Cheap checks first, so a typo fails before the model loads.
            int n = CliSupport.Int(parse, maxNew, 0);
            var (temp, k, p) = CliSupport.Sampling(parse, temperature, topK, topP);
            int shown = CliSupport.Int(parse, top, 0);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var batch = input.Read(parse, m);
            if (batch.Batch != 1) throw InputError.Expected("argument", "--tokens", "one row (loupe run continues one sequence)", $"{batch.Batch} rows");
            string? text = input.Text(parse);
            int[] ids = batch.Ids;
            if (m is BertModel encoder) return Encoder(encoder, ids, shown);

            if (!m.Processing.IsNone) Console.WriteLine($"Weights processed on load: {m.Processing.Describe()} (log-probs unchanged)");
            var best = Loupe.Causal.Lens.NextTokens.TopK(m, ids, shown)[0];
            Console.WriteLine($"Top next tokens after {ids.Length} prompt tokens:");
            foreach (var (id, prob) in best)
                Console.WriteLine($"  {(float)prob,8:P2}  {CliSupport.Show(m, id)}");

            int room = m.Config.NCtx - ids.Length;
            if (n > room)
            {
                Console.Error.WriteLine($"note: the context holds {m.Config.NCtx} tokens; generating {room} instead of {n}");
                n = room;
            }
            if (n > 0)
            {
                var options = new GenerationOptions(n, temp, k, p, parse.GetValue(seed));
                var generated = m.Generate([ids], options)[0];
                Console.WriteLine();
                Console.WriteLine("Continuation:");
                Console.WriteLine(m.Tokenizer is { } t
                    ? (text ?? "") + t.Decode(generated, skipSpecialTokens: true)
                    : string.Join(",", generated));
            }
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// Encoders do not continue text: an MLM head's top tokens at each [MASK] (at every position when there is none),
    /// or a sentence encoder's mean-pooled, L2-normalised embedding.
    /// </summary>
    static int Encoder(BertModel m, int[] ids, int shown)
    {
        var tokens = TokenBatch.Single(ids);
        if (!m.Config.MlmHead)
        {
            var embedding = m.MeanPooledEmbeddings(tokens)[0];
            Console.WriteLine($"Sentence embedding ({ids.Length} tokens, mean-pooled over positions, L2-normalised; {embedding.Length} dims):");
            Console.WriteLine("  [" + string.Join(", ", embedding.Take(8).Select(v => v.ToString("F5", System.Globalization.CultureInfo.InvariantCulture))) + (embedding.Length > 8 ? ", …]" : "]"));
            Console.Error.WriteLine("note: an encoder does not generate; `loupe cache` reads its activations");
            return 0;
        }
        var logits = m.Run(tokens).Logits.ToCpu().Span;
        int V = m.Config.VocabOut;
        int? mask = m.Tokenizer?.TokenToId("[MASK]");
        var positions = Enumerable.Range(0, ids.Length).Where(t => ids[t] == mask).ToList();
        if (positions.Count == 0) positions = [.. Enumerable.Range(0, ids.Length)];
        foreach (int t in positions)
        {
            var probs = new float[V];
            Loupe.Tensors.Kernels.Softmax.Row(logits.Slice(t * V, V), probs);
            Console.WriteLine($"Top tokens at position {t} ({CliSupport.Show(m, ids[t])}):");
            foreach (int id in Enumerable.Range(0, V).OrderByDescending(i => probs[i]).Take(shown))
                Console.WriteLine($"  {probs[id],8:P2}  {CliSupport.Show(m, id)}");
        }
        Console.Error.WriteLine("note: an encoder does not generate text");
        return 0;
    }
}
