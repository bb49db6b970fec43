using Loupe.Models.Loading;
using Loupe.Testing;
using Loupe.Tensors;

namespace Loupe.Models.Tests;

/// <summary>HF transformers reference outputs (tests/data/reference, copied from shared/fixtures/reference).</summary>
public sealed class ReferenceFixture : IDisposable
{
    readonly SafeTensorsFile _file;

    public ReferenceFixture(string arch)
    {
        Folder = SharedData.TestData(Path.Combine("reference", arch));
        _file = SafeTensorsFile.Open(Path.Combine(Folder, "reference.safetensors"));
        var ids = _file.GetInt64("input_ids");
        var info = _file.GetInfo("input_ids");
        Batch = (int)info.Shape[0];
        Length = (int)info.Shape[1];
        Tokens = new TokenBatch(ids.Select(i => (int)i).ToArray(), Batch, Length);
        MetricTokens = _file.GetInt64("metric_tokens").Select(i => (int)i).ToArray();
    }

    public string Folder { get; }
    public int Batch { get; }
    public int Length { get; }
    public TokenBatch Tokens { get; }
    public int[] MetricTokens { get; }

    public bool Has(string name) => _file.Contains(name);

    public float[] Get(string name) => _file.GetFloat32(name).ToArray();

    public void Dispose() => _file.Dispose();

    /// <summary>Asserts max |a − b| ≤ tol, reporting where the worst difference is.</summary>
    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, float tol, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, reference has {expected.Length}");
        float worst = 0;
        int at = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            float d = MathF.Abs(expected[i] - actual[i]);
            if (float.IsNaN(d) || d > worst) { worst = float.IsNaN(d) ? float.PositiveInfinity : d; at = i; }
        }
        Assert.True(worst <= tol, $"{what}: max abs difference {worst:G4} at flat index {at} (expected {(at >= 0 ? expected[at] : 0)}, got {(at >= 0 ? actual[at] : 0)}); tolerance {tol}");
    }
}
