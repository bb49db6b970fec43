using Loupe.Dictionaries.Harvest;
using Loupe.Models;
using Loupe.Testing;
using Parquet;
using Parquet.Schema;

namespace Loupe.Dictionaries.Tests.Harvest;

/// <summary>
/// Parquet sources (a text column; token ids already cut into rows, as SAELens's pre-tokenized datasets) and JSON lines
/// compressed with gzip or Zstandard (fixtures made by the command-line tools, tests/data/text-sources/README.md).
/// </summary>
public sealed class ParquetAndCompressedSourceTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-parquet-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Fixture(string name) => SharedData.TestData(Path.Combine("text-sources", name));

    [Theory]
    [InlineData("docs.jsonl.gz")]
    [InlineData("docs.jsonl.zst")]
    public void Compressed_json_lines_read_as_the_plain_file(string name)
    {
        var plain = new JsonLinesSource(Fixture("docs.jsonl")).Documents().ToList();
        Assert.Equal(3, plain.Count);
        Assert.Equal(plain, new JsonLinesSource(Fixture(name)).Documents().ToList());
        // a field named in the spec
        var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")));
        var e = Assert.Throws<InputError>(() => TextSourceSpec.Parse(model, $"jsonl:{Fixture(name)}#meta", 0).Documents().ToList());
        Assert.Contains("field \"meta\"", e.Message);
    }

    [Fact]
    public void A_corrupt_compressed_file_is_named()
    {
        string path = Path.Combine(_dir, "bad.jsonl.zst");
        var bytes = File.ReadAllBytes(Fixture("docs.jsonl.zst"));
        for (int i = 12; i < bytes.Length; i += 3) bytes[i] ^= 0x5a;
        File.WriteAllBytes(path, bytes);
        var e = Assert.ThrowsAny<InputError>(() => new JsonLinesSource(path).Documents().ToList());
        Assert.Contains(path, e.Message);
    }

    // Token lists as pyarrow writes them (Hugging Face datasets): a 3-level LIST, optional group input_ids (LIST) { repeated
    // group list { optional int64 element } }; or (pyarrowLayout false) a bare repeated column.
    async Task<string> WriteParquet(string name, string[]? texts, long[][]? rows, int rowGroups = 1, bool int32 = false, bool pyarrowLayout = true)
    {
        string path = Path.Combine(_dir, name);
        var fields = new List<Field>();
        var text = new DataField<string>("text");
        if (texts is not null) fields.Add(text);
        if (rows is not null)
            fields.Add(pyarrowLayout ? new ListField("input_ids", int32 ? new DataField<int?>("element") : new DataField<long?>("element"))
                : int32 ? new DataField<IEnumerable<int>>("input_ids") : new DataField<IEnumerable<long>>("input_ids"));
        var schema = new ParquetSchema(fields.ToArray());
        DataField ids = schema.GetDataFields()[^1];
        await using var stream = File.Create(path);
        await using var writer = await ParquetWriter.CreateAsync(schema, stream);
        int n = texts?.Length ?? rows!.Length, per = (n + rowGroups - 1) / rowGroups;
        for (int start = 0; start < n; start += per)
        {
            int count = Math.Min(per, n - start);
            using var group = writer.CreateRowGroup();
            if (texts is not null) await group.WriteAsync(text, texts[start..(start + count)]);
            if (rows is not null)
            {
                var slice = rows[start..(start + count)];
                var repetition = slice.SelectMany(r => r.Select((_, i) => i == 0 ? 0 : 1)).ToArray();
                if (pyarrowLayout && int32) await group.WriteAsync<int>(ids, slice.SelectMany(r => r.Select(v => (int?)v)).ToArray().AsMemory(), repetition.AsMemory());
                else if (pyarrowLayout) await group.WriteAsync<long>(ids, slice.SelectMany(r => r.Select(v => (long?)v)).ToArray().AsMemory(), repetition.AsMemory());
                else if (int32) await group.WriteAsync<int>(ids, slice.SelectMany(r => r.Select(v => (int)v)).ToArray().AsMemory(), repetition.AsMemory());
                else await group.WriteAsync<long>(ids, slice.SelectMany(r => r).ToArray().AsMemory(), repetition.AsMemory());
            }
        }
        return path;
    }

    [Fact]
    public async Task A_text_column_gives_the_same_contexts_as_the_same_documents_in_memory()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        string[] texts = ["Once upon a time there was a little girl named Lily.", "", "She loved to play outside in the park with her friends.", "The sun was warm."];
        string folder = Path.Combine(_dir, "shards");
        Directory.CreateDirectory(folder);
        File.Move(await WriteParquet("b.parquet", texts[2..], null), Path.Combine(folder, "train-00001.parquet"));
        File.Move(await WriteParquet("a.parquet", texts[..2], null), Path.Combine(folder, "train-00000.parquet"));
        var source = TextSourceSpec.Parse(model, $"parquet:{folder}", 0);
        Assert.False(((ITokenRowSource)source).IsTokenized);
        Assert.Equal(texts.Where(t => t.Length > 0), source.Documents());   // shards in name order, empty values dropped
        var fromParquet = ContextBuilder.ForModel(model, source, 8, seed: 3);
        var inMemory = ContextBuilder.ForModel(model, new InMemoryTextSource(texts, "same"), 8, seed: 3);
        Assert.Equal(inMemory.Contexts, fromParquet.Contexts);
        Assert.Contains("2 file(s)", fromParquet.SourceDescription);
    }

    [Theory]
    [InlineData(false, 1, true)]
    [InlineData(true, 3, true)]
    [InlineData(false, 2, false)]
    public async Task Token_rows_become_contexts_as_they_are(bool int32, int rowGroups, bool pyarrowLayout)
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")));
        var random = new Random(5);
        long[][] rows = [.. Enumerable.Range(0, 7).Select(i => Enumerable.Range(0, 10 + i).Select(t => (long)(t == 0 ? 1 : random.Next(2, 512))).ToArray())];
        rows[4][0] = 9;   // one row without the BOS
        string path = await WriteParquet("tokens.parquet", null, rows, rowGroups, int32, pyarrowLayout);
        var source = TextSourceSpec.Parse(model, $"parquet:{path}", 0);
        Assert.True(((ITokenRowSource)source).IsTokenized);
        var contexts = ContextBuilder.FromTokenRows((ITokenRowSource)source, 8, model.Config.DVocab, bos: 1, seed: 11);
        // the first 8 ids of every row, shuffled as ContextBuilder shuffles (Fisher–Yates over Random(seed))
        var expected = rows.Select(r => r[..8].Select(v => (int)v).ToArray()).ToArray();
        var rng = new Random(11);
        for (int i = expected.Length - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (expected[i], expected[j]) = (expected[j], expected[i]);
        }
        Assert.Equal(expected, contexts.Contexts);
        Assert.Contains("1 of 7 rows not starting with BOS 1", contexts.SourceDescription);
        Assert.Equal(3, ContextBuilder.FromTokenRows((ITokenRowSource)source, 8, 512, 1, maxContexts: 3).Count);

        // a context longer than the rows, and an id outside the vocabulary, name the file and row
        var e = Assert.Throws<InputError>(() => ContextBuilder.FromTokenRows((ITokenRowSource)source, 12, 512, 1));
        Assert.Contains($"{path}: row 0", e.Message);
        e = Assert.Throws<InputError>(() => ContextBuilder.FromTokenRows((ITokenRowSource)source, 8, 100, 1));
        Assert.Contains("token id", e.Message);
        Assert.Contains("row", e.Message);
    }

    [Fact]
    public async Task SAELens_metadata_beside_the_shards_names_the_tokenizer_and_the_row_length()
    {
        // as a hub snapshot of a pretokenized dataset lies: sae_lens.json at the top, the shards in data/
        string root = Path.Combine(_dir, "snapshot"), data = Path.Combine(root, "data");
        Directory.CreateDirectory(data);
        File.Move(await WriteParquet("rows.parquet", null, [[1, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 4, 3, 2, 5, 6, 7, 8, 9, 10]]), Path.Combine(data, "train-00000-of-00001.parquet"));
        string metadata = Path.Combine(root, PretokenizedMetadata.FileName);
        File.WriteAllText(metadata, """{"sae_lens_version": "6.0.0", "tokenizer_name": "gpt2", "original_dataset": "x", "context_size": 10, "begin_batch_token": "bos", "shuffled": true}""");
        var source = new ParquetSource(data);
        Assert.Equal(("gpt2", 10, "bos"), (source.Metadata!.TokenizerName, source.Metadata.ContextSize, source.Metadata.BeginBatchToken));
        Assert.Contains("tokenized with gpt2, rows of 10", source.Description);
        Assert.Equal(2, ContextBuilder.FromTokenRows(source, 10, 512, 1).Count);
        var e = Assert.Throws<InputError>(() => ContextBuilder.FromTokenRows(source, 12, 512, 1));
        Assert.Contains(metadata, e.Message);
        Assert.Contains("at most 10", e.Message);

        // the vocabulary check: the same tokenizer passes, another names the first id that differs
        var stories = Loupe.Tokenizers.TokenizerLoader.FromFolder(SharedData.TestData("pytorch/stories260K-bin"));
        var minilm = Loupe.Tokenizers.TokenizerLoader.FromFolder(SharedData.TestData("reference/minilm"));
        Assert.Equal(512, source.Metadata.CheckSameVocabulary(stories, Loupe.Tokenizers.TokenizerLoader.FromFolder(SharedData.TestData("pytorch/stories260K-bin"))));
        e = Assert.Throws<InputError>(() => source.Metadata.CheckSameVocabulary(minilm, stories));
        Assert.Contains("id 0: \"[PAD]\" there, \"<unk>\" here", e.Message);

        File.WriteAllText(metadata, """{"tokenizer_name": "gpt2", "context_size": "long"}""");
        e = Assert.Throws<InputError>(() => new ParquetSource(data));
        Assert.Contains("context_size", e.Message);
        Assert.Contains(metadata, e.Message);
    }

    [Fact]
    public async Task Columns_are_chosen_by_name_and_bad_files_refused_by_name()
    {
        string both = await WriteParquet("both.parquet", ["a b", "c d"], [[1, 2, 3], [1, 4, 5]]);
        Assert.Equal("text", new ParquetSource(both).Column);
        Assert.True(new ParquetSource(both, "input_ids").IsTokenized);
        var e = Assert.Throws<InputError>(() => new ParquetSource(both, "label"));
        Assert.Contains("text, input_ids", e.Message);

        string notParquet = Path.Combine(_dir, "x.parquet");
        File.WriteAllText(notParquet, "not a parquet file at all");
        e = Assert.Throws<InputError>(() => new ParquetSource(notParquet));
        Assert.Contains(notParquet, e.Message);
        string empty = Directory.CreateDirectory(Path.Combine(_dir, "empty")).FullName;
        Assert.Contains("found none", Assert.Throws<InputError>(() => new ParquetSource(empty)).Message);

        // a truncated file: its footer is gone
        string truncated = Path.Combine(_dir, "cut.parquet");
        var bytes = File.ReadAllBytes(both);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        e = Assert.Throws<InputError>(() => new ParquetSource(truncated));
        Assert.Contains(truncated, e.Message);
    }
}
