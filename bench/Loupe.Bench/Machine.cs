using System.Runtime.Intrinsics;
using System.Runtime;
using System.Runtime.InteropServices;
using Loupe.Tensors.Blas;
using Loupe.Tensors.Kernels;

namespace Loupe.Bench;

/// <summary>Resident memory of this process from /proc/self/status, in bytes (−1 where unavailable).</summary>
/// <param name="Rss">VmRSS: all resident pages.</param>
/// <param name="Anon">RssAnon: private memory (GC heap, native allocations) — weights copied into the heap would land here.</param>
/// <param name="File">RssFile: resident pages of mapped files — memory-mapped weights land here (shared with the page cache).</param>
public readonly record struct MemorySnapshot(long Rss, long Anon, long File)
{
    public static MemorySnapshot Read()
    {
        long rss = -1, anon = -1, file = -1;
        try
        {
            foreach (var line in System.IO.File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kb(line);
                else if (line.StartsWith("RssAnon:", StringComparison.Ordinal)) anon = Kb(line);
                else if (line.StartsWith("RssFile:", StringComparison.Ordinal)) file = Kb(line);
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return new MemorySnapshot(rss, anon, file);
    }

    static long Kb(string line)
    {
        // A tab follows the colon; values of eight digits or more (≥ 9.5 GiB) have no space after it.
        var parts = line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
        return parts.Length >= 2 && long.TryParse(parts[1], out long kb) ? kb * 1024 : -1;
    }
}

/// <summary>The machine and runtime the numbers were taken on.</summary>
public sealed record EnvironmentInfo(
    string Cpu, int LogicalCores, string Simd, string Blas, string? BlasConfig, int BlasThreads,
    string Runtime, string Os, bool ServerGc, string GcLatency, string? LoupeThreads)
{
    public static EnvironmentInfo Capture() => new(
        CpuModel(),
        Environment.ProcessorCount,
        SimdTier(),
        Gemm.UsesBlas ? $"OpenBLAS ({OpenBlas.LibraryName})" : $"managed GEMM ({(Gemm.ForceManaged ? "--managed" : OpenBlas.UnavailableReason)})",
        OpenBlas.Config,
        Gemm.UsesBlas ? OpenBlas.Threads : 0,
        RuntimeInformation.FrameworkDescription,
        RuntimeInformation.OSDescription,
        GCSettings.IsServerGC,
        GCSettings.LatencyMode.ToString(),
        Environment.GetEnvironmentVariable("LOUPE_THREADS"));

    /// <summary>The 1-minute load average (/proc/loadavg), or "?": above the core count, other processes competed for the CPU.</summary>
    public static string LoadAverage()
    {
        try { return File.ReadAllText("/proc/loadavg").Split(' ')[0]; }
        catch (IOException) { return "?"; }
        catch (UnauthorizedAccessException) { return "?"; }
    }

    static string CpuModel()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            if (line is not null) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }

    /// <summary>The widest hardware-accelerated vector, which TensorPrimitives uses for every non-GEMM kernel.</summary>
    static string SimdTier()
    {
        string widest = Vector512.IsHardwareAccelerated ? "Vector512" : Vector256.IsHardwareAccelerated ? "Vector256"
            : Vector128.IsHardwareAccelerated ? "Vector128" : "scalar";
        var isa = new List<string>();
        if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported) isa.Add("AVX-512F");
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported) isa.Add("AVX2");
        if (System.Runtime.Intrinsics.X86.Fma.IsSupported) isa.Add("FMA");
        if (System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported) isa.Add("AdvSIMD");
        return $"{widest} (512: {Yes(Vector512.IsHardwareAccelerated)}, 256: {Yes(Vector256.IsHardwareAccelerated)}, 128: {Yes(Vector128.IsHardwareAccelerated)}; {string.Join(" ", isa)})";
    }

    static string Yes(bool b) => b ? "yes" : "no";
}
