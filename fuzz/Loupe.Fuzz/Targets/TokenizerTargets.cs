using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;
using Loupe.Tokenizers;

namespace Loupe.Fuzz.Targets;

/// <summary>Texts every loaded tokenizer encodes and decodes: empty, plain, unicode, control characters, and a run of
/// 34 'a's that makes a backtracking regex like <c>(a+)+$</c> take minutes.</summary>
static class TokenizerTexts
{
    public static readonly string[] All =
    [
        "", "Hello world", "Once upon a time, there was a cat.", new string('a', 34) + "!", "ü☃𝄞 \u0000\t\n  \r\n", "<|endoftext|> it's 2024",
        "\ud800 lone surrogate", string.Concat(Enumerable.Repeat("The quick brown fox. ", 200)),
    ];

    public static void Exercise(ITokenizer tokenizer)
    {
        foreach (var text in All)
        {
            var ids = tokenizer.Encode(text);
            Require.That(ids.All(id => id >= 0 && id < tokenizer.VocabSize), $"Encode returned an id outside [0, {tokenizer.VocabSize})");
            _ = tokenizer.Decode(ids);
            _ = tokenizer.Decode(ids, skipSpecialTokens: true);
        }
    }

    /// <summary>GPT-2's byte → printable character map (bytes_to_unicode).</summary>
    public static string[] ByteChars()
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var chars = new string[256];
        foreach (var b in bs) chars[b] = ((char)b).ToString();
        int n = 0;
        for (int b = 0; b < 256; b++) if (chars[b] is null) chars[b] = ((char)(256 + n++)).ToString();
        return chars;
    }

    public static (Dictionary<string, int> Vocab, List<string> Merges) SmallByteLevelBpe()
    {
        var chars = ByteChars();
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++) vocab[chars[b]] = b;
        var merges = new List<string> { "Ġ t", "h e", "Ġt he", "a a", "aa aa", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "i n", "Ġ a" };
        foreach (var m in merges) vocab.TryAdd(m.Replace(" ", ""), vocab.Count);
        // Padded to the llama fixture's 512 ids so the CLI's model and tokenizer agree; the last id is end-of-text.
        while (vocab.Count < 511) vocab[$"<extra_{vocab.Count}>"] = vocab.Count;
        vocab["<|endoftext|>"] = vocab.Count;
        return (vocab, merges);
    }
}

/// <summary><c>TokenizerLoader.FromFolder</c> on tokenizer.json, then encode/decode of hostile texts.</summary>
public sealed class TokenizerJsonTarget : FuzzTarget
{
    public override string Name => "tokenizer";
    public override int DefaultIterations => 1500;

    static readonly string[] s_catastrophic = ["(a+)+$", "(a|aa)+$", "(a|a?)+$", "(.*a){25}", "([a-z]+)*$", "(\\w+\\s?)*$", "(", "[", "\\", "(?<x", "a{1000000000}", "(?=a)*", "\\p{Nope}", ""];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var (vocab, merges) = TokenizerTexts.SmallByteLevelBpe();
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = vocab["<|endoftext|>"], ["content"] = "<|endoftext|>", ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true }),
            ["normalizer"] = JsonNode.Parse("""{"type":"Sequence","normalizers":[{"type":"NFC"},{"type":"Replace","pattern":{"Regex":"\\s+"},"content":" "}]}"""),
            ["pre_tokenizer"] = JsonNode.Parse("""{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"'s|'t| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}"""),
            ["post_processor"] = JsonNode.Parse("""{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"""),
            ["decoder"] = JsonNode.Parse("""{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"""),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = new JsonObject(vocab.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
                ["merges"] = new JsonArray([.. merges.Select(m => (JsonNode)m)]),
            },
        };
        var seeds = new List<Seed> { new("generated:byte-level-bpe-tokenizer.json", [new SeedFile("tokenizer.json", Encoding.UTF8.GetBytes(json.ToJsonString()), FileKind.Json)]) };
        if (context.Shared("models/stories260K") is { } stories)
            seeds.Add(SeedFiles.FromFolder("shared:models/stories260K", stories, "tokenizer.json"));
        return seeds;
    }

    public override IReadOnlyList<NamedMutator> ExtraMutators(SeedFile file) => file.Kind == FileKind.Json ? [new("tokenizer-regex", Regex), new("tokenizer-affix", HugeAffix)] : [];

    /// <summary>A catastrophic or invalid pattern in a Regex field (or a new Replace normalizer carrying one).</summary>
    static (byte[], string)? Regex(byte[] b, Random rng)
    {
        if (JsonMutators.Parse(b) is not JsonObject root) return null;
        string pattern = s_catastrophic[rng.Next(s_catastrophic.Length)];
        var slots = JsonMutators.Slots(root).Where(s => s.Key == "Regex").ToList();
        if (slots.Count > 0 && rng.Next(3) != 0)
        {
            var slot = slots[rng.Next(slots.Count)];
            return (JsonMutators.Splice(root, slot, Encoding.UTF8.GetBytes(JsonSerializer.Serialize(pattern))), $"{slot.Path} = {pattern}");
        }
        var where = rng.Next(2) == 0 ? "normalizer" : "pre_tokenizer";
        root[where] = where == "normalizer"
            ? new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["Regex"] = pattern }, ["content"] = "x" }
            : new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = pattern }, ["behavior"] = "Isolated", ["invert"] = false };
        return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"{where} = regex {pattern}");
    }

    /// <summary>A 3 MB continuing_subword_prefix / end_of_word_suffix (once sized a stackalloc), with byte fallback on.</summary>
    static (byte[], string)? HugeAffix(byte[] b, Random rng)
    {
        if (JsonMutators.Parse(b) is not JsonObject root || root["model"] is not JsonObject model) return null;
        var field = rng.Next(2) == 0 ? "continuing_subword_prefix" : "end_of_word_suffix";
        model[field] = new string('#', 3 << 20);
        model["byte_fallback"] = true;
        return (Encoding.UTF8.GetBytes(root.ToJsonString()), $"model.{field} = 3 MB string, byte_fallback true");
    }

    public override void Execute(string folder, FuzzInput input) => TokenizerTexts.Exercise(TokenizerLoader.FromFolder(folder));
}

/// <summary><c>TokenizerLoader.FromFolder</c> on GPT-2 style vocab.json + merges.txt, then encode/decode.</summary>
public sealed class VocabMergesTarget : FuzzTarget
{
    public override string Name => "vocab-merges";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var (vocab, merges) = TokenizerTexts.SmallByteLevelBpe();
        var seeds = new List<Seed>
        {
            new("generated:byte-level-vocab-merges",
            [
                new SeedFile("vocab.json", Encoding.UTF8.GetBytes(JsonSerializer.Serialize(vocab)), FileKind.Json),
                new SeedFile("merges.txt", Encoding.UTF8.GetBytes("#version: 0.2\n" + string.Join("\n", merges) + "\n"), FileKind.Text),
            ]),
        };
        // The real GPT-2 files take ~0.2 s per load: only long runs (--large-seeds) use them.
        if (context.LargeSeeds && context.Shared("models/gpt2-tokenizer") is { } gpt2)
            seeds.Add(SeedFiles.FromFolder("shared:models/gpt2-tokenizer", gpt2, "vocab.json", "merges.txt"));
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input) => TokenizerTexts.Exercise(TokenizerLoader.FromFolder(folder));
}
