using System.Reflection;

namespace Loupe.Steering;

/// <summary>
/// The happy-vs-sad demonstration for TinyStories models, embedded in this assembly (the same
/// files sit in <c>src/Loupe.Steering/Data/</c> for the CLI): 32 short happy and 32 sad story
/// snippets in TinyStories' simple words, and the word lists that score generated text.
/// </summary>
/// <remarks>
/// Line i of the two story files is a minimal pair: the same neutral setup ("Tom played with his
/// red ball in the yard.") followed by a happy or a sad reaction, so the mean difference carries the
/// emotion rather than the events. On stories260K, unpaired stories of happy and sad events gave a
/// direction that separated held-out texts less well (cross-validated AUROC 0.957 against 0.996)
/// and cost more fluency at the same steering coefficient.
/// </remarks>
public static class DemoData
{
    /// <summary>Happy story snippets, one per line.</summary>
    public static IReadOnlyList<string> HappyStories => Lines("happy.txt");
    /// <summary>Sad story snippets, one per line, mirroring <see cref="HappyStories"/> line by line.</summary>
    public static IReadOnlyList<string> SadStories => Lines("sad.txt");
    public static IReadOnlyList<string> HappyWords => Lines("happy-words.txt");
    public static IReadOnlyList<string> SadWords => Lines("sad-words.txt");

    /// <summary>happy-word count − sad-word count.</summary>
    public static WordScore HappySadScore => new(HappyWords, SadWords);

    /// <summary>The lines of an embedded data file (blank lines and <c>#</c> comments skipped).</summary>
    /// <exception cref="FileNotFoundException">No such embedded file.</exception>
    public static IReadOnlyList<string> Lines(string fileName)
    {
        var assembly = typeof(DemoData).Assembly;
        string resource = $"Loupe.Steering.Data.{fileName}";
        using var stream = assembly.GetManifestResourceStream(resource)
            ?? throw new FileNotFoundException($"embedded data '{fileName}' not found; available: {string.Join(", ", assembly.GetManifestResourceNames())}");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
    }
}
