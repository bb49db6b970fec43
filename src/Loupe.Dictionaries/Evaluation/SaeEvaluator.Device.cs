// SaeEvaluator's steps 5–6 with the model on a device (a GPU, or the emulated one). The logits and activations stay
// there; what comes back per batch is scalars (the sums) and one vector of per-feature counts and per-dimension sums.
// 5. CE per run: CrossEntropyRows against the next token (−1 at the last position: no prediction), summed on the device.
//    KL(p_clean ‖ p_run) = Σ p_clean·(log p_clean − log p_run): LogSoftmaxRows of both, SoftmaxRows of clean (both
//    computed once per batch), DifferenceProduct, summed on the device.
// 6. The rows whose token is not excluded are gathered (CopyRows over runs of consecutive rows); per row
//    RowDots give ‖x‖², ‖x̂‖², x·x̂ and ‖x − x̂‖²; ReconstructionRowStats gives the cosine and norm ratio; 1[acts > 0]
//    (ReLU's derivative at the acts) gives per-feature firing counts (SumMiddleAxis) and, dotted with the acts, L1.
//    Σ x and Σ x² per dimension come from SumMiddleAxis; counts and per-dimension sums share one read-back.
//    Levels: e_w = (x − x̂) + acts[:, w:]·W_dec[w:] (a GEMM on the column slice, W_dec uploaded once), Σ e_w² summed there.
// Sums run in float per row and double across rows, in another order than the host's: results agree to a tolerance.
using Loupe.Models;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Evaluation;

public static partial class SaeEvaluator
{
    /// <summary>Per position of <paramref name="batch"/> the next token, −1 at each context's last position (no prediction).</summary>
    internal static int[] NextTokenTargets(TokenBatch batch)
    {
        int B = batch.Batch, T = batch.Length;
        var targets = new int[B * T];
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) targets[b * T + t] = t == T - 1 ? -1 : batch.Ids[b * T + t + 1];
        return targets;
    }

    /// <summary><see cref="CrossEntropySum(TokenBatch, Tensor)"/> with the logits [B, T, V] on a device: one scalar read back.</summary>
    internal static double CrossEntropySum(IComputeBackend backend, TokenBatch batch, Tensor logits)
    {
        int rows = batch.Batch * batch.Length, vocab = logits.Dim(-1);
        var loss = backend.Empty(rows);
        backend.CrossEntropyRows(logits, rows, vocab, NextTokenTargets(batch), loss, null, 1f);
        return backend.Sum(loss);
    }

    /// <summary>The device side of the accumulation (see the steps at the top of this file).</summary>
    sealed class DeviceSums(IComputeBackend backend, int dSae, int dOut, int[] levels, float[] wDec)
    {
        // the decoder, for the levels' reconstructions: uploaded once, only when levels are asked for
        readonly Tensor? _wDec = levels.Length == 0 ? null : backend.ToDevice(Tensor.FromArray(wDec, dSae, dOut), TransferKind.Weights);

        /// <summary>The clean run's log-probabilities and probabilities of one batch, reused by both runs' KL.</summary>
        public sealed record Clean(Tensor Logits, Tensor LogP, Tensor P, int[] Targets, int Rows, int Vocab);

        public Clean Prepare(TokenBatch batch, Tensor clean)
        {
            int B = batch.Batch, T = batch.Length, rows = B * T, V = clean.Dim(-1);
            var logP = backend.Empty(rows, V);
            backend.LogSoftmaxRows(clean, rows, V, logP);
            var p = backend.Empty(rows, V);
            backend.SoftmaxRows(clean, rows, V, p);
            return new Clean(clean, logP, p, NextTokenTargets(batch), rows, V);
        }

        /// <summary>Σ over predictions of −log softmax(logits)[next token].</summary>
        public double CrossEntropy(Tensor logits, Clean c)
        {
            var loss = backend.Empty(c.Rows);
            backend.CrossEntropyRows(logits, c.Rows, c.Vocab, c.Targets, loss, null, 1f);
            return backend.Sum(loss);
        }

        /// <summary>Σ over positions of KL(p_clean ‖ p_run).</summary>
        public double Kl(Tensor logits, Clean c)
        {
            var terms = backend.Empty(c.Rows, c.Vocab);
            backend.LogSoftmaxRows(logits, c.Rows, c.Vocab, terms);
            backend.DifferenceProduct(c.LogP, terms, c.P, terms);
            return backend.Sum(terms);
        }

        /// <summary>Step 6 at every row whose token is not excluded, added to <paramref name="acc"/>.</summary>
        public void AddActivations(TokenBatch batch, HashSet<int> excluded, Tensor target, Tensor acts, Tensor recons, Accumulator acc)
        {
            int n = batch.Batch * batch.Length;
            if (target.Length != (long)n * dOut || acts.Length != (long)n * dSae || recons.Length != (long)n * dOut)
                throw new InvalidOperationException($"activation metrics need one row per position: target {target.ShapeString}, acts {acts.ShapeString}, recons {recons.ShapeString} for [{batch.Batch}, {batch.Length}] tokens");
            var runs = new List<(int Start, int Count)>();   // runs of consecutive included rows
            for (int r = 0; r < n; r++)
            {
                if (excluded.Contains(batch.Ids[r])) continue;
                int start = r;
                while (r + 1 < n && !excluded.Contains(batch.Ids[r + 1])) r++;
                runs.Add((start, r - start + 1));
            }
            int m = runs.Sum(run => run.Count);
            if (m == 0) return;
            Tensor Included(Tensor t, int width)
            {
                if (m == n) return t.Reshape(n, width);
                var packed = backend.Empty(m, width);
                int at = 0;
                foreach (var (start, count) in runs)
                {
                    backend.CopyRows(t, (long)start * width, width, packed, (long)at * width, width, count, width);
                    at += count;
                }
                return packed;
            }
            var x = Included(target, dOut);
            var a = Included(acts, dSae);
            var r2 = Included(recons, dOut);

            // [m] per-row dot products
            Tensor Dots(Tensor u, Tensor v, int width)
            {
                var y = backend.Empty(m);
                backend.RowDots(u, v, m, width, y);
                return y;
            }
            var xx = Dots(x, x, dOut);
            var rr = Dots(r2, r2, dOut);
            var dot = Dots(x, r2, dOut);
            var e = backend.Empty(m, dOut);
            backend.Scale(r2, -1f, e);
            backend.Add(x, e, e);
            acc.SquaredError += backend.Sum(Dots(e, e, dOut));
            if (_wDec is not null)
            {
                var ew = backend.Empty(m, dOut);
                for (int l = 0; l < levels.Length; l++)
                {
                    int w = levels[l];
                    backend.CopyRows(e, 0, dOut, ew, 0, dOut, m, dOut);
                    backend.Gemm(false, false, m, dOut, dSae - w, 1f, a, w, dSae, _wDec, (long)w * dOut, dOut, 1f, ew, 0, dOut);
                    acc.LevelSquaredError[l] += backend.Sum(Dots(ew, ew, dOut));
                }
            }
            var cosine = backend.Empty(m);
            var ratio = backend.Empty(m);
            backend.ReconstructionRowStats(xx, rr, dot, 1e-4f, cosine, ratio);
            acc.Cosine += backend.Sum(cosine);
            acc.L2Ratio += backend.Sum(ratio);

            // 1[acts > 0]: per-feature firing counts, L0 and L1
            var fired = backend.Empty(m, dSae);
            backend.Fill(fired, 1f);
            backend.ActivationBackward("relu", a, fired, fired);
            acc.L1 += backend.Sum(Dots(a, fired, dSae));
            // one read-back: [d_sae] counts, [d_out] Σ x, [d_out] Σ x²
            var sums = backend.Empty(dSae + 2 * dOut);
            Tensor Part(int offset, int length) => new(sums.Storage.Slice(offset, length), length);
            backend.SumMiddleAxis(fired, 1, m, dSae, Part(0, dSae));
            backend.SumMiddleAxis(x, 1, m, dOut, Part(dSae, dOut));
            var squares = backend.Empty(m, dOut);
            backend.Multiply(x, x, squares);
            backend.SumMiddleAxis(squares, 1, m, dOut, Part(dSae + dOut, dOut));
            var host = new float[dSae + 2 * dOut];
            sums.CopyTo(host);
            long active = 0;
            for (int f = 0; f < dSae; f++)
            {
                long count = (long)Math.Round(host[f]);
                acc.Fires[f] += count;
                active += count;
            }
            acc.L0 += active;
            acc.AddDimensionSums(host.AsSpan(dSae, dOut), host.AsSpan(dSae + dOut, dOut));
            acc.Positions += m;
        }
    }
}
