using System.CommandLine;
using Loupe.Models;
using Loupe.Models.Loading;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>What every verb shares: the model option, loading with progress, token parsing, errors.</summary>
static class CliSupport
{
    /// <summary>Progress and status go to stderr so stdout stays machine-readable.</summary>
    public static IAnsiConsole Status { get; } = AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(Console.Error),
    });

    public static Option<string> ModelOption() => new("--model", "-m")
    {
        Description = "A local model folder (config.json + *.safetensors + tokenizer) or a Hugging Face hub id such as gpt2",
        Required = true,
    };

    /// <summary>The exit code of a refusal: bad input (a file, field, tensor or argument) or a failed file-system or network operation.</summary>
    public const int InputErrorExitCode = 2;

    /// <summary>
    /// Runs a verb body. Bad input (<see cref="InputError"/>) and failures of the environment (a missing
    /// file, a full disk, a refused download) print one line on stderr and exit with code 2; anything
    /// else is a bug and escapes with its stack trace (exit code 1), so it is never disguised.
    /// </summary>
    public static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (IsRefusal(e))
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
            return InputErrorExitCode;
        }
    }

    /// <summary>Bad input, or the environment refusing (file system, network) — never a bug in Loupe's own code.</summary>
    static bool IsRefusal(Exception e) => e switch
    {
        InputError => true,
        EndOfStreamException => false, // a parser that read past the end has a missing check: a bug
        IOException or UnauthorizedAccessException or HttpRequestException => true,
        _ => false,
    };

    static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    /// <summary>Loads a model from a folder or the hub, showing download progress and a spinner.</summary>
    public static HookedTransformer LoadModel(string model)
    {
        if (Directory.Exists(model))
            return Status.Status().Start($"Loading {model}", _ => ModelLoader.LoadFolder(model));
        HookedTransformer? loaded = null;
        Status.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new DownloadedColumn(), new TransferSpeedColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>();
                var progress = new SyncProgress<DownloadProgress>(p =>
                {
                    if (!tasks.TryGetValue(p.FileName, out var task))
                        tasks[p.FileName] = task = ctx.AddTask(p.FileName, maxValue: Math.Max(1, p.BytesTotal ?? 1));
                    if (p.BytesTotal is long total) task.MaxValue = Math.Max(1, total);
                    task.Value = p.BytesDone;
                });
                loaded = ModelLoader.LoadAsync(model, progress).GetAwaiter().GetResult();
            });
        return loaded!;
    }

    /// <summary>The model input of a verb: a prompt (tokenized by the model) or raw token ids — exactly one.</summary>
    public sealed record InputOptions(Option<string?> Prompt, Option<string?> Tokens)
    {
        public static InputOptions Create(string promptDescription) => new(
            new Option<string?>("--prompt", "-p") { Description = promptDescription },
            new Option<string?>("--tokens") { Description = "Raw token ids, rows separated by ';' (e.g. \"1,2,3;4,5,6\"); no BOS is added" });

        /// <summary>The prompt's text when one was given (null for raw tokens).</summary>
        public string? Text(ParseResult parse) => parse.GetValue(Prompt);

        /// <exception cref="ArgumentException">Both or neither of --prompt and --tokens were given.</exception>
        public TokenBatch Read(ParseResult parse, HookedTransformer model)
        {
            string? text = parse.GetValue(Prompt), ids = parse.GetValue(Tokens);
            if ((text is null) == (ids is null)) throw new ArgumentException("give exactly one of --prompt or --tokens");
            return text is not null ? TokenBatch.Single(Encode(model, text)) : ParseTokens(ids!);
        }
    }

    /// <summary>Parses "1,2,3;4,5,6" into equal-length rows.</summary>
    /// <exception cref="FormatException">A value is not an integer or rows differ in length.</exception>
    public static TokenBatch ParseTokens(string text)
    {
        var rows = text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select((row, r) => row.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(v => int.TryParse(v, out int id) ? id : throw new FormatException($"--tokens: '{v}' in row {r} is not an integer token id"))
                .ToArray())
            .ToArray();
        if (rows.Length == 0 || rows.Any(r => r.Length == 0)) throw new FormatException("--tokens: expected comma-separated ids, rows separated by ';' (e.g. \"1,2,3;4,5,6\")");
        if (rows.Any(r => r.Length != rows[0].Length))
            throw new FormatException($"--tokens: rows have different lengths ({string.Join(", ", rows.Select(r => r.Length))}); give rows of equal length");
        return TokenBatch.FromRows(rows);
    }

    /// <summary>Tokenizes prompts with the model's tokenizer (BOS as the tokenizer's template says).</summary>
    public static int[] Encode(HookedTransformer model, string prompt)
    {
        var tokenizer = model.Tokenizer ?? throw new InvalidOperationException($"the model at {model.Source} has no tokenizer (tokenizer.json or vocab.json + merges.txt); pass token ids with --tokens instead");
        var ids = tokenizer.Encode(prompt);
        if (ids.Length == 0) throw new ArgumentException("the prompt encodes to no tokens");
        return ids;
    }

    /// <summary>The id of a text that must be exactly one token (tokenized without special tokens).</summary>
    /// <exception cref="ArgumentException">The text is not one token; the message shows how it tokenizes.</exception>
    /// <exception cref="InvalidOperationException">The model has no tokenizer.</exception>
    public static int SingleToken(HookedTransformer model, string text, string option, string idAlternative)
    {
        var tokenizer = model.Tokenizer ?? throw new InvalidOperationException($"the model at {model.Source} has no tokenizer; give {idAlternative} instead of {option}");
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        if (ids.Length != 1)
            throw new ArgumentException($"{option} \"{text}\" must be exactly one token but tokenizes to {ids.Length}: " +
                (ids.Length == 0 ? "(nothing)" : string.Join(", ", ids.Select(i => Show(model, i)))) +
                $"; choose a single-token {option.TrimStart('-')} (often with or without a leading space) or give {idAlternative}");
        return ids[0];
    }

    /// <summary>A token as a person reads it: decoded text, quoted, with its id.</summary>
    public static string Show(HookedTransformer model, int id) =>
        model.Tokenizer is { } t && id < t.VocabSize ? $"{Quote(t.Decode([id]))} ({id})" : id.ToString();

    static string Quote(string s) => "\"" + s.Replace("\\", "\\\\").Replace("\n", "\\n").Replace("\t", "\\t").Replace("\"", "\\\"") + "\"";

    /// <summary>Progress&lt;T&gt; posts to the thread pool; this reports on the caller's thread so bars update in order.</summary>
    internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
