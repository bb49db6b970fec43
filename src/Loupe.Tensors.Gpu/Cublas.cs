using System.Runtime.InteropServices;

namespace Loupe.Tensors.Gpu;

/// <summary>
/// The few cuBLAS entry points the backend uses, bound at run time from the library
/// <see cref="CudaLibraries"/> found. Row-major products are computed as their column-major transposes:
/// <c>Cᵀ = op(B)ᵀ·op(A)ᵀ</c>, i.e. cuBLAS is called with the operands swapped and m, n exchanged.
/// </summary>
sealed unsafe class Cublas : IDisposable
{
    const int OpN = 0, OpT = 1;
    public const int R32F = 0, R16F = 2, R16BF = 14;
    const int Compute32F = 68;
    const int GemmDefault = -1;

    readonly nint _handle;
    readonly delegate* unmanaged<nint, int> _destroy;
    readonly delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, nint, int, float*, nint, int, int> _sgemm;
    readonly delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, long, nint, int, long, float*, nint, int, long, int, int> _sgemmBatched;
    readonly delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, int, nint, int, int, float*, nint, int, int, int, int, int> _gemmEx;
    readonly delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, int, long, nint, int, int, long, float*, nint, int, int, long, int, int, int, int> _gemmBatchedEx;

    public int Version { get; }
    public string LibraryPath { get; }

    public Cublas(Device device, nint stream)
    {
        var (lib, path) = CudaLibraries.LoadBlas(device);
        LibraryPath = path;
        nint Get(string name) => NativeLibrary.TryGetExport(lib, name, out var f) ? f
            : throw new InputError($"device {device}: {path} has no {name} (cuBLAS 12 is needed)");
        var create = (delegate* unmanaged<nint*, int>)Get("cublasCreate_v2");
        _destroy = (delegate* unmanaged<nint, int>)Get("cublasDestroy_v2");
        var setStream = (delegate* unmanaged<nint, nint, int>)Get("cublasSetStream_v2");
        var getVersion = (delegate* unmanaged<nint, int*, int>)Get("cublasGetVersion_v2");
        _sgemm = (delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, nint, int, float*, nint, int, int>)Get("cublasSgemm_v2");
        _sgemmBatched = (delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, long, nint, int, long, float*, nint, int, long, int, int>)Get("cublasSgemmStridedBatched");
        _gemmEx = (delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, int, nint, int, int, float*, nint, int, int, int, int, int>)Get("cublasGemmEx");
        _gemmBatchedEx = (delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, int, long, nint, int, int, long, float*, nint, int, int, long, int, int, int, int>)Get("cublasGemmStridedBatchedEx");
        nint handle;
        int status = create(&handle);
        if (status != 0) throw new InputError($"device {device}: cublasCreate failed with status {status} ({path}); is the GPU usable by this process?");
        _handle = handle;
        Check(setStream(_handle, stream), "cublasSetStream");
        int version;
        Version = getVersion(_handle, &version) == 0 ? version : 0;
    }

    static void Check(int status, string what)
    {
        if (status != 0) throw new InvalidOperationException($"{what} failed with cuBLAS status {status}");
    }

    /// <summary>Row-major <c>C = alpha·op(A)·op(B) + beta·C</c>, batched with element strides; B of <paramref name="bType"/>, A of <paramref name="aType"/>.</summary>
    public void Gemm(bool transA, bool transB, int m, int n, int k, float alpha, nint a, int aType, int lda, long strideA,
        nint b, int bType, int ldb, long strideB, float beta, nint c, int ldc, long strideC, int batch)
    {
        int opA = transA ? OpT : OpN, opB = transB ? OpT : OpN;
        if (aType == R32F && bType == R32F)
        {
            if (batch == 1) Check(_sgemm(_handle, opB, opA, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc), "cublasSgemm");
            else Check(_sgemmBatched(_handle, opB, opA, n, m, k, &alpha, b, ldb, strideB, a, lda, strideA, &beta, c, ldc, strideC, batch), "cublasSgemmStridedBatched");
        }
        else if (batch == 1)
            Check(_gemmEx(_handle, opB, opA, n, m, k, &alpha, b, bType, ldb, a, aType, lda, &beta, c, R32F, ldc, Compute32F, GemmDefault), "cublasGemmEx");
        else
            Check(_gemmBatchedEx(_handle, opB, opA, n, m, k, &alpha, b, bType, ldb, strideB, a, aType, lda, strideA, &beta, c, R32F, ldc, strideC, batch, Compute32F, GemmDefault), "cublasGemmStridedBatchedEx");
    }

    public void Dispose()
    {
        if (_handle != 0) _destroy(_handle);
    }
}
