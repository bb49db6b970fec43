using System.Globalization;
using System.Text.Json;
using Loupe.Models.Loading;
using Loupe.Reports;

namespace Loupe.Circuits.Benchmark;

/// <summary>The shape of an attention-only transformer (no norms, no biases, learned positions).</summary>
/// <param name="Vocab">Tokens in and out.</param>
/// <param name="Context">Positions.</param>
/// <param name="DModel">Residual width.</param>
/// <param name="Heads">Heads per layer (live or not).</param>
/// <param name="DHead">Width of each head.</param>
/// <param name="Layers">Attention layers.</param>
public sealed record AttentionOnlyShape(int Vocab, int Context, int DModel, int Heads, int DHead, int Layers);

/// <summary>
/// A small attention-only transformer trained on the host in float64 (own forward and backward, Adam), in which
/// only some heads exist: the others have no parameters, so they are exactly zero in the exported checkpoint and
/// the circuit can only run through the live heads. Exported as a TransformerLens-native checkpoint so Loupe's
/// own model code (and every discovery method) runs on it.
/// </summary>
public sealed class TinyAttentionTransformer
{
    readonly double[] _embed, _positions, _unembed;
    readonly double[]?[] _query, _key, _value, _output; // per layer·heads + head; null = not live
    readonly List<double[]> _parameters = [];
    readonly double _scale;

    /// <param name="shape">The model's shape.</param>
    /// <param name="liveHeads">The heads that exist, as (layer, head).</param>
    /// <param name="seed">Seed of the initial weights.</param>
    /// <exception cref="ArgumentException">A live head is outside the shape, or no head is live.</exception>
    public TinyAttentionTransformer(AttentionOnlyShape shape, IReadOnlyCollection<(int Layer, int Head)> liveHeads, int seed)
    {
        Shape = shape;
        if (liveHeads.Count == 0) throw new ArgumentException("at least one head must be live", nameof(liveHeads));
        foreach (var (l, h) in liveHeads)
            if ((uint)l >= (uint)shape.Layers || (uint)h >= (uint)shape.Heads)
                throw new ArgumentException($"live head a{l}.h{h} is outside {shape.Layers} layers × {shape.Heads} heads", nameof(liveHeads));
        LiveHeads = [.. liveHeads.Distinct().Order()];
        int V = shape.Vocab, T = shape.Context, D = shape.DModel, dh = shape.DHead, n = shape.Layers * shape.Heads;
        _scale = 1 / Math.Sqrt(dh);
        var random = new Random(seed);
        double[] Init(int length, double std)
        {
            var w = new double[length];
            for (int i = 0; i < length; i++) w[i] = std * Gaussian(random);
            _parameters.Add(w);
            return w;
        }
        _embed = Init(V * D, 1 / Math.Sqrt(D));
        _positions = Init(T * D, 1 / Math.Sqrt(D));
        _query = new double[n][]; _key = new double[n][]; _value = new double[n][]; _output = new double[n][];
        foreach (var (l, h) in LiveHeads)
        {
            int i = l * shape.Heads + h;
            _query[i] = Init(D * dh, 1 / Math.Sqrt(D));
            _key[i] = Init(D * dh, 1 / Math.Sqrt(D));
            _value[i] = Init(D * dh, 1 / Math.Sqrt(D));
            _output[i] = Init(dh * D, 1 / Math.Sqrt(dh));
        }
        _unembed = Init(D * V, 1 / Math.Sqrt(D));
    }

    /// <summary>The model's shape.</summary>
    public AttentionOnlyShape Shape { get; }

    /// <summary>The heads that exist, ordered by (layer, head).</summary>
    public IReadOnlyList<(int Layer, int Head)> LiveHeads { get; }

    /// <summary>Every trainable array (the Adam state and gradients line up with it).</summary>
    internal IReadOnlyList<double[]> Parameters => _parameters;

    internal static double Gaussian(Random random) =>
        Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());

    /// <summary>
    /// Mean cross-entropy over the positions whose target is ≥ 0, and (when <paramref name="gradients"/> is given)
    /// its gradient added into arrays shaped like <see cref="Parameters"/>; also the number of targets predicted right (argmax).
    /// </summary>
    /// <param name="tokens">Sequences, one per row, each <see cref="AttentionOnlyShape.Context"/> long.</param>
    /// <param name="targets">The next token wanted at each position, or −1 where there is no loss.</param>
    /// <param name="gradients">Gradient accumulators (one per parameter array), or null for a forward pass only.</param>
    public (double Loss, int Correct, int Counted) Loss(IReadOnlyList<int[]> tokens, IReadOnlyList<int[]> targets, IReadOnlyList<double[]>? gradients)
    {
        int counted = targets.Sum(row => row.Count(t => t >= 0));
        if (counted == 0) throw new ArgumentException("no position has a target", nameof(targets));
        double loss = 0;
        int correct = 0;
        for (int b = 0; b < tokens.Count; b++)
        {
            var (l, c) = Sequence(tokens[b], targets[b], 1.0 / counted, gradients);
            loss += l;
            correct += c;
        }
        return (loss, correct, counted);
    }

    (double Loss, int Correct) Sequence(int[] x, int[] target, double weight, IReadOnlyList<double[]>? gradients)
    {
        int V = Shape.Vocab, T = Shape.Context, D = Shape.DModel, dh = Shape.DHead, L = Shape.Layers, H = Shape.Heads;
        if (x.Length != T || target.Length != T) throw new ArgumentException($"sequences must be {T} long");
        var resid = new double[L + 1][];
        resid[0] = new double[T * D];
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++)
                resid[0][t * D + d] = _embed[x[t] * D + d] + _positions[t * D + d];
        var cache = new Dictionary<int, (double[] Q, double[] K, double[] Vv, double[] A, double[] Z)>();
        for (int l = 0; l < L; l++)
        {
            var next = (double[])resid[l].Clone();
            for (int h = 0; h < H; h++)
            {
                int i = l * H + h;
                if (_query[i] is null) continue;
                var q = Project(resid[l], _query[i]!, T, D, dh);
                var k = Project(resid[l], _key[i]!, T, D, dh);
                var v = Project(resid[l], _value[i]!, T, D, dh);
                var a = new double[T * T];
                var z = new double[T * dh];
                for (int p = 0; p < T; p++)
                {
                    double max = double.NegativeInfinity;
                    for (int j = 0; j <= p; j++)
                    {
                        double s = 0;
                        for (int e = 0; e < dh; e++) s += q[p * dh + e] * k[j * dh + e];
                        a[p * T + j] = s * _scale;
                        max = Math.Max(max, a[p * T + j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= p; j++) sum += a[p * T + j] = Math.Exp(a[p * T + j] - max);
                    for (int j = 0; j <= p; j++)
                    {
                        a[p * T + j] /= sum;
                        for (int e = 0; e < dh; e++) z[p * dh + e] += a[p * T + j] * v[j * dh + e];
                    }
                }
                var o = _output[i]!;
                for (int p = 0; p < T; p++)
                    for (int e = 0; e < dh; e++)
                    {
                        double ze = z[p * dh + e];
                        for (int d = 0; d < D; d++) next[p * D + d] += ze * o[e * D + d];
                    }
                cache[i] = (q, k, v, a, z);
            }
            resid[l + 1] = next;
        }

        double loss = 0;
        int correct = 0;
        var dResid = gradients is null ? null : new double[T * D];
        var logits = new double[V];
        for (int t = 0; t < T; t++)
        {
            if (target[t] < 0) continue;
            Array.Clear(logits);
            for (int d = 0; d < D; d++)
            {
                double r = resid[L][t * D + d];
                for (int u = 0; u < V; u++) logits[u] += r * _unembed[d * V + u];
            }
            int best = 0;
            double max = logits[0];
            for (int u = 1; u < V; u++) if (logits[u] > max) (max, best) = (logits[u], u);
            if (best == target[t]) correct++;
            double sum = 0;
            for (int u = 0; u < V; u++) sum += Math.Exp(logits[u] - max);
            loss += weight * (Math.Log(sum) + max - logits[target[t]]);
            if (dResid is null) continue;
            var gU = gradients![^1];
            for (int u = 0; u < V; u++)
            {
                double g = weight * (Math.Exp(logits[u] - max) / sum - (u == target[t] ? 1 : 0));
                for (int d = 0; d < D; d++)
                {
                    gU[d * V + u] += resid[L][t * D + d] * g;
                    dResid[t * D + d] += g * _unembed[d * V + u];
                }
            }
        }
        if (dResid is null) return (loss, correct);

        for (int l = L - 1; l >= 0; l--)
        {
            var dIn = (double[])dResid.Clone();
            for (int h = 0; h < H; h++)
            {
                int i = l * H + h;
                if (_query[i] is null) continue;
                var (q, k, v, a, z) = cache[i];
                var o = _output[i]!;
                var gO = Gradient(gradients!, o);
                var dz = new double[T * dh];
                for (int p = 0; p < T; p++)
                    for (int e = 0; e < dh; e++)
                    {
                        double s = 0, ze = z[p * dh + e];
                        for (int d = 0; d < D; d++)
                        {
                            s += dResid[p * D + d] * o[e * D + d];
                            gO[e * D + d] += ze * dResid[p * D + d];
                        }
                        dz[p * dh + e] = s;
                    }
                var dq = new double[T * dh];
                var dk = new double[T * dh];
                var dv = new double[T * dh];
                var da = new double[T];
                for (int p = 0; p < T; p++)
                {
                    double weighted = 0;
                    for (int j = 0; j <= p; j++)
                    {
                        double s = 0, w = a[p * T + j];
                        for (int e = 0; e < dh; e++)
                        {
                            s += dz[p * dh + e] * v[j * dh + e];
                            dv[j * dh + e] += w * dz[p * dh + e];
                        }
                        da[j] = s;
                        weighted += w * s;
                    }
                    for (int j = 0; j <= p; j++)
                    {
                        double ds = a[p * T + j] * (da[j] - weighted) * _scale;
                        for (int e = 0; e < dh; e++)
                        {
                            dq[p * dh + e] += ds * k[j * dh + e];
                            dk[j * dh + e] += ds * q[p * dh + e];
                        }
                    }
                }
                Backproject(resid[l], dq, _query[i]!, Gradient(gradients!, _query[i]!), dIn, T, D, dh);
                Backproject(resid[l], dk, _key[i]!, Gradient(gradients!, _key[i]!), dIn, T, D, dh);
                Backproject(resid[l], dv, _value[i]!, Gradient(gradients!, _value[i]!), dIn, T, D, dh);
            }
            dResid = dIn;
        }
        var gE = gradients![0];
        var gP = gradients[1];
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++)
            {
                gE[x[t] * D + d] += dResid[t * D + d];
                gP[t * D + d] += dResid[t * D + d];
            }
        return (loss, correct);
    }

    double[] Gradient(IReadOnlyList<double[]> gradients, double[] parameter) => gradients[_parameters.IndexOf(parameter)];

    static double[] Project(double[] resid, double[] w, int T, int D, int dh)
    {
        var y = new double[T * dh];
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++)
            {
                double r = resid[t * D + d];
                for (int e = 0; e < dh; e++) y[t * dh + e] += r * w[d * dh + e];
            }
        return y;
    }

    static void Backproject(double[] resid, double[] dy, double[] w, double[] gW, double[] dResid, int T, int D, int dh)
    {
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++)
            {
                double r = resid[t * D + d], s = 0;
                for (int e = 0; e < dh; e++)
                {
                    gW[d * dh + e] += r * dy[t * dh + e];
                    s += dy[t * dh + e] * w[d * dh + e];
                }
                dResid[t * D + d] += s;
            }
    }

    /// <summary>
    /// Adam on batches from <paramref name="sample"/> until the accuracy on a batch reaches <paramref name="targetAccuracy"/>
    /// three evaluations running, or <paramref name="maxSteps"/>; returns the steps taken.
    /// </summary>
    /// <param name="sample">Draws one training sequence and its targets (−1 = no loss).</param>
    /// <param name="seed">Seed of the batches.</param>
    /// <param name="maxSteps">The most Adam steps.</param>
    /// <param name="batch">Sequences per step.</param>
    /// <param name="learningRate">Adam's step size.</param>
    /// <param name="targetAccuracy">Accuracy at which training stops early.</param>
    public int Train(Func<Random, (int[] Tokens, int[] Targets)> sample, int seed, int maxSteps, int batch = 32, double learningRate = 1e-2, double targetAccuracy = 0.995)
    {
        var random = new Random(seed);
        var grads = _parameters.Select(p => new double[p.Length]).ToArray();
        var m = _parameters.Select(p => new double[p.Length]).ToArray();
        var s = _parameters.Select(p => new double[p.Length]).ToArray();
        const double beta1 = 0.9, beta2 = 0.98, eps = 1e-8;
        int streak = 0;
        for (int step = 1; step <= maxSteps; step++)
        {
            var rows = Enumerable.Range(0, batch).Select(_ => sample(random)).ToArray();
            foreach (var g in grads) Array.Clear(g);
            var (_, correct, counted) = Loss([.. rows.Select(r => r.Tokens)], [.. rows.Select(r => r.Targets)], grads);
            streak = correct >= targetAccuracy * counted ? streak + 1 : 0;
            if (streak >= 3) return step;
            double c1 = 1 - Math.Pow(beta1, step), c2 = 1 - Math.Pow(beta2, step);
            for (int p = 0; p < _parameters.Count; p++)
            {
                var w = _parameters[p];
                for (int i = 0; i < w.Length; i++)
                {
                    double g = grads[p][i];
                    m[p][i] = beta1 * m[p][i] + (1 - beta1) * g;
                    s[p][i] = beta2 * s[p][i] + (1 - beta2) * g * g;
                    w[i] -= learningRate * (m[p][i] / c1) / (Math.Sqrt(s[p][i] / c2) + eps);
                }
            }
        }
        return maxSteps;
    }

    /// <summary>
    /// Writes a TransformerLens-native checkpoint (<c>config.json</c> + <c>model.safetensors</c>): attention-only,
    /// no normalization, no biases, the heads that are not live all zero.
    /// </summary>
    /// <param name="folder">The checkpoint folder (created when absent).</param>
    /// <param name="name">The model's name in config.json.</param>
    /// <param name="task">One line on what it was trained to do, recorded in config.json.</param>
    public void Export(string folder, string name, string task)
    {
        Directory.CreateDirectory(folder);
        int V = Shape.Vocab, T = Shape.Context, D = Shape.DModel, dh = Shape.DHead, H = Shape.Heads;
        static ReadOnlyMemory<float> F(double[] w) => w.Select(x => (float)x).ToArray();
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("embed.W_E", [V, D], F(_embed)),
            ("pos_embed.W_pos", [T, D], F(_positions)),
            ("unembed.W_U", [D, V], F(_unembed)),
        };
        for (int l = 0; l < Shape.Layers; l++)
        {
            // TL layout: W_Q/W_K/W_V [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model]; heads that are not live stay 0.
            float[] Stack(double[]?[] perHead, int size)
            {
                var all = new float[H * size];
                for (int h = 0; h < H; h++)
                    if (perHead[l * H + h] is { } w)
                        for (int i = 0; i < size; i++) all[h * size + i] = (float)w[i];
                return all;
            }
            tensors.Add(($"blocks.{l}.attn.W_Q", [H, D, dh], Stack(_query, D * dh)));
            tensors.Add(($"blocks.{l}.attn.W_K", [H, D, dh], Stack(_key, D * dh)));
            tensors.Add(($"blocks.{l}.attn.W_V", [H, D, dh], Stack(_value, D * dh)));
            tensors.Add(($"blocks.{l}.attn.W_O", [H, dh, D], Stack(_output, dh * D)));
        }
        SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors);
        var config = new Dictionary<string, object?>
        {
            ["format"] = "transformer_lens",
            ["model_name"] = name,
            ["n_layers"] = Shape.Layers,
            ["d_model"] = D,
            ["n_ctx"] = T,
            ["d_head"] = dh,
            ["n_heads"] = H,
            ["d_mlp"] = null,
            ["d_vocab"] = V,
            ["d_vocab_out"] = V,
            ["act_fn"] = null,
            ["normalization_type"] = null,
            ["attn_only"] = true,
            ["positional_embedding_type"] = "standard",
            ["attention_dir"] = "causal",
            ["use_attn_scale"] = true,
            ["task"] = task,
            ["live_heads"] = string.Join(",", LiveHeads.Select(x => string.Create(CultureInfo.InvariantCulture, $"a{x.Layer}.h{x.Head}"))),
            ["source"] = "trained by Loupe (Loupe.Circuits.Benchmark.PlantedTasks)",
        };
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }));
    }
}
