using System.Text.Json;
using System.Text.Json.Nodes;

namespace Loupe.Explain;

/// <summary>Dollars per million input (prompt) and output (completion) tokens of one model.</summary>
public sealed record ModelPrice(double InputPerMillion, double OutputPerMillion)
{
    public double Cost(long promptTokens, long completionTokens) =>
        (promptTokens * InputPerMillion + completionTokens * OutputPerMillion) / 1e6;
}

/// <summary>
/// The price table, a JSON file the user edits: <c>{"model": {"input_per_million": 0.15, "output_per_million": 0.6}, …}</c>.
/// <see cref="Load"/> writes <see cref="Defaults"/> there when the file does not exist yet.
/// </summary>
public sealed class PriceTable(IReadOnlyDictionary<string, ModelPrice> prices)
{
    /// <summary>Written on first use; list prices in US dollars at the time of writing — check and edit them.</summary>
    public static readonly IReadOnlyDictionary<string, ModelPrice> Defaults = new Dictionary<string, ModelPrice>(StringComparer.Ordinal)
    {
        ["gpt-4o-mini"] = new(0.15, 0.60),
        ["gpt-4o"] = new(2.50, 10.00),
        ["gpt-4.1-mini"] = new(0.40, 1.60),
        ["gpt-4.1-nano"] = new(0.10, 0.40),
        ["gpt-4.1"] = new(2.00, 8.00),
        ["local"] = new(0, 0),
    };

    public IReadOnlyDictionary<string, ModelPrice> Prices { get; } = prices;

    /// <summary>The model's price, or null when the table has none (costs are then reported as unknown).</summary>
    public ModelPrice? For(string model) => Prices.TryGetValue(model, out var p) ? p : null;

    /// <summary>Reads the table, writing the default one first when <paramref name="path"/> does not exist.</summary>
    /// <exception cref="InputError">The file is not such a JSON object, or a price is negative or not a number.</exception>
    public static PriceTable Load(string path)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            var json = new JsonObject();
            foreach (var (model, price) in Defaults)
                json[model] = new JsonObject { ["input_per_million"] = price.InputPerMillion, ["output_per_million"] = price.OutputPerMillion };
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            Loupe.Reports.AtomicFile.WriteAllText(full, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
        var root = JsonInput.ParseNode(InputFiles.ReadAllBytes(full, 16 << 20),
            $"{full} (a price table {{\"model\": {{\"input_per_million\": …, \"output_per_million\": …}}}})");
        if (root is not JsonObject table) throw new InputError($"{full}: expected a JSON object of model → prices, found {root?.GetValueKind().ToString() ?? "null"}");
        var prices = new Dictionary<string, ModelPrice>(StringComparer.Ordinal);
        foreach (var (model, node) in table)
        {
            double Read(string field)
            {
                try
                {
                    double v = node?[field]?.GetValue<double>() ?? throw new InputError($"{full}: model {InputError.Show(model)}: field '{field}' missing");
                    return v >= 0 && double.IsFinite(v) ? v : throw new InputError($"{full}: model {InputError.Show(model)}: field '{field}': expected dollars ≥ 0, found {InputError.Show(v)}");
                }
                catch (Exception e) when (e is InvalidOperationException or FormatException)
                {
                    throw new InputError($"{full}: model {InputError.Show(model)}: field '{field}': expected a number", e);
                }
            }
            prices[model] = new ModelPrice(Read("input_per_million"), Read("output_per_million"));
        }
        return new PriceTable(prices);
    }
}
