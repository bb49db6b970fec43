using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Loupe.Tensors.Gpu;

/// <summary>
/// Compiles the device kernels through ILGPU's PTX back end without a GPU, for the H100/H200's sm_90 and PTX ISA 8.8.
/// The emulated device runs the kernels from their IL on the CPU and never lowers them to PTX, so a construct with no
/// PTX lowering would first fail on a GPU; this finds it anywhere. The kernel tests compile every kernel with it, and
/// the single-file GPU bench (<c>--ptx-check</c>) does too, to show that trimming left ILGPU able to read every kernel.
/// </summary>
public static class PtxCompiler
{
    /// <summary>
    /// Every kernel <see cref="GpuBackend"/> can load: the <see cref="Kernels"/> methods returning void that take an
    /// <see cref="ArrayView{T}"/> (the helpers they call return values or take none), in ordinal order.
    /// </summary>
    public static IReadOnlyList<string> KernelNames { get; } = typeof(Kernels).GetMethods(BindingFlags.Public | BindingFlags.Static)
        .Where(m => m.ReturnType == typeof(void) && m.GetParameters().Any(p => p.ParameterType.IsGenericType && p.ParameterType.GetGenericTypeDefinition() == typeof(ArrayView<>)))
        .Select(m => m.Name).Order(StringComparer.Ordinal).ToArray();

    // One context and back end for the process: creating them costs more than compiling a kernel.
    static readonly Lazy<PTXBackend> s_backend = new(() =>
    {
        var context = Context.Create(b => b.CPU().EnableAlgorithms());
        return new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90, CudaInstructionSet.ISA_88, null);
    });

    /// <summary>The PTX assembly of the kernel named <paramref name="kernel"/> (one of <see cref="KernelNames"/>).</summary>
    /// <exception cref="ArgumentException"><paramref name="kernel"/> is not one of <see cref="KernelNames"/>.</exception>
    public static string Compile(string kernel)
    {
        if (!KernelNames.Contains(kernel, StringComparer.Ordinal))
            throw new ArgumentException($"no kernel named '{kernel}'; expected one of {string.Join(", ", KernelNames)}", nameof(kernel));
        var method = typeof(Kernels).GetMethod(kernel, BindingFlags.Public | BindingFlags.Static)!;
        // Kernels taking an Index1D first are launched auto-grouped; the others are launched with an explicit group size.
        bool implicitGroups = method.GetParameters()[0].ParameterType == typeof(Index1D);
        var entry = implicitGroups ? EntryPointDescription.FromImplicitlyGroupedKernel(method) : EntryPointDescription.FromExplicitlyGroupedKernel(method);
        var backend = s_backend.Value;
        KernelSpecialization specialization = default;
        // The back end is not safe to use from two threads at once.
        lock (backend) return ((PTXCompiledKernel)backend.Compile(entry, specialization)).PTXAssembly;
    }
}
