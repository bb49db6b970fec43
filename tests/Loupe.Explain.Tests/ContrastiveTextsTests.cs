using System.Text.Json;
using Loupe.Explain;
using Loupe.Testing;

namespace Loupe.Explain.Tests;

/// <summary>Contrastive texts from a concept description, through the real HTTP client against a scripted endpoint: written, judged, filtered, cached.</summary>
[Collection("console")]
public class ContrastiveTextsTests
{
    static readonly string[] Sad = ["Tom lost his dog and cried all night.", "Lily was sad and alone.", "The bird was hurt and felt lonely.", "Ben sat in the rain, sad."];
    static readonly string[] Plain = ["Tom put the cup on the table.", "Lily was very happy at the park.", "The bus stopped at the corner.", "Mia felt a little sad at first, then laughed."];

    [Fact]
    public async Task ConceptTextsAreWrittenJudgedAndFiltered()
    {
        using var server = new ScriptedServer
        {
            CustomAnswer = (system, user) =>
            {
                if (user.Contains("do NOT express", StringComparison.Ordinal)) return JsonSerializer.Serialize(Plain);
                if (user.Contains("clearly express", StringComparison.Ordinal)) return JsonSerializer.Serialize(Sad);
                // The judge: sadness words → high; "sad" softened by a later laugh → in between.
                string text = user[(user.IndexOf("<text>", StringComparison.Ordinal) + 6)..user.IndexOf("</text>", StringComparison.Ordinal)];
                return text.Contains("laughed") ? "50" : text.Contains("sad") || text.Contains("cried") || text.Contains("lonely") ? "90" : "5";
            },
        };
        using var cacheFolder = new TestFolder();
        using var cache = new RequestCache(cacheFolder.File("cache.db"));
        using var client = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "writer" }, cache);
        var set = await ContrastiveTexts.GenerateAsync(client, client, "sadness", 4);
        Assert.Equal(Sad, set.Positive);
        Assert.Equal(["Tom put the cup on the table.", "Lily was very happy at the park.", "The bus stopped at the corner."], set.Negative);
        var rejected = Assert.Single(set.Rejected);
        Assert.Equal((Plain[3], false, 50), rejected);
        long asked = server.Answered;
        Assert.Equal(2 + 8, asked);
        await ContrastiveTexts.GenerateAsync(client, client, "sadness", 4);
        Assert.Equal(asked, server.Answered); // every request cached
    }

    [Fact]
    public async Task AnAnswerThatIsNotAListIsAClearError()
    {
        using var server = new ScriptedServer { CustomAnswer = (_, _) => "Sure! Here are some texts." };
        using var client = new ChatClient(new EndpointOptions { Endpoint = server.BaseUrl, Model = "writer" });
        var error = await Assert.ThrowsAsync<EndpointError>(() => ContrastiveTexts.GenerateAsync(client, client, "sadness", 4));
        Assert.Contains("JSON list of strings", error.Message);
    }

    [RequiresSharedFact("models/stories260K")]
    public void MonitorTrainWritesItsOwnTextsFromADescription()
    {
        string[] sad = [.. Enumerable.Range(0, 8).Select(i => $"Tom lost toy number {i} and cried. He was very sad.")];
        string[] plain = [.. Enumerable.Range(0, 8).Select(i => $"Tom put block number {i} on the table and went to play.")];
        using var server = new ScriptedServer
        {
            CustomAnswer = (_, user) => user.Contains("do NOT express", StringComparison.Ordinal) ? JsonSerializer.Serialize(plain)
                : user.Contains("clearly express", StringComparison.Ordinal) ? JsonSerializer.Serialize(sad)
                : user.Contains("cried", StringComparison.Ordinal) ? "95" : "3",
        };
        using var folder = new TestFolder();
        string output = folder.File("sad.safetensors");
        var run = global::Loupe.Cli.Tests.CliHarness.RunLoupe(["monitor", "train", "--model", SharedData.Require("models/stories260K"), "--concept", "sadness",
            "--describe", "sadness: a character is sad or cries", "--endpoint", server.BaseUrl, "--texts", "8", "--recall", "0.75", "--out", output]);
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("kept 8 concept and 8 other texts", run.Out);
        Assert.Equal(sad, File.ReadAllLines(folder.File("sad.positive.txt")));
        Assert.True(File.Exists(output));
        Assert.Equal("sadness", global::Loupe.Steering.Monitors.ConceptMonitor.Load(output).Name);
    }
}
