using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Loupe.Testing;

namespace Loupe.Cli.Tests;

/// <summary><c>loupe serve --device emulated</c> starts (serve is a device verb) and its /api/model names the device.</summary>
public class ServeDeviceCliTests
{
    [Fact]
    public async Task Serve_on_the_emulated_device_starts_and_reports_it()
    {
        // A child process: serve runs until it is stopped, and stopping it here ends only the process this test started.
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "loupe.dll"), "serve", "--model", SharedData.TestData(Path.Combine("reference", "gpt2")), "--device", "emulated", "--port", "0" })
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("LOUPE_DEVICE");
        using var p = Process.Start(psi)!;
        var url = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var err = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line && Regex.Match(line, @"Loupe serves .* at (http://\S+/)") is { Success: true } m) url.TrySetResult(m.Groups[1].Value);
        };
        p.ErrorDataReceived += (_, e) => { lock (err) err.AppendLine(e.Data); };
        p.Exited += (_, _) => url.TrySetException(new InvalidOperationException($"loupe serve exited ({p.ExitCode}): {err}"));
        p.EnableRaisingEvents = true;
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        try
        {
            string address = await url.Task.WaitAsync(TimeSpan.FromMinutes(2));
            using var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(60) };
            var model = JsonDocument.Parse(await client.GetStringAsync("api/model")).RootElement;
            Assert.Equal("emulated", model.GetProperty("device").GetString());
            Assert.Equal("gpt2", model.GetProperty("name").GetString());
            Assert.False(string.IsNullOrEmpty(model.GetProperty("backend").GetString()));
        }
        finally
        {
            if (!p.HasExited) p.Kill();
            p.WaitForExit(10_000);
        }
    }
}
