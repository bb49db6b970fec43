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
            LibraryName = name;
            if (int.TryParse(Environment.GetEnvironmentVariable("LOUPE_THREADS"), out int t) && t > 0) SetThreads(t);
            return;
        }
        UnavailableReason = "libopenblas.so.0 not found (apt-get install libopenblas0)";
    }

    public static bool IsAvailable => s_sgemm != null;

    /// <summary>Whether the managed GEMM was asked for (<c>LOUPE_BLAS=managed</c>) rather than OpenBLAS missing.</summary>
    public static bool ManagedByChoice => UnavailableReason == "LOUPE_BLAS=managed";

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
