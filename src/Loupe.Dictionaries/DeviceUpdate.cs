using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries;

/// <summary>A trained parameter on a device, as <c>[Rows, Cols]</c>, with its gradient and Adam moments.</summary>
internal sealed record DeviceParam(string Name, Tensor Value, Tensor Grad, Tensor M, Tensor V, int Rows, int Cols);

/// <summary>
/// The update the device trainers share (SAE and CLT), in the host trainers' order: project the radial part out of
/// unit-norm decoder rows' gradients, clip the global gradient norm, Adam, renormalise the decoder rows.
/// </summary>
internal sealed class DeviceUpdate(IComputeBackend backend, IReadOnlyList<DeviceParam> parameters, float beta1, float beta2, float gradClipNorm)
{
    readonly Tensor _rowSums = backend.Empty(parameters.Max(p => p.Rows));
    readonly Tensor _total = backend.Empty(1), _factor = backend.Empty(1);

    /// <summary>g_i ← g_i − (g_i·w_i) w_i for each row w_i of a unit-norm decoder (<paramref name="dots"/> [rows] and <paramref name="projection"/> [rows, cols] are scratch).</summary>
    public void ProjectOutRadial(Tensor grad, Tensor value, int rows, int cols, Tensor dots, Tensor projection)
    {
        var b = backend;
        b.RowDots(grad, value, rows, cols, dots);
        b.Scale(dots, -1f, dots);
        b.ScaleRows(value, rows, cols, dots, projection);
        b.Add(grad, projection, grad);
    }

    /// <summary>Global-norm clipping (g ← g·min(1, clip/‖g‖) when the clip is positive), then Adam at <paramref name="lr"/> and 1-based <paramref name="adamStep"/>.</summary>
    public void ClipAndStep(float lr, int adamStep)
    {
        var b = backend;
        if (gradClipNorm > 0)
        {
            b.Fill(_total, 0f);
            foreach (var q in parameters)
            {
                b.RowDots(q.Grad, q.Grad, q.Rows, q.Cols, _rowSums);
                b.SumMiddleAxis(_rowSums, 1, q.Rows, 1, _total, accumulate: true);
            }
            b.NormScale(_total, gradClipNorm, true, _factor);
            foreach (var q in parameters) b.ScaleRows(q.Grad, 1, q.Rows * q.Cols, _factor, q.Grad);
        }
        foreach (var q in parameters) b.AdamStep(q.Value, q.Grad, q.M, q.V, lr, beta1, beta2, 1e-8f, adamStep);
    }

    /// <summary>Rows of <paramref name="value"/> scaled to unit norm (a zero row stays zero); <paramref name="norms"/> [rows] is scratch.</summary>
    public void NormalizeRows(Tensor value, int rows, int cols, Tensor norms)
    {
        backend.RowDots(value, value, rows, cols, norms);
        backend.NormScale(norms, 1f, false, norms);
        backend.ScaleRows(value, rows, cols, norms, value);
    }
}
