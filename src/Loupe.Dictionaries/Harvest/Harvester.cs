using System.Diagnostics;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Reports;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Dictionaries.Harvest;

/// <summary>Settings of one harvest.</summary>
/// <param name="Hooks">Exact hook point names to record, e.g. <c>blocks.2.hook_resid_post</c>.</param>
/// <param name="BatchSize">Contexts per forward pass.</param>
/// <param name="ShardTokens">Flush a shard about every this many rows (rounded to whole contexts, at least one).</param>
/// <param name="SkipBos">Leave out the BOS position of every context (its activations are outliers).</param>
public sealed record HarvestOptions(IReadOnlyList<string> Hooks, int BatchSize = 8, int ShardTokens = 65_536, bool SkipBos = true)
{
    /// <summary>Test seam: the free bytes of the disk holding a folder (default <see cref="Harvester.FreeBytes"/>).</summary>
    internal Func<string, long?> FreeSpace { get; init; } = Harvester.FreeBytes;
}

/// <summary>Progress after each forward batch.</summary>
public readonly record struct HarvestProgress(long TokensDone, long TotalTokens, int ShardsDone, int TotalShards, double TokensPerSecond);

/// <summary>
/// Runs a model over contexts and streams the activations at chosen hooks to a folder of
/// safetensors shards:
/// 1. check the hooks exist and find d for each (a one-token forward pass);
/// 2. if the folder holds a manifest, check it was made with the same settings and resume after
///    its last complete shard (stray temporary files are removed);
/// 3. for each remaining shard — a fixed range of contexts — run the model batch by batch, caching
///    only the requested hooks, and copy rows into the shard's buffers <c>[tokens_in_shard, d]</c>;
/// 4. write <c>shard-NNNNN.safetensors</c> (atomically: temp + rename), then the manifest (atomically).
/// Shard boundaries depend only on the settings, so a resumed harvest is byte-identical to an
/// uninterrupted one. Memory: one shard's buffers plus one batch's cache. On a device model the cache stays
/// there and each batch copies out exactly the rows written (BOS left out on the device).
/// </summary>
public static class Harvester
{
    /// <summary>
    /// Harvests <paramref name="contexts"/> into <paramref name="outputFolder"/>; returns the final manifest.
    /// The folder is locked (<see cref="OutputLock"/>) for the whole run, so two harvests cannot interleave.
    /// </summary>
    /// <exception cref="InputError">
    /// A hook does not exist in the model or is not per-position, no hook is given, an option is out of range, the
    /// contexts do not fit n_ctx, the folder holds a harvest made with different settings (the message lists them)
    /// or a damaged one, the output path is not a folder, another process is harvesting into it (the message names it), or
    /// the shards still to write need more than the disk holding the folder has free (<see cref="FreeBytes"/>).
    /// </exception>
    /// <exception cref="OperationCanceledException">Cancelled; complete shards and the manifest stay, and a later call resumes.</exception>
    public static HarvestManifest Run(HookedTransformer model, HarvestContexts contexts, string outputFolder, HarvestOptions options,
        IProgress<HarvestProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(contexts);
        if (options.Hooks.Count == 0) throw new InputError("argument: hooks: expected at least one hook to harvest, found none");
        Check.InRange(options.BatchSize, 1, int.MaxValue, "argument", "batch size");
        Check.InRange(options.ShardTokens, 1, int.MaxValue, "argument", "shard tokens");
        if (options.Hooks.Distinct(StringComparer.Ordinal).Count() != options.Hooks.Count) throw new InputError($"argument: hooks: expected each hook once, found {string.Join(", ", options.Hooks)}");
        if (contexts.ContextSize > model.Config.NCtx)
            throw InputError.Expected("argument", "context size", $"at most the model's n_ctx = {model.Config.NCtx}", contexts.ContextSize);
        if (options.SkipBos && contexts.ContextSize < 2) throw InputError.Expected("argument", "context size", "at least 2 when BOS is skipped (BOS plus one token)", contexts.ContextSize);
        var available = model.HookPointNames;
        foreach (var h in options.Hooks)
            if (!available.Contains(h))
                throw new InputError($"hook '{h}' does not exist in this model; hooks with the same ending: {string.Join(", ", available.Where(a => a.EndsWith(h[(h.LastIndexOf('.') + 1)..], StringComparison.Ordinal)).Take(6))}");

        // 1. d per hook from a pass over the first context; only [batch, pos, ...] activations can be harvested.
        var hookSet = new HashSet<string>(options.Hooks, StringComparer.Ordinal);
        int n = contexts.ContextSize;
        var probe = model.Run(TokenBatch.Single(contexts.Contexts[0]), new RunOptions { CacheFilter = hookSet.Contains, LastPositionLogitsOnly = true });
        foreach (var h in options.Hooks)
        {
            var t = probe.Cache[h];
            if (t.Rank < 2 || t.Dim(0) != 1 || t.Dim(1) != n)
                throw new InputError($"hook '{h}' has shape {t.ShapeString} for one context of {n} tokens; only per-position activations [batch, pos, ...] can be harvested");
        }
        var dims = options.Hooks.ToDictionary(h => h, h => probe.Cache[h].Length / n);

        int rowsPerContext = options.SkipBos ? contexts.ContextSize - 1 : contexts.ContextSize;
        int contextsPerShard = Math.Max(1, options.ShardTokens / rowsPerContext);
        long largest = (long)contextsPerShard * rowsPerContext * dims.Values.Max();
        if (largest > Array.MaxLength)
            throw new InputError($"argument: shard tokens: a shard of {contextsPerShard * (long)rowsPerContext} rows × d = {dims.Values.Max()} exceeds one array; lower the shard size");
        var manifest = new HarvestManifest
        {
            Model = model.Source is string s ? Path.GetFullPath(s) : "(in memory)",
            ModelFingerprint = HarvestManifest.Fingerprint(model),
            Hooks = options.Hooks.ToList(),
            DModelByHook = dims,
            ContextSize = contexts.ContextSize,
            SkipBos = options.SkipBos,
            ContextsPerShard = contextsPerShard,
            TotalContexts = contexts.Count,
            ContextsSha256 = contexts.Sha256(),
            Source = contexts.SourceDescription,
            Seed = contexts.Seed,
        };

        // 2. lock the folder for the whole run (released by the kernel even on SIGKILL), then resume.
        using var folderLock = OutputLock.Acquire(outputFolder, "loupe harvest");
        foreach (var stray in Directory.GetFiles(outputFolder, "*.tmp-*")) File.Delete(stray);
        string manifestPath = Path.Combine(outputFolder, HarvestManifest.FileName);
        if (File.Exists(manifestPath))
        {
            var existing = HarvestManifest.Load(outputFolder);
            var diffs = manifest.SettingDifferences(existing);
            if (diffs.Count > 0)
                throw new InputError($"{outputFolder} holds a harvest with different settings; use another folder or delete it. Differences: {string.Join("; ", diffs)}");
            foreach (var shard in existing.Shards)
                if (!File.Exists(Path.Combine(outputFolder, shard.File)))
                    throw new InputError($"{Path.Combine(outputFolder, shard.File)}: listed in {manifestPath} but missing; delete the folder and harvest again");
            manifest.Shards = existing.Shards;
            manifest.TotalTokens = existing.TotalTokens;
        }
        else
        {
            OutputFiles.EnsureReplaceable(manifestPath); // e.g. a folder named manifest.json: refuse before hours of work
        }

        int totalShards = (contexts.Count + contextsPerShard - 1) / contextsPerShard;
        long totalTokens = (long)contexts.Count * rowsPerContext;
        // The shards still to write, against the disk's free space: refused now, not hours later on a full disk.
        long need = ShardBytes(totalTokens - manifest.TotalTokens, dims.Values);
        if (options.FreeSpace(outputFolder) is long free && need > free)
            throw new InputError($"{Path.GetFullPath(outputFolder)}: the harvest needs ≈ {ByteSizes.Format(need)} more on disk " +
                $"({(totalTokens - manifest.TotalTokens).ToString("N0", System.Globalization.CultureInfo.InvariantCulture)} tokens × {options.Hooks.Count} hook(s) of d = {string.Join(", ", options.Hooks.Select(h => dims[h]))} as float32) " +
                $"and that disk has {ByteSizes.Format(free)} free; free space, harvest fewer contexts (--max-contexts) or hooks, or write elsewhere");
        var clock = Stopwatch.StartNew();
        long doneThisRun = 0;
        for (int k = manifest.Shards.Count; k < totalShards; k++)
        {
            // 3. one shard.
            int first = k * contextsPerShard, count = Math.Min(contextsPerShard, contexts.Count - first);
            int rows = count * rowsPerContext;
            var buffers = options.Hooks.Select(h => new float[rows * dims[h]]).ToArray(); // [tokens_in_shard, d] per hook
            var tokenIds = new long[rows]; // [tokens_in_shard]
            for (int c0 = 0; c0 < count; c0 += options.BatchSize)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int b = Math.Min(options.BatchSize, count - c0);
                var ids = contexts.Ids(first + c0, b);
                var result = model.Run(new TokenBatch(ids, b, contexts.ContextSize), new RunOptions { CacheFilter = hookSet.Contains, LastPositionLogitsOnly = true });
                int skip = options.SkipBos ? 1 : 0;
                for (int h = 0; h < options.Hooks.Count; h++)
                {
                    var tensor = result.Cache[options.Hooks[h]];
                    int d = dims[options.Hooks[h]];
                    if (tensor.Length != b * contexts.ContextSize * d)
                        throw new InvalidOperationException($"hook '{options.Hooks[h]}' gave {tensor.ShapeString}; expected [{b}, {contexts.ContextSize}, {d}]");
                    CopyRowsOut(model.Backend, tensor, b, contexts.ContextSize, skip, d, buffers[h].AsSpan(c0 * rowsPerContext * d, b * rowsPerContext * d));
                }
                model.Recycle(result); // copied out: the next batch's pass reuses this one's cached storage
                for (int i = 0; i < b; i++)
                    for (int p = 0; p < rowsPerContext; p++)
                        tokenIds[(c0 + i) * rowsPerContext + p] = ids[i * contexts.ContextSize + p + skip];
                doneThisRun += (long)b * rowsPerContext;
                long done = manifest.TotalTokens + (long)(c0 + b) * rowsPerContext;
                progress?.Report(new HarvestProgress(done, totalTokens, k, totalShards, doneThisRun / Math.Max(clock.Elapsed.TotalSeconds, 1e-9)));
            }

            // 4. write the shard, then the manifest.
            string file = $"shard-{k:D5}.safetensors";
            var entries = options.Hooks.Select((h, i) => SafeTensorEntry.F32(h, [rows, dims[h]], buffers[i]))
                .Append(SafeTensorEntry.I64(HarvestManifest.TokenIdsTensor, [rows], tokenIds)).ToList();
            SafeTensorsWriter.Write(Path.Combine(outputFolder, file), entries, new Dictionary<string, string> { ["format"] = "loupe-harvest", ["shard"] = k.ToString(System.Globalization.CultureInfo.InvariantCulture) });
            manifest.Shards.Add(new HarvestShard { File = file, Tokens = rows, FirstContext = first, Contexts = count });
            manifest.TotalTokens += rows;
            manifest.Complete = manifest.Shards.Count == totalShards;
            AtomicFile.WriteJson(Path.Combine(outputFolder, HarvestManifest.FileName), manifest);
            progress?.Report(new HarvestProgress(manifest.TotalTokens, totalTokens, k + 1, totalShards, doneThisRun / Math.Max(clock.Elapsed.TotalSeconds, 1e-9)));
        }
        if (!manifest.Complete)
        {
            manifest.Complete = true;
            AtomicFile.WriteJson(Path.Combine(outputFolder, HarvestManifest.FileName), manifest);
        }
        return manifest;
    }

    /// <summary>
    /// Bytes the shards of a harvest take on disk: every token's rows of every hook as float32 plus its id (int64); the
    /// safetensors headers (a few hundred bytes a shard) are left out.
    /// </summary>
    public static long ShardBytes(long tokens, IEnumerable<int> widths)
    {
        ArgumentNullException.ThrowIfNull(widths);
        return tokens * (4L * widths.Sum(d => (long)d) + 8);
    }

    /// <summary>
    /// Bytes <paramref name="contexts"/> harvested at <paramref name="options"/>' hooks take on disk (<see cref="ShardBytes"/>),
    /// from the widths <paramref name="model"/> declares (no forward pass); null when a hook's width is not declared
    /// (a splice's sub-hook) or not per-position.
    /// </summary>
    public static long? EstimateBytes(HookedTransformer model, HarvestContexts contexts, HarvestOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(contexts);
        ArgumentNullException.ThrowIfNull(options);
        var declared = model.HookPoints.ToDictionary(p => p.Name, StringComparer.Ordinal);
        var widths = new List<int>();
        foreach (var hook in options.Hooks)
        {
            if (!declared.TryGetValue(hook, out var point) || point.Axes.Count < 3 || point.Axes[0] != HookAxis.Batch || point.Axes[1] != HookAxis.Pos
                || point.Sizes.Skip(2).Any(s => s is null)) return null;
            widths.Add(point.Sizes.Skip(2).Aggregate(1, (a, s) => a * s!.Value));
        }
        long rows = (long)contexts.Count * (options.SkipBos ? contexts.ContextSize - 1 : contexts.ContextSize);
        return ShardBytes(rows, widths);
    }

    /// <summary>The bytes free on the disk holding <paramref name="folder"/> (its nearest existing ancestor), or null when unknown.</summary>
    public static long? FreeBytes(string folder)
    {
        try
        {
            var dir = new DirectoryInfo(Path.GetFullPath(folder));
            while (dir is not null && !dir.Exists) dir = dir.Parent;
            return dir is null ? null : new DriveInfo(dir.FullName).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { return null; }
    }

    /// <summary>
    /// Positions <c>skip..n−1</c> of every context of a cached activation <c>[batch, n, d]</c> (trailing axes flattened
    /// into d) into <paramref name="destination"/> <c>[batch·(n − skip), d]</c>. On a device the rows are packed there
    /// first, so exactly the rows written cross to the host, in one copy.
    /// </summary>
    internal static void CopyRowsOut(IComputeBackend backend, Tensor activation, int batch, int n, int skip, int d, Span<float> destination)
    {
        int rowsPerContext = n - skip;
        if (activation.IsHost)
        {
            var act = activation.Span; // [batch, pos, d]
            for (int i = 0; i < batch; i++)
                act.Slice((i * n + skip) * d, rowsPerContext * d).CopyTo(destination[(i * rowsPerContext * d)..]);
            return;
        }
        if (skip == 0)
        {
            activation.CopyTo(destination);
            return;
        }
        var packed = backend.Empty(batch * rowsPerContext, d); // [batch·(n − skip), d]
        backend.CopyRows(activation, (long)skip * d, n * d, packed, 0, rowsPerContext * d, batch, rowsPerContext * d);
        packed.CopyTo(destination);
    }
}
