using System.Diagnostics;
using Loupe.Models.Generation;
using Loupe.Serve.OpenAi;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Serve.Tests;

/// <summary>Tokens/s of a 200-token generation on stories260K with 0 and 4 monitors (min time of several runs); prints the figures.</summary>
public class MonitorOverheadBench(ITestOutputHelper output)
{
    [RequiresSharedFact("models/stories260K")]
    public void FourMonitorsCostLittle()
    {
        var m = Servers.Stories;
        int[] prompt = m.Tokenizer!.Encode("Once upon a time");
        var generation = new GenerationOptions(200, 0f, StopAtEos: false);
        var rng = new Random(1);
        var monitors = Enumerable.Range(0, 4).Select(i => TokenMonitor.ForVector($"m{i}", $"blocks.{i % m.Config.NLayers}.hook_resid_post",
            Enumerable.Range(0, m.Config.DModel).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray(), 1e9, MonitorAction.Flag, false)).ToList();

        double Once(bool withMonitors)
        {
            {
                var loupe = withMonitors
                    ? new LoupeRequest([], [], monitors.Select(x => TokenMonitor.ForVector(x.Name, x.Hook, Direction(x), 1e9, MonitorAction.Flag, false)).ToList())
                    : LoupeRequest.None;
                var completion = new CompletionRun(m, prompt, generation, [], null, loupe, null, default);
                var clock = Stopwatch.StartNew();
                completion.Run();
                Assert.Equal(200, completion.Tokens.Count);
                return clock.Elapsed.TotalSeconds;
            }
        }
        Once(false); // warm up
        Once(true);
        // Interleaved, so load from other processes falls on both alike; the minimum of each is the figure.
        double plain = double.MaxValue, monitored = double.MaxValue;
        for (int run = 0; run < 9; run++)
        {
            plain = Math.Min(plain, Once(false));
            monitored = Math.Min(monitored, Once(true));
        }
        double overhead = (monitored - plain) / plain;
        output.WriteLine($"stories260K, 200 tokens greedy: 0 monitors {200 / plain:F0} tok/s, 4 monitors {200 / monitored:F0} tok/s, overhead {overhead:P1}");
        Assert.InRange(overhead, -0.5, 1.0); // a loose sanity bound; the figure is reported, not asserted
    }

    static float[] Direction(TokenMonitor monitor) => new float[Servers.Stories.Config.DModel].Select((_, i) => (float)Math.Sin(i + monitor.Name.Length)).ToArray();
}
