using System.Text.Json;

namespace Loupe.Fuzz.Engine;

/// <summary>A distinct failure: the first input that showed it, what happened, and how often it recurred.</summary>
public sealed class Finding(FuzzInput input, Outcome outcome)
{
    public FuzzInput Input { get; } = input;
    public Outcome Outcome { get; } = outcome;
    public int Count { get; set; } = 1;

    public string Describe() =>
        $"[{Input.Parser}] {Outcome.Kind} {Outcome.ExceptionType}: {Outcome.Message}\n" +
        (Outcome.TopFrame.Length > 0 ? $"    at {Outcome.TopFrame}\n" : "") +
        $"    input #{Input.Index} from seed {Input.SeedId}, file {Input.FileName}, mutations: {string.Join(" ; ", Input.Mutations)}\n" +
        $"    seen {Count} time(s)";
}

public sealed class CampaignResult(string parser)
{
    public string Parser { get; } = parser;
    public long Run { get; set; }
    public long Accepted { get; set; }
    public long Refused { get; set; }
    public long Failed { get; set; }
    /// <summary>True when an input hung: its thread still runs, so the campaign stopped there.</summary>
    public bool StoppedOnHang { get; set; }
    public List<Finding> Findings { get; } = [];
    public List<string> Notes { get; } = [];
    /// <summary>Mutations that threw (bugs in the fuzzer itself); the CI test fails on any.</summary>
    public List<string> HarnessErrors { get; } = [];
    public TimeSpan Elapsed { get; set; }
    /// <summary>Refusal messages with their numbers and quoted values blanked, and how often each was seen: what the mutations mostly hit.</summary>
    public Dictionary<string, int> Refusals { get; } = [];

    public string Counts => $"{Parser}: {Run} inputs, {Accepted} accepted, {Refused} refused, {Failed} failed ({Findings.Count} distinct) in {Elapsed.TotalSeconds:0.0} s";
}

public sealed class CampaignOptions
{
    public long Iterations { get; init; } = 1000;
    public long StartIndex { get; init; }
    public int Seed { get; init; } = 1;
    /// <summary>Stop at this moment even if iterations remain (the console runner's --minutes).</summary>
    public DateTime? Deadline { get; init; }
    /// <summary>The folder case folders are written to; its content is replaced for every input.</summary>
    public required string WorkFolder { get; init; }
    /// <summary>Called with each input just before it runs (the console runner saves it, so a process crash leaves the reproducer).</summary>
    public Action<FuzzInput>? BeforeExecute { get; init; }
    /// <summary>Called with each new distinct failure.</summary>
    public Action<Finding>? OnFinding { get; init; }
    /// <summary>Signatures already reported (e.g. by an earlier child process): not reported again.</summary>
    public IReadOnlySet<string>? KnownSignatures { get; init; }
}

/// <summary>
/// A deterministic campaign: input i is a function of (parser, seed, i) only, so a run can resume at any index
/// and a reported index can be regenerated. Each input is a seed's files with one file mutated.
/// </summary>
public static class Campaign
{
    /// <summary>A refusal message with what varies between inputs (numbers, quoted values, paths) blanked, cut to 140 characters.</summary>
    public static string RefusalShape(string message)
    {
        string shape = System.Text.RegularExpressions.Regex.Replace(message, "\"[^\"]*\"|'[^']*'|/[^ :,;]+|[0-9]+", "…");
        return shape.Length > 140 ? shape[..140] : shape;
    }

    public static CampaignResult Run(FuzzTarget target, IReadOnlyList<Seed> seeds, CampaignOptions options)
    {
        var result = new CampaignResult(target.Name);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var bySignature = new Dictionary<string, Finding>();
        var caseFolder = Path.Combine(options.WorkFolder, "case");
        try
        {
            for (long i = options.StartIndex; i < options.StartIndex + options.Iterations; i++)
            {
                if (options.Deadline is { } deadline && DateTime.UtcNow >= deadline) break;
                FuzzInput input;
                try { input = Generate(target, seeds, options.Seed, i); }
                catch (Exception e) // a bug in a mutator, not in Loupe: reported as a note, the input skipped
                {
                    result.HarnessErrors.Add($"input #{i}: mutation failed: {e.GetType().Name}: {e.Message} at {Executor.TopLoupeFrame(e)}");
                    continue;
                }
                options.BeforeExecute?.Invoke(input);
                var outcome = Execute(target, seeds, input, caseFolder);
                result.Run++;
                switch (outcome.Verdict)
                {
                    case Verdict.Accepted: result.Accepted++; break;
                    case Verdict.Refused:
                        result.Refused++;
                        string shape = RefusalShape(outcome.Message);
                        result.Refusals[shape] = result.Refusals.GetValueOrDefault(shape) + 1;
                        break;
                    default:
                        result.Failed++;
                        if (bySignature.TryGetValue(outcome.Signature, out var known)) known.Count++;
                        else
                        {
                            var finding = new Finding(input, outcome);
                            bySignature[outcome.Signature] = finding;
                            result.Findings.Add(finding);
                            if (options.KnownSignatures?.Contains(outcome.Signature) != true) options.OnFinding?.Invoke(finding);
                        }
                        break;
                }
                if (outcome.Kind == "hang")
                {
                    result.StoppedOnHang = true;
                    break;
                }
            }
        }
        finally
        {
            result.Elapsed = clock.Elapsed;
            TryDelete(caseFolder);
        }
        return result;
    }

    /// <summary>Input <paramref name="index"/> of the campaign: which seed, which file, which mutations.</summary>
    public static FuzzInput Generate(FuzzTarget target, IReadOnlyList<Seed> seeds, int campaignSeed, long index)
    {
        var rng = new Random(StableHash(target.Name, campaignSeed, index));
        var seed = seeds[rng.Next(seeds.Count)];
        var mutable = seed.Files.Where(f => f.Mutable).ToList();
        var file = mutable[rng.Next(mutable.Count)];
        var (bytes, chain) = MutationEngine.Mutate(file, target.ExtraMutators(file), rng);
        return new FuzzInput(target.Name, seed.Id, index, file.Name, bytes, chain);
    }

    /// <summary>Writes the case folder (the seed's files, the input's file replaced) and runs the target on it under its time limit.</summary>
    public static Outcome Execute(FuzzTarget target, IReadOnlyList<Seed> seeds, FuzzInput input, string caseFolder)
    {
        var seed = seeds.FirstOrDefault(s => s.Id == input.SeedId) ?? throw new ArgumentException($"no seed '{input.SeedId}' for {target.Name}");
        TryDelete(caseFolder);
        Directory.CreateDirectory(caseFolder);
        foreach (var f in seed.Files)
        {
            var path = Path.Combine(caseFolder, f.Name);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, f.Name == input.FileName ? input.Bytes : f.Bytes);
        }
        return Executor.Run(() => target.Execute(caseFolder, input), target.Timeout);
    }

    static void TryDelete(string folder)
    {
        try { if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true); }
        catch (IOException) { } // a hung input may still hold a file; the next case folder is written over it
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>FNV-1a over (parser, seed, index): string.GetHashCode is randomized per process.</summary>
    static int StableHash(string parser, int seed, long index)
    {
        ulong h = 14695981039346656037;
        foreach (char c in parser) { h ^= c; h *= 1099511628211; }
        foreach (long v in new long[] { seed, index }) { h ^= (ulong)v; h *= 1099511628211; h ^= h >> 29; }
        return (int)(h ^ (h >> 32));
    }
}

/// <summary>Reproducer files: <c>{prefix}-{parser}-{hash}.bin</c> (the mutated file) and <c>.json</c> (seed, file name, mutations, outcome).</summary>
public static class Reproducer
{
    public sealed record Info(string Parser, string Seed, string File, long Index, string[] Mutations, string Kind, string ExceptionType, string Message, string TopFrame);

    static readonly JsonSerializerOptions s_json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static string Save(string folder, string prefix, FuzzInput input, Outcome outcome)
    {
        Directory.CreateDirectory(folder);
        var stem = Path.Combine(folder, $"{prefix}-{input.Parser}-{input.Hash}");
        File.WriteAllBytes(stem + ".bin", input.Bytes);
        var info = new Info(input.Parser, input.SeedId, input.FileName, input.Index, [.. input.Mutations], outcome.Kind, outcome.ExceptionType, outcome.Message, outcome.TopFrame);
        File.WriteAllText(stem + ".json", JsonSerializer.Serialize(info, s_json));
        return stem + ".bin";
    }

    public static (Info Info, byte[] Bytes) Load(string jsonPath)
    {
        var info = JsonSerializer.Deserialize<Info>(File.ReadAllText(jsonPath), s_json) ?? throw new InvalidDataException($"{jsonPath}: empty");
        return (info, File.ReadAllBytes(Path.ChangeExtension(jsonPath, ".bin")));
    }
}
