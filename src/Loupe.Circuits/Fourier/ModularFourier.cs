using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Circuits.Fourier;

/// <summary>What <see cref="ModularFourier.Analyze"/> found in a modular-addition model.</summary>
/// <param name="P">The modulus p.</param>
/// <param name="EmbeddingNorms">Per frequency k = 0…(p−1)/2, the norm of the token embedding's component along cos/sin(2πk·x/p) (k = 0: the constant).</param>
/// <param name="KeyFrequencies">The key frequencies, strongest first.</param>
/// <param name="Accuracy">Share of the p² pairs whose argmax is (a + b) mod p.</param>
/// <param name="Loss">Mean cross-entropy over the p² pairs (logits over the first p outputs).</param>
/// <param name="RestrictedLoss">The loss with the logits kept only along cos/sin(2πk(a+b−c)/p) for the key frequencies (Nanda et al. 2023).</param>
/// <param name="ExcludedLoss">The loss with those directions removed from the logits.</param>
/// <param name="NeuronKeyFraction">Mean over MLP neurons (last position) of the share of their activation variance over (a, b) that lies in 2-D Fourier terms whose frequencies are key (or 0).</param>
/// <param name="LogitFrequencyNorms">Per frequency k = 1…(p−1)/2, the logits' norm along cos/sin(2πk(a+b−c)/p), over all pairs.</param>
/// <param name="AttentionKeyFraction">Per head of the first layer, the share of the variance over (a, b) of its attention from "=" to a that lies in key-frequency terms.</param>
public sealed record FourierReport(int P, double[] EmbeddingNorms, int[] KeyFrequencies, double Accuracy, double Loss,
    double RestrictedLoss, double ExcludedLoss, double NeuronKeyFraction, double[] LogitFrequencyNorms, double[] AttentionKeyFraction);

/// <summary>
/// Fourier analysis of a model trained on (a + b) mod p (Nanda et al. 2023, "Progress measures for grokking
/// via mechanistic interpretability"): the token embedding, the MLP neurons and the logits in the Fourier
/// basis of Z_p; the key frequencies found from the logits; restricted and excluded loss.
/// Input format: <c>[a, b, =]</c>, the answer read at the last position from the first p outputs.
/// </summary>
public static class ModularFourier
{
    /// <summary>Runs the model on all p² pairs and analyses it.</summary>
    /// <param name="model">The model.</param>
    /// <param name="p">The modulus (tokens 0…p−1 are the numbers).</param>
    /// <param name="equalsToken">The "=" token that ends every input.</param>
    /// <param name="keyShare">
    /// When given, a frequency is key when its share of the logits' Fourier energy is at least this. By default the
    /// key frequencies are those above the largest drop (ratio) between consecutive norms, sorted, among the top 20:
    /// the logits of a grokked model sit on a few frequencies with a gap of orders of magnitude to the rest.
    /// </param>
    /// <exception cref="InputError">p is below 3 or even, the model's vocabulary or outputs are smaller than p, its context is shorter than 3, or the "=" token is outside the vocabulary.</exception>
    public static FourierReport Analyze(HookedTransformer model, int p, int equalsToken, double? keyShare = null)
    {
        var cfg = model.Config;
        if (p < 3 || p % 2 == 0) throw new InputError($"argument: --p: expected an odd modulus ≥ 3, found {p}");
        if (cfg.DVocab < p || cfg.VocabOut < p) throw new InputError($"argument: --p: the model has {cfg.DVocab} input and {cfg.VocabOut} output tokens; p = {p} needs at least p of each");
        if ((uint)equalsToken >= (uint)cfg.DVocab) throw new InputError($"argument: --equals: token {equalsToken} is outside the vocabulary (d_vocab = {cfg.DVocab})");
        // An "=" among the operands would make [a, b, =] ambiguous: the analysis would read a number where the model sees "=".
        if (equalsToken < p) throw new InputError($"argument: --equals: token {equalsToken} is one of the numbers 0..{p - 1}; the \"=\" token must be another token (Nanda's grokking models use p = {p})");
        if (cfg.NCtx < 3) throw new InputError($"the model's context is {cfg.NCtx} tokens; inputs [a, b, =] need 3");
        int K = (p - 1) / 2, V = cfg.VocabOut;

        // 1. The token embedding of the numbers (hook_embed of each token alone).
        var ids = Enumerable.Range(0, p).ToArray();
        var embed = model.Run(new TokenBatch(ids, p, 1), new RunOptions { CacheFilter = n => n == HookNames.Embed, LastPositionLogitsOnly = true })
            .Cache[HookNames.Embed].ToCpu().Span;
        int D = cfg.DModel;
        var embeddingNorms = new double[K + 1];
        for (int d = 0; d < D; d++)
            for (int k = 0; k <= K; k++)
            {
                double c = 0, s = 0;
                for (int x = 0; x < p; x++) { double w = 2 * Math.PI * k * x / p; c += embed[x * D + d] * Math.Cos(w); s += embed[x * D + d] * Math.Sin(w); }
                embeddingNorms[k] += (c * c + s * s) * (k == 0 ? 1.0 / p : 2.0 / p);
            }
        for (int k = 0; k <= K; k++) embeddingNorms[k] = Math.Sqrt(embeddingNorms[k]);

        // 2. Every pair: last-position logits over the first p outputs, and the last MLP's neurons there.
        string neuronsHook = HookNames.MlpPost(cfg.NLayers - 1);
        bool hasMlp = model.Anatomy(cfg.NLayers - 1).Mlp is not null;
        int N = hasMlp ? cfg.DMlp : 0;
        var logits = new double[p * p * p];
        var neurons = new double[(long)p * p * N];
        string patternHook = HookNames.Pattern(0);
        int H = cfg.NHeads;
        var attention = new double[(long)p * p * H];
        const int Chunk = 1024;
        for (int start = 0; start < p * p; start += Chunk)
        {
            int rows = Math.Min(Chunk, p * p - start);
            var tokens = new int[rows * 3];
            for (int r = 0; r < rows; r++) { tokens[3 * r] = (start + r) / p; tokens[3 * r + 1] = (start + r) % p; tokens[3 * r + 2] = equalsToken; }
            var run = model.Run(new TokenBatch(tokens, rows, 3), new RunOptions { CacheFilter = n => (hasMlp && n == neuronsHook) || n == patternHook, LastPositionLogitsOnly = true });
            var pattern = run.Cache[patternHook].ToCpu().Span; // [rows, H, 3, 3]: from "=" (query 2) to a (key 0)
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < H; h++) attention[(long)(start + r) * H + h] = pattern[((r * H + h) * 3 + 2) * 3];
            var l = run.Logits.ToCpu().Span;
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < p; c++) logits[(start + r) * p + c] = l[r * V + c];
            if (hasMlp)
            {
                var h = run.Cache[neuronsHook].ToCpu().Span;
                for (int r = 0; r < rows; r++)
                    for (int n = 0; n < N; n++) neurons[(long)(start + r) * N + n] = h[(r * 3 + 2) * N + n];
            }
        }

        // 3. The logits along cos/sin(2πk(a+b−c)/p): the directions the paper's algorithm writes.
        // These directions depend on (a, b, c) only through m = (a + b − c) mod p: sum the logits by m first.
        var byM = new double[p];
        for (int a = 0; a < p; a++)
            for (int b = 0; b < p; b++)
                for (int c = 0; c < p; c++) byM[((a + b - c) % p + p) % p] += logits[(a * p + b) * p + c];
        var cu = new double[K + 1];
        var cv = new double[K + 1];
        for (int k = 1; k <= K; k++)
            for (int m = 0; m < p; m++)
            {
                double w = 2 * Math.PI * k * m / p;
                cu[k] += byM[m] * Math.Cos(w);
                cv[k] += byM[m] * Math.Sin(w);
            }
        double unit = p * (double)p * p / 2; // ‖cos(2πk(a+b−c)/p)‖² over the cube
        var logitNorms = new double[K + 1];
        for (int k = 1; k <= K; k++) logitNorms[k] = Math.Sqrt((cu[k] * cu[k] + cv[k] * cv[k]) / unit);
        var sorted = Enumerable.Range(1, K).OrderByDescending(k => logitNorms[k]).ToArray();
        int[] keys;
        if (keyShare is double share)
        {
            double total = logitNorms.Sum(x => x * x);
            keys = [.. sorted.Where(k => logitNorms[k] * logitNorms[k] >= share * total)];
        }
        else
        {
            int cut = 1;
            double best = 0;
            for (int i = 0; i + 1 < Math.Min(20, sorted.Length); i++)
            {
                double ratio = logitNorms[sorted[i]] / Math.Max(logitNorms[sorted[i + 1]], 1e-300);
                if (ratio > best) { best = ratio; cut = i + 1; }
            }
            keys = sorted[..cut];
        }

        // 4. Loss with the logits restricted to, or cleaned of, the key directions.
        double Loss(Func<int, int, int, double> logit, out double accuracy)
        {
            double loss = 0;
            int right = 0;
            var row = new double[p];
            for (int a = 0; a < p; a++)
                for (int b = 0; b < p; b++)
                {
                    double max = double.NegativeInfinity;
                    for (int c = 0; c < p; c++) max = Math.Max(max, row[c] = logit(a, b, c));
                    double sum = 0;
                    for (int c = 0; c < p; c++) sum += Math.Exp(row[c] - max);
                    int answer = (a + b) % p;
                    loss += Math.Log(sum) + max - row[answer];
                    if (Array.IndexOf(row, row.Max()) == answer) right++;
                }
            accuracy = right / (double)(p * p);
            return loss / (p * p);
        }
        var keyPart = new double[p];
        for (int m = 0; m < p; m++)
            foreach (int k in keys)
            {
                double w = 2 * Math.PI * k * m / p;
                keyPart[m] += (cu[k] * Math.Cos(w) + cv[k] * Math.Sin(w)) / unit;
            }
        double KeyPart(int a, int b, int c) => keyPart[((a + b - c) % p + p) % p];
        double loss = Loss((a, b, c) => logits[(a * p + b) * p + c], out double accuracy);
        double restricted = Loss(KeyPart, out _);
        double excluded = Loss((a, b, c) => logits[(a * p + b) * p + c] - KeyPart(a, b, c), out _);

        // 5. Neurons: share of each neuron's variance over (a, b) in 2-D Fourier terms of key (or zero) frequencies.
        double neuronShare = hasMlp ? KeyShare(neurons, p, N, keys).Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average() : double.NaN;
        var attentionShare = KeyShare(attention, p, H, keys);
        return new FourierReport(p, embeddingNorms, keys, accuracy, loss, restricted, excluded, neuronShare, logitNorms, attentionShare);
    }

    /// <summary>
    /// For each of <paramref name="N"/> functions of (a, b) (<paramref name="values"/>[(a·p + b)·N + n]), the share of its
    /// variance in 2-D Fourier terms whose frequencies are key (or 0); NaN for a constant one.
    /// </summary>
    static double[] KeyShare(double[] values, int p, int N, int[] keys)
    {
        var neurons = values;
        int K = (p - 1) / 2;
        var allowed = new bool[K + 1];
        allowed[0] = true;
        foreach (int k in keys) allowed[k] = true;
        // Real 1-D basis per axis: index 0 constant, 2k−1 cos k, 2k sin k (orthonormal).
        var basis = new double[p, p];
        for (int x = 0; x < p; x++)
        {
            basis[0, x] = 1 / Math.Sqrt(p);
            for (int k = 1; k <= K; k++)
            {
                basis[2 * k - 1, x] = Math.Sqrt(2.0 / p) * Math.Cos(2 * Math.PI * k * x / p);
                basis[2 * k, x] = Math.Sqrt(2.0 / p) * Math.Sin(2 * Math.PI * k * x / p);
            }
        }
        int Freq(int i) => (i + 1) / 2;
        var shares = new double[N];
        var f = new double[p, p];
        var tmp = new double[p, p];
        for (int n = 0; n < N; n++)
        {
            // F = B·A·Bᵀ with A[a, b] the neuron's activation.
            for (int i = 0; i < p; i++)
                for (int b = 0; b < p; b++)
                {
                    double s = 0;
                    for (int a = 0; a < p; a++) s += basis[i, a] * neurons[(long)(a * p + b) * N + n];
                    tmp[i, b] = s;
                }
            double energy = 0, key = 0;
            for (int i = 0; i < p; i++)
                for (int j = 0; j < p; j++)
                {
                    double s = 0;
                    for (int b = 0; b < p; b++) s += tmp[i, b] * basis[j, b];
                    if (i == 0 && j == 0) continue; // the mean is not variance
                    energy += s * s;
                    if (allowed[Freq(i)] && allowed[Freq(j)]) key += s * s;
                }
            shares[n] = energy <= 1e-12 ? double.NaN : key / energy; // NaN: a dead neuron, a constant head
        }
        return shares;
    }
}
