namespace Loupe.Tokenizers;

/// <summary>A post-processor (HF <c>processors</c>) for a single sequence: adds special tokens around it.</summary>
internal abstract class PostProcessor
{
    /// <summary>Returns the ids with the special tokens added (called only when special tokens are wanted).</summary>
    public abstract List<int> Process(List<int> ids);
}

/// <summary>Applies several post-processors in order.</summary>
internal sealed class SequencePostProcessor(IReadOnlyList<PostProcessor> processors) : PostProcessor
{
    public override List<int> Process(List<int> ids)
    {
        foreach (var p in processors) ids = p.Process(ids);
        return ids;
    }
}

/// <summary>The byte-level post-processor only trims offsets; ids pass through unchanged.</summary>
internal sealed class ByteLevelPostProcessor : PostProcessor
{
    public override List<int> Process(List<int> ids) => ids;
}

/// <summary>One item of a template: either special-token ids or the input sequence.</summary>
internal readonly record struct TemplateItem(int[]? SpecialIds);

/// <summary>Template post-processing (e.g. <c>&lt;s&gt; $A</c>) for a single sequence.</summary>
internal sealed class TemplatePostProcessor(IReadOnlyList<TemplateItem> single) : PostProcessor
{
    public IReadOnlyList<TemplateItem> Single { get; } = single;

    public override List<int> Process(List<int> ids)
    {
        var result = new List<int>(ids.Count + 4);
        foreach (var item in Single)
        {
            if (item.SpecialIds is { } special) result.AddRange(special);
            else result.AddRange(ids);
        }
        return result;
    }
}

/// <summary>BERT / RoBERTa style: <c>cls A sep</c> for a single sequence.</summary>
internal sealed class ClsSepPostProcessor(int clsId, int sepId) : PostProcessor
{
    public override List<int> Process(List<int> ids)
    {
        var result = new List<int>(ids.Count + 2) { clsId };
        result.AddRange(ids);
        result.Add(sepId);
        return result;
    }
}
