using System.Diagnostics;
using System.Globalization;
using System.Numerics.Tensors;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Features;

/// <summary>Settings of a feature-dashboard build. Defaults follow SAEDashboard where it has one.</summary>
public sealed record FeatureBuildOptions
{
    /// <summary>Hook point the dictionary reads; null takes cfg.json's hook_name.</summary>
    public string? Hook { get; init; }
    /// <summary>Contexts per forward pass (memory: batch·context_size·d_sae floats of feature activations).</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Top-activating examples kept per feature (SAEDashboard top_acts_group_size = 20).</summary>
    public int TopK { get; init; } = 20;
    /// <summary>Equal-width activation intervals over (0, max] to sample from (SAEDashboard n_quantiles = 10).</summary>
    public int Quantiles { get; init; } = 10;
    /// <summary>Examples sampled per interval (SAEDashboard quantile_group_size = 5).</summary>
    public int QuantileSamples { get; init; } = 5;
    /// <summary>Bins of the activation histogram and of the logit histogram (SAEDashboard n_bins = 50).</summary>
    public int HistogramBins { get; init; } = 50;
    /// <summary>Positions kept on each side of an example token for highlighting (window of 2·Window + 1).</summary>
    public int Window { get; init; } = 16;
    /// <summary>Promoted and suppressed tokens kept per feature (SAEDashboard logits table n_rows = 10); 0 skips logit effects.</summary>
    public int LogitCount { get; init; } = 10;
    /// <summary>Leave each context's first position (BOS) out of every statistic and example: its activations are outliers.</summary>
    public bool SkipBos { get; init; } = true;
    /// <summary>Seed of the interval sampling.</summary>
    public int Seed { get; init; }
    /// <summary>
    /// Continue an interrupted build from its checkpoint (<c>OUT.checkpoint</c>, same settings); without a checkpoint the
    /// build starts from the beginning. Without <see cref="Resume"/> a checkpoint there is refused rather than discarded.
    /// </summary>
    public bool Resume { get; init; }
    /// <summary>
    /// Seconds between checkpoints (written after the batch that passes the mark; 0: after every batch); null writes none.
    /// A killed build then loses at most this much work (plus one batch).
    /// </summary>
    public double? CheckpointSeconds { get; init; } = 300;
    /// <summary>Test seam: caps the store's SQLite file at this many pages, so writing fails as on a full disk.</summary>
    internal long? MaxDatabasePages { get; init; }
    /// <summary>Test seam: called after each batch with the pass and the contexts done, after any checkpoint (a kill point).</summary>
    internal Action<int, int>? AfterBatch { get; init; }

    /// <summary>Checks every count (cheap: call it before loading a model).</summary>
    /// <exception cref="InputError">A count is out of range (the message names it and its value).</exception>
    public void Validate()
    {
        // Named by the `loupe features build` options that set them; the upper bounds keep every product below in long range.
        static void Between(int v, int min, int max, string option) => Check.InRange(v, min, max, "argument", option);
        Between(BatchSize, 1, 1 << 16, "--batch-size");
        Between(TopK, 1, 1 << 20, "--top");
        Between(Quantiles, 1, 1 << 16, "--quantiles");
        Between(QuantileSamples, 1, 1 << 20, "--quantile-samples");
        Between(HistogramBins, 1, 1 << 20, "--bins");
        Between(Window, 0, 1 << 20, "--window");
        Between(LogitCount, 0, 1 << 20, "--logits");
        if (CheckpointSeconds is double c && !(c >= 0 && double.IsFinite(c)))
            throw InputError.Expected("argument", "--checkpoint-every", "a number of seconds ≥ 0", c);
    }

    /// <summary>The settings a checkpoint must share with the build resuming it (the batch size may differ).</summary>
    internal System.Text.Json.Nodes.JsonObject CheckpointSettings() => new()
    {
        ["top_k"] = TopK, ["n_quantiles"] = Quantiles, ["quantile_samples"] = QuantileSamples, ["histogram_bins"] = HistogramBins,
        ["window"] = Window, ["skip_bos"] = SkipBos, ["seed"] = Seed,
    };
}

/// <summary>Progress of a build: <paramref name="Stage"/> is "pass 1/2", "pass 2/2", "logit effects" or "writing".</summary>
public readonly record struct FeatureBuildProgress(string Stage, long Done, long Total, double TokensPerSecond);

/// <summary>
/// What a build wrote: the store's path, the hook read, d_sae, the tokens the statistics cover (BOS
/// positions excluded when skipped), features that never fired, contexts and example rows stored, the
/// memory held by the streaming per-feature state, and the wall time.
/// </summary>
public sealed record FeatureBuildSummary(string Path, string Hook, int DSae, long Tokens, int DeadFeatures, int ContextsStored, long Examples,
    long StateBytes, double Seconds);

/// <summary>
/// Builds the dashboard data of every feature of a dictionary into a SQLite feature store
/// (schema: <see cref="FeatureStoreSchema"/>, docs/feature-store.md):
/// 1. check the hook exists and is d_in wide (a forward pass over one context);
/// 2. pass 1 — run the model over the contexts batch by batch, read the hook, encode every token;
///    per feature count active tokens (activation &gt; 0), sum and max them, and keep the top K in a
///    bounded heap with the feature's activations over a ±window around each;
/// 3. pass 2 — the same forward passes again, now that each feature's max is known: count active
///    tokens in B equal bins of (0, max] (the histogram) and reservoir-sample S tokens from each of Q
///    equal intervals of (0, max] (SAEDashboard's quantile groups, exactly: intervals of the final max);
/// 4. logit effects: W_dec[f] through the final norm's weight into W_U (<see cref="LogitEffects"/>);
/// 5. write everything to a temporary file beside the output and rename it over the output, so a
///    killed or cancelled build leaves no partial store.
/// Every <see cref="FeatureBuildOptions.CheckpointSeconds"/> the state (pass, next context, every accumulator) is written
/// to <c>OUT.checkpoint</c> (<see cref="FeatureBuildCheckpoint"/>); <see cref="FeatureBuildOptions.Resume"/> continues from it
/// and ends with the store an uninterrupted build writes (the interval sampling draws from a hash of the token's place, not
/// a generator's state); the checkpoint is deleted once the store is written.
/// Two passes cost two forward passes per context; in exchange the histogram and the intervals use
/// each feature's true max and nothing grows with the corpus. Memory:
/// d_sae·(K + Q·S)·((2·window + 1)·4 + 12) bytes of examples, d_sae·B·8 of histogram, one batch of activations.
/// </summary>
public static class FeatureDashboardBuilder
{
    /// <summary>Builds the feature store of <paramref name="dictionary"/> over <paramref name="contexts"/> into <paramref name="outputPath"/>.</summary>
    /// <param name="model">The model the dictionary belongs to.</param>
    /// <param name="dictionary">The SAE or transcoder; its input is read at the hook.</param>
    /// <param name="config">The dictionary's cfg.json (hook name, provenance).</param>
    /// <param name="contexts">Token contexts, each starting with BOS (see <see cref="ContextBuilder"/>).</param>
    /// <param name="outputPath">The SQLite file to write (replaced atomically if it exists).</param>
    /// <param name="options">Settings; null for the defaults.</param>
    /// <param name="dictionaryPath">Where the dictionary was loaded from, recorded in the store's meta table.</param>
    /// <param name="progress">Reports after each batch and stage.</param>
    /// <param name="cancellationToken">Checked between batches and while writing.</param>
    /// <exception cref="InputError">
    /// No hook is known or it does not exist in the model, it is not a per-position activation, its width is not
    /// the dictionary's d_in, the contexts exceed n_ctx, an option is out of range, the output path is not a
    /// regular file, or a feature activation is NaN or +∞ (the message names feature, context and position); a checkpoint of an
    /// interrupted build is there without <see cref="FeatureBuildOptions.Resume"/>, or (with it) was written with other
    /// settings or is damaged.
    /// </exception>
    /// <exception cref="IOException">Writing the store failed (e.g. the disk is full); no partial file remains and an existing store is unchanged.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; no store and no temporary file remain (the last checkpoint does, for <see cref="FeatureBuildOptions.Resume"/>).</exception>
    public static FeatureBuildSummary Build(HookedTransformer model, SparseDictionary dictionary, SaeLensConfig config, HarvestContexts contexts,
        string outputPath, FeatureBuildOptions? options = null, string? dictionaryPath = null,
        IProgress<FeatureBuildProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(dictionary);
        ArgumentNullException.ThrowIfNull(contexts);
        var o = options ?? new FeatureBuildOptions();
        o.Validate();
        OutputFiles.EnsureReplaceable(Path.GetFullPath(outputPath)); // refuse a folder or device before the long passes
        int n = contexts.ContextSize, dSae = dictionary.Shape.DSae, first = o.SkipBos ? 1 : 0;
        if (n > model.Config.NCtx) throw InputError.Expected("argument", "context size", $"at most the model's n_ctx = {model.Config.NCtx}", n);
        if (n - first < 1) throw InputError.Expected("argument", "context size", "at least 2 when BOS is skipped (BOS plus one token)", n);

        // 1. the hook and its width.
        string hook = ResolveHook(model, config, o.Hook);
        var probe = model.Run(TokenBatch.Single(contexts.Contexts[0]), new RunOptions { CacheFilter = h => h == hook, LastPositionLogitsOnly = true });
        var probed = probe.Cache[hook];
        if (probed.Rank < 2 || probed.Dim(0) != 1 || probed.Dim(1) != n)
            throw new InputError($"hook '{hook}' has shape {probed.ShapeString} for one context of {n} tokens; a dictionary needs a per-position activation [batch, pos, d]");
        int width = probed.Length / n;
        if (width != dictionary.Shape.DIn)
            throw new InputError($"the dictionary reads d_in = {dictionary.Shape.DIn} but hook '{hook}' is {width} wide ({probed.ShapeString} for one context); pick the hook the dictionary was trained on");

        var be = model.Backend;
        var device = be.Device.IsCpu ? null : new DeviceSaeEncoder(be, dictionary);
        int rowsPerContext = n - first;
        // forward, read the hook, encode: the nonzero activations of rows [b·(n − first)]. On a device the hook stays there:
        // its rows past BOS are encoded there and only the nonzero activations come out.
        SparseActivations Encode(int[] ids, int b, int c0)
        {
            var batch = new TokenBatch(ids, b, n);
            var result = model.Run(batch, new RunOptions { CacheFilter = h => h == hook, LastPositionLogitsOnly = true });
            var x = result.Cache[hook]; // [batch, pos, d_in] (trailing axes flattened)
            if (x.Length != b * n * width) throw new InvalidOperationException($"hook '{hook}' gave {x.ShapeString}; expected [{b}, {n}, {width}]");
            if (x.IsHost)
            {
                var dense = dictionary.Encode(x.Span, b * n); // [batch·pos, d_sae]
                return SparseActivations.FromDense(dense, b, n, first, dSae);
            }
            int rows = b * rowsPerContext;
            var packed = x; // [batch·(n − first), d_in]
            if (first > 0)
            {
                packed = be.Empty(rows, width);
                be.CopyRows(x, (long)first * width, n * width, packed, 0, rowsPerContext * width, b, rowsPerContext * width);
            }
            return device!.EncodeSparse(packed, rows, (row, f, a) => throw new InputError(float.IsNaN(a)
                ? $"feature {f} is NaN at context {c0 + row / rowsPerContext}, position {row % rowsPerContext + first}: the activations at '{hook}' or the dictionary's weights hold NaN or ∞"
                : $"feature {f} is +∞ at context {c0 + row / rowsPerContext}, position {row % rowsPerContext + first}: the activations at '{hook}' or the dictionary's weights overflow"));
        }
        var meta = new Dictionary<string, string>
        {
            ["model"] = model.Source is string src ? Path.GetFullPath(src) : "(in memory)",
            ["hook"] = hook,
            ["sae_path"] = dictionaryPath is null ? "(in memory)" : Path.GetFullPath(dictionaryPath),
            ["normalize_activations"] = config.NormalizeActivations,
        };
        return BuildCore(model, dictionary, hook, HarvestManifest.Fingerprint(model), meta, contexts, outputPath, o, Encode, progress, cancellationToken);
    }

    /// <summary>
    /// The build itself, for any source of activations: <paramref name="encode"/> gives the nonzero activations of a batch's
    /// rows past the skipped BOS ([b·(n − first)] rows, context-major) for the token ids [b, n] of contexts c0…; the model
    /// gives n_ctx, the tokenizer and the logit effects, <paramref name="meta0"/> the model, hook, dictionary path and
    /// normalisation recorded in the store.
    /// </summary>
    internal static FeatureBuildSummary BuildCore(HookedTransformer model, SparseDictionary dictionary, string hook, string modelFingerprint,
        IReadOnlyDictionary<string, string> meta0, HarvestContexts contexts, string outputPath, FeatureBuildOptions o,
        Func<int[], int, int, SparseActivations> encode, IProgress<FeatureBuildProgress>? progress, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        int n = contexts.ContextSize, dSae = dictionary.Shape.DSae, first = o.SkipBos ? 1 : 0;
        int W = 2 * o.Window + 1, Q = o.Quantiles, B = o.HistogramBins;
        // Per-feature state is sized by the options times d_sae: refused as arguments before anything is allocated.
        Check.Product("argument", "--bins × d_sae", Array.MaxLength, B, dSae);
        Check.Product("argument", "--quantiles × d_sae", Array.MaxLength, Q, dSae);
        Check.Product("argument", "--batch-size × context size", Array.MaxLength, o.BatchSize, n);
        var top = new TopKTracker(dSae, o.TopK, W);
        var samples = new ReservoirSampler(dSae * Q, o.QuantileSamples, W, o.Seed);
        var nActive = new long[dSae];          // [d_sae]
        var sum = new double[dSae];            // [d_sae]
        var max = new float[dSae];             // [d_sae]
        var histogram = new long[dSae * B];    // [d_sae, B]
        long stateBytes = EstimateStateBytes(dSae, o);
        long tokens = (long)contexts.Count * (n - first);

        // A checkpoint beside the output: continued with Resume, never silently discarded.
        string checkpoint = FeatureBuildCheckpoint.PathFor(outputPath);
        var state = new FeatureBuildCheckpoint.State(nActive, sum, max, histogram, top, samples);
        var start = new FeatureBuildPosition(1, 0);
        // Digests are computed once, for the checkpoint's settings and the store's meta table alike.
        string? contextsDigest = null, modelDigest = null;
        string ContextsDigest() => contextsDigest ??= contexts.Sha256();
        string ModelDigest() => modelDigest ??= modelFingerprint;
        System.Text.Json.Nodes.JsonObject? settings = null;
        System.Text.Json.Nodes.JsonObject Settings()
        {
            if (settings is not null) return settings;
            settings = o.CheckpointSettings();
            settings["model_fingerprint"] = ModelDigest();
            settings["dictionary_sha256"] = FeatureBuildCheckpoint.DictionaryDigest(dictionary);
            settings["hook"] = hook;
            settings["contexts_sha256"] = ContextsDigest();
            settings["n_contexts"] = contexts.Count;
            settings["context_size"] = n;
            return settings;
        }
        if (File.Exists(checkpoint))
        {
            if (!o.Resume)
                throw new InputError($"{checkpoint}: an interrupted build of this store left its checkpoint; continue it with --resume (same settings), or delete the file to start over");
            start = FeatureBuildCheckpoint.Read(checkpoint, Settings(), contexts.Count, n, state);
            progress?.Report(new FeatureBuildProgress($"resumed at pass {start.Pass}/2, context {start.NextContext} of {contexts.Count}", 0, tokens, 0));
        }
        var sinceCheckpoint = Stopwatch.StartNew();
        void AfterBatch(int pass, int done)
        {
            bool finished = pass == 2 && done == contexts.Count;
            if (o.CheckpointSeconds is double every && !finished && sinceCheckpoint.Elapsed.TotalSeconds >= every)
            {
                var next = done == contexts.Count ? new FeatureBuildPosition(2, 0) : new FeatureBuildPosition(pass, done);
                FeatureBuildCheckpoint.Write(checkpoint, Settings(), next, state);
                sinceCheckpoint.Restart();
            }
            o.AfterBatch?.Invoke(pass, done);
        }

        // The batch's activations are sparse rows of the positions first..n−1 of each context: (context i, position p) is row i·(n − first) + p − first.
        int rowsPerContext = n - first;
        // Feature activations over a ±window around (context row i of the batch, position p), 0 outside the context and at a skipped BOS.
        void FillWindow(Span<float> dest, SparseActivations acts, int i, int p, int f)
        {
            for (int j = 0; j < W; j++)
            {
                int q = p - o.Window + j;
                dest[j] = q < first || q >= n ? 0f : acts.Get(i * rowsPerContext + q - first, f);
            }
        }

        // 2. pass 1: counts, sums, max, top K.
        if (start.Pass == 1) RunPass(1, start.NextContext, (acts, c0, b) =>
        {
            for (int i = 0; i < b; i++)
                for (int p = first; p < n; p++)
                {
                    int row = i * rowsPerContext + p - first;
                    for (int e = acts.RowStart[row]; e < acts.RowStart[row + 1]; e++)
                    {
                        int f = acts.Feature[e];
                        float a = acts.Value[e];
                        if (!(a > 0))
                        {
                            if (float.IsNaN(a)) throw new InputError($"feature {f} is NaN at context {c0 + i}, position {p}: the activations at '{hook}' or the dictionary's weights hold NaN or ∞");
                            continue;
                        }
                        if (float.IsPositiveInfinity(a)) throw new InputError($"feature {f} is +∞ at context {c0 + i}, position {p}: the activations at '{hook}' or the dictionary's weights overflow");
                        nActive[f]++;
                        sum[f] += a;
                        if (a > max[f]) max[f] = a;
                        if (a > top.Threshold[f])
                        {
                            int slot = top.Admit(f, a, c0 + i, p);
                            FillWindow(top.Slots.Window(slot), acts, i, p, f);
                        }
                    }
                }
        });

        // 3. pass 2: histogram and interval samples over (0, max].
        RunPass(2, start.Pass == 2 ? start.NextContext : 0, (acts, c0, b) =>
        {
            for (int i = 0; i < b; i++)
                for (int p = first; p < n; p++)
                {
                    int row = i * rowsPerContext + p - first;
                    for (int e = acts.RowStart[row]; e < acts.RowStart[row + 1]; e++)
                    {
                        int f = acts.Feature[e];
                        float a = acts.Value[e];
                        if (!(a > 0) || max[f] == 0) continue; // max 0: pass 1 saw no activity (float noise)
                        histogram[f * B + ActivationBins.Of(a, max[f], B)]++;
                        int slot = samples.Offer(f * Q + ActivationBins.Of(a, max[f], Q), a, c0 + i, p);
                        if (slot >= 0) FillWindow(samples.Slots.Window(slot), acts, i, p, f);
                    }
                }
        });

        // 4. logit effects.
        var decoderNorm = new float[dSae];
        int dOut = dictionary.Shape.DOut;
        for (int f = 0; f < dSae; f++) decoderNorm[f] = TensorPrimitives.Norm(dictionary.P.WDec.AsSpan(f * dOut, dOut));
        FeatureLogits[]? logits = null;
        string logitNote = o.LogitCount == 0 ? "not computed (logit count 0)" : LogitEffects.Unavailable(model, dOut) ?? LogitEffectsFormula(model);
        if (o.LogitCount > 0 && LogitEffects.Unavailable(model, dOut) is null)
        {
            progress?.Report(new FeatureBuildProgress("logit effects", 0, dSae, 0));
            logits = LogitEffects.Compute(model, dictionary.P.WDec, dSae, o.LogitCount, B, cancellationToken);
            progress?.Report(new FeatureBuildProgress("logit effects", dSae, dSae, 0));
        }

        // 5. write atomically.
        var meta = new Dictionary<string, string>
        {
            ["format"] = FeatureStoreSchema.Format,
            ["schema_version"] = FeatureStoreSchema.Version.ToString(CultureInfo.InvariantCulture),
            ["created_utc"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
            ["model"] = meta0["model"],
            ["model_fingerprint"] = ModelDigest(),
            ["d_model"] = Inv(model.Config.DModel),
            ["d_vocab"] = Inv(model.Config.VocabOut),
            ["hook"] = hook,
            ["sae_path"] = meta0["sae_path"],
            ["architecture"] = dictionary.Architecture,
            ["d_in"] = Inv(dictionary.Shape.DIn),
            ["d_sae"] = Inv(dSae),
            ["d_out"] = Inv(dOut),
            ["normalize_activations"] = meta0["normalize_activations"],
            ["source"] = contexts.SourceDescription,
            ["contexts_sha256"] = ContextsDigest(),
            ["n_contexts"] = Inv(contexts.Count),
            ["context_size"] = Inv(n),
            ["skip_bos"] = o.SkipBos ? "true" : "false",
            ["n_tokens"] = tokens.ToString(CultureInfo.InvariantCulture),
            ["seed"] = Inv(o.Seed),
            ["top_k"] = Inv(o.TopK),
            ["n_quantiles"] = Inv(Q),
            ["quantile_samples"] = Inv(o.QuantileSamples),
            ["histogram_bins"] = Inv(B),
            ["window"] = Inv(o.Window),
            ["logit_count"] = Inv(logits is null ? 0 : o.LogitCount),
            ["logit_effects"] = logitNote,
        };
        var collected = new CollectedFeatures
        {
            DSae = dSae, ContextSize = n, Window = o.Window, Tokens = tokens, NActive = nActive, Sum = sum, Max = max,
            DecoderNorm = decoderNorm, Top = top, Samples = samples, Quantiles = Q, Histogram = histogram, Bins = B,
            Logits = logits, Contexts = contexts, Meta = meta, Tokenizer = model.Tokenizer,
            VocabSize = Math.Max(model.Config.DVocab, model.Config.VocabOut),
        };
        progress?.Report(new FeatureBuildProgress("writing", 0, dSae, 0));
        var (storedContexts, examples) = FeatureStoreWriter.Write(outputPath, collected, cancellationToken, o.MaxDatabasePages);
        if (File.Exists(checkpoint)) File.Delete(checkpoint); // the store is complete: nothing left to resume
        progress?.Report(new FeatureBuildProgress("writing", dSae, dSae, 0));
        int dead = nActive.Count(c => c == 0);
        return new FeatureBuildSummary(Path.GetFullPath(outputPath), hook, dSae, tokens, dead, storedContexts, examples, stateBytes, clock.Elapsed.TotalSeconds);

        // One pass over every context: encode; visit(nonzero acts of rows [b·(n − first)], first context, b).
        void RunPass(int pass, int from, Action<SparseActivations, int, int> visit)
        {
            string stage = $"pass {pass}/2";
            var passClock = Stopwatch.StartNew();
            var ids = new int[o.BatchSize * n]; // [batch, pos]
            for (int c0 = from; c0 < contexts.Count; c0 += o.BatchSize)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int b = Math.Min(o.BatchSize, contexts.Count - c0);
                for (int i = 0; i < b; i++) contexts.Contexts[c0 + i].CopyTo(ids, i * n);
                var acts = encode(b == o.BatchSize ? ids : ids[..(b * n)], b, c0);
                visit(acts, c0, b);
                long done = (long)(c0 + b) * (n - first);
                progress?.Report(new FeatureBuildProgress(stage, done, tokens, (done - (long)from * (n - first)) / Math.Max(passClock.Elapsed.TotalSeconds, 1e-9)));
                AfterBatch(pass, c0 + b);
            }
        }
    }

    /// <summary>
    /// The memory a build's per-feature state takes (top-K and interval examples with their windows, histograms, counters):
    /// <c>d_sae·(K + Q·S)·((2·window + 1)·4 + 12) + d_sae·B·8 + d_sae·20</c> bytes, allocated once whatever the corpus size
    /// (and the size of each checkpoint).
    /// </summary>
    public static long EstimateStateBytes(int dSae, FeatureBuildOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        long w = 2L * options.Window + 1;
        return (long)dSae * (options.TopK + (long)options.Quantiles * options.QuantileSamples) * (w * 4 + 12)
            + (long)dSae * options.HistogramBins * 8 + dSae * 20L;
    }

    /// <summary>The memory of one batch's feature activations, encoded densely on the CPU: <c>batch·context_size·d_sae</c> floats.</summary>
    public static long EstimateBatchBytes(int dSae, int contextSize, FeatureBuildOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return 4L * options.BatchSize * contextSize * dSae;
    }

    /// <summary>The checkpoint a build writing <paramref name="outputPath"/> keeps beside it (<see cref="FeatureBuildOptions.Resume"/>).</summary>
    public static string CheckpointPath(string outputPath) => FeatureBuildCheckpoint.PathFor(outputPath);

    static string Inv(int v) => v.ToString(CultureInfo.InvariantCulture);

    static string LogitEffectsFormula(HookedTransformer model) => model.FinalNormLayer?.Kind switch
    {
        NormKind.LayerNorm => "(W_dec[f] - mean) * w_ln_final @ W_U (LayerNorm folded, scale 1, no biases)",
        NormKind.RmsNorm => "W_dec[f] * w_ln_final @ W_U (RMSNorm weight folded, scale 1, no bias)",
        _ => "W_dec[f] @ W_U (no final norm, no bias)",
    };

    /// <summary>The hook a build reads: <paramref name="hook"/> when given, else cfg.json's hook_name; checked against the model.</summary>
    /// <exception cref="InputError">No hook is given or known, or it is not a hook point of the model (the message names the closest).</exception>
    public static string ResolveHook(HookedTransformer model, SaeLensConfig config, string? hook)
    {
        string name = string.IsNullOrWhiteSpace(hook) ? config.HookName : hook;
        if (string.IsNullOrWhiteSpace(name))
            throw new InputError("the dictionary's cfg.json has no hook_name; give the hook it reads (e.g. blocks.2.hook_resid_post)");
        var available = model.HookPointNames;
        if (!available.Contains(name))
        {
            var closest = HookNames.Closest(name, available, 3);
            throw new InputError($"hook '{name}' does not exist in this model; closest names: {string.Join(", ", closest)}");
        }
        return name;
    }
}

/// <summary>Everything a build collected, handed to <see cref="FeatureStoreWriter"/>.</summary>
sealed class CollectedFeatures
{
    public required int DSae { get; init; }
    public required int ContextSize { get; init; }
    public required int Window { get; init; }
    public required long Tokens { get; init; }
    public required long[] NActive { get; init; }       // [d_sae]
    public required double[] Sum { get; init; }         // [d_sae]
    public required float[] Max { get; init; }          // [d_sae]
    public required float[] DecoderNorm { get; init; }  // [d_sae]
    public required TopKTracker Top { get; init; }
    public required ReservoirSampler Samples { get; init; } // groups [d_sae, Q]
    public required int Quantiles { get; init; }
    public required long[] Histogram { get; init; }     // [d_sae, B]
    public required int Bins { get; init; }
    public required FeatureLogits[]? Logits { get; init; }
    public required HarvestContexts Contexts { get; init; }
    public required Dictionary<string, string> Meta { get; init; }
    public required Tokenizers.ITokenizer? Tokenizer { get; init; }
    public required int VocabSize { get; init; }
}
