namespace Loupe.Dictionaries.Sae;

/// <summary>
/// Runs independent per-row work in parallel when the batch is big enough to pay for it. Each row is
/// computed by one thread in a fixed order, so results do not depend on scheduling (training stays
/// bit-exact across runs and resumes).
/// </summary>
static class RowParallel
{
    const long MinParallelElements = 1 << 16;

    public static void For(int rows, int width, Action<int> body)
    {
        if (rows <= 1 || (long)rows * width < MinParallelElements || Environment.ProcessorCount == 1)
        {
            for (int r = 0; r < rows; r++) body(r);
            return;
        }
        Parallel.For(0, rows, body);
    }

    /// <summary>Splits [0, n) into contiguous chunks processed in parallel (element-wise work on flat arrays).</summary>
    public static void Chunks(long n, Action<long, long> body, long minChunk = 1 << 15)
    {
        int parts = (int)Math.Min(Environment.ProcessorCount * 4L, Math.Max(1, n / minChunk));
        if (parts <= 1) { body(0, n); return; }
        long size = (n + parts - 1) / parts;
        Parallel.For(0, parts, p =>
        {
            long start = p * size, end = Math.Min(n, start + size);
            if (start < end) body(start, end);
        });
    }
}
