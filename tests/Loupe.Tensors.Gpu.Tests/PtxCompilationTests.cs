using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Loupe.Tensors.Gpu.Tests;

/// <summary>
/// Without a GPU the kernels still go through ILGPU's PTX back end (asked for the H100/H200's sm_90 and PTX ISA 8.8),
/// so a construct that runs on the CPU accelerator but has no PTX lowering fails here, not on the first GPU run.
/// </summary>
public sealed class PtxCompilationTests
{
    public static TheoryData<string> KernelNames => new(typeof(Kernels).GetMethods(BindingFlags.Public | BindingFlags.Static)
        .Where(m => m.ReturnType == typeof(void) && m.GetParameters().Any(p => p.ParameterType.IsGenericType && p.ParameterType.GetGenericTypeDefinition() == typeof(ArrayView<>)))
        .Select(m => m.Name).Order());

    static readonly Lazy<(Context Context, PTXBackend Backend)> s_ptx = new(() =>
    {
        var context = Context.Create(b => b.CPU().EnableAlgorithms());
        return (context, new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90, CudaInstructionSet.ISA_88, null));
    });

    [Theory]
    [MemberData(nameof(KernelNames))]
    public void CompilesToPtx(string name)
    {
        var method = typeof(Kernels).GetMethod(name, BindingFlags.Public | BindingFlags.Static)!;
        bool implicitGroups = method.GetParameters()[0].ParameterType == typeof(Index1D);
        var entry = implicitGroups ? EntryPointDescription.FromImplicitlyGroupedKernel(method) : EntryPointDescription.FromExplicitlyGroupedKernel(method);
        var (_, backend) = s_ptx.Value;
        KernelSpecialization specialization = default;
        PTXCompiledKernel compiled;
        lock (backend) compiled = (PTXCompiledKernel)backend.Compile(entry, specialization);
        // ILGPU 1.5.3 emits `.target sm_80` code even for sm_90 (the driver compiles it for the GPU at load).
        Assert.Contains(".target sm_", compiled.PTXAssembly);
        Assert.Contains(".entry", compiled.PTXAssembly);
    }
}
