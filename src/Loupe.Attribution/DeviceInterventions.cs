// Feature edits and added vectors of a ReplacementModel as backend ops, for a model and transcoders on a device.
//
// Per edited source layer ℓ, at InputHook(ℓ) (x [T, d_in] on the device):
//   pairs    (row i, edit e) whose position matches, from the positions alone (no data read)
//   acts     = f(x·W_enc[ℓ] + b_enc[ℓ])                      [T, n_ℓ]   DeviceMlpReplacement.EncodePre / Activate
//   a        = acts[i, feature(e)] per pair                   [pairs]    gathered (Embedding with width 1)
//   δ        = c1(e)·a + c0(e): set v → (−1, v), scale s → (s − 1, 0); the coefficient table [edits, 2] goes in once per install
// At OutputHook(t), for every edited ℓ ≤ t ≤ LastTarget(ℓ):
//   out      = y (a copy: y may be a frozen value that later passes reuse)
//   out[i]  += δ · W_dec[ℓ → t][feature(e)]                     decoder rows gathered, scaled by δ, scatter-added by row
//   out[p]  += v for each vector added there at position p       uploaded once per install
// The host path (ReplacementModel.Install) computes the same with the replacement's host Encode and DecoderDirection.
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Attribution;

/// <summary>The device form of <see cref="ReplacementModel"/>'s edits (see the file header).</summary>
static class DeviceInterventions
{
    sealed class LayerDelta
    {
        public int[] Rows = [];
        public int[] Features = [];
        public Tensor? Delta;
    }

    /// <summary>Adds the hooks of <paramref name="edits"/> and <paramref name="additions"/> (already checked) to <paramref name="options"/>.</summary>
    public static void Install(RunOptions options, DeviceMlpReplacement tc, IReadOnlyList<FeatureIntervention> edits, IReadOnlyList<AddedVector> additions, int dModel)
    {
        var r = tc.Replacement;
        var be = tc.Backend;
        int L = r.Layers, dOut = r.DOut;
        var deltas = new Dictionary<int, LayerDelta>();
        foreach (var group in edits.GroupBy(e => e.Layer))
        {
            int l = group.Key;
            var layerEdits = group.ToArray();
            var coefficients = new float[layerEdits.Length * 2];
            for (int e = 0; e < layerEdits.Length; e++)
                (coefficients[2 * e], coefficients[2 * e + 1]) = layerEdits[e].Kind == InterventionKind.Set ? (-1f, layerEdits[e].Value) : (layerEdits[e].Value - 1f, 0f);
            var table = be.ToDevice(Tensor.FromArray(coefficients, layerEdits.Length, 2), TransferKind.Weights);
            var state = deltas[l] = new LayerDelta();
            options.AddHook(r.InputHook(l), (x, ctx) =>
            {
                int T = x.Dim(1), F = tc.Features(l);
                var rows = new List<int>();
                var which = new List<int>();
                var flat = new List<int>();
                for (int i = 0; i < T; i++)
                    for (int e = 0; e < layerEdits.Length; e++)
                        if (layerEdits[e].Position == -1 || layerEdits[e].Position == ctx.PositionOffset + i)
                        {
                            rows.Add(i);
                            which.Add(e);
                            flat.Add(i * F + layerEdits[e].Feature);
                        }
                state.Rows = [.. rows];
                state.Features = [.. which.Select(e => layerEdits[e].Feature)];
                state.Delta = null;
                int n = rows.Count;
                if (n == 0) return null;
                var acts = tc.Activate(l, tc.EncodePre(l, x, T), T);
                var a = be.Empty(n);
                be.Embedding(acts, 1, [.. flat], 1f, a);
                var c = be.Empty(n, 2);
                be.Embedding(table, 2, [.. which], 1f, c);
                var delta = be.Empty(n);
                var c1 = be.Empty(n);
                be.CopyRows(c, 0, 2, c1, 0, 1, n, 1);
                be.CopyRows(c, 1, 2, delta, 0, 1, n, 1);
                be.Multiply(a, c1, a);
                be.Add(a, delta, delta);
                state.Delta = delta;
                return null;
            });
        }

        var added = additions.Select(a => (a.Hook, a.Position, Vector: be.ToDevice(Tensor.FromArray(a.Vector, a.Vector.Length), TransferKind.Weights))).ToArray();
        for (int t = 0; t < L; t++)
        {
            int target = t;
            var sources = deltas.Keys.Where(l => l <= target && r.LastTarget(l) >= target).Order().ToArray();
            var here = added.Where(a => a.Hook == r.OutputHook(target)).ToArray();
            if (sources.Length == 0 && here.Length == 0) continue;
            options.AddHook(r.OutputHook(target), (y, ctx) =>
            {
                var output = y.Clone(); // a device copy: the hook's input stays as the model made it
                foreach (var l in sources)
                {
                    var s = deltas[l];
                    if (s.Delta is null) continue;
                    int n = s.Rows.Length;
                    var rows = be.Empty(n, dOut);
                    tc.DecoderRows(l, target, s.Features, rows);
                    be.ScaleRows(rows, n, dOut, s.Delta, rows);
                    be.EmbeddingBackward(rows, dOut, s.Rows, 1f, output);
                }
                AddVectors(be, output, here, ctx.PositionOffset, dModel);
                return output;
            });
        }
        var embed = added.Where(a => a.Hook == HookNames.Embed).ToArray();
        if (embed.Length > 0)
            options.AddHook(HookNames.Embed, (y, ctx) =>
            {
                var output = y.Clone();
                AddVectors(be, output, embed, ctx.PositionOffset, dModel);
                return output;
            });
    }

    static void AddVectors(IComputeBackend be, Tensor output, (string Hook, int Position, Tensor Vector)[] vectors, int offset, int d)
    {
        int rows = output.Length / d;
        foreach (var (_, position, vector) in vectors)
        {
            int i = position - offset;
            if (i >= 0 && i < rows) be.CopyRows(vector, 0, d, output, (long)i * d, d, 1, d, accumulate: true);
        }
    }
}
