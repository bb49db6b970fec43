using System.Diagnostics;
using System.Text.Json;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Targets;

namespace Loupe.Fuzz;

/// <summary>
/// Long fuzzing runs. The parent splits the time over the parsers and runs each parser's campaign in a child
/// process (this program with --child), because a stack overflow or a hang cannot be survived in-process.
/// The child saves every input to current-PARSER.bin/.json before running it; when the child dies, the parent
/// turns that file into crash-PARSER-HASH.bin/.json and starts a new child at the next input.
///
///   dotnet run --project fuzz/Loupe.Fuzz -c Release -- --parser all --minutes 30 --out fuzz-findings/
/// </summary>
public static class Program
{
    const int HangExitCode = 3;

    sealed class Options
    {
        public string Parser = "all";
        public double Minutes = 10;
        public string Out = "fuzz-findings";
        public int Seed = 1;
        public long Start;
        public long Iterations = long.MaxValue;
        public bool Child;
        public bool LargeSeeds;
        public DateTime? Deadline;
        public string? Replay;
        public bool Refusals;
    }

    public static int Main(string[] args)
    {
        Options o;
        try { o = ParseArgs(args); }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            Console.Error.WriteLine("usage: Loupe.Fuzz [--parser all|NAME[,NAME]] [--minutes M] [--iterations N] [--seed S] [--out DIR] [--large-seeds] [--refusals] [--replay crash-*.json]");
            Console.Error.WriteLine($"parsers: {string.Join(", ", AllTargets.Names)}");
            return 2;
        }
        if (o.Replay is not null) return Replay(o);
        return o.Child ? RunChild(o) : RunParent(o);
    }

    static Options ParseArgs(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--parser": o.Parser = Next(); break;
                case "--minutes": o.Minutes = double.TryParse(Next(), System.Globalization.CultureInfo.InvariantCulture, out var m) && m > 0 && double.IsFinite(m) ? m : throw new ArgumentException("--minutes: expected a positive number"); break;
                case "--out": o.Out = Next(); break;
                case "--seed": o.Seed = int.TryParse(Next(), out var s) ? s : throw new ArgumentException("--seed: expected an integer"); break;
                case "--iterations": o.Iterations = long.TryParse(Next(), out var n) && n > 0 ? n : throw new ArgumentException("--iterations: expected a positive integer"); break;
                case "--start": o.Start = long.Parse(Next()); break;
                case "--deadline": o.Deadline = DateTime.FromBinary(long.Parse(Next())); break;
                case "--child": o.Child = true; break;
                case "--large-seeds": o.LargeSeeds = true; break;
                case "--refusals": o.Refusals = true; break;
                case "--replay": o.Replay = Next(); break;
                default: throw new ArgumentException($"unknown argument '{args[i]}'");
            }
        }
        var names = o.Parser == "all" ? AllTargets.Names : o.Parser.Split(',');
        foreach (var name in names) AllTargets.ByName(name);
        return o;
    }

    // ---- parent ----

    static int RunParent(Options o)
    {
        Directory.CreateDirectory(o.Out);
        var parsers = o.Parser == "all" ? AllTargets.Names : o.Parser.Split(',');
        var perParser = TimeSpan.FromMinutes(o.Minutes / parsers.Count);
        Console.WriteLine($"fuzzing {string.Join(", ", parsers)} for {o.Minutes:0.#} min ({perParser.TotalMinutes:0.#} min each), seed {o.Seed}, findings in {Path.GetFullPath(o.Out)}");
        foreach (var parser in parsers)
        {
            var deadline = DateTime.UtcNow + perParser;
            long start = o.Start, done = 0;
            while (DateTime.UtcNow < deadline && done < o.Iterations)
            {
                var child = StartChild(o, parser, start, o.Iterations - done, deadline);
                child.WaitForExit();
                var current = Path.Combine(o.Out, $"current-{parser}.json");
                var progress = File.Exists(current) ? Reproducer.Load(current) : default;
                if (child.ExitCode == 0) break;
                if (progress.Info is null || progress.Info.Index < start) { Console.WriteLine($"  {parser}: child exited {child.ExitCode} before its first input; stopping this parser"); break; }
                if (child.ExitCode != HangExitCode)
                {
                    // The process died (stack overflow, fatal error): the input it was running is the reproducer.
                    var input = new FuzzInput(parser, progress.Info.Seed, progress.Info.Index, progress.Info.File, progress.Bytes, progress.Info.Mutations);
                    var path = Reproducer.Save(o.Out, "crash", input, new Outcome(Verdict.Failed, "process-crash", "", $"the process exited with code {child.ExitCode} (stack overflow or fatal error)"));
                    AppendFinding(o.Out, $"{parser}|process-crash|{child.ExitCode}", $"[{parser}] process crash (exit {child.ExitCode}) on input #{input.Index} — {path}");
                    Console.WriteLine($"  {parser}: process crashed (exit {child.ExitCode}) on input #{input.Index}; reproducer {path}");
                }
                done += progress.Info.Index + 1 - start;
                start = progress.Info.Index + 1;
            }
            File.Delete(Path.Combine(o.Out, $"current-{parser}.json"));
            File.Delete(Path.Combine(o.Out, $"current-{parser}.bin"));
        }
        var findings = Path.Combine(o.Out, "findings.txt");
        Console.WriteLine(File.Exists(findings) ? $"distinct failures: {File.ReadAllLines(findings).Count(l => l.StartsWith('['))} (see {findings})" : "no failures");
        return 0;
    }

    static Process StartChild(Options o, string parser, long start, long iterations, DateTime deadline)
    {
        var self = Environment.ProcessPath!;
        var info = new ProcessStartInfo(self) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") info.ArgumentList.Add(typeof(Program).Assembly.Location);
        foreach (var a in new[] { "--child", "--parser", parser, "--start", start.ToString(), "--iterations", iterations.ToString(),
                     "--seed", o.Seed.ToString(), "--out", o.Out, "--deadline", deadline.ToBinary().ToString() })
            info.ArgumentList.Add(a);
        if (o.LargeSeeds) info.ArgumentList.Add("--large-seeds");
        if (o.Refusals) info.ArgumentList.Add("--refusals");
        // A 2 GiB managed heap: an allocation sized by a corrupt header fails fast with OutOfMemoryException instead of paging.
        info.Environment["DOTNET_GCHeapHardLimit"] = "0x80000000";
        return Process.Start(info)!;
    }

    static void AppendFinding(string outFolder, string signature, string text)
    {
        var seen = Path.Combine(outFolder, "signatures.txt");
        if (File.Exists(seen) && File.ReadAllLines(seen).Contains(signature)) return;
        File.AppendAllLines(seen, [signature]);
        File.AppendAllText(Path.Combine(outFolder, "findings.txt"), text + "\n\n");
    }

    // ---- child ----

    static int RunChild(Options o)
    {
        var target = AllTargets.ByName(o.Parser);
        var scratch = Directory.CreateTempSubdirectory($"loupe-fuzz-{target.Name}-").FullName;
        try
        {
            var context = SeedContext.Default(Path.Combine(scratch, "seeds"));
            context = new SeedContext(context.SharedRoot, context.RepoRoot, context.Scratch) { LargeSeeds = o.LargeSeeds };
            var seeds = target.BuildSeeds(context);
            if (o.Start == 0) foreach (var note in context.Notes) Console.WriteLine($"  {target.Name}: {note}");
            var seen = Path.Combine(o.Out, "signatures.txt");
            // Signatures are kept per parser ("PARSER|SIGNATURE"): the same exception type in two parsers is two findings.
            string prefix = target.Name + "|";
            var known = File.Exists(seen) ? File.ReadAllLines(seen).Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).Select(l => l[prefix.Length..]).ToHashSet() : [];
            var current = Path.Combine(o.Out, $"current-{target.Name}");
            var result = Campaign.Run(target, seeds, new CampaignOptions
            {
                Iterations = o.Iterations,
                StartIndex = o.Start,
                Seed = o.Seed,
                Deadline = o.Deadline,
                WorkFolder = Path.Combine(scratch, "work"),
                KnownSignatures = known,
                BeforeExecute = input =>
                {
                    File.WriteAllBytes(current + ".bin", input.Bytes);
                    File.WriteAllText(current + ".json", JsonSerializer.Serialize(new Reproducer.Info(input.Parser, input.SeedId, input.FileName, input.Index, [.. input.Mutations], "", "", "", ""),
                        new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
                },
                OnFinding = finding =>
                {
                    var path = Reproducer.Save(o.Out, finding.Outcome.Kind == "hang" ? "hang" : "crash", finding.Input, finding.Outcome);
                    AppendFinding(o.Out, prefix + finding.Outcome.Signature, finding.Describe() + $"\n    reproducer {path}");
                    Console.WriteLine($"  {target.Name}: {finding.Outcome.Kind} {finding.Outcome.ExceptionType}: {finding.Outcome.Message[..Math.Min(120, finding.Outcome.Message.Length)]}");
                },
            });
            Console.WriteLine($"  {result.Counts}");
            if (o.Refusals)
                foreach (var (shape, count) in result.Refusals.OrderByDescending(r => r.Value).Take(20))
                    Console.WriteLine($"  {target.Name}: refused {count,6}× {shape}");
            foreach (var error in result.HarnessErrors.Take(5)) Console.WriteLine($"  {target.Name}: harness error {error}");
            if (result.StoppedOnHang)
            {
                Console.Out.Flush();
                Environment.Exit(HangExitCode); // the hung thread cannot be stopped: leave, the parent resumes after it
            }
            return 0;
        }
        finally
        {
            target.Cleanup();
            try { Directory.Delete(scratch, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    // ---- replay ----

    /// <summary>Runs one saved reproducer (crash-*.json) in this process and prints the outcome.</summary>
    static int Replay(Options o)
    {
        var (info, bytes) = Reproducer.Load(o.Replay!);
        var target = AllTargets.ByName(info.Parser);
        var scratch = Directory.CreateTempSubdirectory("loupe-fuzz-replay-").FullName;
        try
        {
            var context = SeedContext.Default(Path.Combine(scratch, "seeds"));
            var seeds = target.BuildSeeds(context);
            var input = new FuzzInput(info.Parser, info.Seed, info.Index, info.File, bytes, info.Mutations);
            var outcome = Campaign.Execute(target, seeds, input, Path.Combine(scratch, "case"));
            Console.WriteLine($"{outcome.Verdict} {outcome.Kind} {outcome.ExceptionType}: {outcome.Message}");
            if (outcome.StackHead.Length > 0) Console.WriteLine("  " + outcome.StackHead.Replace(" | ", "\n  "));
            return outcome.Verdict == Verdict.Failed ? 1 : 0;
        }
        finally { target.Cleanup(); }
    }
}
