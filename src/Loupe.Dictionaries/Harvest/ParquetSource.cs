// Parquet files, the format datasets on the Hugging Face hub come in (and what SAELens streams from): one column of a file,
// or of every *.parquet file in a folder (ordinal path order, row groups in order).
// - A string column (default "text") gives documents, tokenized and cut into contexts as any text is.
// - An integer list column (default, when there is no "text": "input_ids", then "tokens") holds token ids already cut into
//   rows, as SAELens's pretokenize runner writes them: each row's first context_size ids are one context, as SAELens uses a
//   tokenized dataset (no BOS added, no separator: a row that does not start with BOS stays as it is, and the description
//   counts those rows). A row shorter than a context, or an id outside the vocabulary, is refused naming the file and row.
using System.Globalization;
using Parquet;
using Parquet.Data;
using Parquet.Schema;

namespace Loupe.Dictionaries.Harvest;

/// <summary>A source whose documents are token ids already cut into rows (see <see cref="ContextBuilder.ForModel"/>).</summary>
public interface ITokenRowSource : ITextSource
{
    /// <summary>Whether the rows are token ids (true) or the source gives text <see cref="ITextSource.Documents"/> (false).</summary>
    bool IsTokenized { get; }

    /// <summary>The rows with where each comes from (<c>file:row</c>), in order.</summary>
    IEnumerable<(int[] Tokens, string Where)> TokenRows();
}

/// <summary>
/// What SAELens's pretokenize runner records beside a pre-tokenized dataset (<c>sae_lens.json</c>): the tokenizer the rows
/// were made with and their length.
/// </summary>
/// <param name="TokenizerName">The tokenizer (a hub id or path), as SAELens's <c>tokenizer_name</c>.</param>
/// <param name="ContextSize">Tokens per row (<c>context_size</c>).</param>
/// <param name="BeginBatchToken">What starts each row (<c>begin_batch_token</c>: "bos", an id, or null).</param>
/// <param name="Path">The file.</param>
public sealed record PretokenizedMetadata(string TokenizerName, int ContextSize, string? BeginBatchToken, string Path)
{
    public const string FileName = "sae_lens.json";

    /// <exception cref="InputError">Not JSON, or tokenizer_name or context_size missing or of the wrong kind (the file and field named).</exception>
    public static PretokenizedMetadata Read(string path)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            if (root.ValueKind != System.Text.Json.JsonValueKind.Object) throw InputError.Expected(path, "the file", "a JSON object", root.ValueKind.ToString());
            string name = root.TryGetProperty("tokenizer_name", out var t) && t.ValueKind == System.Text.Json.JsonValueKind.String && t.GetString() is { Length: > 0 } n ? n
                : throw InputError.Expected(path, "tokenizer_name", "the tokenizer's name", t.ValueKind == System.Text.Json.JsonValueKind.Undefined ? "nothing" : t.ToString());
            int size = root.TryGetProperty("context_size", out var c) && c.ValueKind == System.Text.Json.JsonValueKind.Number && c.TryGetInt32(out int v) && v > 0 ? v
                : throw InputError.Expected(path, "context_size", "a positive integer", c.ValueKind == System.Text.Json.JsonValueKind.Undefined ? "nothing" : c.ToString());
            string? begin = root.TryGetProperty("begin_batch_token", out var b) && b.ValueKind != System.Text.Json.JsonValueKind.Null ? b.ToString() : null;
            return new PretokenizedMetadata(name, size, begin, path);
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new InputError($"{path}: not JSON ({e.Message.ReplaceLineEndings(" ")})", e);
        }
    }

    /// <summary>
    /// Refuses rows made with a tokenizer whose vocabulary is not <paramref name="model"/>'s (as SAELens compares them before
    /// training on a pre-tokenized dataset): the first id whose token differs is named. Returns the vocabulary size.
    /// </summary>
    /// <exception cref="InputError">The vocabularies differ.</exception>
    public int CheckSameVocabulary(Loupe.Tokenizers.ITokenizer dataset, Loupe.Tokenizers.ITokenizer model)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        ArgumentNullException.ThrowIfNull(model);
        static string Token(Loupe.Tokenizers.ITokenizer t, int id)
        {
            try { return t.IdToToken(id); }
            catch (InputError) { return "(none)"; }
        }
        int n = Math.Max(dataset.VocabSize, model.VocabSize);
        for (int id = 0; id < n; id++)
        {
            string a = id < dataset.VocabSize ? Token(dataset, id) : "(none)", b = id < model.VocabSize ? Token(model, id) : "(none)";
            if (a != b)
                throw new InputError($"{Path}: the rows were tokenized with {TokenizerName}, whose vocabulary is not this model's " +
                    $"(id {id}: {InputError.Show(a)} there, {InputError.Show(b)} here; {dataset.VocabSize} and {model.VocabSize} tokens): its ids would mean other tokens");
        }
        return n;
    }

    /// <summary>The sae_lens.json in <paramref name="folder"/> or one of its two parents (a hub snapshot keeps it at the top, the shards in data/), or null.</summary>
    public static PretokenizedMetadata? Find(string folder)
    {
        var dir = new DirectoryInfo(folder);
        for (int up = 0; dir is not null && up <= 2; up++, dir = dir.Parent)
            if (File.Exists(System.IO.Path.Combine(dir.FullName, FileName))) return Read(System.IO.Path.Combine(dir.FullName, FileName));
        return null;
    }
}

/// <summary>One column of a Parquet file or folder (see the file header).</summary>
public sealed class ParquetSource : ITokenRowSource
{
    static readonly string[] s_defaultColumns = ["text", "input_ids", "tokens"];
    readonly string[] _files;
    readonly DataField _field;

    /// <exception cref="FileNotFoundException">The path is neither a file nor a folder.</exception>
    /// <exception cref="InputError">No parquet file, not a parquet file, no such column (the columns are listed), or a column that is neither text nor a list of integers.</exception>
    public ParquetSource(string path, string? column = null)
    {
        if (File.Exists(path)) _files = [Path.GetFullPath(path)];
        else if (Directory.Exists(path))
            _files = [.. Directory.GetFiles(path, "*.parquet", SearchOption.AllDirectories).Select(Path.GetFullPath).Order(StringComparer.Ordinal)];
        else throw new FileNotFoundException($"parquet source not found: {path}", path);
        if (_files.Length == 0) throw new InputError($"{path}: expected .parquet files, found none");
        var fields = Schema(_files[0]).GetDataFields();
        string[] names = [.. fields.Select(TopName).Distinct()];
        string name = column ?? s_defaultColumns.FirstOrDefault(names.Contains)
            ?? throw new InputError($"{_files[0]}: no column named {string.Join(", ", s_defaultColumns)}; name one with parquet:PATH#COLUMN (columns: {string.Join(", ", names)})");
        var leaves = fields.Where(f => TopName(f) == name).ToArray();
        if (leaves.Length == 0) throw InputError.Expected(_files[0], "column", $"one of {string.Join(", ", names)}", name);
        if (leaves.Length > 1) throw InputError.Expected(_files[0], $"column '{name}'", "text, or a list of integer token ids", $"a structure of {leaves.Length} fields");
        _field = leaves[0];
        bool repeated = _field.MaxRepetitionLevel > 0;
        IsTokenized = repeated && _field.MaxRepetitionLevel == 1 && (_field.ClrType == typeof(int) || _field.ClrType == typeof(long));
        bool isText = !repeated && (_field.ClrType == typeof(string) || _field.ClrType == typeof(ReadOnlyMemory<char>));
        if (!IsTokenized && !isText)
            throw InputError.Expected(_files[0], $"column '{name}'", "text, or a list of integer token ids", $"{(repeated ? "a list of " : "")}{_field.ClrType.Name}");
        Column = name;
        if (IsTokenized) Metadata = PretokenizedMetadata.Find(File.Exists(path) ? Path.GetDirectoryName(Path.GetFullPath(path))! : path);
    }

    public string Column { get; }

    /// <summary>SAELens's record of how the token rows were made (<c>sae_lens.json</c> near the shards), or null.</summary>
    public PretokenizedMetadata? Metadata { get; }

    // A column by its top-level name: a list column's leaf is "input_ids/list/element" as pyarrow writes it (3-level LIST),
    // or "input_ids" itself when written as a repeated primitive.
    static string TopName(DataField field) => field.Path.FirstPart ?? field.Name;

    /// <summary>
    /// How long reading a footer or a row group may take (plus a second per MB of the file) before the file is called
    /// damaged: the parquet parser can loop on some corrupt footers and page headers. The stuck read is left behind (a .NET
    /// thread cannot be stopped); the caller gets an <see cref="InputError"/> instead of a hang.
    /// </summary>
    public static TimeSpan ReadDeadline { get; set; } = TimeSpan.FromSeconds(30);

    static T WithDeadline<T>(Func<Task<T>> read, string file, string what)
    {
        var task = Task.Run(read);
        var limit = ReadDeadline + TimeSpan.FromSeconds(new FileInfo(file).Length / 1e6);
        if (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(limit))
            throw new InputError($"{file}: {what} did not finish within {limit.TotalSeconds:0} s: the file is damaged (its metadata makes the parquet reader loop)");
        return task.GetAwaiter().GetResult();
    }

    public bool IsTokenized { get; }

    public string Description => $"parquet: {_files.Length} file(s) ({string.Join(", ", _files.Take(3).Select(Path.GetFileName))}{(_files.Length > 3 ? ", …" : "")}), " +
        (IsTokenized ? $"column \"{Column}\" of token ids" + (Metadata is { } m ? $" (tokenized with {m.TokenizerName}, rows of {m.ContextSize}, {PretokenizedMetadata.FileName})" : "") : $"column \"{Column}\"");

    static ParquetSchema Schema(string file)
    {
        try
        {
            return WithDeadline(async () =>
            {
                await using var stream = File.OpenRead(file);
                return await ParquetReader.ReadSchemaAsync(stream).ConfigureAwait(false);
            }, file, "reading the footer");
        }
        catch (Exception e) when (e is not (OperationCanceledException or InputError))
        {
            // the parser's own exceptions on a damaged file (Thrift errors, overflows, end of stream) all mean the same to a reader
            throw new InputError($"{file}: not a readable parquet file ({e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")})", e);
        }
    }

    /// <summary>The text column's values in order (null and empty values dropped).</summary>
    /// <exception cref="InputError">The column holds token ids, or a file is unreadable or lacks the column.</exception>
    public IEnumerable<string> Documents()
    {
        if (IsTokenized) throw new InputError($"parquet column \"{Column}\" holds token ids: it gives contexts, not text");
        foreach (var file in _files)
            foreach (var chunk in ReadGroups(file, async (group, field) =>
            {
                var values = new string?[checked((int)group.RowCount)];
                await group.ReadAsync(field, values.AsMemory()).ConfigureAwait(false);
                return values;
            }))
                foreach (var text in chunk)
                    if (!string.IsNullOrEmpty(text)) yield return text;
    }

    public IEnumerable<(int[] Tokens, string Where)> TokenRows()
    {
        if (!IsTokenized) throw new InputError($"parquet column \"{Column}\" holds text, not token ids");
        foreach (var file in _files)
        {
            long row = 0;
            foreach (var rows in ReadGroups(file, ReadLists))
                foreach (var tokens in rows)
                    yield return (tokens, $"{file}: row {row++.ToString(CultureInfo.InvariantCulture)}");
        }
    }

    // Every row group of one file through `read`, the column checked to be there with the type it had in the first file.
    IEnumerable<T> ReadGroups<T>(string file, Func<ParquetRowGroupReader, DataField, Task<T>> read)
    {
        ParquetReader reader;
        try
        {
            reader = WithDeadline(() => ParquetReader.CreateAsync(file), file, "reading the footer");
        }
        catch (Exception e) when (e is not (OperationCanceledException or InputError))
        {
            throw new InputError($"{file}: not a readable parquet file ({e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")})", e);
        }
        long fileBytes = new FileInfo(file).Length;
        try
        {
            var field = reader.Schema.GetDataFields().FirstOrDefault(f => TopName(f) == Column && f.MaxRepetitionLevel == _field.MaxRepetitionLevel && f.ClrType == _field.ClrType)
                ?? throw new InputError($"{file}: no column \"{Column}\" of the type it has in {_files[0]} (columns: {string.Join(", ", reader.Schema.GetDataFields().Select(TopName).Distinct())})");
            for (int g = 0; g < reader.RowGroupCount; g++)
            {
                T result;
                try
                {
                    using var group = reader.OpenRowGroupReader(g);
                    // A damaged footer can claim billions of rows; real encodings (RLE included) do not pack text or ids
                    // 64 times tighter than a byte a row, so more than that is refused before anything is allocated.
                    if (group.RowCount < 0 || group.RowCount > 64 * fileBytes)
                        throw new InvalidDataException($"the row group claims {group.RowCount} rows in a file of {fileBytes} bytes");
                    result = WithDeadline(() => read(group, field), file, $"reading row group {g}");
                }
                catch (Exception e) when (e is not (OperationCanceledException or InputError))
                {
                    // the parser's own exceptions on a damaged file (Thrift errors, overflows, end of stream) all mean the same to a reader
                    throw new InputError($"{file}: row group {g}: column \"{Column}\" cannot be read ({e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")})", e);
                }
                yield return result;
            }
        }
        finally
        {
            reader.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    // A list column as rows: a new row where the repetition level is 0; a value where the definition level is the maximum
    // (lower: an empty or null list, or a null element — refused, a token id cannot be missing).
    static async Task<List<int[]>> ReadLists(ParquetRowGroupReader group, DataField field)
    {
        using var raw = await group.ReadRawColumnDataBaseAsync(field).ConfigureAwait(false);
        long[] values = raw switch
        {
            RawColumnData<long> l => l.Values.ToArray(),
            RawColumnData<int> i => [.. i.Values.ToArray().Select(v => (long)v)],
            _ => throw new InvalidDataException($"expected integers, found {raw.GetType().Name}"),
        };
        var repetition = raw.RepetitionLevels.ToArray();
        var definition = raw.DefinitionLevels.ToArray();
        int levels = repetition.Length, maxDef = field.MaxDefinitionLevel;
        if (definition.Length != 0 && definition.Length != levels || values.Length > levels)
            throw new InvalidDataException($"{values.Length} values, {levels} repetition and {definition.Length} definition levels do not fit together");
        // Values either come one per level (placeholders where undefined) or packed (defined ones only).
        bool packed = values.Length < levels;
        var rows = new List<int[]>();
        var current = new List<int>();
        bool started = false;
        for (int i = 0, v = 0; i < levels; i++)
        {
            if (repetition[i] == 0)
            {
                if (started) rows.Add([.. current]);
                current.Clear();
                started = true;
            }
            bool defined = definition.Length == 0 || definition[i] == maxDef;
            if (defined)
            {
                if (v >= values.Length) throw new InvalidDataException($"more defined levels than the {values.Length} values");
                long id = values[v];
                if (id < int.MinValue || id > int.MaxValue) throw new InvalidDataException($"token id {id} does not fit 32 bits");
                current.Add((int)id);
            }
            else if (!(repetition[i] == 0 && (i + 1 == levels || repetition[i + 1] == 0)))
                throw new InvalidDataException("a null token id inside a row");   // undefined yet not the whole (empty or null) row
            if (defined || !packed) v++;
        }
        if (started) rows.Add([.. current]);
        return rows;
    }
}
