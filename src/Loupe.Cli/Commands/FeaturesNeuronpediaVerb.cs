using System.CommandLine;
using System.Globalization;
using Loupe.Attribution.Graph;
using Loupe.Dictionaries.Features;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe features neuronpedia</c>: feature detail JSON files for circuit-tracer's / Neuronpedia's graph viewer,
/// from the feature stores of a graph's transcoders (one store per layer).
/// </summary>
static class FeaturesNeuronpediaVerb
{
    public static Command Create()
    {
        var stores = new Option<string>("--stores")
        {
            Description = "The feature stores, one per transcoder layer in layer order: comma-separated files (an empty entry skips a layer), " +
                "or one folder holding layer_0/features.db, layer_1/features.db, … (as `loupe features build --sae tc/layer_ℓ` writes them)",
            Required = true,
        };
        var graph = new Option<string?>("--graph") { Description = "A graph JSON written by `loupe attribute`: write its feature nodes' files, at the scan and index the viewer fetches for each" };
        var scan = new Option<string?>("--scan") { Description = "Without --graph: the scan (the graph's metadata.scan) to write every feature of every store under" };
        var flavor = new Option<string>("--flavor") { Description = "Without --graph: file index convention, v0.5.0 (cantor(layer, feature)) or d797c82 (feature index)", DefaultValueFactory = _ => "v0.5.0" };
        var output = new Option<string>("--out", "-o") { Description = "The features folder (circuit-tracer's features_dir): files land at FOLDER/{scan}/{index}.json", Required = true };
        var command = new Command("neuronpedia",
            "Write Neuronpedia-style feature detail files (top examples, interval samples, top/bottom logits, density, activation\n" +
            "histogram and percentiles) from feature stores, so the circuit-tracer / Neuronpedia graph viewer shows a Loupe graph's\n" +
            "features. Serve them as circuit-tracer's local server does (features_dir = --out). Each file is written atomically.\n\n" +
            "Examples:\n" +
            "  loupe features neuronpedia --graph graphs/graph.json --stores tc/ --out graphs/features\n" +
            "  loupe features neuronpedia --stores l0.db,l1.db,l2.db --scan my-model-tc --out features")
        { stores, graph, scan, flavor, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            string? graphPath = parse.GetValue(graph), scanName = parse.GetValue(scan);
            if ((graphPath is null) == (scanName is null))
                throw new InputError("argument: give exactly one of --graph FILE (its feature nodes) or --scan NAME (every feature of every store)");
            if (scanName is not null && !NeuronpediaFeatureJson.IsValidScan(scanName))
                throw InputError.Expected("argument", "--scan", NeuronpediaFeatureJson.ScanExpected, scanName);
            var flavorValue = parse.GetValue(flavor) switch
            {
                "v0.5.0" or "v050" => NeuronpediaFlavor.V050,
                "d797c82" => NeuronpediaFlavor.D797c82,
                var other => throw InputError.Expected("argument", "--flavor", "v0.5.0 or d797c82", other),
            };
            if (graphPath is not null && parse.GetResult(flavor) is { Implicit: false })
                throw new InputError("argument: --flavor is for --scan; with --graph the graph's schema_version decides");
            var paths = StorePaths(parse.GetValue(stores)!);
            var opened = new List<FeatureStore?>();
            try
            {
                foreach (string? p in paths) opened.Add(p is null ? null : FeatureStore.Open(p));
                var files = graphPath is not null
                    ? NeuronpediaFeatureJson.WriteForGraph(folder, graphPath, opened)
                    : NeuronpediaFeatureJson.WriteLayers(folder, scanName!, opened, flavorValue);
                var scans = files.Select(f => f.Scan).Distinct().ToArray();
                Console.WriteLine($"wrote {files.Count.ToString("N0", CultureInfo.InvariantCulture)} feature files of {files.Select(f => f.Layer).Distinct().Count()} layers " +
                    $"under {Path.GetFullPath(folder)} (scan{(scans.Length == 1 ? "" : "s")} {string.Join(", ", scans)})");
            }
            finally
            {
                foreach (var s in opened) s?.Dispose();
            }
            return 0;
        }));
        return command;
    }

    /// <summary>Layer ℓ's store path (null: no store for the layer).</summary>
    /// <exception cref="InputError">No store named, or a folder without layer_0/features.db.</exception>
    static IReadOnlyList<string?> StorePaths(string value)
    {
        if (!value.Contains(',') && Directory.Exists(value))
        {
            var found = new List<string?>();
            for (int layer = 0; File.Exists(Path.Combine(value, $"layer_{layer}", FeatureStoreSchema.DefaultFileName)); layer++)
                found.Add(Path.Combine(value, $"layer_{layer}", FeatureStoreSchema.DefaultFileName));
            if (found.Count == 0)
                throw new InputError($"argument: --stores: {value} is a folder without layer_0/{FeatureStoreSchema.DefaultFileName}; give the stores as comma-separated files, in layer order");
            return found;
        }
        var paths = value.Split(',').Select(p => string.IsNullOrWhiteSpace(p) ? null : p.Trim()).ToList();
        if (paths.All(p => p is null)) throw InputError.Expected("argument", "--stores", "one or more feature store files", value);
        return paths;
    }
}
