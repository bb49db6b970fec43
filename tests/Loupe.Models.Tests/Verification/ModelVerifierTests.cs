using System.Text.Json.Nodes;
using Loupe.Models.Verification;
using Loupe.Testing;

namespace Loupe.Models.Tests.Verification;

/// <summary>
/// <c>loupe verify</c>'s library: every fixture family passes every check against Hugging Face's reference file,
/// and the checks fail where they should — a config misread (Llama 3 rope scaling dropped) is caught by the reference
/// file while the float64 path, reading the same config, agrees with the fast path.
/// </summary>
public class ModelVerifierTests
{
    public static TheoryData<string> Families => new() { "gpt2", "gpt_neox", "llama", "llama3", "qwen2", "qwen3", "gemma2", "gemma3", "gpt_neo" };

    [Theory]
    [MemberData(nameof(Families))]
    public void EveryFamilyPassesAgainstItsHuggingFaceReference(string arch)
    {
        string folder = SharedData.TestData(Path.Combine("reference", arch));
        using var model = ModelLoader.LoadFolder(folder);
        var report = ModelVerifier.Run(model, new VerifyOptions { ReferencePath = Path.Combine(folder, "reference.safetensors") });
        Assert.True(report.Passed, string.Join("\n", report.Checks.Where(c => !c.Passed).Select(c => $"{c.Group} {c.Name}: {c.Error:G4} > {c.Tolerance}")));
        foreach (var group in new[] { "invariants", "float64", "gradients", "reference" })
            Assert.Contains(report.Checks, c => c.Group == group);
        Assert.Contains(report.Checks, c => c.Name == "logits" && c.Group == "reference");
        Assert.Contains(report.Checks, c => c.Name.StartsWith("grad.resid_pre.", StringComparison.Ordinal));
        Assert.Equal(2, report.Prompts.Length); // the reference's input_ids
    }

    [RequiresSharedFact("models/stories260K")]
    public void RealModelPassesOnRandomPrompts()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/stories260K"));
        var report = ModelVerifier.Run(model, new VerifyOptions { Prompts = 2, Length = 16, Seed = 3 });
        Assert.True(report.Passed, string.Join("\n", report.Checks.Where(c => !c.Passed).Select(c => $"{c.Name}: {c.Error:G4}")));
        Assert.Contains(report.Checks, c => c.Name == "greedy generation (KV cache) = full-sequence argmax, 12 steps");
    }

    [Fact]
    public void ADroppedRopeScalingFailsAgainstTheReferenceButNotAgainstFloat64()
    {
        string source = SharedData.TestData(Path.Combine("reference", "llama3"));
        string folder = Directory.CreateTempSubdirectory("loupe-verify-llama3").FullName;
        try
        {
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
            config.Remove("rope_scaling");
            File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
            File.Copy(Path.Combine(source, "model.safetensors"), Path.Combine(folder, "model.safetensors"));
            using var model = ModelLoader.LoadFolder(folder);
            var report = ModelVerifier.Run(model, new VerifyOptions { ReferencePath = Path.Combine(source, "reference.safetensors") });
            Assert.False(report.Passed);
            var logits = report.Checks.Single(c => c.Group == "reference" && c.Name == "logits");
            Assert.False(logits.Passed, $"logits error {logits.Error}");
            Assert.All(report.Checks.Where(c => c.Group is "float64" or "invariants"), c => Assert.True(c.Passed, c.Name));
            var json = report.ToJson();
            Assert.False(json["passed"]!.GetValue<bool>());
        }
        finally { Directory.Delete(folder, true); }
    }

    [Fact]
    public void AnotherModelsReferenceFailsAndOneOfAnotherShapeIsRefusedWithTheTensorNamed()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", "gpt2")));
        // gemma3's fixture has the same inputs and shapes: every comparison runs, and fails.
        var other = ModelVerifier.Run(model, new VerifyOptions { ReferencePath = Path.Combine(SharedData.TestData(Path.Combine("reference", "gemma3")), "reference.safetensors") });
        Assert.False(other.Passed);
        Assert.All(other.Checks.Where(c => c.Group is "invariants" or "float64"), c => Assert.True(c.Passed, c.Name));
        string file = Path.Combine(Directory.CreateTempSubdirectory("loupe-verify-ref").FullName, "ref.safetensors");
        Loupe.Models.Loading.SafeTensorsWriter.Write(file, [Loupe.Models.Loading.SafeTensorEntry.I64("input_ids", [1, 4], new long[] { 1, 2, 3, 4 }),
            Loupe.Models.Loading.SafeTensorEntry.F32("logits", [1, 4, 7], new float[28])]);
        var error = Assert.Throws<InputError>(() => ModelVerifier.Run(model, new VerifyOptions { ReferencePath = file }));
        Assert.Contains("'logits'", error.Message);
        Assert.Contains("is it this model's reference", error.Message);
    }

    [Fact]
    public void OneWeightPerturbedBy1e3IsCaughtAndNamed()
    {
        string source = SharedData.TestData(Path.Combine("reference", "gpt2"));
        string folder = Directory.CreateTempSubdirectory("loupe-verify-perturbed").FullName;
        try
        {
            File.Copy(Path.Combine(source, "config.json"), Path.Combine(folder, "config.json"));
            using (var weights = Loupe.Models.Loading.SafeTensorsFile.Open(Path.Combine(source, "model.safetensors")))
            {
                var entries = weights.Names.Select(n =>
                {
                    var data = weights.GetFloat32(n).ToArray();
                    // Token 82 (the first prompt's first token), dimension 0 of its embedding: +1e-3.
                    if (n == "transformer.wte.weight") data[82 * 64] += 1e-3f;
                    return Loupe.Models.Loading.SafeTensorEntry.F32(n, [.. weights.GetInfo(n).Shape.Select(d => (int)d)], data);
                }).ToList();
                Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), entries);
            }
            using var model = ModelLoader.LoadFolder(folder);
            var report = ModelVerifier.Run(model, new VerifyOptions { ReferencePath = Path.Combine(source, "reference.safetensors") });
            Assert.False(report.Passed);
            var failed = report.Checks.Where(c => !c.Passed).ToList();
            Assert.Contains(failed, c => c.Group == "reference" && c.Name == "resid_pre.0");
            Assert.All(failed, c => Assert.Equal("reference", c.Group));
        }
        finally { Directory.Delete(folder, true); }
    }
}
