// Activation strategies of the sparse dictionary: each forward sits next to its backward.
//
// Shape legend: batch = rows of the batch, d_sae = dictionary features.
//   pre  [batch, d_sae]  encoder pre-activations  (x − b_dec)·W_enc + b_enc
//   acts [batch, d_sae]  feature activations      f(pre)
// Sparsity penalties are means over the batch, like SAELens.
namespace Loupe.Dictionaries.Sae;

/// <summary>
/// The activation function f(pre) of a <see cref="SparseDictionary"/>, its backward and its sparsity
/// penalty. Architecture differences live here, never as <c>if (arch == …)</c> in the dictionary.
/// </summary>
public abstract class SaeActivation
{
    /// <summary>SAELens architecture name ("standard", "topk", "batchtopk", "jumprelu").</summary>
    public abstract string Architecture { get; }

    /// <summary>Whether training keeps decoder rows at unit norm (renormalise + project the gradient).</summary>
    public abstract bool UnitNormDecoder { get; }

    /// <summary>Whether TopK's auxiliary loss on dead features applies (TopK, BatchTopK).</summary>
    public virtual bool SupportsAuxK => false;

    /// <summary>
    /// Whether <see cref="Backward"/> reads dActs only where acts ≠ 0 and writes dPre only there, so the
    /// dictionary may skip computing dActs elsewhere (the sparse training path). False for JumpReLU, whose
    /// threshold gradient reads dActs just below θ.
    /// </summary>
    public virtual bool GradientOnlyWhereActive => false;

    /// <summary>Whether <see cref="Sparsity"/> adds a penalty (and gradients); false for TopK and BatchTopK.</summary>
    public virtual bool HasSparsityPenalty => true;

    /// <summary>acts = f(pre). <paramref name="training"/> selects batch-level behaviour (BatchTopK).</summary>
    public abstract void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p);

    /// <summary>
    /// Backward of <see cref="Forward"/>: writes dPre from dActs and accumulates parameter gradients
    /// owned by the activation (the JumpReLU threshold) into <paramref name="g"/>.
    /// </summary>
    public abstract void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g);

    /// <summary>
    /// Sparsity penalty (already multiplied by <paramref name="coefficient"/>, mean over batch). When
    /// <paramref name="g"/> is not null its gradient is added to <paramref name="dActs"/>, <paramref name="dPre"/> and <paramref name="g"/>.
    /// Called before <see cref="Backward"/>; terms added to dPre are kept by Backward.
    /// </summary>
    public virtual float Sparsity(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, int batch, int dSae, float coefficient,
        SaeParameters p, Span<float> dActs, Span<float> dPre, SaeParameters? g) => 0f;

    /// <summary>dPre[i] += dActs[i] where acts[i] ≠ 0 (the backward of every activation that passes pre through where active).</summary>
    protected static void MaskedAdd(ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs, Span<float> dPre, int n)
    {
        for (int i = 0; i < n; i++) if (acts[i] != 0) dPre[i] += dActs[i];
    }

    /// <summary>
    /// The L1 weighted per feature, Σ_b Σ_i acts[b,i]·w[i] (summed in double, rows in order); when <paramref name="dActs"/> is not
    /// empty adds scale·w[i] to every dActs[b,i]; <paramref name="colSum"/>[i] receives Σ_b acts[b,i].
    /// </summary>
    protected static double WeightedL1(ReadOnlySpan<float> acts, int batch, int dSae, ReadOnlySpan<float> weights, float scale, Span<float> dActs, Span<float> colSum)
    {
        double loss = 0;
        for (int b = 0; b < batch; b++)
            for (int i = 0; i < dSae; i++)
            {
                float a = acts[b * dSae + i];
                loss += a * weights[i];
                colSum[i] += a;
            }
        if (!dActs.IsEmpty)
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < dSae; i++) dActs[b * dSae + i] += scale * weights[i];
        return loss;
    }

    /// <summary>Update running statistics after a training step (BatchTopK threshold).</summary>
    public virtual void AfterTrainingForward(ReadOnlySpan<float> acts, int batch, int dSae, SaeParameters p) { }
}

/// <summary>ReLU SAE ("standard") with L1 penalty λ Σ_i acts_i ‖W_dec[i]‖ (Anthropic, April 2024 update).</summary>
public sealed class ReluActivation : SaeActivation
{
    public override string Architecture => "standard";
    public override bool UnitNormDecoder => false;
    public override bool GradientOnlyWhereActive => true;

    // acts = max(pre, 0)
    public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
    {
        System.Numerics.Tensors.TensorPrimitives.Max(pre[..(batch * dSae)], 0f, acts);
        for (int i = 0; i < batch * dSae; i++) if (float.IsNaN(pre[i])) acts[i] = 0f; // like pre > 0 ? pre : 0
    }

    // d/dpre max(pre, 0) = 1[pre > 0]
    public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g)
    {
        MaskedAdd(acts, dActs, dPre, batch * dSae); // acts > 0 ⇔ pre > 0
    }

    // L1 = λ/B Σ_b Σ_i acts[b,i]·‖W_dec[i]‖
    public override float Sparsity(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, int batch, int dSae, float coefficient,
        SaeParameters p, Span<float> dActs, Span<float> dPre, SaeParameters? g)
    {
        int dOut = p.DOut;
        var norms = new float[dSae];                        // [d_sae]
        var colSum = new float[dSae];                       // [d_sae] Σ_b acts[b,i]
        for (int i = 0; i < dSae; i++) norms[i] = MathF.Sqrt(System.Numerics.Tensors.TensorPrimitives.SumOfSquares(p.WDec.AsSpan(i * dOut, dOut)));
        float scale = coefficient / batch;
        double loss = WeightedL1(acts, batch, dSae, norms, scale, g is null ? default : dActs, colSum);
        if (g is not null)
        {
            // d‖W_dec[i]‖/dW_dec[i] = W_dec[i] / ‖W_dec[i]‖
            for (int i = 0; i < dSae; i++)
            {
                if (norms[i] == 0) continue;
                float f = scale * colSum[i] / norms[i];
                for (int j = 0; j < dOut; j++) g.WDec[i * dOut + j] += f * p.WDec[i * dOut + j];
            }
        }
        return (float)(loss * scale);
    }
}

/// <summary>TopK SAE: keep the k largest pre-activations per row, ReLU'd (Gao et al. 2024).</summary>
public sealed class TopKActivation(int k) : SaeActivation
{
    public int K { get; } = k > 0 ? k : throw new ArgumentOutOfRangeException(nameof(k), "k must be positive");
    public override string Architecture => "topk";
    public override bool HasSparsityPenalty => false;
    public override bool UnitNormDecoder => true;
    public override bool SupportsAuxK => true;

    public override bool GradientOnlyWhereActive => true;

    // acts[b] = relu(pre[b]) on the k largest entries of row b, 0 elsewhere (rows in parallel: independent)
    public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
    {
        if (pre.Length < batch * dSae || acts.Length < batch * dSae) throw new ArgumentException($"pre and acts need batch·d_sae = {batch * dSae} floats");
        int k = Math.Min(K, dSae);
        unsafe
        {
            fixed (float* pp = pre, pa = acts)
            {
                float* preP = pp, actsP = pa;
                RowParallel.For(batch, dSae, b =>
                {
                    var row = new ReadOnlySpan<float>(preP + (long)b * dSae, dSae);
                    var outRow = new Span<float>(actsP + (long)b * dSae, dSae);
                    outRow.Clear();
                    Span<int> idx = k <= 512 ? stackalloc int[k] : new int[k];
                    int n = TopKSelection.Largest(row, k, idx);
                    for (int r = 0; r < n; r++)
                    {
                        float v = row[idx[r]];
                        outRow[idx[r]] = v > 0 ? v : 0f;
                    }
                });
            }
        }
    }

    // acts = relu(pre)·1[kept]: gradient flows only where acts > 0
    public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g) => MaskedAdd(acts, dActs, dPre, batch * dSae);
}

/// <summary>
/// BatchTopK SAE (Bussmann et al. 2024): in training keep the k·batch largest ReLU'd pre-activations over
/// the whole batch; at inference use the learned threshold (running mean of the smallest kept activation):
/// acts = pre·1[pre &gt; threshold].
/// </summary>
public class BatchTopKActivation(int k, float momentum = 0.01f) : SaeActivation
{
    public int K { get; } = k > 0 ? k : throw new ArgumentOutOfRangeException(nameof(k), "k must be positive");
    public float Momentum { get; } = momentum;
    public override string Architecture => "batchtopk";
    public sealed override bool HasSparsityPenalty => false;
    public override bool UnitNormDecoder => true;
    public override bool SupportsAuxK => true;
    public override bool GradientOnlyWhereActive => true;

    public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
    {
        int n = batch * dSae;
        acts[..n].Clear();
        if (!training)
        {
            float t = p.Threshold[0];
            for (int i = 0; i < n; i++) acts[i] = pre[i] > t && pre[i] > 0 ? pre[i] : 0f;
            return;
        }
        // keep the k·batch largest: everything above the threshold value, then ties at it in index order
        int keep = Math.Min(K * batch, n);
        var scratch = new float[n];
        float cut = TopKSelection.KthLargest(pre[..n], keep, scratch);
        int above = 0;
        for (int i = 0; i < n; i++) if (pre[i] > cut) above++;
        int ties = keep - above;
        for (int i = 0; i < n; i++)
        {
            float v = pre[i];
            if (v > cut || (v == cut && ties-- > 0)) acts[i] = v > 0 ? v : 0f;
        }
    }

    public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g) => MaskedAdd(acts, dActs, dPre, batch * dSae);

    // threshold ← (1 − m)·threshold + m·min{acts > 0}; the first update sets it directly.
    public override void AfterTrainingForward(ReadOnlySpan<float> acts, int batch, int dSae, SaeParameters p)
    {
        float min = float.PositiveInfinity;
        foreach (float a in acts[..(batch * dSae)]) if (a > 0 && a < min) min = a;
        UpdateThreshold(min, p);
    }

    /// <summary>The threshold update of <see cref="AfterTrainingForward"/> from the step's smallest positive activation (+∞: none, no update).</summary>
    internal void UpdateThreshold(float smallestKept, SaeParameters p)
    {
        if (!(smallestKept < float.PositiveInfinity)) return;
        p.Threshold[0] = p.Threshold[0] < 0 ? smallestKept : (1 - Momentum) * p.Threshold[0] + Momentum * smallestKept;
    }
}

/// <summary>
/// JumpReLU SAE (Rajamanoharan et al. 2024, Gemma Scope): acts = pre·H(pre − θ), θ = exp(log_threshold),
/// L0 penalty λ/B Σ H(pre − θ). Straight-through estimator with rectangle kernel
/// K(u) = 1[|u| &lt; ½] of bandwidth ε for the threshold:
///   ∂acts/∂θ ≈ −(θ/ε)·K((pre − θ)/ε),  ∂H(pre − θ)/∂θ ≈ −(1/ε)·K((pre − θ)/ε).
/// The gradient w.r.t. pre is H(pre − θ) through acts and zero through the L0 term.
/// </summary>
public sealed class JumpReluActivation(float bandwidth = 0.001f) : SaeActivation
{
    public float Bandwidth { get; } = bandwidth > 0 ? bandwidth : throw new ArgumentOutOfRangeException(nameof(bandwidth));
    public override string Architecture => "jumprelu";
    public override bool UnitNormDecoder => true;

    public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
    {
        var theta = new float[dSae];                        // [d_sae]
        for (int i = 0; i < dSae; i++) theta[i] = MathF.Exp(p.LogThreshold[i]);
        for (int b = 0; b < batch; b++)
            for (int i = 0; i < dSae; i++)
            {
                float v = pre[b * dSae + i];
                acts[b * dSae + i] = v > theta[i] ? v : 0f;
            }
    }

    public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g)
    {
        float eps = Bandwidth;
        for (int i = 0; i < dSae; i++)
        {
            float theta = MathF.Exp(p.LogThreshold[i]);
            double dTheta = 0;
            for (int b = 0; b < batch; b++)
            {
                int at = b * dSae + i;
                float v = pre[at];
                if (v > theta) dPre[at] += dActs[at];                                       // ∂acts/∂pre = H(pre − θ)
                if (MathF.Abs((v - theta) / eps) < 0.5f) dTheta += dActs[at] * (-theta / eps);  // ∂acts/∂θ (STE)
            }
            g.LogThreshold[i] += (float)(dTheta * theta);                                     // ∂θ/∂log_threshold = θ
        }
    }

    // L0 = λ/B Σ_b Σ_i H(pre[b,i] − θ_i)
    public override float Sparsity(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, int batch, int dSae, float coefficient,
        SaeParameters p, Span<float> dActs, Span<float> dPre, SaeParameters? g)
    {
        float scale = coefficient / batch, eps = Bandwidth;
        double l0 = 0;
        for (int i = 0; i < dSae; i++)
        {
            float theta = MathF.Exp(p.LogThreshold[i]);
            double dTheta = 0;
            for (int b = 0; b < batch; b++)
            {
                float v = pre[b * dSae + i];
                if (v > theta) l0++;
                if (MathF.Abs((v - theta) / eps) < 0.5f) dTheta += -scale / eps;
            }
            if (g is not null) g.LogThreshold[i] += (float)(dTheta * theta);
        }
        return (float)(l0 * scale);
    }
}

/// <summary>
/// Matryoshka BatchTopK SAE (Bussmann et al. 2025, arXiv 2503.17547; SAELens "matryoshka_batchtopk"): a BatchTopK SAE
/// whose features form nested prefixes [0, w₁) ⊂ [0, w₂) ⊂ … ⊂ [0, d_sae), each trained to reconstruct the input on its
/// own. The training loss adds, for every inner width w, Σ_d (b_dec + acts[:, :w]·W_dec[:w] − target)² / batch (the
/// outer level is the BatchTopK loss itself), so early features must carry general concepts and cannot be absorbed
/// into later, more specific ones. Encoding is BatchTopK's; a finished one is saved, as SAELens does, as JumpReLU.
/// </summary>
public sealed class MatryoshkaBatchTopKActivation : BatchTopKActivation
{
    /// <param name="k">Mean active features per row (over the batch).</param>
    /// <param name="widths">Level widths, strictly increasing, the last = d_sae (SAELens's matryoshka_widths).</param>
    /// <exception cref="ArgumentException">The widths are not strictly increasing positive numbers, or there is no inner level.</exception>
    public MatryoshkaBatchTopKActivation(int k, IReadOnlyList<int> widths) : base(k)
    {
        ArgumentNullException.ThrowIfNull(widths);
        if (widths.Count < 2) throw new ArgumentException("a Matryoshka SAE needs at least one inner width below d_sae", nameof(widths));
        for (int i = 0; i < widths.Count; i++)
            if (widths[i] <= 0 || (i > 0 && widths[i] <= widths[i - 1]))
                throw new ArgumentException($"matryoshka widths must be positive and strictly increasing; found {string.Join(", ", widths)}", nameof(widths));
        Widths = [.. widths];
    }

    public override string Architecture => "matryoshka_batchtopk";

    /// <summary>The level widths; the last is d_sae.</summary>
    public IReadOnlyList<int> Widths { get; }

    /// <summary>
    /// The widths a caller asked for, checked against d_sae and completed as SAELens does: d_sae is appended when the
    /// list does not end with it. Messages name <paramref name="where"/> and <paramref name="field"/>.
    /// </summary>
    /// <exception cref="InputError">Empty, not strictly increasing, a width ≤ 0 or past d_sae, or no width below d_sae.</exception>
    public static int[] CheckWidths(IReadOnlyList<long> widths, int dSae, string where, string field)
    {
        ArgumentNullException.ThrowIfNull(widths);
        string found = string.Join(",", widths.Take(20)) + (widths.Count > 20 ? ",…" : "");
        if (widths.Count == 0) throw InputError.Expected(where, field, "at least one width below d_sae, e.g. 128,512", "nothing");
        for (int i = 0; i < widths.Count; i++)
        {
            if (widths[i] <= 0 || widths[i] > dSae)
                throw InputError.Expected(where, field, $"widths in [1, d_sae = {dSae}]", found);
            if (i > 0 && widths[i] <= widths[i - 1])
                throw InputError.Expected(where, field, "strictly increasing widths", found);
        }
        var list = widths.Select(w => (int)w).ToList();
        if (list[^1] != dSae) list.Add(dSae);
        if (list.Count < 2)
            throw InputError.Expected(where, field, $"at least one width below d_sae = {dSae}", found);
        return [.. list];
    }

    /// <summary>The widths as SAELens writes them, e.g. "[128, 512, 2048]".</summary>
    public override string ToString() => $"[{string.Join(", ", Widths)}]";
}
