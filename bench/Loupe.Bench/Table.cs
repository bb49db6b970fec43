using System.Text;

namespace Loupe.Bench;

/// <summary>A plain-text table: a header row, then rows; columns whose header starts with '&gt;' are right-aligned.</summary>
public sealed class Table(params string[] headers)
{
    readonly List<string[]> _rows = [];

    public Table Add(params object?[] cells)
    {
        if (cells.Length != headers.Length) throw new ArgumentException($"row has {cells.Length} cells; the table has {headers.Length} columns");
        _rows.Add(cells.Select(c => c?.ToString() ?? "").ToArray());
        return this;
    }

    public void Write(TextWriter w, string title)
    {
        var names = headers.Select(h => h.TrimStart('>')).ToArray();
        var right = headers.Select(h => h.StartsWith('>')).ToArray();
        var widths = names.Select((h, i) => Math.Max(h.Length, _rows.Count == 0 ? 0 : _rows.Max(r => r[i].Length))).ToArray();
        w.WriteLine();
        w.WriteLine($"== {title} ==");
        w.WriteLine(Line(names));
        w.WriteLine(string.Join("  ", widths.Select(n => new string('-', n))));
        foreach (var r in _rows) w.WriteLine(Line(r));

        string Line(string[] cells)
        {
            var sb = new StringBuilder();
            for (int i = 0; i < cells.Length; i++)
            {
                if (i > 0) sb.Append("  ");
                sb.Append(right[i] ? cells[i].PadLeft(widths[i]) : cells[i].PadRight(widths[i]));
            }
            return sb.ToString().TrimEnd();
        }
    }
}
