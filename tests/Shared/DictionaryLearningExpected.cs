using System.Text.Json;

namespace Loupe.Testing;

/// <summary>
/// What tests/data/pytorch/make_files.py computed for one dictionary_learning folder with that library's encode and decode
/// (transcribed into Python): the inputs, the latents and the reconstructions, each <c>[rows, width]</c> flattened row-major.
/// </summary>
public sealed record DictionaryLearningExpected(float[] X, float[] Latents, float[] Recon)
{
    /// <summary>The entry <c>dictionary_learning/{name}</c> of tests/data/pytorch/expected.json.</summary>
    public static DictionaryLearningExpected Of(string name)
    {
        using var expected = JsonDocument.Parse(File.ReadAllBytes(SharedData.TestData("pytorch/expected.json")));
        var entry = expected.RootElement.GetProperty("dictionary_learning/" + name);
        float[] Flat(string field) => [.. entry.GetProperty(field).EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => (float)v.GetDouble())];
        return new DictionaryLearningExpected(Flat("x"), Flat("latents"), Flat("recon"));
    }
}
