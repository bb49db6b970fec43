using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>
/// Matryoshka BatchTopK SAEs: the nested losses against the definition computed in double from the activations and
/// weights, the widths' checks, the SAELens forms (finished: JumpReLU; training: matryoshka_batchtopk) and resume.
/// Gradients: SaeGradientTests (finite differences); sparse vs dense: SparseStepTests; device: DeviceSaeTrainingTests.
/// </summary>
public sealed class MatryoshkaTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-matryoshka-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    static float[] Gaussian(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => SparseDictionary.Gaussian(rng)).ToArray();
    }

    static SparseDictionary Trained(SaeShape shape, SaeActivation act, int seed = 4)
    {
        var d = new SparseDictionary(shape, act);
        d.Initialize(seed, decoderNorm: 0.6f);
        var rng = new Random(seed + 1);
        for (int i = 0; i < d.P.BEnc.Length; i++) d.P.BEnc[i] = 0.1f * SparseDictionary.Gaussian(rng);
        for (int i = 0; i < d.P.BDec.Length; i++) d.P.BDec[i] = 0.2f * SparseDictionary.Gaussian(rng);
        for (int i = 0; i < d.P.WSkip.Length; i++) d.P.WSkip[i] = 0.1f * SparseDictionary.Gaussian(rng);
        return d;
    }

    [Theory]
    [InlineData(false, 0.0)]   // dense decoder products
    [InlineData(false, 1.0)]   // sparse rows
    [InlineData(true, 1.0)]    // skip-transcoder: W_skip belongs to every level
    public void TheLossAddsEachInnerLevelsErrorToBatchTopKs(bool skipTranscoder, double sparseDensity)
    {
        const int dIn = 12, dSae = 40, batch = 16, k = 5;
        int[] widths = [4, 15, dSae];
        var shape = skipTranscoder ? SaeShape.Transcoder(dIn, dSae, 8, skip: true) : SaeShape.Sae(dIn, dSae);
        var matryoshka = Trained(shape, new MatryoshkaBatchTopKActivation(k, widths));
        matryoshka.SparseDensity = sparseDensity;
        var plain = Trained(shape, new BatchTopKActivation(k));
        var x = Gaussian(batch * dIn, 1);
        var target = skipTranscoder ? Gaussian(batch * shape.DOut, 2) : x;
        var acts = new float[batch * dSae];
        var m = matryoshka.ForwardBackward(x, target, batch, 0, new SaeParameters(shape), actsOut: acts);
        var b = plain.ForwardBackward(x, target, batch, 0, null);

        // Σ_levels Σ_b Σ_d (b_dec + x·W_skip + acts[b, :w]·W_dec[:w] − target)² / batch, in double from the parts
        var p = matryoshka.P;
        int dOut = shape.DOut;
        double inner = 0;
        foreach (int w in widths[..^1])
            for (int r = 0; r < batch; r++)
                for (int j = 0; j < dOut; j++)
                {
                    double recon = p.BDec[j];
                    if (shape.Skip) for (int i = 0; i < dIn; i++) recon += (double)x[r * dIn + i] * p.WSkip[i * dOut + j];
                    for (int f = 0; f < w; f++) recon += (double)acts[r * dSae + f] * p.WDec[f * dOut + j];
                    double e = recon - target[r * dOut + j];
                    inner += e * e / batch;
                }
        Assert.True(inner > 0.1, "the inner levels reconstruct worse than the whole");
        Assert.Equal(inner, m.MatryoshkaMse, 1e-4 * inner);
        Assert.Equal(b.Mse, m.Mse, 1e-5 * b.Mse);                  // the outer level is BatchTopK's own loss
        Assert.Equal(b.L0, m.L0);
        Assert.Equal(b.Loss + inner, m.Loss, 1e-4 * m.Loss);
    }

    [Fact]
    public void WidthsAreCheckedAndCompletedWithDSaeAsSaeLensDoes()
    {
        Assert.Equal([128, 512, 2048], MatryoshkaBatchTopKActivation.CheckWidths([128, 512], 2048, "argument", "--matryoshka-widths"));
        Assert.Equal([128, 2048], MatryoshkaBatchTopKActivation.CheckWidths([128, 2048], 2048, "argument", "--matryoshka-widths"));
        foreach (long[] bad in new long[][] { [], [512, 128], [128, 128], [0, 64], [128, 4096], [2048] })
        {
            var e = Assert.Throws<InputError>(() => MatryoshkaBatchTopKActivation.CheckWidths(bad, 2048, "argument", "--matryoshka-widths"));
            Assert.Contains("--matryoshka-widths", e.Message);
        }
        Assert.Contains("matryoshka_batchtopk", Assert.Throws<InputError>(() => SaeTrainingOptions.ActivationFor("batchtopk", 8, 64, [16])).Message);
        Assert.Contains("--matryoshka-widths", Assert.Throws<InputError>(() => SaeTrainingOptions.ActivationFor("matryoshka_batchtopk", 8, 64)).Message);
        var act = Assert.IsType<MatryoshkaBatchTopKActivation>(SaeTrainingOptions.ActivationFor("matryoshka_batchtopk", 8, 64, [16, 32]));
        Assert.Equal([16, 32, 64], act.Widths);
        Assert.Equal(8, act.K);
        // a dictionary whose widths do not end at its d_sae is refused before training
        var wrong = new SparseDictionary(SaeShape.Sae(8, 48), new MatryoshkaBatchTopKActivation(4, [16, 64]));
        Assert.Contains("--matryoshka-widths", Assert.Throws<InputError>(() => new SaeTrainer(wrong, new SaeTrainingOptions())).Message);
    }

    [Fact]
    public void CrossLayerTranscodersRefuseIt()
    {
        Assert.Throws<ArgumentException>(() => new Loupe.Dictionaries.Transcoders.CrossLayerTranscoder(new Loupe.Dictionaries.Transcoders.CltShape(2, 8, 16, 8),
            new MatryoshkaBatchTopKActivation(2, [4, 16])));
    }

    [Fact]
    public void AFinishedOneIsSavedAsJumpReluAndATrainingCheckpointKeepsItsLevels()
    {
        var dict = Trained(SaeShape.Sae(10, 30), new MatryoshkaBatchTopKActivation(3, [5, 12, 30]));
        dict.P.Threshold[0] = 0.25f;
        var x = Gaussian(20 * 10, 7);

        // finished: SAELens's inference form, JumpReLU θ = the learned threshold, the levels on record under metadata
        string done = Path.Combine(_dir, "done");
        SaeLensFormat.Save(done, dict);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(done, SaeLensFormat.ConfigFile)))!.AsObject();
        Assert.Equal("jumprelu", cfg["architecture"]!.GetValue<string>());
        Assert.Null(cfg["matryoshka_widths"]);
        Assert.Equal("[5,12,30]", cfg["metadata"]!["matryoshka_widths"]!.ToJsonString());
        var (loaded, _) = SaeLensFormat.Load(done);
        Assert.IsType<JumpReluActivation>(loaded.Activation);
        Assert.Equal(dict.Encode(x, 20), loaded.Encode(x, 20));

        // training checkpoint: architecture matryoshka_batchtopk with k, topk_threshold and matryoshka_widths
        string ckpt = Path.Combine(_dir, "ckpt");
        SaeLensFormat.Save(ckpt, dict, trainingCheckpoint: true);
        cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(ckpt, SaeLensFormat.ConfigFile)))!.AsObject();
        Assert.Equal("matryoshka_batchtopk", cfg["architecture"]!.GetValue<string>());
        Assert.Equal("[5,12,30]", cfg["matryoshka_widths"]!.ToJsonString());
        var (resumable, _) = SaeLensFormat.Load(ckpt);
        var m = Assert.IsType<MatryoshkaBatchTopKActivation>(resumable.Activation);
        Assert.Equal([5, 12, 30], m.Widths);
        Assert.Equal(3, m.K);
        Assert.Equal(0.25f, resumable.P.Threshold[0]);
        Assert.Equal(dict.Encode(x, 20), resumable.Encode(x, 20));

        // malformed levels name the file and the field; SAELens's missing last level (d_sae) is appended
        foreach (var (widths, expected) in new[] { ("[12, 5]", "strictly increasing"), ("\"5,12\"", "an array"), ("[5, 40]", "[1, d_sae = 30]"), ("[5, 1.5]", "an integer") })
        {
            cfg["matryoshka_widths"] = JsonNode.Parse(widths);
            File.WriteAllText(Path.Combine(ckpt, SaeLensFormat.ConfigFile), cfg.ToJsonString());
            var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(ckpt));
            Assert.Contains("cfg.json", e.Message);
            Assert.Contains("matryoshka_widths", e.Message);
            Assert.Contains(expected, e.Message);
        }
        cfg["matryoshka_widths"] = JsonNode.Parse("[5, 12]");
        File.WriteAllText(Path.Combine(ckpt, SaeLensFormat.ConfigFile), cfg.ToJsonString());
        Assert.Equal([5, 12, 30], ((MatryoshkaBatchTopKActivation)SaeLensFormat.Load(ckpt).Dictionary.Activation).Widths);
    }

    [Fact]
    public void ResumingWithOtherLevelsIsRefused()
    {
        var rows = Gaussian(64 * 6, 3);
        SaeTrainer Make(int[] widths)
        {
            var d = new SparseDictionary(SaeShape.Sae(6, 24), new MatryoshkaBatchTopKActivation(3, widths));
            d.Initialize(1);
            return new SaeTrainer(d, new SaeTrainingOptions { Steps = 10, BatchSize = 8, Seed = 2 });
        }
        var first = Make([4, 12, 24]);
        first.Begin(new InMemoryRows(rows, 6));
        first.Step();
        string path = Path.Combine(_dir, "checkpoint.safetensors");
        first.SaveCheckpoint(path);
        var e = Assert.Throws<InputError>(() => Make([4, 24]).LoadCheckpoint(path, new InMemoryRows(rows, 6)));
        Assert.Contains("architecture", e.Message);
        Assert.Contains("[4, 12, 24]", e.Message);
        Make([4, 12, 24]).LoadCheckpoint(path, new InMemoryRows(rows, 6));
    }
}
