namespace Loupe.Tensors.Gpu.Tests;

/// <summary>
/// Without a GPU the kernels still go through ILGPU's PTX back end (asked for the H100/H200's sm_90 and PTX ISA 8.8),
/// so a construct that runs on the CPU accelerator but has no PTX lowering fails here, not on the first GPU run.
/// </summary>
public sealed class PtxCompilationTests
{
    public static TheoryData<string> KernelNames => new(PtxCompiler.KernelNames);

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void CompilesToPtx(string name)
    {
        string ptx = PtxCompiler.Compile(name);
        // ILGPU 1.5.3 emits `.target sm_80` code even for sm_90 (the driver compiles it for the GPU at load).
        Assert.Contains(".target sm_", ptx);
        Assert.Contains(".entry", ptx);
    }

    [Fact]
    public void UnknownKernelNamesTheKernel()
    {
        var e = Assert.Throws<ArgumentException>(() => PtxCompiler.Compile("NoSuchKernel"));
        Assert.Contains("NoSuchKernel", e.Message);
        Assert.Contains(nameof(Kernels.Fill), e.Message);
    }
}
