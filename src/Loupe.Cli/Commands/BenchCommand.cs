using System.CommandLine;
using Loupe.Circuits.Benchmark;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe bench</c>: benchmarks with known answers.</summary>
static class BenchCommand
{
    const string InductionRelative = "models/induction-attn-only-2l";

    public static Command Create()
    {
        var command = new Command("bench",
            "Benchmarks with known answers.\n\nExamples:\n  loupe bench circuits --out bench/\n  loupe bench circuits --quick --methods eap,eap-ig");
        command.Subcommands.Add(Circuits());
        return command;
    }

    static Command Circuits()
    {
        var output = new Option<string>("--out", "-o") { Description = "Output folder: circuit-bench.json and the planted models' checkpoints (planted/)", DefaultValueFactory = _ => "circuit-bench" };
        var methods = new Option<string?>("--methods") { Description = "Comma-separated methods: eap, eap-ig, exact, or a name as the table prints it or its start up to a '-' or '.' (default: every method)" };
        var quick = new Option<bool>("--quick") { Description = "Only the planted tasks, 8 examples each (no shared data needed)" };
        var induction = new Option<string?>("--induction") { Description = $"The induction checkpoint (default: {InductionRelative} under $LOUPE_SHARED, ../shared or shared/ when present)" };
        var seed = new Option<int>("--seed") { Description = "Seed of the planted models' training and of the data", DefaultValueFactory = _ => 0 };
        var command = new Command("circuits",
            "Score every circuit-discovery method against circuits whose edges are known: models trained by Loupe with only some heads " +
            "alive (truth by construction) and the 2-layer induction model of ../shared/models (truth by exact patching). For each " +
            "circuit and method: ROC AUC of |score| against the true edges, precision and recall of the top-k edges (k = true edges), " +
            "the best F1 and the time taken.\n\nExamples:\n  loupe bench circuits --out bench/\n  loupe bench circuits --quick --methods eap,eap-ig --out bench/")
        { output, methods, quick, induction, seed };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            var chosen = Methods(parse.GetValue(methods));
            bool isQuick = parse.GetValue(quick);
            string? inductionModel = InductionModel(parse.GetValue(induction));
            var options = new KnownCircuitOptions(Path.Combine(folder, "planted"), inductionModel, isQuick, parse.GetValue(seed));
            var circuits = new List<KnownCircuit>();
            try
            {
                foreach (var circuit in KnownCircuits.All(options))
                {
                    circuits.Add(circuit);
                    Console.WriteLine($"{circuit.Name}: {circuit.Description} ({circuit.TrueEdges.Count} true edges)");
                }
                if (inductionModel is null && !isQuick)
                    Console.WriteLine($"(no induction model: {InductionRelative} not found; pass --induction PATH)");
                var rows = CircuitBenchmark.Run(circuits, chosen);
                Console.Write(CircuitBenchmark.Table(rows));
                string path = Path.Combine(folder, "circuit-bench.json");
                CircuitBenchmark.WriteJson(path, rows, circuits);
                Console.WriteLine($"wrote {path}");
                return 0;
            }
            finally
            {
                foreach (var circuit in circuits) circuit.Model.Dispose();
            }
        }));
        return command;
    }

    /// <summary>The methods named in <paramref name="list"/>; every method when null.</summary>
    static IReadOnlyList<DiscoveryMethod> Methods(string? list)
    {
        if (string.IsNullOrWhiteSpace(list)) return DiscoveryMethods.All;
        var known = DiscoveryMethods.All;
        var chosen = new List<DiscoveryMethod>();
        foreach (var raw in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // A table name (any case), or its leading part up to a '-' or '.': eap-ig = EAP-IG-inputs.steps5, the first EAP-IG variant.
            var method = known.FirstOrDefault(m => string.Equals(m.Name, raw, StringComparison.OrdinalIgnoreCase))
                ?? known.FirstOrDefault(m => m.Name.StartsWith(raw + "-", StringComparison.OrdinalIgnoreCase) || m.Name.StartsWith(raw + ".", StringComparison.OrdinalIgnoreCase))
                ?? throw InputError.Expected("argument", "--methods", $"eap, eap-ig or one of {string.Join(", ", known.Select(m => m.Name))}", raw);
            if (!chosen.Contains(method)) chosen.Add(method);
        }
        return chosen;
    }

    static string? InductionModel(string? option)
    {
        if (option is not null)
            return Directory.Exists(option) ? option : throw new InputError($"argument: --induction: no checkpoint folder at '{option}'");
        var roots = new[] { Environment.GetEnvironmentVariable("LOUPE_SHARED"), Path.Combine("..", "shared"), "shared" };
        return roots.Where(r => !string.IsNullOrEmpty(r)).Select(r => Path.Combine(r!, InductionRelative))
            .FirstOrDefault(p => File.Exists(Path.Combine(p, "config.json")));
    }
}
