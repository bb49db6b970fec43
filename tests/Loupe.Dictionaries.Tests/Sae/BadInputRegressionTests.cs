using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;
using static Loupe.Dictionaries.Tests.Sae.NpyFixtures;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>Issue 8: bad .npy/.npz/SAELens files, training arguments and checkpoints end in one-line InputErrors.</summary>
public sealed class BadInputRegressionTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-badinput-" + Guid.NewGuid().ToString("N"));

    public BadInputRegressionTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    // ---- .npy / .npz ----

    [Fact]
    public void DeeplyNestedShapeIsRefusedWithoutRecursion()
    {
        // 400 000 '(' used to overflow the stack of the recursive literal parser (a process abort).
        string nested = new string('(', 400_000) + new string(')', 400_000);
        var bytes = NpyFile("<f4", "", [], major: 2, header: $"{{'descr': '<f4', 'fortran_order': False, 'shape': {nested}, }}");
        var e = Assert.Throws<InputError>(() => Npy.ReadFloat32(bytes, "x.npy", out _));
        Assert.Contains("x.npy", e.Message);
        Assert.Contains("nested more than", e.Message);
        Assert.True(e.Message.Length < 600, "the message stays one short line");
    }

    [Fact]
    public void NestedTuplesWithinTheCapStillParse()
    {
        var h = Npy.ReadHeader(new MemoryStream(NpyFile("<f4", "(2, 3)", F4(1, 2, 3, 4, 5, 6))), "x.npy");
        Assert.Equal([2L, 3L], h.Shape);
        var empty = Npy.ReadHeader(new MemoryStream(NpyFile("<f4", "()", F4(7))), "x.npy");
        Assert.Empty(empty.Shape);
    }

    [Fact]
    public void DeclaredSizeBeyondTheBytesIsRefusedBeforeAllocating()
    {
        // 64 × 33M floats = 8 GB declared in a few hundred bytes: refused from the header alone.
        var bytes = NpyFile("<f4", "(64, 33000000)", F4(1, 2, 3));
        var e = Assert.Throws<InputError>(() => Npy.ReadFloat32(bytes, "x.npy", out _));
        Assert.Contains("truncated", e.Message);
        Assert.Contains("8448000000", e.Message);

        var overflow = NpyFile("<f8", "(4294967296, 4294967296)", []);
        Assert.Contains("overflows", Assert.Throws<InputError>(() => Npy.ReadFloat32(overflow, "x.npy", out _)).Message);
    }

    [Fact]
    public void NpzEntryDeclaringAHugeArrayIsRefusedNamingTheEntry()
    {
        string path = Path.Combine(_dir, "params.npz");
        var big = NpyFile("<f4", "(64, 33000000)", F4(1, 2, 3, 4));
        File.WriteAllBytes(path, DeflatedZip(("W_enc.npy", big), ("W_dec.npy", NpyFile("<f4", "(33000000, 64)", F4(1))),
            ("b_enc.npy", NpyFile("<f4", "(33000000,)", F4(1))), ("b_dec.npy", NpyFile("<f4", "(64,)", F4(1))),
            ("threshold.npy", NpyFile("<f4", "(33000000,)", F4(1)))));
        var e = Assert.Throws<InputError>(() => GemmaScopeFormat.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(".npy'", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Theory]
    [InlineData("<f4", false)]
    [InlineData("<f2", false)]
    [InlineData(">f8", false)]
    [InlineData("<f4", true)]
    public void ChunkedReadsMatchOneShotReads(string descr, bool fortran)
    {
        // The > 2 GiB fix reads every array in chunks; tiny chunks exercise the chunk boundaries on small data
        // (a real > 2 GiB test needs 2.4 GB of memory and disk: too heavy for every CI run).
        var values = Enumerable.Range(0, 35).Select(i => i * 0.25f - 3).ToArray();
        byte[] data = descr switch { "<f4" => F4(values), "<f2" => F2(values), _ => F8BigEndian(values) };
        var bytes = NpyFile(descr, "(5, 7)", data, fortran);
        var whole = Npy.ReadFloat32(bytes, "x.npy", out _);
        foreach (int chunk in new[] { 1, 3, 7, 34, 35, 1000 })
        {
            using var s = new MemoryStream(bytes);
            var h = Npy.ReadHeader(s, "x.npy");
            var into = new float[h.ElementCount];
            Npy.ReadData(s, h, into, "x.npy", chunk);
            Assert.Equal(whole, into);
        }
    }

    static byte[] F8BigEndian(float[] v)
    {
        var b = new byte[v.Length * 8];
        for (int i = 0; i < v.Length; i++) System.Buffers.Binary.BinaryPrimitives.WriteDoubleBigEndian(b.AsSpan(8 * i), v[i]);
        return b;
    }

    // ---- SAELens cfg.json ----

    void WriteSaeLens(string cfg, params (string Name, int[] Shape, float[] Data)[] tensors)
    {
        File.WriteAllText(Path.Combine(_dir, "cfg.json"), cfg);
        SafeTensorsWriter.Write(Path.Combine(_dir, "sae_weights.safetensors"), tensors.Select(t => (t.Name, t.Shape, (ReadOnlyMemory<float>)t.Data)));
    }

    static (string, int[], float[])[] SmallSae(float nanAt = -1) =>
    [
        ("W_enc", [2, 3], [1, 2, 3, 4, 5, nanAt >= 0 ? float.NaN : 6]), ("b_enc", [3], [0, 0, 0]),
        ("W_dec", [3, 2], [1, 0, 0, 1, 1, 1]), ("b_dec", [2], [0, 0]),
    ];

    [Theory]
    [InlineData("{\"d_in\": 65536, \"d_sae\": 65536}", "d_in × d_sae")]            // 2^32 elements: no allocation attempted
    [InlineData("{\"d_in\": 2, \"d_sae\": 40000000}", "W_enc")]                    // fits an array, but the file does not back it
    [InlineData("{\"d_in\": \"2\", \"d_sae\": 3}", "'d_in'")]
    [InlineData("{\"d_in\": 2, \"d_sae\": 3e12}", "'d_sae'")]
    [InlineData("{\"d_in\": -2, \"d_sae\": 3}", "'d_in'")]
    [InlineData("{\"d_in\": 2, \"d_sae\": 3, \"architecture\": \"mystery\"}", "mystery")]
    [InlineData("{\"d_in\": 2, \"d_sae\": 3, \"architecture\": \"topk\", \"k\": 4}", "'k'")]
    [InlineData("{\"d_in\": 2, \"d_sae\": 3, \"dtype\": 5}", "'dtype'")]
    [InlineData("{\"d_in\": 2, \"d_sae\": 3, \"hook_name\": \"blocks.0.hook resid\"}", "'hook_name'")]
    [InlineData("{\"d_in\": 2, \"d_sae\": 3, \"hook_name\": {\"a\": 1}}", "'hook_name'")]
    [InlineData("{\"d_in\": 2, \"d_in\": 3, \"d_sae\": 3}", "repeated keys")]
    [InlineData("[1, 2]", "JSON object")]
    public void BadCfgFieldsAreInputErrorsNamingTheField(string cfg, string expected)
    {
        WriteSaeLens(cfg, SmallSae());
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("cfg.json", e.Message.Replace("sae_weights.safetensors", "cfg.json"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void NaNWeightIsRefusedNamingTheTensor()
    {
        WriteSaeLens("{\"d_in\": 2, \"d_sae\": 3}", SmallSae(nanAt: 5));
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("'W_enc'", e.Message);
        Assert.Contains("NaN", e.Message);
    }

    [Fact]
    public void CorruptWeightsFileIsAnInputError()
    {
        WriteSaeLens("{\"d_in\": 2, \"d_sae\": 3}", SmallSae());
        File.WriteAllBytes(Path.Combine(_dir, "sae_weights.safetensors"), [1, 2, 3]);
        var e = Assert.Throws<InputError>(() => SaeLensFormat.Load(_dir));
        Assert.Contains("sae_weights.safetensors", e.Message);
    }

    // ---- training options ----

    [Theory]
    [InlineData(-1f, "--lr")]
    [InlineData(0f, "--lr")]
    [InlineData(float.NaN, "--lr")]
    public void BadLearningRatesAreRefused(float lr, string option)
    {
        var e = Assert.Throws<InputError>(() => new SaeTrainingOptions { LearningRate = lr }.Validate());
        Assert.StartsWith($"argument: {option}:", e.Message);
    }

    [Fact]
    public void OtherOptionRangesAreChecked()
    {
        Assert.Contains("--batch-size", Assert.Throws<InputError>(() => new SaeTrainingOptions { BatchSize = 0 }.Validate()).Message);
        Assert.Contains("--steps", Assert.Throws<InputError>(() => new SaeTrainingOptions { Steps = -5 }.Validate()).Message);
        Assert.Contains("--lr-decay", Assert.Throws<InputError>(() => new SaeTrainingOptions { LrDecayFraction = 2 }.Validate()).Message);
        Assert.Contains("--lr-warmup", Assert.Throws<InputError>(() => new SaeTrainingOptions { LrWarmupSteps = -1 }.Validate()).Message);
        Assert.Contains("--sparsity", Assert.Throws<InputError>(() => new SaeTrainingOptions { SparsityCoefficient = float.PositiveInfinity }.Validate()).Message);
        Assert.Contains("--aux-k", Assert.Throws<InputError>(() => new SaeTrainingOptions { AuxKCoefficient = -1 }.Validate()).Message);
        Assert.Contains("--dead-window", Assert.Throws<InputError>(() => new SaeTrainingOptions { DeadWindowTokens = 0 }.Validate()).Message);
        new SaeTrainingOptions().Validate();
    }

    [Fact]
    public void HugeDictionariesAndBatchesAreRefusedNamingTheOptionAndTheSize()
    {
        var o = new SaeTrainingOptions { BatchSize = 4096 };
        var dSae = Assert.Throws<InputError>(() => o.Validate(SaeShape.Sae(64, 40_000_000)));
        Assert.Contains("--d-sae", dSae.Message);
        Assert.Contains("64 × 40000000 = 2560000000", dSae.Message);
        Assert.Contains("GiB", dSae.Message);

        var batch = Assert.Throws<InputError>(() => new SaeTrainingOptions { BatchSize = 1 << 30 }.Validate(SaeShape.Sae(64, 512)));
        Assert.Contains("--batch-size", batch.Message);

        var memory = Assert.Throws<InputError>(() => o.Validate(SaeShape.Sae(64, 512), memoryLimitBytes: 1 << 20));
        Assert.Contains("GiB", memory.Message);

        var expansion = Assert.Throws<InputError>(() => SaeTrainingOptions.FeatureCount(null, int.MaxValue, 64));
        Assert.Contains("--expansion", expansion.Message);
        Assert.Equal(512, SaeTrainingOptions.FeatureCount(null, 8, 64));
        Assert.Contains("--d-sae", Assert.Throws<InputError>(() => SaeTrainingOptions.FeatureCount(0, 8, 64)).Message);
    }

    [Fact]
    public void KAboveDSaeIsRefused()
    {
        Assert.Contains("--k", Assert.Throws<InputError>(() => SaeTrainingOptions.ActivationFor("topk", 600, 512)).Message);
        Assert.Contains("--k", Assert.Throws<InputError>(() => SaeTrainingOptions.ActivationFor("batchtopk", 0, 512)).Message);
        Assert.Contains("--architecture", Assert.Throws<InputError>(() => SaeTrainingOptions.ActivationFor("gated", 4, 512)).Message);
        Assert.IsType<TopKActivation>(SaeTrainingOptions.ActivationFor("topk", 512, 512));
        var dict = new SparseDictionary(SaeShape.Sae(4, 8), new TopKActivation(9));
        Assert.Contains("--k", Assert.Throws<InputError>(() => new SaeTrainer(dict, new SaeTrainingOptions())).Message);
    }

    // ---- training runs ----

    static SaeTrainer SmallTrainer(int steps = 6, SaeActivation? activation = null)
    {
        var d = new SparseDictionary(SaeShape.Sae(4, 8), activation ?? new ReluActivation());
        d.Initialize(seed: 1);
        return new SaeTrainer(d, new SaeTrainingOptions { Steps = steps, BatchSize = 4, SparsityCoefficient = 0.01f, BDecInit = BDecInit.Zeros });
    }

    static float[] Rows(int n, float scale) => Enumerable.Range(0, n * 4).Select(i => (i % 7 - 3) * scale).ToArray();

    [Fact]
    public void ALossThatOverflowsStopsWithAClearMessageAndKeepsTheLog()
    {
        string outDir = Path.Combine(_dir, "run");
        var e = Assert.Throws<InputError>(() => SaeTrainingRun.Run(SmallTrainer(), new InMemoryRows(Rows(16, 1e20f), 4), outDir, 2, resume: false));
        Assert.StartsWith("training diverged at step 0: loss is ∞", e.Message);
        Assert.Contains("--lr", e.Message);
        Assert.False(File.Exists(Path.Combine(outDir, "cfg.json")));
    }

    [Fact]
    public void ASecondRunIntoTheSameFolderIsRefusedNamingTheFirst()
    {
        string outDir = Path.Combine(_dir, "run");
        using (OutputLock.Acquire(outDir, "loupe sae train"))
        {
            var e = Assert.Throws<InputError>(() => SaeTrainingRun.Run(SmallTrainer(), new InMemoryRows(Rows(16, 1), 4), outDir, 2, resume: false));
            Assert.Contains($"pid {Environment.ProcessId}", e.Message);
        }
        // Released: the run goes ahead, and its files are the usual ones plus the lock's.
        SaeTrainingRun.Run(SmallTrainer(), new InMemoryRows(Rows(16, 1), 4), outDir, 2, resume: false);
        Assert.True(File.Exists(Path.Combine(outDir, SaeLensFormat.WeightsFile)));
    }

    [Fact]
    public void CheckpointEveryMustBePositive()
    {
        var e = Assert.Throws<InputError>(() => SaeTrainingRun.Run(SmallTrainer(), new InMemoryRows(Rows(16, 1), 4), Path.Combine(_dir, "r"), 0, resume: false));
        Assert.Contains("--checkpoint-every", e.Message);
    }

    [Fact]
    public void CorruptCheckpointsAreInputErrorsNamingTheFile()
    {
        string outDir = Path.Combine(_dir, "run");
        var data = new InMemoryRows(Rows(16, 1), 4);
        SaeTrainingRun.Run(SmallTrainer(), data, outDir, 2, resume: false);
        string checkpoint = Path.Combine(outDir, SaeTrainingRun.CheckpointFile);
        byte[] good = File.ReadAllBytes(checkpoint);

        File.WriteAllBytes(checkpoint, good[..(good.Length / 2)]);
        var truncated = Assert.Throws<InputError>(() => SmallTrainer().LoadCheckpoint(checkpoint, data));
        Assert.Contains(checkpoint, truncated.Message);

        File.WriteAllBytes(checkpoint, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        Assert.Contains(checkpoint, Assert.Throws<InputError>(() => SmallTrainer().LoadCheckpoint(checkpoint, data)).Message);

        // A NaN in a parameter is named, not trained on.
        var trainer = SmallTrainer();
        trainer.LoadCheckpoint(WriteBack(checkpoint, good), data);
        trainer.Dictionary.P.WEnc[3] = float.NaN;
        trainer.SaveCheckpoint(checkpoint);
        var nan = Assert.Throws<InputError>(() => SmallTrainer().LoadCheckpoint(checkpoint, data));
        Assert.Contains("param.W_enc", nan.Message);

        // And a JumpReLU log threshold whose θ overflows (the resume fuzzer's e^(1e20): ∞, then NaN when training went on).
        var jump = SmallTrainer(activation: new JumpReluActivation());
        string jumpDir = Path.Combine(_dir, "jump");
        SaeTrainingRun.Run(jump, data, jumpDir, 2, resume: false);
        string jumpCheckpoint = Path.Combine(jumpDir, SaeTrainingRun.CheckpointFile);
        var loaded = SmallTrainer(activation: new JumpReluActivation());
        loaded.LoadCheckpoint(jumpCheckpoint, data);
        loaded.Dictionary.P.LogThreshold[5] = 1e20f;
        loaded.SaveCheckpoint(jumpCheckpoint);
        var huge = Assert.Throws<InputError>(() => SmallTrainer(activation: new JumpReluActivation()).LoadCheckpoint(jumpCheckpoint, data));
        Assert.Contains("param.log_threshold': element 5", huge.Message);

        // So is a step past the run's end.
        var more = SmallTrainer(steps: 2);
        var settings = Assert.Throws<InputError>(() => more.LoadCheckpoint(WriteBack(checkpoint, good), data));
        Assert.Contains("different settings", settings.Message);
    }

    static string WriteBack(string path, byte[] bytes)
    {
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
