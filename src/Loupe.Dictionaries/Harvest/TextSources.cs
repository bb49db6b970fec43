using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Loupe.Models;
using Loupe.Models.Generation;

namespace Loupe.Dictionaries.Harvest;

/// <summary>
/// A stream of documents for harvesting. Documents come in a fixed order (the same on every
/// enumeration), so the contexts built from them — and hence a harvest — are reproducible.
/// </summary>
public interface ITextSource
{
    /// <summary>One line saying what the documents are (recorded in the harvest manifest).</summary>
    string Description { get; }

    /// <summary>The documents, in a deterministic order.</summary>
    IEnumerable<string> Documents();
}

/// <summary>Documents held in memory (e.g. texts sent to <c>loupe serve</c>); empty ones are dropped.</summary>
/// <param name="documents">The documents, in order.</param>
/// <param name="description">What they are, for the store's or manifest's record.</param>
public sealed class InMemoryTextSource(IReadOnlyList<string> documents, string description) : ITextSource
{
    public string Description => description;

    public IEnumerable<string> Documents() => documents.Where(d => !string.IsNullOrWhiteSpace(d));
}

/// <summary>
/// Plain UTF-8 text files: one document per file, or one per paragraph (blocks separated by a
/// blank line) when <c>splitParagraphs</c> is set. A folder contributes its <c>*.txt</c> files,
/// recursively, in ordinal path order. Empty documents are dropped.
/// </summary>
public sealed class PlainTextSource : ITextSource
{
    readonly string[] _files;
    readonly bool _splitParagraphs;

    /// <exception cref="FileNotFoundException">A path is neither a file nor a folder.</exception>
    public PlainTextSource(IEnumerable<string> paths, bool splitParagraphs = false)
    {
        var files = new List<string>();
        foreach (var p in paths)
        {
            if (File.Exists(p)) files.Add(Path.GetFullPath(p));
            else if (Directory.Exists(p))
                files.AddRange(Directory.GetFiles(p, "*.txt", SearchOption.AllDirectories).Select(Path.GetFullPath).Order(StringComparer.Ordinal));
            else throw new FileNotFoundException($"text source not found: {p}", p);
        }
        _files = files.ToArray();
        _splitParagraphs = splitParagraphs;
    }

    public PlainTextSource(string path, bool splitParagraphs = false) : this([path], splitParagraphs) { }

    public string Description => $"plain text: {_files.Length} file(s){(_splitParagraphs ? ", one document per paragraph" : "")}"
        + (_files.Length > 0 ? $" ({string.Join(", ", _files.Take(3).Select(Path.GetFileName))}{(_files.Length > 3 ? ", …" : "")})" : "");

    public IEnumerable<string> Documents()
    {
        foreach (var file in _files)
        {
            string text = File.ReadAllText(file).Replace("\r\n", "\n");
            if (!_splitParagraphs)
            {
                if (text.Trim().Length > 0) yield return text.Trim();
                continue;
            }
            foreach (var para in Regex.Split(text, @"\n[ \t]*\n"))
                if (para.Trim().Length > 0) yield return para.Trim();
        }
    }
}

/// <summary>
/// JSON lines: one JSON object per line with a string field (default <c>"text"</c>). Blank lines
/// are skipped. A file ending in <c>.gz</c> or <c>.zst</c> is read through gzip or Zstandard (the Pile's
/// <c>.jsonl.zst</c>).
/// </summary>
/// <remarks>Enumeration throws <see cref="InputError"/> naming <c>file:line</c> for a
/// line that is not a JSON object or lacks the string field.</remarks>
public sealed class JsonLinesSource : ITextSource
{
    readonly string _path;
    readonly string _field;

    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public JsonLinesSource(string path, string field = "text")
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"JSON lines file not found: {path}", path);
        _path = Path.GetFullPath(path);
        _field = field;
    }

    public string Description => $"JSON lines: {Path.GetFileName(_path)} (field \"{_field}\")";

    // The file's lines, decompressed by its extension.
    static IEnumerable<string> Lines(string path)
    {
        Stream stream = File.OpenRead(path);
        if (path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)) stream = new System.IO.Compression.GZipStream(stream, System.IO.Compression.CompressionMode.Decompress);
        else if (path.EndsWith(".zst", StringComparison.OrdinalIgnoreCase)) stream = new ZstdSharp.DecompressionStream(stream);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        while (true)
        {
            string? line;
            try
            {
                line = reader.ReadLine();
            }
            catch (Exception e) when (e is InvalidDataException or EndOfStreamException or ZstdSharp.ZstdException)
            {
                throw new InputError($"{path}: cannot be decompressed ({e.Message.ReplaceLineEndings(" ")})", e);
            }
            if (line is null) yield break;
            yield return line;
        }
    }

    public IEnumerable<string> Documents()
    {
        int lineNo = 0;
        foreach (var line in Lines(_path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string? text;
            try
            {
                using var doc = JsonInput.Parse(System.Text.Encoding.UTF8.GetBytes(line), $"{_path}:{lineNo}");
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw new InputError($"{_path}:{lineNo}: expected a JSON object, found {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}");
                if (!doc.RootElement.TryGetProperty(_field, out var value) || value.ValueKind != JsonValueKind.String)
                    throw new InputError($"{_path}:{lineNo}: field \"{_field}\": expected a string, found {(doc.RootElement.TryGetProperty(_field, out var other) ? other.ValueKind.ToString().ToLowerInvariant() : "nothing (missing)")}");
                text = value.GetString();
            }
            catch (JsonException e)
            {
                throw new InputError($"{_path}:{lineNo}: malformed JSON: {e.Message.ReplaceLineEndings(" ")}", e);
            }
            if (!string.IsNullOrEmpty(text)) yield return text;
        }
    }
}

/// <summary>
/// The Brown corpus in NLTK's tagged format: files named like <c>ca01</c> (category letter, two
/// digits), one sentence per line of whitespace-separated <c>word/tag</c> tokens. Tags are stripped
/// and the text rebuilt (no space before closing punctuation, <c>``</c>/<c>''</c> become <c>"</c>).
/// One document per file, sentences joined by spaces, files in ordinal name order. Other files
/// (<c>cats.txt</c>, <c>CONTENTS</c>, <c>README</c>, <c>*.pickle</c>) are never read.
/// </summary>
public sealed partial class BrownCorpusSource : ITextSource
{
    readonly string[] _files;

    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="InputError">The folder has no Brown text files.</exception>
    public BrownCorpusSource(string folder)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"Brown corpus folder not found: {folder}");
        _files = Directory.GetFiles(folder).Where(f => FileName().IsMatch(Path.GetFileName(f))).Order(StringComparer.Ordinal).ToArray();
        if (_files.Length == 0) throw new InputError($"{folder}: expected Brown corpus files (named like ca01), found none");
        Folder = Path.GetFullPath(folder);
    }

    public string Folder { get; }

    public string Description => $"Brown corpus: {_files.Length} files from {Folder}";

    [GeneratedRegex("^c[a-r][0-9][0-9]$")]
    private static partial Regex FileName();

    public IEnumerable<string> Documents()
    {
        foreach (var file in _files)
        {
            var sentences = File.ReadLines(file).Select(Untag).Where(s => s.Length > 0);
            string doc = string.Join(" ", sentences);
            if (doc.Length > 0) yield return doc;
        }
    }

    /// <summary>Rebuilds the text of one tagged sentence line with the probes' detokenizer (the same text the POS probes align to).</summary>
    public static string Untag(string line)
    {
        var words = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)
            .Select(token => token.LastIndexOf('/') is var slash && slash > 0 ? token[..slash] : token)
            .ToList();
        return words.Count == 0 ? "" : Loupe.Probes.Alignment.Detokenizer.Join(words, out _);
    }
}

/// <summary>
/// Text sampled from the model itself: <c>count</c> generations from a lone BOS token, sampled at
/// <c>temperature</c> with a seed (generation i uses seed + i, so the documents do not depend on
/// the batch size), decoded with the model's tokenizer without special tokens.
/// </summary>
public sealed class ModelSampledSource : ITextSource
{
    readonly HookedTransformer _model;

    /// <exception cref="InputError">The model has no tokenizer or no BOS token, a count is not positive, or the temperature is not finite and ≥ 0.</exception>
    public ModelSampledSource(HookedTransformer model, int count, int maxNewTokens, int seed, float temperature = 1f)
    {
        if (model.Tokenizer is null) throw new InputError("sampling text needs the model's tokenizer; this model has none");
        if ((model.Config.BosTokenId ?? model.Tokenizer.BosTokenId) is null) throw new InputError("sampling from BOS needs a BOS token; the model has none");
        Check.InRange(count, 1, int.MaxValue, "argument", "number of samples");
        Check.InRange(maxNewTokens, 1, int.MaxValue, "argument", "tokens per sample");
        Check.Finite(temperature, 0, double.PositiveInfinity, "argument", "temperature");
        _model = model;
        Count = count;
        MaxNewTokens = maxNewTokens;
        Seed = seed;
        Temperature = temperature;
    }

    public int Count { get; }
    public int MaxNewTokens { get; }
    public int Seed { get; }
    public float Temperature { get; }

    public string Description => $"model samples: {Count} generations of up to {MaxNewTokens} tokens from BOS, temperature {Temperature}, seed {Seed}";

    public IEnumerable<string> Documents()
    {
        int bos = (_model.Config.BosTokenId ?? _model.Tokenizer!.BosTokenId)!.Value;
        for (int i = 0; i < Count; i++)
        {
            var gen = _model.Generate([[bos]], new GenerationOptions(MaxNewTokens, Temperature, Seed: Seed + i));
            string text = _model.Tokenizer!.Decode(gen[0], skipSpecialTokens: true);
            if (text.Trim().Length > 0) yield return text;
        }
    }
}

/// <summary>Text sources named the way the CLI and the web API name them: <c>KIND:VALUE</c>.</summary>
public static class TextSourceSpec
{
    /// <summary>The kinds <see cref="Parse"/> understands, for help texts and errors.</summary>
    public const string Kinds = "brown:FOLDER, text:PATH, jsonl:FILE[#FIELD], parquet:PATH[#COLUMN] or generate:N";

    /// <summary>The kinds with what each reads, for option descriptions.</summary>
    public const string Help = "brown:FOLDER, text:FILE_OR_FOLDER, jsonl:FILE[#FIELD] (a \"text\" field per line; .gz and .zst read through), " +
        "parquet:FILE_OR_FOLDER[#COLUMN] (a text column, or token ids already cut into rows such as input_ids), or generate:N";

    /// <summary>
    /// <c>brown:FOLDER</c> (the Brown corpus), <c>text:FILE_OR_FOLDER</c>, <c>jsonl:FILE[#FIELD]</c> (a "text" field per
    /// line, or FIELD; .gz and .zst read through), <c>parquet:FILE_OR_FOLDER[#COLUMN]</c> (a text column, or token ids:
    /// <see cref="ParquetSource"/>) or <c>generate:N</c> (N samples from <paramref name="model"/>, seeded by <paramref name="seed"/>).
    /// </summary>
    /// <param name="model">The model that samples for <c>generate:N</c>.</param>
    /// <param name="spec">The source, <c>KIND:VALUE</c>.</param>
    /// <param name="seed">Seed for <c>generate:N</c>.</param>
    /// <param name="argument">How the caller names the value in errors (a CLI option, an API field).</param>
    /// <exception cref="InputError">An unknown source kind or a malformed count.</exception>
    public static ITextSource Parse(HookedTransformer model, string spec, int seed, string argument = "--source")
    {
        int colon = spec.IndexOf(':');
        if (colon <= 0) throw InputError.Expected("argument", argument, $"KIND:VALUE ({Kinds})", spec);
        string kind = spec[..colon], value = spec[(colon + 1)..];
        return kind switch
        {
            "brown" => new BrownCorpusSource(value),
            "text" => new PlainTextSource(value),
            "jsonl" => !File.Exists(value) && value.LastIndexOf('#') is int hash and > 0 ? new JsonLinesSource(value[..hash], value[(hash + 1)..]) : new JsonLinesSource(value),
            "parquet" => !Path.Exists(value) && value.LastIndexOf('#') is int at and > 0 ? new ParquetSource(value[..at], value[(at + 1)..]) : new ParquetSource(value),
            "generate" => int.TryParse(value, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int n) && n > 0
                ? new ModelSampledSource(model, n, Math.Min(256, model.Config.NCtx - 1), seed)
                : throw InputError.Expected("argument", $"{argument} generate:N", "a number of samples in [1, 2147483647]", value),
            _ => throw InputError.Expected("argument", argument, Kinds, spec),
        };
    }
}
