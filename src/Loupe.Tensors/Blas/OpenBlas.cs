using System.Runtime.InteropServices;

namespace Loupe.Tensors.Blas;

/// <summary>
/// OpenBLAS loaded at run time (Debian's <c>libopenblas0</c>). Absent or disabled
/// (<c>LOUPE_BLAS=managed</c>), <see cref="IsAvailable"/> is false and callers use the managed GEMM.
/// </summary>
public static unsafe class OpenBlas
{
    const int RowMajor = 101, NoTrans = 111, Trans = 112;

    static readonly delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> s_sgemm;
    static readonly delegate* unmanaged<int, void> s_setThreads;
    static readonly delegate* unmanaged<int> s_getThreads;
    static readonly delegate* unmanaged<byte*> s_getConfig;
    static readonly delegate* unmanaged<byte*> s_getCorename;

    /// <summary>The library file that was loaded, or null.</summary>
    public static string? LibraryName { get; }

    /// <summary>Why BLAS is not in use, when it is not.</summary>
    public static string? UnavailableReason { get; }

    static OpenBlas()
    {
        if (string.Equals(Environment.GetEnvironmentVariable("LOUPE_BLAS"), "managed", StringComparison.OrdinalIgnoreCase))
        {
            UnavailableReason = "LOUPE_BLAS=managed";
            return;
        }
        KernelsChosenForThisCpu = ChooseKernels();
        string[] candidates =
        [
            "libopenblas.so.0", "libopenblas.so", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
            "libopenblas.dylib", "libopenblas.dll",
        ];
        foreach (var name in candidates)
        {
            if (!NativeLibrary.TryLoad(name, out var handle)) continue;
            if (!NativeLibrary.TryGetExport(handle, "cblas_sgemm", out var sgemm)) continue;
            s_sgemm = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)sgemm;
            if (NativeLibrary.TryGetExport(handle, "openblas_set_num_threads", out var set))
                s_setThreads = (delegate* unmanaged<int, void>)set;
            if (NativeLibrary.TryGetExport(handle, "openblas_get_num_threads", out var get))
                s_getThreads = (delegate* unmanaged<int>)get;
            if (NativeLibrary.TryGetExport(handle, "openblas_get_config", out var cfg))
                s_getConfig = (delegate* unmanaged<byte*>)cfg;
            if (NativeLibrary.TryGetExport(handle, "openblas_get_corename", out var core))
                s_getCorename = (delegate* unmanaged<byte*>)core;
            LibraryName = name;
            if (int.TryParse(Environment.GetEnvironmentVariable("LOUPE_THREADS"), out int t) && t > 0) SetThreads(t);
            return;
        }
        UnavailableReason = "libopenblas.so.0 not found (apt-get install libopenblas0)";
    }

    public static bool IsAvailable => s_sgemm != null;

    /// <summary>Whether the managed GEMM was asked for (<c>LOUPE_BLAS=managed</c>) rather than OpenBLAS missing.</summary>
    public static bool ManagedByChoice => UnavailableReason == "LOUPE_BLAS=managed";

    /// <summary>The kernel family OpenBLAS runs (its core name, e.g. SkylakeX, Haswell, Prescott), or null.</summary>
    public static string? CoreName => s_getCorename == null ? null : Marshal.PtrToStringUTF8((nint)s_getCorename());

    /// <summary>
    /// The kernel family Loupe asked OpenBLAS for (<c>OPENBLAS_CORETYPE</c>, set before loading it), or null when it left
    /// the choice to OpenBLAS (the variable was already set, the CPU has no AVX2, or this is not Linux).
    /// </summary>
    public static string? KernelsChosenForThisCpu { get; }

    /// <summary>
    /// OpenBLAS picks its kernels by CPU model, and a model it does not know gets its Prescott kernels (SSE3, no FMA): Debian
    /// 12's 0.3.21 did that on a Sapphire-Rapids-class VM that reports "Intel(R) Xeon(R) Processor". Those are slower, and
    /// without FMA their rounding differs from other machines' enough to reorder near-tied scores (circuit benchmarks on
    /// compiled RASP models scored 0.6–0.75 AUC there instead of 1.0). So, unless <c>OPENBLAS_CORETYPE</c> is already set,
    /// Loupe names the family the CPU's instruction set supports: SkylakeX with AVX-512 (F, BW), Haswell with AVX2 and FMA —
    /// for single-precision GEMM, the kernels OpenBLAS's newer targets (Cooperlake, Sapphire Rapids, Zen) use as well.
    /// </summary>
    static string? ChooseKernels()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE") is { Length: > 0 }) return null;
        string? core = System.Runtime.Intrinsics.X86.Avx512F.IsSupported && System.Runtime.Intrinsics.X86.Avx512BW.IsSupported ? "SkylakeX"
            : System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported ? "Haswell"
            : null;
        // The native environment, which OpenBLAS reads when it loads (Environment.SetEnvironmentVariable does not reach it).
        return core is not null && SetNativeEnvironment("OPENBLAS_CORETYPE", core) ? core : null;
    }

    /// <summary><c>setenv(name, value, 0)</c> from the C library (glibc's libc.so.6, or musl's libc.so); false when neither is found.</summary>
    static bool SetNativeEnvironment(string name, string value)
    {
        foreach (var lib in new[] { "libc.so.6", "libc.so" })
        {
            if (!NativeLibrary.TryLoad(lib, out var handle) || !NativeLibrary.TryGetExport(handle, "setenv", out var setenv)) continue;
            byte[] n = System.Text.Encoding.UTF8.GetBytes(name + "\0"), v = System.Text.Encoding.UTF8.GetBytes(value + "\0");
            fixed (byte* pn = n) fixed (byte* pv = v)
                return ((delegate* unmanaged<byte*, byte*, int, int>)setenv)(pn, pv, 0) == 0;
        }
        return false;
    }

    /// <summary>OpenBLAS's own description of its build (core type, threading), or null.</summary>
    public static string? Config => s_getConfig == null ? null : Marshal.PtrToStringUTF8((nint)s_getConfig());

    public static int Threads => s_getThreads == null ? 1 : s_getThreads();

    public static void SetThreads(int n)
    {
        if (s_setThreads != null) s_setThreads(n);
    }

    /// <summary>Row-major <c>C = alpha·op(A)·op(B) + beta·C</c> through <c>cblas_sgemm</c>.</summary>
    internal static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        s_sgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }
}
