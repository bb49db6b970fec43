// CrosscoderEvaluator's steps 2–4 with every model on one device (a GPU, or the emulated one). Per batch:
// 1. PairedActivations.RunOnDevice: x = [x_1 | … | x_S] [rows, S·d] in model units, and each model's logits, on the device.
// 2. acts [rows, F] = the crosscoder in model units (Crosscoder.InModelUnits, uploaded once) of x; x̂ [rows, S·d] its decoding.
// 3. x, x̂ and x − x̂ read as [rows·S, d] (row r·S + s is source s of row r): RowDots give ‖x − x̂‖², ‖x‖², ‖x̂‖², x·x̂ per
//    (row, source), ReconstructionRowStats the cosine; SumMiddleAxis sums those over the rows into [S], and x, x² into
//    [S·d]; 1[acts > 0] (ReLU's derivative at the acts) summed over the rows counts each latent's firings. Every sum lands
//    in one packed vector: one read back per batch. Sums run in float within a batch and double across batches (the
//    host sums in double throughout): the results agree to a tolerance.
// 4. Losses: the clean logits' CE on the device; per model a run with its sources' hooks replaced on the device by x̂'s
//    segment at positions ≥ 1 (CopyRows; position 0 keeps its activation) and a run with them zero; a scalar back per run.
// 5. Latent Scaling works on host rows: x, acts and x̂ come back (counted) and are scaled to the crosscoder's units there.
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Crosscoders;

public static partial class CrosscoderEvaluator
{
    /// <summary>Steps 1–5 of a batch on the device the models share (see the top of this file).</summary>
    sealed class DeviceBatch(IComputeBackend backend, Crosscoder crosscoder)
    {
        readonly DeviceSaeEncoder _encoder = new(backend, crosscoder.InModelUnits());

        public void Add(PairedActivations paired, int[] ids, int b, int T, bool losses, CrosscoderLatentScaling? scaling, Totals totals)
        {
            var be = backend;
            int n = crosscoder.Sources.Count, d = crosscoder.Width, f = crosscoder.DSae, w = n * d, rows = b * (T - 1), segments = rows * n;
            // 1–2
            var (x, logits) = paired.RunOnDevice(ids, b, T, keepLogits: losses);
            var (acts, _, _) = _encoder.Encode(x, rows);
            var recon = _encoder.Decode(acts, x, rows);
            if (scaling is not null) AddLatentScaling(scaling, x, acts, recon, rows);

            // 3. per (row, source) norms and dots, then everything summed over the rows into one packed vector
            var diff = be.Empty(rows, w);
            be.Scale(recon, -1f, diff);
            be.Add(diff, x, diff);
            var (ee, xx, rr, xr, cosine, ratio) = (be.Empty(segments), be.Empty(segments), be.Empty(segments), be.Empty(segments), be.Empty(segments), be.Empty(segments));
            be.RowDots(diff, diff, segments, d, ee);
            be.RowDots(x, x, segments, d, xx);
            be.RowDots(recon, recon, segments, d, rr);
            be.RowDots(x, recon, segments, d, xr);
            be.ReconstructionRowStats(xx, rr, xr, 0f, cosine, ratio);
            int length = 2 * n + 2 * w + f;
            var packed = be.Empty(length);
            Tensor Part(int offset, int count) => new(packed.Storage.Slice(offset, count), count);
            be.SumMiddleAxis(ee, 1, rows, n, Part(0, n));
            be.SumMiddleAxis(cosine, 1, rows, n, Part(n, n));
            be.SumMiddleAxis(x, 1, rows, w, Part(2 * n, w));
            be.Multiply(x, x, diff);
            be.SumMiddleAxis(diff, 1, rows, w, Part(2 * n + w, w));
            var fired = be.Empty(rows, f);
            be.Fill(fired, 1f);
            be.ActivationBackward("relu", acts, fired, fired);
            be.SumMiddleAxis(fired, 1, rows, f, Part(2 * n + 2 * w, f));
            var sums = new float[length];
            packed.CopyTo(sums);
            for (int s = 0; s < n; s++)
            {
                totals.Error[s] += sums[s];
                totals.Cosine[s] += sums[n + s];
                for (int j = 0; j < d; j++)
                {
                    totals.Sum[s][j] += sums[2 * n + s * d + j];
                    totals.SumSq[s][j] += sums[2 * n + w + s * d + j];
                }
            }
            for (int i = 0; i < f; i++)
            {
                long count = (long)sums[2 * n + 2 * w + i];
                totals.Fires[i] += count;
                totals.Active += count;
            }
            totals.Rows += rows;

            // 4
            if (!losses) return;
            var batch = new TokenBatch(ids, b, T);
            totals.Predictions += rows;
            foreach (var (label, model) in paired.Models)
            {
                var ce = totals.Ce[label];
                ce[0] += Evaluation.SaeEvaluator.CrossEntropySum(be, batch, logits[label]);
                ce[1] += SplicedCrossEntropy(model, label, recon, batch, zero: false);
                ce[2] += SplicedCrossEntropy(model, label, recon, batch, zero: true);
            }
        }

        // 5. Latent Scaling's host rows, in the crosscoder's units (x·c_s, x̂·c_s).
        void AddLatentScaling(CrosscoderLatentScaling scaling, Tensor x, Tensor acts, Tensor recon, int rows)
        {
            int w = crosscoder.Sources.Count * crosscoder.Width;
            var (xh, ah, rh) = (new float[(long)rows * w], new float[(long)rows * crosscoder.DSae], new float[(long)rows * w]);
            x.CopyTo(xh);
            acts.CopyTo(ah);
            recon.CopyTo(rh);
            crosscoder.ScaleSegments(xh, rows);
            crosscoder.ScaleSegments(rh, rows);
            scaling.Add(xh, ah, rh, rows);
        }

        // Σ CE of a run of `model` with each of its sources' hooks replaced on the device: by x̂'s segment at positions ≥ 1
        // (position 0 keeps its activation), or by 0 everywhere.
        double SplicedCrossEntropy(HookedTransformer model, string label, Tensor recon, TokenBatch batch, bool zero)
        {
            var be = backend;
            int n = crosscoder.Sources.Count, d = crosscoder.Width, w = n * d, b = batch.Batch, T = batch.Length;
            var options = new RunOptions();
            for (int s = 0; s < n; s++)
            {
                if (crosscoder.Sources[s].Model != label) continue;
                int source = s;
                options.AddHook(crosscoder.Sources[s].Hook, (act, _) =>
                {
                    var replaced = be.Empty(b, T, d);
                    if (zero)
                    {
                        be.Fill(replaced, 0f);
                        return replaced;
                    }
                    be.CopyRows(act, 0, T * d, replaced, 0, T * d, b, d); // position 0 of every context
                    for (int i = 0; i < b; i++)
                        be.CopyRows(recon, (long)i * (T - 1) * w + (long)source * d, w, replaced, (long)(i * T + 1) * d, d, T - 1, d);
                    return replaced;
                });
            }
            var result = model.Run(batch, options);
            double ce = Evaluation.SaeEvaluator.CrossEntropySum(be, batch, result.Logits);
            model.Recycle(result);
            return ce;
        }
    }
}
