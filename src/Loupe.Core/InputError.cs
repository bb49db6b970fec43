namespace Loupe;

/// <summary>
/// Bad input from outside Loupe: a file, a field in it, a tensor, a command-line argument. The
/// message is one line that names the thing, what was expected and what was found; the CLI prints
/// it as <c>error: …</c> and exits with code 2. Anything else that escapes is a bug and keeps its
/// stack trace (exit code 1), so a bug is never disguised as bad input.
/// </summary>
public sealed class InputError : Exception
{
    public InputError(string message) : base(message) { }

    public InputError(string message, Exception? inner) : base(message, inner) { }

    /// <summary>"{where}: {what}: expected {expected}, found {found}" — the shape every field check uses.</summary>
    public static InputError Expected(string where, string what, string expected, object? found) =>
        new($"{where}: {what}: expected {expected}, found {Show(found)}");

    /// <summary>A value as a person reads it: strings quoted and cut to 80 characters, null as "null".</summary>
    public static string Show(object? value) => value switch
    {
        null => "null",
        string s => "\"" + (s.Length > 80 ? s[..77] + "..." : s).Replace("\n", "\\n") + "\"",
        double d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        float f => f.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}
