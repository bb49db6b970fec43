using System.Text.Json;

namespace Loupe.Tokenizers;

/// <summary>Loads tokenizers from Hugging Face files.</summary>
public static class TokenizerLoader
{
    const string EndOfText = "<|endoftext|>";

    /// <summary>
    /// Loads the tokenizer in a model folder: <c>tokenizer.json</c> when present (with
    /// <c>tokenizer_config.json</c> / <c>special_tokens_map.json</c> for special-token names and
    /// <c>add_bos_token</c> / <c>add_eos_token</c>; a WordPiece model gives a <see cref="WordPieceTokenizer"/>), otherwise
    /// GPT-2 style <c>vocab.json</c> + <c>merges.txt</c>, otherwise BERT's <c>vocab.txt</c> (WordPiece, with tokenizer_config.json's do_lower_case).
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">The folder holds no tokenizer files.</exception>
    /// <exception cref="InputError">A file is malformed or holds an unsupported component type; the message names the file, the field and what was found.</exception>
    public static ITokenizer FromFolder(string folder)
    {
        ArgumentNullException.ThrowIfNull(folder);
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Tokenizer folder '{folder}' does not exist.");
        var tokenizerJson = Path.Combine(folder, "tokenizer.json");
        var config = OptionalFile(folder, "tokenizer_config.json");
        var specialMap = OptionalFile(folder, "special_tokens_map.json");
        if (File.Exists(tokenizerJson))
            return WordPieceTokenizer.IsWordPieceJson(tokenizerJson) ? WordPieceTokenizer.FromTokenizerJson(tokenizerJson)
                : TokenizerJson.Load(tokenizerJson, config, specialMap);
        var vocab = Path.Combine(folder, "vocab.json");
        var merges = Path.Combine(folder, "merges.txt");
        if (File.Exists(vocab) && File.Exists(merges)) return LoadVocabAndMerges(vocab, merges, config, specialMap);
        var vocabTxt = Path.Combine(folder, "vocab.txt");
        if (File.Exists(vocabTxt)) return WordPieceTokenizer.FromVocabTxt(vocabTxt, config);
        throw new FileNotFoundException(
            $"Tokenizer folder '{folder}' holds no tokenizer: expected tokenizer.json, vocab.txt (WordPiece), or vocab.json together with merges.txt.",
            tokenizerJson);
    }

    /// <summary>
    /// Loads a Hugging Face <c>tokenizer.json</c>; <paramref name="tokenizerConfigPath"/> optionally points to
    /// <c>tokenizer_config.json</c> for special-token names and <c>add_bos_token</c> / <c>add_eos_token</c>.
    /// </summary>
    public static ITokenizer FromTokenizerJson(string path, string? tokenizerConfigPath = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        return TokenizerJson.Load(path, tokenizerConfigPath);
    }

    /// <summary>
    /// Loads a GPT-2 style byte-level BPE from <c>vocab.json</c> and <c>merges.txt</c>:
    /// no normalizer, ByteLevel pre-tokenizer without prefix space, ByteLevel decoder, no BOS added;
    /// <c>&lt;|endoftext|&gt;</c> (when in the vocabulary) is a special token and serves as BOS and EOS.
    /// </summary>
    public static ITokenizer FromVocabAndMerges(string vocabJsonPath, string mergesTxtPath)
    {
        ArgumentNullException.ThrowIfNull(vocabJsonPath);
        ArgumentNullException.ThrowIfNull(mergesTxtPath);
        return LoadVocabAndMerges(vocabJsonPath, mergesTxtPath, null, null);
    }

    static string? OptionalFile(string folder, string name)
    {
        var p = Path.Combine(folder, name);
        return File.Exists(p) ? p : null;
    }

    static Tokenizer LoadVocabAndMerges(string vocabPath, string mergesPath, string? configPath, string? specialMapPath)
    {
        Dictionary<string, int> vocab;
        using (var doc = TokenizerJson.ReadJson(vocabPath))
        {
            var ctx = new TokenizerJson.Ctx(Path.GetFileName(vocabPath), vocabPath);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw ctx.Expected("", "a JSON object mapping token strings to ids", doc.RootElement);
            vocab = TokenizerJson.ReadVocab(ctx, doc.RootElement, "");
        }

        var (merges, lines) = ReadMergesTxt(mergesPath, vocab);
        var model = new BpeModel(vocab, merges, new BpeOptions(), mergesPath, rank => $"line {lines[rank]}");
        var added = new List<AddedToken>();
        if (vocab.TryGetValue(EndOfText, out var eot)) added.Add(new AddedToken(eot, EndOfText, Special: true));

        var settings = new SpecialTokenSettings();
        if (specialMapPath is not null) settings = TokenizerJson.ReadSpecialTokenSettings(specialMapPath, settings);
        if (configPath is not null) settings = TokenizerJson.ReadSpecialTokenSettings(configPath, settings);
        foreach (var name in new[] { settings.Bos, settings.Eos, settings.Pad, settings.Unk })
        {
            if (name is not null && name != EndOfText && vocab.TryGetValue(name, out var id))
                added.Add(new AddedToken(id, name, Special: true));
        }
        return new Tokenizer(model, null, new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: true),
            new ByteLevelPostProcessor(), new ByteLevelDecoder(), added, settings);
    }

    /// <summary>The merges of merges.txt, in rank order, with the line each came from.</summary>
    static (List<(string, string)> Merges, List<int> Lines) ReadMergesTxt(string path, IReadOnlyDictionary<string, int> vocab)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Tokenizer file '{path}' does not exist.", path);
        InputFiles.EnsureRegularFile(path);
        var bytes = File.ReadAllBytes(path);
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
            throw new InputError($"{path}: not valid UTF-8 at {TokenizerJson.Position(bytes, TokenizerJson.FirstInvalidUtf8(bytes))}");
        var merges = new List<(string, string)>();
        var lines = new List<int>();
        var lineNo = 0;
        using var reader = new StringReader(new System.Text.UTF8Encoding(false).GetString(bytes).TrimStart('\uFEFF'));
        while (reader.ReadLine() is { } line)
        {
            lineNo++;
            if (line.Length == 0 || (lineNo == 1 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            var pair = TokenizerJson.SplitLegacyMerge(line, vocab)
                ?? throw new InputError($"{path}: line {lineNo}: expected two tokens of the vocabulary separated by a space, found {InputError.Show(line)}");
            merges.Add(pair);
            lines.Add(lineNo);
        }
        return (merges, lines);
    }
}
