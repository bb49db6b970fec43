using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Loupe.Reports;

/// <summary>Writes files atomically: a temp file in the same folder, then a rename over the target.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string contents) =>
        OutputFiles.WriteAtomic(path, stream => stream.Write(new UTF8Encoding(false).GetBytes(contents)));

    // Relaxed escaping keeps non-ASCII text (×, ‖, token strings) readable; the files are data, never embedded in HTML.
    static readonly JsonSerializerOptions s_json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Serializes <paramref name="value"/> as indented snake_case JSON, atomically. NaN/∞ are written as strings.</summary>
    public static void WriteJson<T>(string path, T value) =>
        WriteAllText(path, JsonSerializer.Serialize(value, new JsonSerializerOptions(s_json) { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
}

/// <summary>
/// A heatmap as a standalone SVG: rows × columns of values, a diverging blue–white–red scale
/// centred on 0 (or sequential when every value is ≥ 0), labelled axes, and the value in a tooltip.
/// </summary>
public sealed class Heatmap
{
    public required string Title { get; init; }
    /// <summary>Values <c>[rows][columns]</c>; NaN cells are drawn grey.</summary>
    public required double[][] Values { get; init; }
    public required string[] RowLabels { get; init; }
    public required string[] ColumnLabels { get; init; }
    public string RowAxis { get; init; } = "";
    public string ColumnAxis { get; init; } = "";
    /// <summary>Symmetric colour limit; default max |value|.</summary>
    public double? Limit { get; init; }

    public string ToSvg()
    {
        int rows = Values.Length, cols = rows == 0 ? 0 : Values[0].Length;
        if (RowLabels.Length != rows || ColumnLabels.Length != cols)
            throw new ArgumentException($"heatmap '{Title}': {rows}×{cols} values but {RowLabels.Length} row and {ColumnLabels.Length} column labels");
        double limit = Limit ?? Math.Max(1e-12, Values.SelectMany(r => r).Where(double.IsFinite).Select(Math.Abs).DefaultIfEmpty(1).Max());
        bool diverging = Values.SelectMany(r => r).Any(v => v < 0);
        int cell = Math.Clamp(560 / Math.Max(1, Math.Max(rows, cols)), 8, 40);
        int left = 20 + 7 * RowLabels.Select(l => l.Length).DefaultIfEmpty(4).Max(), top = 60;
        int width = left + cols * cell + 110, height = top + rows * cell + 70;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n<text x=\"{width / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{E(Title)}</text>\n");
        for (int r = 0; r < rows; r++)
        {
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left - 4}\" y=\"{top + r * cell + cell / 2 + 4}\" text-anchor=\"end\">{E(RowLabels[r])}</text>\n");
            for (int c = 0; c < cols; c++)
            {
                double v = Values[r][c];
                svg.Append(CultureInfo.InvariantCulture,
                    $"<rect x=\"{left + c * cell}\" y=\"{top + r * cell}\" width=\"{cell}\" height=\"{cell}\" fill=\"{Colour(v, limit, diverging)}\"><title>{E(RowLabels[r])}, {E(ColumnLabels[c])}: {v:G4}</title></rect>\n");
            }
        }
        int step = Math.Max(1, cols * 14 / Math.Max(1, cols * cell));
        for (int c = 0; c < cols; c += step)
        {
            int x = left + c * cell + cell / 2, y = top + rows * cell + 8;
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x}\" y=\"{y}\" transform=\"rotate(60 {x} {y})\">{E(ColumnLabels[c])}</text>\n");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left + cols * cell / 2}\" y=\"{height - 6}\" text-anchor=\"middle\">{E(ColumnAxis)}</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"12\" y=\"{top + rows * cell / 2}\" transform=\"rotate(-90 12 {top + rows * cell / 2})\" text-anchor=\"middle\">{E(RowAxis)}</text>\n");
        // Colour bar.
        int barX = left + cols * cell + 30, barH = Math.Max(60, rows * cell);
        for (int i = 0; i < 50; i++)
        {
            double v = diverging ? limit - 2 * limit * i / 49 : limit - limit * i / 49;
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{barX}\" y=\"{top + i * barH / 50.0:F1}\" width=\"14\" height=\"{barH / 50.0 + 0.5:F1}\" fill=\"{Colour(v, limit, diverging)}\"/>\n");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{barX + 18}\" y=\"{top + 8}\">{limit:G3}</text><text x=\"{barX + 18}\" y=\"{top + barH}\">{(diverging ? -limit : 0):G3}</text>\n</svg>\n");
        return svg.ToString();
    }

    public void Save(string path) => AtomicFile.WriteAllText(path, ToSvg());

    static string Colour(double v, double limit, bool diverging)
    {
        if (!double.IsFinite(v)) return "#bbbbbb";
        double t = Math.Clamp(v / limit, -1, 1);
        if (!diverging) t = Math.Max(0, t);
        // White at 0, red for positive, blue for negative.
        int r = t >= 0 ? 255 : (int)(255 * (1 + t)), g = (int)(255 * (1 - Math.Abs(t))), b = t <= 0 ? 255 : (int)(255 * (1 - t));
        return $"#{r:X2}{g:X2}{b:X2}";
    }

    internal static string E(string s) => WebUtility.HtmlEncode(s);
}

/// <summary>A line chart (one or more series over a shared x axis) as a standalone SVG.</summary>
public sealed class LineChart
{
    public required string Title { get; init; }
    public required double[] X { get; init; }
    /// <summary>Series name → y values (same length as X). NaN leaves a gap.</summary>
    public required IReadOnlyList<(string Name, double[] Y)> Series { get; init; }
    public string XAxis { get; init; } = "";
    public string YAxis { get; init; } = "";

    static readonly string[] Palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

    public string ToSvg()
    {
        foreach (var (name, y) in Series)
            if (y.Length != X.Length) throw new ArgumentException($"chart '{Title}': series '{name}' has {y.Length} points for {X.Length} x values");
        const int width = 640, height = 400, left = 70, right = 170, top = 40, bottom = 50;
        var ys = Series.SelectMany(s => s.Y).Where(double.IsFinite).DefaultIfEmpty(0).ToArray();
        double xmin = X.DefaultIfEmpty(0).Min(), xmax = X.DefaultIfEmpty(1).Max(), ymin = ys.Min(), ymax = ys.Max();
        if (xmax == xmin) xmax = xmin + 1;
        if (ymax == ymin) { ymax += 0.5; ymin -= 0.5; }
        double pad = (ymax - ymin) * 0.05;
        ymin -= pad; ymax += pad;
        double Px(double x) => left + (x - xmin) / (xmax - xmin) * (width - left - right);
        double Py(double y) => top + (1 - (y - ymin) / (ymax - ymin)) * (height - top - bottom);
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{(width - right + left) / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{Heatmap.E(Title)}</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{left}\" y1=\"{height - bottom}\" x2=\"{width - right}\" y2=\"{height - bottom}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{height - bottom}\" stroke=\"black\"/>\n");
        for (int i = 0; i <= 4; i++)
        {
            double yv = ymin + (ymax - ymin) * i / 4, xv = xmin + (xmax - xmin) * i / 4;
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left - 6}\" y=\"{Py(yv) + 4:F1}\" text-anchor=\"end\">{yv:G3}</text><line x1=\"{left}\" y1=\"{Py(yv):F1}\" x2=\"{width - right}\" y2=\"{Py(yv):F1}\" stroke=\"#eeeeee\"/>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{Px(xv):F1}\" y=\"{height - bottom + 16}\" text-anchor=\"middle\">{xv:G3}</text>\n");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{(width - right + left) / 2}\" y=\"{height - 10}\" text-anchor=\"middle\">{Heatmap.E(XAxis)}</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"16\" y=\"{(height - bottom + top) / 2}\" transform=\"rotate(-90 16 {(height - bottom + top) / 2})\" text-anchor=\"middle\">{Heatmap.E(YAxis)}</text>\n");
        for (int s = 0; s < Series.Count; s++)
        {
            string colour = Palette[s % Palette.Length];
            var path = new StringBuilder();
            bool pen = false;
            for (int i = 0; i < X.Length; i++)
            {
                double y = Series[s].Y[i];
                if (!double.IsFinite(y)) { pen = false; continue; }
                path.Append(CultureInfo.InvariantCulture, $"{(pen ? 'L' : 'M')}{Px(X[i]):F1},{Py(y):F1} ");
                pen = true;
                svg.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{Px(X[i]):F1}\" cy=\"{Py(y):F1}\" r=\"2.5\" fill=\"{colour}\"><title>{Heatmap.E(Series[s].Name)}: x={X[i]:G4}, y={y:G4}</title></circle>\n");
            }
            svg.Append(CultureInfo.InvariantCulture, $"<path d=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\"/>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{width - right + 12}\" y=\"{top + s * 18}\" width=\"12\" height=\"3\" fill=\"{colour}\"/><text x=\"{width - right + 28}\" y=\"{top + s * 18 + 5}\">{Heatmap.E(Series[s].Name)}</text>\n");
        }
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    public void Save(string path) => AtomicFile.WriteAllText(path, ToSvg());
}
