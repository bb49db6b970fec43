using System.Text.Json.Nodes;
using Loupe.Models.Verification;
using Loupe.Testing;

namespace Loupe.Models.Tests;

/// <summary>
/// Hugging Face's dynamic NTK rope scaling on the llama fixture with its context cut to 8 positions and factor 2:
/// up to 8 positions it is the unscaled model exactly; over 12 positions it is the unscaled model with the base HF's
/// formula gives for 12, θ·(2·12/8 − 1)^(d/(d−2)); the context becomes 16; the float64 path and verify agree.
/// </summary>
public class DynamicRopeTests
{
    static string Folder(string name, Action<JsonObject> edit)
    {
        string source = SharedData.TestData(Path.Combine("reference", "llama"));
        string folder = Path.Combine(Directory.CreateTempSubdirectory("loupe-dynamic-rope").FullName, name);
        Directory.CreateDirectory(folder);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
        edit(config);
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        File.Copy(Path.Combine(source, "model.safetensors"), Path.Combine(folder, "model.safetensors"));
        return folder;
    }

    [Fact]
    public void DynamicScalingIsTheDefaultUpToTheContextAndHfsGrownBaseBeyondIt()
    {
        using var reference = new ReferenceFixture("llama");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(reference.Folder, "config.json")))!.AsObject();
        double theta = config["rope_theta"]?.GetValue<double>() ?? 10000;
        int d = config["hidden_size"]!.GetValue<int>() / config["num_attention_heads"]!.GetValue<int>();
        using var dynamic = ModelLoader.LoadFolder(Folder("dynamic", c => { c["max_position_embeddings"] = 8; c["rope_scaling"] = new JsonObject { ["type"] = "dynamic", ["factor"] = 2.0 }; }));
        using var plain = ModelLoader.LoadFolder(reference.Folder);
        Assert.Equal(16, dynamic.Config.NCtx);

        var shortIds = reference.Tokens.Ids.Take(6).ToArray();
        Assert.Equal(plain.Run(shortIds).Logits.ToCpu().Span.ToArray(), dynamic.Run(shortIds).Logits.ToCpu().Span.ToArray());

        int T = reference.Tokens.Length; // 12 > 8
        double grown = theta * Math.Pow(2.0 * T / 8 - 1, (double)d / (d - 2));
        using var rebased = ModelLoader.LoadFolder(Folder("rebased", c => c["rope_theta"] = grown));
        var expected = rebased.Run(reference.Tokens).Logits.ToCpu().Span.ToArray();
        var actual = dynamic.Run(reference.Tokens).Logits.ToCpu().Span.ToArray();
        double worst = expected.Zip(actual, (a, b) => Math.Abs(a - b)).Max(), scale = expected.Max(Math.Abs);
        Assert.True(worst <= 1e-5 * scale, $"dynamic vs rebased: {worst}");
        var unscaled = plain.Run(reference.Tokens).Logits.ToCpu().Span.ToArray();
        Assert.True(unscaled.Zip(actual, (a, b) => Math.Abs(a - b)).Max() > 1e-3 * scale, "the scaling must change a 12-token pass");

        var report = ModelVerifier.Run(dynamic, new VerifyOptions { Tokens = reference.Tokens });
        Assert.True(report.Passed, string.Join("\n", report.Checks.Where(c => !c.Passed).Select(c => $"{c.Name}: {c.Error}")));
        Assert.Throws<InputError>(() => dynamic.Run(new int[17]));
    }
}
