using System.Text.Json.Nodes;

namespace Loupe.Tokenizers.Tests;

/// <summary>A temporary folder deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("loupe-tok-").FullName;

    public string Write(string name, string content)
    {
        var p = System.IO.Path.Combine(Path, name);
        File.WriteAllText(p, content);
        return p;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

/// <summary>Builds small tokenizer.json files, in the style of real model families, by hand.</summary>
public static class SyntheticTokenizers
{
    public const string Llama3Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static JsonObject AddedToken(int id, string content, bool special = true, bool normalized = false,
        bool lstrip = false, bool rstrip = false, bool singleWord = false) => new()
        {
            ["id"] = id,
            ["content"] = content,
            ["single_word"] = singleWord,
            ["lstrip"] = lstrip,
            ["rstrip"] = rstrip,
            ["normalized"] = normalized,
            ["special"] = special,
        };

    public static JsonObject Template(string special, int id) => new()
    {
        ["type"] = "TemplateProcessing",
        ["single"] = new JsonArray(
            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = special, ["type_id"] = 0 } },
            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
        ["pair"] = new JsonArray(
            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = special, ["type_id"] = 0 } },
            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = special, ["type_id"] = 1 } },
            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } }),
        ["special_tokens"] = new JsonObject
        {
            [special] = new JsonObject { ["id"] = special, ["ids"] = new JsonArray(id), ["tokens"] = new JsonArray(special) },
        },
    };

    // ------------------------------------------------------------------ Llama-3 style (byte-level)

    public const int L3Hello = 259, L3SpaceWorld = 264, L3OneTwoThree = 266, L3SpaceHello = 267;
    public const int L3Bot = 268, L3Eot = 269, L3EndOfText = 270;

    /// <summary>
    /// Llama-3 style: no normalizer, Split(Llama-3 regex) + ByteLevel(use_regex=false), BPE with
    /// ignore_merges and tuple merges, ByteLevel + TemplateProcessing(&lt;|begin_of_text|&gt; $A), ByteLevel decoder.
    /// Vocabulary: the 256 byte characters (id = byte), then merged tokens.
    /// </summary>
    public static JsonObject Llama3(bool ignoreMerges = true)
    {
        var vocab = new JsonObject();
        for (var b = 0; b < 256; b++) vocab[ByteLevelAlphabet.ByteToChar((byte)b).ToString()] = b;
        string[][] merges =
        [
            ["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"], ["o", "r"], ["Ġw", "or"], ["l", "d"],
            ["Ġwor", "ld"], ["1", "2"], ["12", "3"],
        ];
        var next = 256;
        foreach (var m in merges) vocab[m[0] + m[1]] = next++;
        vocab["Ġhello"] = next++; // 267: reachable only through ignore_merges
        var mergeArray = new JsonArray();
        foreach (var m in merges) mergeArray.Add(new JsonArray(m[0], m[1]));

        return new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(
                AddedToken(L3Bot, "<|begin_of_text|>"),
                AddedToken(L3Eot, "<|end_of_text|>"),
                AddedToken(L3EndOfText, "<|endoftext|>")),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject
                    {
                        ["type"] = "Split",
                        ["pattern"] = new JsonObject { ["Regex"] = Llama3Pattern },
                        ["behavior"] = "Isolated",
                        ["invert"] = false,
                    },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
            },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["processors"] = new JsonArray(
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true },
                    Template("<|begin_of_text|>", L3Bot)),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = ignoreMerges,
                ["vocab"] = vocab,
                ["merges"] = mergeArray,
            },
        };
    }

    // ------------------------------------------------------------------ Gemma style (byte fallback)

    public const int GPad = 0, GEos = 1, GBos = 2, GUnk = 3, GByte0 = 4, GSpace = 260, GLetterA = 261;
    public const int GEndOfText = 300;

    /// <summary>Id of a single lowercase letter in the Gemma-style vocabulary.</summary>
    public static int GLetter(char c) => GLetterA + (c - 'a');

    /// <summary>Id of a byte-fallback token.</summary>
    public static int GByte(int b) => GByte0 + b;

    /// <summary>
    /// Gemma style: Replace(" " → "▁") normalizer, Split(" ", MergedWithPrevious) pre-tokenizer,
    /// BPE with byte_fallback, legacy "a b" merges, &lt;bos&gt; template, Replace/ByteFallback/Fuse decoder.
    /// Vocabulary: &lt;pad&gt; &lt;eos&gt; &lt;bos&gt; &lt;unk&gt;, the 256 &lt;0xNN&gt; tokens, ▁, a–z, merged tokens.
    /// </summary>
    public static JsonObject Gemma(bool byteFallback = true, bool fuseUnk = true)
    {
        var vocab = new JsonObject { ["<pad>"] = GPad, ["<eos>"] = GEos, ["<bos>"] = GBos, ["<unk>"] = GUnk };
        for (var b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = GByte0 + b;
        vocab["▁"] = GSpace;
        for (var c = 'a'; c <= 'z'; c++) vocab[c.ToString()] = GLetter(c);
        string[] merges = ["l l", "h e", "he ll", "hell o", "▁ w", "o r", "▁w or", "▁wor l", "▁worl d", "▁ hello"];
        var next = 287;
        foreach (var m in merges) vocab[m.Replace(" ", "")] = next++;
        var mergeArray = new JsonArray();
        foreach (var m in merges) mergeArray.Add(m);

        return new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                AddedToken(GPad, "<pad>"), AddedToken(GEos, "<eos>"), AddedToken(GBos, "<bos>"), AddedToken(GUnk, "<unk>"),
                AddedToken(GEndOfText, "<|endoftext|>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Replace",
                ["pattern"] = new JsonObject { ["String"] = " " },
                ["content"] = "▁",
            },
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Split",
                ["pattern"] = new JsonObject { ["String"] = " " },
                ["behavior"] = "MergedWithPrevious",
                ["invert"] = false,
            },
            ["post_processor"] = Template("<bos>", GBos),
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "▁" }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = fuseUnk,
                ["byte_fallback"] = byteFallback,
                ["vocab"] = vocab,
                ["merges"] = mergeArray,
            },
        };
    }

    public static int GId(JsonObject tokenizer, string token) => (int)tokenizer["model"]!["vocab"]![token]!;

    /// <summary>
    /// Mistral / Llama-2 (legacy = false) style: the Gemma vocabulary with no normalizer and a
    /// Metaspace(prepend_scheme = first, split = false) pre-tokenizer; decoder Replace/ByteFallback/Fuse/Strip.
    /// </summary>
    public static JsonObject MetaspaceFirst()
    {
        var t = Gemma();
        t["normalizer"] = null;
        t["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false };
        t["decoder"] = new JsonObject
        {
            ["type"] = "Sequence",
            ["decoders"] = new JsonArray(
                new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "▁" }, ["content"] = " " },
                new JsonObject { ["type"] = "ByteFallback" },
                new JsonObject { ["type"] = "Fuse" },
                new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
        };
        return t;
    }

    /// <summary>Writes <paramref name="tokenizer"/> (and optionally a config) to <paramref name="dir"/> and loads it.</summary>
    public static ITokenizer Load(TempDir dir, JsonObject tokenizer, JsonObject? config = null)
    {
        var path = dir.Write("tokenizer.json", tokenizer.ToJsonString());
        var configPath = config is null ? null : dir.Write("tokenizer_config.json", config.ToJsonString());
        return TokenizerLoader.FromTokenizerJson(path, configPath);
    }
}
