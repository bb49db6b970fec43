namespace Loupe.Probes.Corpus;

/// <summary>One word of a tagged sentence.</summary>
/// <param name="Text">The word as the corpus spells it (Brown writes quotes as <c>``</c> and <c>''</c>).</param>
/// <param name="BrownTag">The corpus tag, as written (<c>nn-tl</c>, <c>np$</c>, <c>ppss+md</c>).</param>
/// <param name="Tag">The universal tag (<see cref="UniversalTagset.Tags"/>).</param>
public sealed record TaggedWord(string Text, string BrownTag, string Tag);

/// <summary>A sentence of tagged words and where it came from.</summary>
/// <param name="Source">The corpus file id (<c>ca01</c>) or file name it was read from.</param>
/// <param name="Line">Its 1-based line in that file.</param>
/// <param name="Words">The words, in order.</param>
public sealed record TaggedSentence(string Source, int Line, IReadOnlyList<TaggedWord> Words);

/// <summary>
/// The Brown Corpus in NLTK's layout: a folder of files named <c>ca01</c> … <c>cr09</c> (genre letter,
/// sample number), one sentence per line (lines indented by a tab, blank lines between), each token
/// <c>word/tag</c> split at its last slash (so <c>1-1/2/cd</c> is the word <c>1-1/2</c>), and
/// <c>cats.txt</c> giving each file's category (<c>ca01 news</c>). The <c>.pickle</c> file beside
/// them is never read. Reading is lazy: sentences stream file by file in <c>cats.txt</c> order.
/// </summary>
public sealed class BrownCorpus
{
    readonly List<(string FileId, string Category)> _files;

    BrownCorpus(string folder, List<(string FileId, string Category)> files)
    {
        Folder = folder;
        _files = files;
        Categories = files.Select(f => f.Category).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
    }

    /// <summary>The corpus folder.</summary>
    public string Folder { get; }

    /// <summary>Every category named in <c>cats.txt</c>, in ordinal order (adventure, belles_lettres, … science_fiction).</summary>
    public IReadOnlyList<string> Categories { get; }

    /// <summary>Opens a corpus folder and reads its <c>cats.txt</c>.</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">The folder has no <c>cats.txt</c>.</exception>
    /// <exception cref="InputError">A line of <c>cats.txt</c> is not <c>fileid category</c>.</exception>
    public static BrownCorpus Open(string folder)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"Brown corpus folder not found: {folder} (expected NLTK's layout: cats.txt and the files ca01 … cr09)");
        string cats = Path.Combine(folder, "cats.txt");
        if (!File.Exists(cats))
            throw new FileNotFoundException($"{cats} not found: a Brown corpus folder lists each file's category there ('ca01 news')", cats);
        var files = new List<(string FileId, string Category)>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(cats))
        {
            lineNumber++;
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0) continue;
            if (parts.Length != 2)
                throw new InputError($"{cats}:{lineNumber}: expected 'fileid category' (e.g. 'ca01 news'), got '{line.Trim()}'");
            files.Add((parts[0], parts[1]));
        }
        if (files.Count == 0) throw new InputError($"{cats} lists no files");
        return new BrownCorpus(folder, files);
    }

    /// <summary>The file ids in the given categories (all when null or empty), in <c>cats.txt</c> order.</summary>
    /// <exception cref="InputError">A category is not in <c>cats.txt</c>; the message lists those that are.</exception>
    public IReadOnlyList<string> FileIds(IEnumerable<string>? categories = null)
    {
        var wanted = categories?.Select(c => c.Trim()).Where(c => c.Length > 0).ToHashSet(StringComparer.Ordinal);
        if (wanted is null || wanted.Count == 0) return _files.Select(f => f.FileId).ToArray();
        foreach (var c in wanted.Order(StringComparer.Ordinal))
            if (!Categories.Contains(c, StringComparer.Ordinal))
                throw new InputError($"unknown Brown category '{c}'; the categories are: {string.Join(", ", Categories)}");
        return _files.Where(f => wanted.Contains(f.Category)).Select(f => f.FileId).ToArray();
    }

    /// <summary>The category of a file id.</summary>
    /// <exception cref="InputError">The id is not in <c>cats.txt</c>.</exception>
    public string CategoryOf(string fileId)
    {
        foreach (var (id, category) in _files)
            if (id == fileId) return category;
        throw new InputError($"'{fileId}' is not listed in {Path.Combine(Folder, "cats.txt")}");
    }

    /// <summary>Streams the sentences of the given categories (all when null or empty), file by file.</summary>
    /// <exception cref="InputError">A category is unknown (thrown before anything is read).</exception>
    /// <exception cref="FileNotFoundException">A file listed in <c>cats.txt</c> is missing (thrown when reached).</exception>
    /// <exception cref="InputError">A token is malformed or carries an unknown tag; the message names the file and line.</exception>
    public IEnumerable<TaggedSentence> Sentences(IEnumerable<string>? categories = null)
    {
        var ids = FileIds(categories);
        return Stream(ids);

        IEnumerable<TaggedSentence> Stream(IReadOnlyList<string> fileIds)
        {
            foreach (var id in fileIds)
            {
                string path = Path.Combine(Folder, id);
                if (!File.Exists(path)) throw new FileNotFoundException($"{path} is listed in cats.txt but does not exist", path);
                foreach (var sentence in ReadFile(path, id)) yield return sentence;
            }
        }
    }

    /// <summary>Reads one corpus file: each non-blank line is a sentence.</summary>
    /// <param name="path">The file.</param>
    /// <param name="source">What <see cref="TaggedSentence.Source"/> says (default: the file name).</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InputError">A token is malformed or carries an unknown tag; the message names the file and line.</exception>
    public static IEnumerable<TaggedSentence> ReadFile(string path, string? source = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Brown corpus file not found: {path}", path);
        return Read();

        IEnumerable<TaggedSentence> Read()
        {
            int lineNumber = 0;
            foreach (var line in File.ReadLines(path))
            {
                lineNumber++;
                if (string.IsNullOrWhiteSpace(line)) continue;
                yield return ParseSentence(line, source ?? Path.GetFileName(path), lineNumber, path);
            }
        }
    }

    /// <summary>Parses one line of <c>word/tag</c> tokens separated by spaces or tabs.</summary>
    /// <param name="line">The line.</param>
    /// <param name="source">The file id recorded in the sentence.</param>
    /// <param name="lineNumber">The 1-based line number, for the sentence and for errors.</param>
    /// <param name="path">The file named in errors (default <paramref name="source"/>).</param>
    /// <exception cref="InputError">A token has no slash, an empty word or tag, or an unknown tag; or the line is blank.</exception>
    public static TaggedSentence ParseSentence(string line, string source, int lineNumber, string? path = null)
    {
        var tokens = line.Split([' ', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
        if (tokens.Length == 0) throw new InputError($"{path ?? source}:{lineNumber}: the line holds no tokens");
        var words = new TaggedWord[tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
        {
            string token = tokens[i];
            int slash = token.LastIndexOf('/');
            if (slash <= 0 || slash == token.Length - 1)
                throw new InputError($"{path ?? source}:{lineNumber}: malformed token '{token}' (token {i + 1}); expected word/tag, e.g. 'jury/nn'");
            string tag = token[(slash + 1)..];
            if (!UniversalTagset.TryFromBrown(tag, out var universal))
                throw new InputError($"{path ?? source}:{lineNumber}: unknown Brown tag '{tag}' in token '{token}' (token {i + 1})");
            words[i] = new TaggedWord(token[..slash], tag, universal);
        }
        return new TaggedSentence(source, lineNumber, words);
    }
}
