using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Harvest;

/// <summary>
/// A harvested folder opened for training. <see cref="Open"/> validates the manifest and every
/// shard's header (tensors present, shapes <c>[tokens, d]</c> as listed, file length consistent);
/// <see cref="Batches"/> streams shuffled rows; NaN or ∞ values are reported naming shard and row.
/// </summary>
public sealed class ActivationStore
{
    readonly string[] _paths;
    // Hook name offered → tensor name in the shards (they differ only in format-1 harvests, see StoredNames).
    readonly Dictionary<string, string> _stored;

    ActivationStore(string folder, HarvestManifest manifest, string[] paths)
    {
        Folder = folder;
        Manifest = manifest;
        _paths = paths;
        var offered = StoredNames(manifest);
        _stored = offered.ToDictionary(o => o.Name, o => o.Stored, StringComparer.Ordinal);
        Hooks = [.. offered.Select(o => o.Name)];
    }

    public string Folder { get; }
    public HarvestManifest Manifest { get; }
    public long TotalTokens => Manifest.TotalTokens;

    /// <summary>The hooks that can be read, by today's names (see <see cref="StoredNames"/> for format-1 harvests).</summary>
    public IReadOnlyList<string> Hooks { get; }

    /// <summary>
    /// Format 1 was harvested while Loupe took an RMSNorm's <c>hook_normalized</c> after the norm's weight (TransformerLens takes
    /// it before). ln2's value was then the MLP's input on every model: it is offered as <c>blocks.ℓ.mlp.hook_in</c>. Other norms'
    /// <c>hook_normalized</c> equal today's only on LayerNorm models, which the harvest does not record: they are not offered.
    /// </summary>
    static List<(string Name, string Stored)> StoredNames(HarvestManifest manifest)
    {
        var names = new List<(string Name, string Stored)>();
        foreach (var h in manifest.Hooks)
        {
            if (manifest.FormatVersion >= 2) names.Add((h, h));
            else if (System.Text.RegularExpressions.Regex.Match(h, @"^blocks\.([0-9]+)\.ln2\.hook_normalized$") is { Success: true } m) names.Add(($"blocks.{m.Groups[1].Value}.mlp.hook_in", h));
            else if (!h.EndsWith(".hook_normalized", StringComparison.Ordinal)) names.Add((h, h));
        }
        return names;
    }

    /// <summary>Row width of a hook.</summary>
    /// <exception cref="InputError">The hook was not harvested (the message lists those that were).</exception>
    public int D(string hook)
    {
        if (_stored.TryGetValue(hook, out var stored) && Manifest.DModelByHook.TryGetValue(stored, out int d)) return d;
        if (Manifest.FormatVersion < 2 && Manifest.Hooks.Contains(hook))
            throw new InputError($"{Folder}: hook '{hook}' was harvested by an older Loupe (manifest format_version {Manifest.FormatVersion}), which took an RMSNorm's hook_normalized after the norm's weight, unlike TransformerLens; " +
                $"whether these values are today's cannot be told from the harvest, so they are not read (ln2's are offered as blocks.ℓ.mlp.hook_in). Harvest again");
        throw new InputError($"{Folder}: hook '{hook}' was not harvested here; the harvest has {string.Join(", ", Hooks)}");
    }

    /// <summary>Opens and validates a harvest folder.</summary>
    /// <exception cref="FileNotFoundException">The manifest or a shard file is missing (the message names it).</exception>
    /// <exception cref="InputError">
    /// The manifest is malformed, inconsistent or incomplete, or a shard is corrupt, truncated or of the wrong
    /// shape (the message names the file and the field or tensor).
    /// </exception>
    public static ActivationStore Open(string folder, bool allowIncomplete = false)
    {
        var manifest = HarvestManifest.Load(folder); // validates fields, counts and shard paths
        string mpath = Path.Combine(folder, HarvestManifest.FileName);
        if (!manifest.Complete && !allowIncomplete) throw new InputError($"{mpath}: the harvest is incomplete ({manifest.Shards.Count} shards); run the harvest again to finish it");
        var paths = new string[manifest.Shards.Count];
        for (int i = 0; i < paths.Length; i++)
        {
            var shard = manifest.Shards[i];
            string path = paths[i] = Path.Combine(folder, shard.File);
            if (!File.Exists(path)) throw new FileNotFoundException($"{path}: shard listed in {mpath} is missing", path);
            InputFiles.EnsureRegularFile(path);
            try
            {
                using var file = SafeTensorsFile.Open(path);
                foreach (var h in manifest.Hooks) CheckShape(file, path, h, [shard.Tokens, manifest.DModelByHook[h]], DType.F32);
                CheckShape(file, path, HarvestManifest.TokenIdsTensor, [shard.Tokens], DType.I64);
            }
            catch (Exception e) when (e is IOException or ArgumentException or NotSupportedException or UnauthorizedAccessException
                || (e is InvalidDataException or InputError && !e.Message.Contains(path, StringComparison.Ordinal)))
            {
                throw new InputError($"{path}: corrupt or truncated shard: {e.Message}", e);
            }
            catch (InvalidDataException e)
            {
                throw new InputError(e.Message, e);
            }
        }
        return new ActivationStore(folder, manifest, paths);
    }

    static void CheckShape(SafeTensorsFile file, string path, string name, long[] shape, DType dtype)
    {
        if (!file.TryGetInfo(name, out var info)) throw new InputError($"{path}: tensor '{name}': missing (the manifest lists it)");
        if (info.DType != dtype || !info.Shape.SequenceEqual(shape))
            throw new InputError($"{path}: tensor '{name}': expected {dtype} [{string.Join(", ", shape)}] as the manifest says, found {info.DType} [{string.Join(", ", info.Shape)}]");
    }

    /// <summary>All rows of one shard for a hook, <c>[tokens, d]</c>, checked to be finite.</summary>
    /// <exception cref="InputError">A value is NaN or ±∞, or the shard changed since <see cref="Open"/> (the message names shard and row).</exception>
    public float[] ReadShard(int shard, string hook)
    {
        int d = D(hook);
        string path = _paths[shard];
        float[] rows;
        try
        {
            using var file = SafeTensorsFile.Open(path);
            // Checked again: the file may have been replaced since Open, and its header sizes the allocation.
            string stored = _stored[hook];
            CheckShape(file, path, stored, [Manifest.Shards[shard].Tokens, d], DType.F32);
            rows = file.GetFloat32(stored).ToArray(); // [tokens, d]
        }
        catch (Exception e) when (e is IOException or ArgumentException or NotSupportedException or InvalidDataException
            || (e is InputError && !e.Message.Contains(path, StringComparison.Ordinal)))
        {
            throw new InputError($"{path}: corrupt or truncated shard: {e.Message}", e);
        }
        int bad = FirstNonFinite(rows);
        if (bad >= 0)
            throw new InputError($"{path}: tensor '{_stored[hook]}': {(float.IsNaN(rows[bad]) ? "NaN" : rows[bad] > 0 ? "+∞" : "−∞")} at row {bad / d} (column {bad % d}); expected finite activations");
        return rows;
    }

    /// <summary>Token ids of one shard's rows, <c>[tokens]</c>.</summary>
    /// <exception cref="InputError">The shard changed since <see cref="Open"/> and no longer matches the manifest.</exception>
    public long[] ReadTokenIds(int shard)
    {
        string path = _paths[shard];
        using var file = SafeTensorsFile.Open(path);
        CheckShape(file, path, HarvestManifest.TokenIdsTensor, [Manifest.Shards[shard].Tokens], DType.I64);
        return file.GetInt64(HarvestManifest.TokenIdsTensor);
    }

    static int FirstNonFinite(float[] values)
    {
        for (int i = 0; i < values.Length; i++) if (!float.IsFinite(values[i])) return i;
        return -1;
    }

    /// <summary>Reads every shard of every hook and throws on the first NaN or ∞.</summary>
    public void Validate()
    {
        for (int s = 0; s < _paths.Length; s++)
            foreach (var h in Hooks) ReadShard(s, h);
    }

    /// <summary>
    /// One epoch of shuffled batches <c>[batch, d]</c> (row-major, a fresh array each) of one hook:
    /// 1. shuffle the shard order with <see cref="Random"/>(seed);
    /// 2. load <paramref name="shardsInBuffer"/> shards at a time into a mixing buffer, together
    ///    with rows left over from the previous window;
    /// 3. shuffle the buffer's rows and yield full batches, carrying the remainder forward.
    /// The last partial batch is yielded unless <paramref name="dropLast"/>. Every row appears once
    /// per epoch; memory is about <paramref name="shardsInBuffer"/> shards.
    /// </summary>
    /// <exception cref="InputError">A count is not positive, or a shard holds a NaN or ∞ (the message names shard and row).</exception>
    public IEnumerable<float[]> Batches(string hook, int batchSize, int seed, int shardsInBuffer = 4, bool dropLast = false)
    {
        Check.InRange(batchSize, 1, int.MaxValue, "argument", "batch size");
        Check.InRange(shardsInBuffer, 1, int.MaxValue, "argument", "shards in buffer");
        int d = D(hook);
        return Iterate();

        IEnumerable<float[]> Iterate()
        {
            var rng = new Random(seed);
            var order = Enumerable.Range(0, _paths.Length).ToArray();
            rng.Shuffle(order);
            float[] carry = [];
            for (int w = 0; w < order.Length; w += shardsInBuffer)
            {
                var parts = new List<float[]> { carry };
                for (int s = w; s < Math.Min(w + shardsInBuffer, order.Length); s++) parts.Add(ReadShard(order[s], hook));
                var buffer = new float[parts.Sum(p => p.Length)]; // [rows, d]
                int at = 0;
                foreach (var p in parts) { p.CopyTo(buffer, at); at += p.Length; }
                int rows = buffer.Length / d;
                var perm = Enumerable.Range(0, rows).ToArray();
                rng.Shuffle(perm);
                int full = rows / batchSize * batchSize;
                for (int r = 0; r < full; r += batchSize)
                    yield return Gather(buffer, perm.AsSpan(r, batchSize), d);
                carry = Gather(buffer, perm.AsSpan(full), d);
            }
            if (carry.Length > 0 && !dropLast) yield return carry;
        }
    }

    static float[] Gather(float[] buffer, ReadOnlySpan<int> rows, int d)
    {
        var batch = new float[rows.Length * d]; // [batch, d]
        for (int i = 0; i < rows.Length; i++) buffer.AsSpan(rows[i] * d, d).CopyTo(batch.AsSpan(i * d));
        return batch;
    }
}
