namespace Loupe.Circuits.Toy;

/// <summary>How a toy model of superposition is trained (Elhage et al. 2022, "Toy Models of Superposition").</summary>
/// <param name="Features">n: sparse input features.</param>
/// <param name="Hidden">m &lt; n: the bottleneck's width.</param>
/// <param name="Density">Each feature is nonzero (uniform in [0, 1]) with this probability, independently (1 − sparsity).</param>
/// <param name="Importance">Per-feature weight of the squared error (null: all 1).</param>
/// <param name="Steps">Adam steps.</param>
/// <param name="Batch">Samples per step.</param>
/// <param name="LearningRate">Adam's learning rate.</param>
/// <param name="Seed">Initialisation and data.</param>
public sealed record ToySettings(int Features, int Hidden, double Density, double[]? Importance = null, int Steps = 4000, int Batch = 1024,
    double LearningRate = 5e-3, int Seed = 0);

/// <summary>
/// The ReLU output model: <c>h = W·x</c> (<c>W</c> is <c>[m, n]</c>), <c>x′ = ReLU(Wᵀ·h + b)</c>, trained on
/// <c>Σᵢ Iᵢ (xᵢ − x′ᵢ)²</c> with sparse uniform features. Column i of W is feature i's direction in the hidden space.
/// </summary>
public sealed class ToyModel
{
    ToyModel(ToySettings settings, double[] w, double[] b, double loss)
    {
        Settings = settings;
        W = w;
        B = b;
        Loss = loss;
    }

    public ToySettings Settings { get; }
    /// <summary><c>[m, n]</c> row-major.</summary>
    public double[] W { get; }
    /// <summary><c>[n]</c>.</summary>
    public double[] B { get; }
    /// <summary>The training loss over the last 100 steps (mean).</summary>
    public double Loss { get; }

    int N => Settings.Features;
    int M => Settings.Hidden;

    /// <summary>Feature i's direction in the hidden space (column i of W).</summary>
    public double[] Direction(int i) => [.. Enumerable.Range(0, M).Select(r => W[r * N + i])];

    /// <summary>‖W_i‖: about 1 for a represented feature, about 0 for one that is dropped.</summary>
    public double Norm(int i) => Math.Sqrt(Direction(i).Sum(v => v * v));

    /// <summary>How much other features share feature i's direction: <c>Σ_{j≠i} (Ŵᵢ·Wⱼ)²</c> (0: a dedicated dimension).</summary>
    public double Superposition(int i)
    {
        var wi = Direction(i);
        double norm = Math.Sqrt(wi.Sum(v => v * v));
        if (norm < 1e-9) return 0;
        double sum = 0;
        for (int j = 0; j < N; j++)
        {
            if (j == i) continue;
            var wj = Direction(j);
            double dot = 0;
            for (int r = 0; r < M; r++) dot += wi[r] / norm * wj[r];
            sum += dot * dot;
        }
        return sum;
    }

    /// <summary>m / ‖W‖²_F: hidden dimensions per represented feature (1 without superposition, 2/5 for a pentagon in 2-D).</summary>
    public double DimensionsPerFeature => M / W.Sum(v => v * v);

    /// <summary>Samples sparse feature vectors <c>[count, n]</c> with the model's density.</summary>
    public static double[] Sample(int features, double density, int count, Random rng)
    {
        var x = new double[count * features];
        for (int i = 0; i < x.Length; i++) x[i] = rng.NextDouble() < density ? rng.NextDouble() : 0;
        return x;
    }

    /// <summary>The hidden activations <c>h = W·x</c> of rows <paramref name="x"/> <c>[count, n]</c>, as <c>[count, m]</c> floats.</summary>
    public float[] HiddenOf(double[] x, int count)
    {
        var h = new float[count * M];
        for (int s = 0; s < count; s++)
            for (int r = 0; r < M; r++)
            {
                double v = 0;
                for (int i = 0; i < N; i++) v += W[r * N + i] * x[s * N + i];
                h[s * M + r] = (float)v;
            }
        return h;
    }

    /// <summary>Trains a toy model (plain double-precision loops: n and m are small).</summary>
    /// <exception cref="ArgumentException">A size is not positive, m ≥ n, the density is outside (0, 1], or the importances do not match n.</exception>
    public static ToyModel Train(ToySettings s)
    {
        int n = s.Features, m = s.Hidden, B = s.Batch;
        if (n < 2 || m < 1 || m >= n) throw new ArgumentException($"a toy model needs 1 ≤ m < n (got n = {n}, m = {m})", nameof(s));
        if (!(s.Density > 0 && s.Density <= 1)) throw new ArgumentException($"density must be in (0, 1], not {s.Density}", nameof(s));
        var importance = s.Importance ?? [.. Enumerable.Repeat(1.0, n)];
        if (importance.Length != n) throw new ArgumentException($"{importance.Length} importances for {n} features", nameof(s));
        var rng = new Random(s.Seed);
        var w = new double[m * n];
        double scale = Math.Sqrt(6.0 / (m + n)); // Xavier-uniform, as the paper's code initialises
        for (int i = 0; i < w.Length; i++) w[i] = (rng.NextDouble() * 2 - 1) * scale;
        var b = new double[n];
        var (mw, vw, mb, vb) = (new double[w.Length], new double[w.Length], new double[n], new double[n]);
        var gw = new double[w.Length];
        var gb = new double[n];
        var h = new double[m];
        var dz = new double[n];
        var dh = new double[m];
        double recent = 0;
        const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
        for (int step = 1; step <= s.Steps; step++)
        {
            var x = Sample(n, s.Density, B, rng);
            Array.Clear(gw);
            Array.Clear(gb);
            double loss = 0;
            for (int k = 0; k < B; k++)
            {
                var xs = x.AsSpan(k * n, n);
                for (int r = 0; r < m; r++)
                {
                    double v = 0;
                    for (int i = 0; i < n; i++) v += w[r * n + i] * xs[i];
                    h[r] = v;
                }
                Array.Clear(dh);
                for (int i = 0; i < n; i++)
                {
                    double z = b[i];
                    for (int r = 0; r < m; r++) z += w[r * n + i] * h[r];
                    double y = Math.Max(z, 0), err = y - xs[i];
                    loss += importance[i] * err * err;
                    dz[i] = z > 0 ? 2 * importance[i] * err / B : 0;
                    gb[i] += dz[i];
                    // z = Wᵀh + b: dW[r, i] += h[r]·dz[i]; dh[r] += W[r, i]·dz[i].
                    for (int r = 0; r < m; r++)
                    {
                        gw[r * n + i] += h[r] * dz[i];
                        dh[r] += w[r * n + i] * dz[i];
                    }
                }
                // h = W·x: dW[r, i] += dh[r]·x[i].
                for (int r = 0; r < m; r++)
                    for (int i = 0; i < n; i++) gw[r * n + i] += dh[r] * xs[i];
            }
            if (step > s.Steps - 100) recent += loss / B;
            double c1 = 1 - Math.Pow(beta1, step), c2 = 1 - Math.Pow(beta2, step);
            void Adam(double[] p, double[] g, double[] mo, double[] vo)
            {
                for (int i = 0; i < p.Length; i++)
                {
                    mo[i] = beta1 * mo[i] + (1 - beta1) * g[i];
                    vo[i] = beta2 * vo[i] + (1 - beta2) * g[i] * g[i];
                    p[i] -= s.LearningRate * (mo[i] / c1) / (Math.Sqrt(vo[i] / c2) + eps);
                }
            }
            Adam(w, gw, mw, vw);
            Adam(b, gb, mb, vb);
        }
        return new ToyModel(s, w, b, recent / Math.Min(100, s.Steps));
    }
}
