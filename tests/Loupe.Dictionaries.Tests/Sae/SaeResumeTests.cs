using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Tests.Sae;

/// <summary>Windowed batches and checkpoints: a run stopped and resumed equals an uninterrupted one, bit for bit.</summary>
public class SaeResumeTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-resume-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { if (Directory.Exists(_dir)) Directory.Delete(_dir, true); }

    /// <summary>Rows in several windows of uneven size (so batches straddle windows and carry rows over).</summary>
    sealed class TestWindows(int dIn, int dOut, int[] windowRows, int seed) : IRowWindows
    {
        public int DIn => dIn;
        public int DOut => dOut;
        public bool HasTargets => dOut != dIn;
        public int WindowCount => windowRows.Length;
        public string Description => $"test windows {string.Join(",", windowRows)} seed {seed}";
        public int Loads { get; private set; }

        public (float[] Inputs, float[]? Targets) Load(int epoch, int window)
        {
            Loads++;
            int first = windowRows.Take(window).Sum();
            var x = new float[windowRows[window] * dIn];
            var y = HasTargets ? new float[windowRows[window] * dOut] : null;
            for (int r = 0; r < windowRows[window]; r++)
            {
                var rng = new Random(seed * 1000 + first + r);
                for (int j = 0; j < dIn; j++) x[r * dIn + j] = (first + r) + j * 1e-3f + 0.1f * SparseDictionary.Gaussian(rng);
                if (y is not null) for (int j = 0; j < dOut; j++) y[r * dOut + j] = x[r * dIn + j % dIn] * 0.5f;
            }
            return (x, y);
        }
    }

    [Fact]
    public void EveryRowComesOncePerEpochAndACursorContinuesTheSameSequence()
    {
        var source = new TestWindows(2, 2, [7, 3, 11], seed: 1);
        var batches = new WindowedBatches(source, batchSize: 4, seed: 9);
        var x = new float[8];
        var y = new float[8];
        var seen = new List<int>();
        for (int i = 0; i < 5; i++) // 21 rows → 5 full batches in epoch 0, 1 row carried on
        {
            batches.Next(x, y);
            for (int r = 0; r < 4; r++) seen.Add((int)MathF.Round(x[r * 2]));
        }
        Assert.Equal(20, seen.Distinct().Count());

        var cursor = batches.Cursor;
        var resumed = new WindowedBatches(source, 4, 9, cursor);
        var x2 = new float[8];
        for (int i = 0; i < 12; i++)
        {
            batches.Next(x, y);
            resumed.Next(x2, y);
            Assert.Equal(x, x2);
        }
    }

    public static TheoryData<string> Cases => new() { "standard", "topk", "batchtopk", "matryoshka", "jumprelu", "skip_transcoder" };

    static SaeTrainer MakeTrainer(string arch)
    {
        SparseDictionary d = arch switch
        {
            "standard" => new(SaeShape.Sae(6, 24), new ReluActivation()),
            "topk" => new(SaeShape.Sae(6, 24), new TopKActivation(3)),
            "batchtopk" => new(SaeShape.Sae(6, 24), new BatchTopKActivation(3)),
            "matryoshka" => new(SaeShape.Sae(6, 24), new MatryoshkaBatchTopKActivation(3, [4, 12, 24])),
            "jumprelu" => new(SaeShape.Sae(6, 24), new JumpReluActivation(0.05f)),
            _ => new(SaeShape.Transcoder(6, 24, 4, skip: true), new TopKActivation(3)),
        };
        d.Initialize(seed: 3);
        return new SaeTrainer(d, new SaeTrainingOptions
        {
            Steps = 40, BatchSize = 8, LearningRate = 3e-3f, LrWarmupSteps = 5, SparsityCoefficient = arch is "standard" or "jumprelu" ? 0.1f : 0,
            SparsityWarmupSteps = 10, DeadWindowTokens = 16, NormalizeExpectedAverage = true, Seed = 11,
        });
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ACheckpointedAndResumedRunIsBitIdenticalToAnUninterruptedOne(string arch)
    {
        int dOut = arch == "skip_transcoder" ? 4 : 6;
        var whole = MakeTrainer(arch);
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b");
        SaeTrainingRun.Run(whole, new TestWindows(6, dOut, [13, 29, 6], 2), a, checkpointEvery: 10, resume: false);

        using var cts = new CancellationTokenSource();
        var first = MakeTrainer(arch);
        var progress = new SyncProgress(p => { if (p.Metrics.Step == 22) cts.Cancel(); });
        Assert.Throws<OperationCanceledException>(() =>
            SaeTrainingRun.Run(first, new TestWindows(6, dOut, [13, 29, 6], 2), b, 10, resume: false, progress: progress, cancellationToken: cts.Token));
        Assert.False(File.Exists(Path.Combine(b, SaeLensFormat.WeightsFile)));
        Assert.Equal(20, SaeTrainingRun.ReadLog(b).Count); // the log stops at the last checkpoint

        var ex = Assert.Throws<InputError>(() => SaeTrainingRun.Run(MakeTrainer(arch), new TestWindows(6, dOut, [13, 29, 6], 2), b, 10, resume: false));
        Assert.Contains("--resume", ex.Message);
        var second = MakeTrainer(arch); // a fresh process would start from scratch like this
        SaeTrainingRun.Run(second, new TestWindows(6, dOut, [13, 29, 6], 2), b, 10, resume: true);

        Assert.Equal(File.ReadAllBytes(Path.Combine(a, SaeTrainingRun.CheckpointFile)), File.ReadAllBytes(Path.Combine(b, SaeTrainingRun.CheckpointFile)));
        Assert.Equal(File.ReadAllBytes(Path.Combine(a, SaeLensFormat.WeightsFile)), File.ReadAllBytes(Path.Combine(b, SaeLensFormat.WeightsFile)));
        Assert.Equal(File.ReadAllText(Path.Combine(a, SaeTrainingRun.LogFile)), File.ReadAllText(Path.Combine(b, SaeTrainingRun.LogFile)));
        Assert.Equal(40, SaeTrainingRun.ReadLog(b).Count);
    }

    [Fact]
    public void ResumingWithDifferentSettingsOrDataIsRefused()
    {
        string dir = Path.Combine(_dir, "c");
        var t = MakeTrainer("topk");
        using var cts = new CancellationTokenSource();
        Assert.Throws<OperationCanceledException>(() => SaeTrainingRun.Run(t, new TestWindows(6, 6, [13, 29, 6], 2), dir, 5, false,
            progress: new SyncProgress(p => { if (p.Metrics.Step == 6) cts.Cancel(); }), cancellationToken: cts.Token));
        var other = new SaeTrainer(new SparseDictionary(SaeShape.Sae(6, 24), new TopKActivation(3)), new SaeTrainingOptions { Steps = 40, BatchSize = 8, Seed = 12 });
        var ex = Assert.Throws<InputError>(() => SaeTrainingRun.Run(other, new TestWindows(6, 6, [13, 29, 6], 2), dir, 5, true));
        Assert.Contains("options", ex.Message);
        ex = Assert.Throws<InputError>(() => SaeTrainingRun.Run(MakeTrainer("topk"), new TestWindows(6, 6, [13, 29, 7], 2), dir, 5, true));
        Assert.Contains("data", ex.Message);
    }

    [Fact]
    public void NonFiniteTrainingRowsAreAClearError()
    {
        var x = new float[6 * 20];
        x[6 * 3 + 2] = float.NaN;
        var t = new SaeTrainer(new SparseDictionary(SaeShape.Sae(6, 12), new TopKActivation(2)), new SaeTrainingOptions { Steps = 2, BatchSize = 4, BDecInit = BDecInit.Zeros });
        var ex = Assert.Throws<InputError>(() => t.Train(x));
        Assert.Contains("row 3 column 2", ex.Message);
    }

    [Fact]
    public void RowWidthsThatDoNotFitTheDictionaryAreRejected()
    {
        var t = new SaeTrainer(new SparseDictionary(SaeShape.Sae(6, 12), new TopKActivation(2)), new SaeTrainingOptions { Steps = 2, BatchSize = 4 });
        var ex = Assert.Throws<ArgumentException>(() => t.Begin(new TestWindows(5, 5, [10], 1)));
        Assert.Contains("d_in = 6", ex.Message);
    }

    sealed class SyncProgress(Action<SaeTrainingProgress> report) : IProgress<SaeTrainingProgress>
    {
        public void Report(SaeTrainingProgress value) => report(value);
    }
}
