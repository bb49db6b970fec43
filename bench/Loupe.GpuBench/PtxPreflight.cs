using System.Diagnostics;
using Loupe.Tensors.Gpu;

namespace Loupe.GpuBench;

/// <summary>
/// <c>--ptx-check</c>: every device kernel through ILGPU's PTX back end (sm_90), without a GPU. The emulated device reads
/// the kernels' IL but never lowers it to PTX, so after the single file is trimmed this is what shows, before device time
/// is spent, that the CUDA path still finds every kernel by reflection and can compile it. bench/gpu/publish.sh runs it.
/// </summary>
static class PtxPreflight
{
    /// <summary>Compiles every kernel, prints one line per failure and a summary; 0 when all compiled, 1 otherwise.</summary>
    public static int Run(TextWriter output)
    {
        var sw = Stopwatch.StartNew();
        var kernels = PtxCompiler.KernelNames;
        var failed = new List<string>();
        foreach (var name in kernels)
        {
            try
            {
                if (!PtxCompiler.Compile(name).Contains(".entry", StringComparison.Ordinal)) failed.Add($"{name}: the PTX has no .entry");
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The innermost exception names what trimming removed (a type initializer's failure says only where).
                var cause = e.GetBaseException();
                failed.Add(cause == e ? $"{name}: {e.GetType().Name}: {e.Message}" : $"{name}: {e.GetType().Name}: {e.Message} ← {cause.GetType().Name}: {cause.Message}");
            }
        }
        foreach (var f in failed) output.WriteLine($"ptx-check FAILED {f}");
        // No kernel found would pass every check vacuously: trimming that dropped the kernels must fail here.
        if (kernels.Count == 0) output.WriteLine("ptx-check FAILED: no kernel found by reflection");
        output.WriteLine($"ptx-check: {kernels.Count - failed.Count} of {kernels.Count} kernels compiled to PTX for sm_90 in {sw.Elapsed.TotalSeconds:F1} s");
        return failed.Count == 0 && kernels.Count > 0 ? 0 : 1;
    }
}
