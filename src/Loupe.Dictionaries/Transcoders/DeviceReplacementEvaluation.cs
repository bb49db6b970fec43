// ReplacementEvaluator's hooks for a model on a device, with the replacement's weights there (DeviceMlpReplacement):
// nothing but the token ids, a row mask and the per-batch sums cross.
//
//   InputHook(ℓ):  acts[ℓ] = f(x·W_enc[ℓ] + b_enc[ℓ])                       [rows, n_ℓ]   (x kept for a skip path)
//   OutputHook(t): recon[t] = Reconstruct(t, acts, x[t])                   [rows, d_out]
//     clean run:    into layer t's section of one stats buffer, over the measured rows (mask m = 1, kept rows 0):
//                   Σ‖m·(y − recon)‖², Σ‖m·y‖², #(m·acts > 0), #(−m·acts > 0), Σ_rows m·y [d_out]
//     replaced run: recon flows on, kept rows copied from y
// The stats buffer [L, 4 + d_out] is read once per batch and summed in double on the host, as the host path sums.
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Transcoders;

/// <summary>The device hooks of <see cref="ReplacementEvaluator"/> (see the file header).</summary>
sealed class DeviceReplacementEvaluation(DeviceMlpReplacement replacement)
{
    readonly IComputeBackend _b = replacement.Backend;
    readonly IMlpReplacement _r = replacement.Replacement;

    /// <summary>Floats per layer in the stats buffer.</summary>
    public int Stride => 4 + _r.DOut;

    /// <summary>The row mask <c>[rows]</c>: 1 where the row is measured and replaced, 0 where it keeps the true MLP output.</summary>
    public Tensor Mask(bool[] keep) => _b.ToDevice(Tensor.FromArray([.. keep.Select(k => k ? 0f : 1f)], keep.Length), TransferKind.Inputs);

    /// <summary>
    /// Hooks that encode at every InputHook(ℓ) and reconstruct at every OutputHook(t): the clean run (<paramref name="stats"/>
    /// given) writes its sums there; the replaced run returns the reconstructions (kept rows: the true output).
    /// </summary>
    public RunOptions Hooks(int rows, bool[] keep, Tensor mask, Tensor? stats)
    {
        int L = _r.Layers, dIn = _r.DIn, dOut = _r.DOut;
        var inputs = new Tensor[L];
        var acts = new Tensor[L];
        var options = new RunOptions();
        for (int l = 0; l < L; l++)
        {
            int layer = l;
            options.AddHook(_r.InputHook(l), (a, ctx) =>
            {
                if (a.Length != rows * dIn)
                    throw InputError.Expected(_r.Source, $"hook '{ctx.Name}' width", $"d_in = {dIn} (the replacement's)", a.ShapeString);
                inputs[layer] = new Tensor(a.Storage, rows, dIn);
                acts[layer] = replacement.Activate(layer, replacement.EncodePre(layer, inputs[layer], rows), rows);
                return null;
            });
            options.AddHook(_r.OutputHook(l), (a, ctx) =>
            {
                if (a.Length != rows * dOut)
                    throw InputError.Expected(_r.Source, $"hook '{ctx.Name}' width", $"d_out = {dOut} (the replacement's)", a.ShapeString);
                for (int s = 0; s <= layer; s++)
                    if (acts[s] is null) throw new InvalidOperationException($"{ctx.Name} ran before {_r.InputHook(s)}: the features of layer {s} are not known yet");
                var y = new Tensor(a.Storage, rows, dOut);
                var recon = replacement.Reconstruct(layer, acts, rows, inputs[layer]);
                if (stats is not null)
                {
                    Measure(layer, y, recon, acts[layer], mask, rows, stats);
                    return null;
                }
                for (int i = 0; i < rows; i++)
                    if (keep[i]) _b.CopyRows(y, (long)i * dOut, dOut, recon, (long)i * dOut, dOut, 1, dOut);
                return new Tensor(recon.Storage, a.Shape.ToArray());
            });
        }
        return options;
    }

    void Measure(int layer, Tensor y, Tensor recon, Tensor layerActs, Tensor mask, int rows, Tensor stats)
    {
        int d = _r.DOut, n = replacement.Features(layer);
        long at = (long)layer * Stride;
        Tensor Slot(long offset, int length) => new(stats.Storage.Slice(at + offset, length), length);
        var perRow = _b.Empty(rows);
        var diff = _b.Empty(rows, d);
        _b.Scale(recon, -1f, diff);
        _b.Add(diff, y, diff);
        _b.ScaleRows(diff, rows, d, mask, diff);
        _b.RowDots(diff, diff, rows, d, perRow);
        _b.SumMiddleAxis(perRow, 1, rows, 1, Slot(0, 1));
        var masked = diff; // reused: m·y
        _b.ScaleRows(y, rows, d, mask, masked);
        _b.RowDots(masked, masked, rows, d, perRow);
        _b.SumMiddleAxis(perRow, 1, rows, 1, Slot(1, 1));
        _b.SumMiddleAxis(masked, 1, rows, d, Slot(4, d));
        // Active features: a ≠ 0, counted as a > 0 plus −a > 0 (masked rows are 0 and never count).
        var maskedActs = _b.Empty(rows, n);
        _b.ScaleRows(layerActs, rows, n, mask, maskedActs);
        _b.CountAbove(maskedActs, 0f, Slot(2, 1));
        _b.Scale(maskedActs, -1f, maskedActs);
        _b.CountAbove(maskedActs, 0f, Slot(3, 1));
    }
}
