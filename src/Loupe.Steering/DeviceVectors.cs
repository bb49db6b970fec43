using System.Runtime.CompilerServices;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Steering;

/// <summary>
/// A constant vector (a steering or monitor direction) kept on every device it is used on: uploaded once per backend, the
/// first time a hook on that backend needs it (counted as a weight copy), then reused by every step of every generation.
/// </summary>
internal sealed class DeviceVector(float[] values)
{
    readonly ConditionalWeakTable<IComputeBackend, Tensor> _copies = new();

    /// <summary>The vector on <paramref name="backend"/>'s device <c>[length]</c>.</summary>
    public Tensor On(IComputeBackend backend) => _copies.GetValue(backend, b => b.LoadWeight(values, [values.Length]));
}

/// <summary>What activation edits and monitors share when the activation lives on a device.</summary>
internal static class DeviceActivations
{
    /// <summary>The backend running the pass that fired the hook (the CPU's for a hand-built context over a host tensor).</summary>
    /// <exception cref="InvalidOperationException">A device activation arrives without the backend that owns it.</exception>
    public static IComputeBackend BackendOf(Tensor activation, HookContext context) =>
        context.Backend ?? (activation.IsHost ? CpuBackend.Instance
            : throw new InvalidOperationException($"hook '{context.Name}' carries a tensor on {activation.Device} but its context names no backend"));

    /// <summary>
    /// The rows of an activation <c>[batch, pos, …, d]</c> at positions <c>first..</c> as views <c>[rows, d]</c> on its storage:
    /// one view when every position is edited, else one per batch row.
    /// </summary>
    public static IEnumerable<(Tensor Rows, int Count)> RowsFrom(Tensor activation, int first, int d)
    {
        int batch = activation.Dim(0), length = activation.Dim(1);
        int rowsPerPos = activation.Length / (batch * length * d); // heads, for [batch, pos, head_index, d_head]
        if (first == 0)
        {
            yield return (activation.Reshape(batch * length * rowsPerPos, d), batch * length * rowsPerPos);
            yield break;
        }
        int count = (length - first) * rowsPerPos;
        for (int b = 0; b < batch; b++)
        {
            long offset = (long)(b * length + first) * rowsPerPos * d;
            yield return (new Tensor(activation.Storage.Slice(offset, (long)count * d), count, d), count);
        }
    }

    /// <summary>
    /// <c>x · v̂</c> of the <paramref name="rows"/> rows of <paramref name="x"/> <c>[rows, d]</c>, computed on x's device; only
    /// the <paramref name="rows"/> projections are copied to the host.
    /// </summary>
    public static float[] Projections(IComputeBackend backend, Tensor x, int rows, Tensor unit)
    {
        int d = unit.Length;
        var y = backend.Empty(rows);
        backend.Linear(x, rows, d, unit.Reshape(1, d), weightIsOutIn: true, 1, null, y);
        var host = new float[rows];
        y.CopyTo(host);
        return host;
    }
}
