using System.Text.RegularExpressions;

namespace Loupe.Models.Hooks;

/// <summary>
/// Comma-separated glob patterns over hook names: <c>*</c> matches any run of characters,
/// <c>?</c> one character, e.g. <c>blocks.*.hook_resid_pre,blocks.*.attn.hook_pattern</c>.
/// </summary>
public sealed class HookPattern
{
    readonly Regex[] _patterns;
    readonly string[] _parts;

    public HookPattern(string patterns)
    {
        Text = patterns;
        _parts = patterns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        _patterns = _parts.Select(p => new Regex("^" + Regex.Escape(p).Replace(@"\*", ".*").Replace(@"\?", ".") + "$", RegexOptions.CultureInvariant))
            .ToArray();
        if (_patterns.Length == 0) throw new InputError($"hook pattern {InputError.Show(patterns)}: expected one or more comma-separated hook names or globs, found none");
    }

    public string Text { get; }

    /// <summary>
    /// Whether a pattern matches <paramref name="name"/>. TransformerLens's per-head copies of the stream
    /// (<see cref="HookNames.IsPerHeadInput"/>: <c>hook_attn_in</c>, <c>hook_q_input</c>, …) are matched only by a pattern
    /// that spells their last part (<c>blocks.*.hook_q_input</c>), not by <c>*</c> or <c>blocks.3.*</c>: each is n_heads
    /// copies of hook_resid_pre, which a broad glob would cache without being asked.
    /// </summary>
    public bool Matches(string name)
    {
        string? perHead = HookNames.PerHeadInputSuffix(name);
        for (int i = 0; i < _patterns.Length; i++)
            if (_patterns[i].IsMatch(name) && (perHead is null || _parts[i].EndsWith("." + perHead, StringComparison.Ordinal)))
                return true;
        return false;
    }

    /// <summary>The names of <paramref name="available"/> that match; throws when a pattern matches none.</summary>
    /// <exception cref="InputError">A pattern matches no hook point; the message lists a few that exist.</exception>
    public IReadOnlyList<string> Select(IReadOnlyList<string> available)
    {
        for (int i = 0; i < _patterns.Length; i++)
            if (!available.Any(_patterns[i].IsMatch))
                throw new InputError(
                    $"hook pattern '{_parts[i]}' matches no hook point of this model; hook points look like: " +
                    string.Join(", ", available.Where(n => n.StartsWith("blocks.0.", StringComparison.Ordinal) || !n.StartsWith("blocks.", StringComparison.Ordinal)).Take(24)));
        return available.Where(Matches).ToList();
    }
}
