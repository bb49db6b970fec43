using System.Security.Cryptography;
using System.Text;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors.Kernels;

namespace Loupe.Bench;

/// <summary>
/// A seeded random cross-layer transcoder for the attribution bench: features of layer ℓ read
/// <c>blocks.ℓ.mlp.hook_in</c> (the MLP's input) and write <c>blocks.t.hook_mlp_out</c> for every t ≥ ℓ, with a TopK
/// activation (the <paramref name="k"/> largest positive pre-activations per position and layer survive), so
/// the number of active features — and so the attribution's size — grows as k · layers · positions, as it
/// does for a trained sparse dictionary.
/// <para>
/// Encoders are dense <c>[features, d_model]</c> per layer, N(0, 1/d_model) (pre-activations ≈ N(0, 1) on a
/// normalised input), generated on first use. Decoders are never stored: a real CLT of the bench's shape has
/// 12 × 8192 × (12…1 targets) × 768 fp32 ≈ 2 GB of them, which would dominate the measured peak without
/// being the attribution engine's. Each decoder row (ℓ, feature, t) is instead a slice of a shared pool of
/// N(0, 1/d_model) samples at a hashed offset with a hashed sign — deterministic, unit-norm in expectation,
/// nearly orthogonal to every other row — times a per-target scale chosen by <see cref="Calibrate"/> so
/// that the reconstruction of each MLP output has that output's norm.
/// </para>
/// </summary>
/// <param name="layers">n_layers of the model.</param>
/// <param name="dModel">d_model (both what the features read and what they write).</param>
/// <param name="features">Features per layer.</param>
/// <param name="k">Active features per position and layer (TopK).</param>
/// <param name="seed">Seed of every random weight.</param>
public sealed class RandomCrossLayerTranscoder(int layers, int dModel, int features, int k, int seed) : IMlpReplacement
{
    const int PoolLength = 1 << 22;

    readonly float[]?[] _encoders = new float[]?[layers];
    readonly float[] _decoderScale = Enumerable.Repeat(1f, layers).ToArray();
    readonly Lazy<float[]> _pool = new(() => Normals(PoolLength, 1.0 / Math.Sqrt(dModel), (int)Mix((ulong)(uint)seed, 0xDEC0DE00UL)));

    public int Layers => layers;
    public int DIn => dModel;
    public int DOut => dModel;
    public int K => k;
    public bool HasSkip => false;
    public float[]? SkipWeights(int layer) => null;
    public string Source => $"random CLT ({layers} layers × {features} features, TopK {k}, seed {seed})";

    public string Fingerprint
    {
        get
        {
            string what = $"random-clt L={layers} d={dModel} F={features} k={k} seed={seed} scales={string.Join(",", _decoderScale.Select(s => s.ToString("R", System.Globalization.CultureInfo.InvariantCulture)))}";
            return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(what)))[..16];
        }
    }

    /// <summary>The norm of every decoder row into MLP output <c>t</c>, per t.</summary>
    public IReadOnlyList<float> DecoderScales => _decoderScale;

    public int Features(int layer) => features;
    public string InputHook(int layer) => $"blocks.{layer}.mlp.hook_in";
    public string OutputHook(int layer) => HookNames.MlpOut(layer);
    public int LastTarget(int layer) => layers - 1;

    /// <summary>Bytes a stored CLT of this shape would hold (encoders + every decoder block), for the report.</summary>
    public long DenseBytes => 4L * features * dModel * (layers + (long)layers * (layers + 1) / 2);

    /// <summary>Bytes this one holds once every encoder has been generated (encoders + the decoder pool).</summary>
    public long HeldBytes => 4L * features * dModel * layers + 4L * PoolLength;

    float[] Encoder(int layer)
    {
        var e = Volatile.Read(ref _encoders[layer]);
        if (e is not null) return e;
        e = Normals((long)features * dModel, 1.0 / Math.Sqrt(dModel), (int)Mix((ulong)(uint)seed, 0xE0C0DE00UL + (ulong)layer));
        return Interlocked.CompareExchange(ref _encoders[layer], e, null) ?? e;
    }

    public void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts)
    {
        var w = Encoder(layer);
        // pre[rows, F] = x[rows, d] · W_encᵀ (W_enc is stored [F, d]); no encoder bias.
        Gemm.Sgemm(false, true, rows, features, dModel, 1f, x, dModel, w, dModel, 0f, pre, features);
        var top = new int[k];
        for (int r = 0; r < rows; r++)
        {
            var p = pre.Slice(r * features, features);
            var a = acts.Slice(r * features, features);
            a.Clear();
            int n = TopK(p, top);
            for (int i = 0; i < n; i++) a[top[i]] = p[top[i]];
        }
    }

    /// <summary>Indices of the (up to) k largest positive entries of <paramref name="values"/>; returns how many.</summary>
    int TopK(ReadOnlySpan<float> values, int[] top)
    {
        // A small unsorted set with its minimum tracked: each entry is compared once, replacements are rare.
        int n = 0, minAt = -1;
        float min = 0f;
        for (int i = 0; i < values.Length; i++)
        {
            float v = values[i];
            if (!(v > 0f)) continue;
            if (n < k)
            {
                top[n++] = i;
                if (n == k) (minAt, min) = Min(values, top, n);
            }
            else if (v > min)
            {
                top[minAt] = i;
                (minAt, min) = Min(values, top, n);
            }
        }
        return n;
    }

    static (int At, float Value) Min(ReadOnlySpan<float> values, int[] top, int n)
    {
        int at = 0;
        for (int j = 1; j < n; j++)
            if (values[top[j]] < values[top[at]]) at = j;
        return (at, values[top[at]]);
    }

    public void EncoderDirection(int layer, int feature, Span<float> into) =>
        Encoder(layer).AsSpan(feature * dModel, dModel).CopyTo(into);

    public void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into)
    {
        if (targetLayer < layer || targetLayer >= layers)
            throw new ArgumentOutOfRangeException(nameof(targetLayer), $"features of layer {layer} write layers {layer}…{layers - 1}, not {targetLayer}");
        ulong h = Mix((ulong)(uint)seed, ((ulong)(uint)layer << 40) ^ ((ulong)(uint)targetLayer << 32) ^ (uint)feature);
        int offset = (int)(h % (ulong)(PoolLength - dModel));
        float scale = (h >> 63) != 0 ? -_decoderScale[targetLayer] : _decoderScale[targetLayer];
        System.Numerics.Tensors.TensorPrimitives.Multiply(_pool.Value.AsSpan(offset, dModel), scale, into[..dModel]);
    }

    public void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon)
    {
        recon[..(rows * dModel)].Clear();
        var row = new float[dModel];
        for (int l = 0; l <= targetLayer; l++)
        {
            var a = acts[l];
            for (int r = 0; r < rows; r++)
                for (int f = 0; f < features; f++)
                {
                    float v = a[r * features + f];
                    if (v == 0f) continue;
                    DecoderDirection(l, f, targetLayer, row);
                    var dst = recon.Slice(r * dModel, dModel);
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(row, v, dst, dst);
                }
        }
    }

    /// <summary>
    /// Sets each target's decoder scale so that the reconstruction of MLP output t has, on
    /// <paramref name="tokens"/>, the mean norm of that output: scale_t² = E‖mlp_out_t‖² / Σ_{ℓ≤t} E Σ act_ℓ²
    /// (decoder rows are unit-norm and nearly orthogonal, so their squared norms add).
    /// </summary>
    public void Calibrate(HookedTransformer model, int[] tokens)
    {
        var hooks = new HashSet<string>(StringComparer.Ordinal);
        for (int l = 0; l < layers; l++) { hooks.Add(InputHook(l)); hooks.Add(OutputHook(l)); }
        var run = model.Run(TokenBatch.Single(tokens), new RunOptions { CacheFilter = hooks.Contains });
        int T = tokens.Length;
        var pre = new float[T * features];
        var acts = new float[T * features];
        double cumulativeActs = 0;
        for (int t = 0; t < layers; t++)
        {
            Encode(t, run.Cache[InputHook(t)].ToCpu().Span, T, pre, acts);
            cumulativeActs += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(acts) / T;
            double outNorm2 = System.Numerics.Tensors.TensorPrimitives.SumOfSquares(run.Cache[OutputHook(t)].ToCpu().Span) / T;
            _decoderScale[t] = cumulativeActs > 0 ? (float)Math.Sqrt(outNorm2 / cumulativeActs) : 1f;
        }
    }

    /// <summary>N(0, std²) samples (Box–Muller), filled in parallel chunks each with its own seed.</summary>
    static float[] Normals(long n, double std, int seed)
    {
        var a = new float[n];
        const int Chunk = 1 << 20;
        long chunks = (n + Chunk - 1) / Chunk;
        Parallel.For(0L, chunks, c =>
        {
            var rng = new Random((int)Mix((ulong)(uint)seed, (ulong)c));
            long end = Math.Min(n, (c + 1) * Chunk);
            for (long i = c * Chunk; i < end; i += 2)
            {
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                double r = std * Math.Sqrt(-2.0 * Math.Log(u1)), th = 2.0 * Math.PI * u2;
                a[i] = (float)(r * Math.Cos(th));
                if (i + 1 < end) a[i + 1] = (float)(r * Math.Sin(th));
            }
        });
        return a;
    }

    /// <summary>splitmix64 finaliser over a seed and a key: decoder rows' offsets and signs.</summary>
    static ulong Mix(ulong seed, ulong key)
    {
        ulong z = seed * 0x9E3779B97F4A7C15UL + key + 0x632BE59BD9B4E019UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
