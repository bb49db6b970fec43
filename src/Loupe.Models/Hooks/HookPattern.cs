using System.Text.RegularExpressions;

namespace Loupe.Models.Hooks;

/// <summary>
/// Comma-separated glob patterns over hook names: <c>*</c> matches any run of characters,
/// <c>?</c> one character, e.g. <c>blocks.*.hook_resid_pre,blocks.*.attn.hook_pattern</c>.
/// </summary>
public sealed class HookPattern
{
    readonly Regex[] _patterns;

    public HookPattern(string patterns)
    {
        Text = patterns;
        _patterns = patterns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(p => new Regex("^" + Regex.Escape(p).Replace(@"\*", ".*").Replace(@"\?", ".") + "$", RegexOptions.CultureInvariant))
            .ToArray();
        if (_patterns.Length == 0) throw new InputError($"hook pattern {InputError.Show(patterns)}: expected one or more comma-separated hook names or globs, found none");
    }

    public string Text { get; }

    public bool Matches(string name) => _patterns.Any(p => p.IsMatch(name));

    /// <summary>The names of <paramref name="available"/> that match; throws when a pattern matches none.</summary>
    /// <exception cref="InputError">A pattern matches no hook point; the message lists a few that exist.</exception>
    public IReadOnlyList<string> Select(IReadOnlyList<string> available)
    {
        var parts = Text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        for (int i = 0; i < _patterns.Length; i++)
            if (!available.Any(_patterns[i].IsMatch))
                throw new InputError(
                    $"hook pattern '{parts[i]}' matches no hook point of this model; hook points look like: " +
                    string.Join(", ", available.Where(n => n.StartsWith("blocks.0.", StringComparison.Ordinal) || !n.StartsWith("blocks.", StringComparison.Ordinal)).Take(24)));
        return available.Where(Matches).ToList();
    }
}
