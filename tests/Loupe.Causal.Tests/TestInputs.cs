using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Causal.Tests;

/// <summary>Models and inputs shared by the causal tests.</summary>
static class TestInputs
{
    /// <summary>A committed HF fixture model (tests/data/reference/{arch}).</summary>
    public static HookedTransformer Fixture(string arch) => ModelLoader.LoadFolder(SharedData.TestData(Path.Combine("reference", arch)));

    /// <summary>The fixtures' input ids (tests/data/reference/README.md), two rows of 12.</summary>
    public static readonly int[][] ReferenceIds =
    [
        [82, 87, 74, 39, 184, 175, 214, 409, 305, 33, 71, 171],
        [84, 200, 158, 186, 380, 257, 94, 24, 110, 113, 240, 83],
    ];

    /// <summary>The reference rows as the clean batch, and a corrupt copy with positions 3 and 7 replaced.</summary>
    public static (TokenBatch Clean, TokenBatch Corrupt) FixturePair(int rows = 2)
    {
        var clean = ReferenceIds.Take(rows).ToArray();
        var corrupt = clean.Select(r => { var c = (int[])r.Clone(); c[3] = 300; c[7] = 12; return c; }).ToArray();
        return (TokenBatch.FromRows(clean), TokenBatch.FromRows(corrupt));
    }

    /// <summary>
    /// Induction inputs for models/induction-attn-only-2l: clean rows are 64 random tokens (vocab 128)
    /// whose positions 48–63 repeat 16–31; corrupt rows are the same except that the FIRST occurrence
    /// (16–31) is fresh random, so the second half has nothing earlier to copy from. Both runs are
    /// scored on the clean next tokens over the repeated span (positions 48–62 predict 49–63), which are
    /// the same tokens in both.
    /// </summary>
    public static (TokenBatch Clean, TokenBatch Corrupt) InductionPair(int sequences, int seed)
    {
        var random = new Random(seed);
        var clean = new List<int[]>();
        var corrupt = new List<int[]>();
        for (int s = 0; s < sequences; s++)
        {
            var c = Enumerable.Range(0, 64).Select(_ => random.Next(128)).ToArray();
            Array.Copy(c, 16, c, 48, 16);
            var x = (int[])c.Clone();
            for (int i = 16; i < 32; i++) x[i] = random.Next(128);
            clean.Add(c);
            corrupt.Add(x);
        }
        return (TokenBatch.FromRows(clean), TokenBatch.FromRows(corrupt));
    }
}
