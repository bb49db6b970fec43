using System.Diagnostics;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Serve.OpenAi;

namespace Loupe.Bench;

// The OpenAI endpoint's live monitors: one greedy completion (the endpoint's own CompletionRun) with 0 and with 4 monitors
// (each a projection at a residual hook, read on every generated token), interleaved, minimum of several runs.

/// <summary>Tokens/s with and without monitors on one model.</summary>
public sealed record MonitorResult(string Model, int Tokens, double PlainSeconds, double MonitoredSeconds)
{
    public double Overhead => (MonitoredSeconds - PlainSeconds) / PlainSeconds;
}

public static class MonitorBench
{
    public static MonitorResult Run(string name, string folder, int tokens, int reps, TextWriter log)
    {
        using var model = ModelLoader.LoadFolder(folder);
        var random = new Random(5);
        int[] prompt = [.. Enumerable.Range(0, 16).Select(_ => random.Next(model.Config.DVocab))];
        var generation = new GenerationOptions(tokens, 0f, StopAtEos: false);
        var directions = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, model.Config.DModel).Select(_ => (float)random.NextDouble() - 0.5f).ToArray()).ToArray();
        double Once(bool monitored)
        {
            var loupe = monitored
                ? new LoupeRequest([], [], [.. directions.Select((d, i) => TokenMonitor.ForVector($"m{i}", $"blocks.{i * model.Config.NLayers / 4}.hook_resid_post", d, 1e9, MonitorAction.Flag, false))])
                : LoupeRequest.None;
            var run = new CompletionRun(model, prompt, generation, [], null, loupe, null, default);
            var clock = Stopwatch.StartNew();
            run.Run();
            return clock.Elapsed.TotalSeconds;
        }
        log.WriteLine($"monitors [{name}]: warm-up …");
        Once(false);
        Once(true);
        double plain = double.MaxValue, monitored = double.MaxValue;
        for (int r = 0; r < reps; r++)
        {
            log.WriteLine($"monitors [{name}]: round {r + 1} of {reps} …");
            plain = Math.Min(plain, Once(false));
            monitored = Math.Min(monitored, Once(true));
        }
        return new MonitorResult(name, tokens, plain, monitored);
    }

    public static void Print(TextWriter w, MonitorResult r)
    {
        w.WriteLine();
        w.WriteLine($"## Live monitors on the OpenAI endpoint — {r.Model}, {r.Tokens} greedy tokens");
        w.WriteLine($"0 monitors   {r.Tokens / r.PlainSeconds,10:F1} tok/s");
        w.WriteLine($"4 monitors   {r.Tokens / r.MonitoredSeconds,10:F1} tok/s   overhead {r.Overhead:P2} (target < 2 %)");
    }
}
