// The state of an interrupted feature-store build, so `loupe features build --resume` continues where it stopped and ends
// with the store an uninterrupted build writes. One safetensors file beside the output (OUT.checkpoint), written to a
// temporary name and renamed, so a kill at any moment leaves the previous checkpoint or the new one, never a mixture.
//   metadata  format = loupe-feature-build-checkpoint; loupe_feature_build = {format_version, pass, next_context, settings…}
//   tensors   n_active I64 [d_sae]   sum F64 [d_sae]   max F32 [d_sae]   histogram I64 [d_sae·B]
//             top.{act F32, context I32, position I32} [d_sae·K]   top.windows F32 [d_sae·K·W]   top.count I32 [d_sae]
//             top.heap I32 [d_sae·K]   top.threshold F32 [d_sae]
//             samples.{act, context, position} [d_sae·Q·S]   samples.windows [d_sae·Q·S·W]   samples.count I32 [d_sae·Q]
//             samples.seen I64 [d_sae·Q]
// Everything read back is checked (dtype, length, ranges, finiteness) before the build uses it: a damaged checkpoint is
// refused naming the file and tensor, never a crash or a silently wrong store.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Loupe.Dictionaries.Sae;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Features;

/// <summary>Where a build stands: the pass (1 or 2) and the first context that pass has not yet read.</summary>
readonly record struct FeatureBuildPosition(int Pass, int NextContext);

/// <summary>Writes and reads the checkpoint of a feature-store build (see the file header).</summary>
static class FeatureBuildCheckpoint
{
    const string MetadataKey = "loupe_feature_build", Format = "loupe-feature-build-checkpoint";
    const int Version = 1;

    /// <summary>The checkpoint of a build writing <paramref name="outputPath"/>.</summary>
    public static string PathFor(string outputPath) => Path.GetFullPath(outputPath) + ".checkpoint";

    /// <summary>Hex SHA-256 of the dictionary's weights and shape: a checkpoint continues only with the same dictionary.</summary>
    public static string DictionaryDigest(SparseDictionary d)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{d.Architecture} {d.Shape}\n"));
        foreach (var a in new[] { d.P.WEnc, d.P.BEnc, d.P.WDec, d.P.BDec, d.P.WSkip, d.P.LogThreshold, d.P.Threshold })
            sha.AppendData(MemoryMarshal.AsBytes(a.AsSpan()));
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>The state a build accumulates (arrays owned by the builder, filled in place on load).</summary>
    public sealed record State(long[] NActive, double[] Sum, float[] Max, long[] Histogram, TopKTracker Top, ReservoirSampler Samples);

    /// <summary>Writes the checkpoint atomically.</summary>
    public static void Write(string path, JsonObject settings, FeatureBuildPosition at, State s)
    {
        var meta = (JsonObject)settings.DeepClone();
        meta["format_version"] = Version;
        meta["pass"] = at.Pass;
        meta["next_context"] = at.NextContext;
        var entries = new List<SafeTensorEntry>
        {
            SafeTensorEntry.I64("n_active", [s.NActive.Length], s.NActive),
            Raw("sum", DType.F64, s.Sum),
            SafeTensorEntry.F32("max", [s.Max.Length], s.Max),
            SafeTensorEntry.I64("histogram", [s.Histogram.Length], s.Histogram),
            SafeTensorEntry.F32("top.threshold", [s.Top.Threshold.Length], s.Top.Threshold),
            Raw("top.heap", DType.I32, s.Top.Heap),
            SafeTensorEntry.I64("samples.seen", [s.Samples.Seen.Length], s.Samples.Seen),
        };
        AddSlots(entries, "top", s.Top.Slots);
        AddSlots(entries, "samples", s.Samples.Slots);
        SafeTensorsWriter.Write(path, entries, new Dictionary<string, string> { [MetadataKey] = meta.ToJsonString(), ["format"] = Format });
    }

    static void AddSlots(List<SafeTensorEntry> entries, string prefix, ExampleSlots slots)
    {
        entries.Add(SafeTensorEntry.F32(prefix + ".act", [slots.Act.Length], slots.Act));
        entries.Add(Raw(prefix + ".context", DType.I32, slots.Context));
        entries.Add(Raw(prefix + ".position", DType.I32, slots.Position));
        entries.Add(SafeTensorEntry.F32(prefix + ".windows", [slots.Windows.Length], slots.Windows));
        entries.Add(Raw(prefix + ".count", DType.I32, slots.Count));
    }

    static SafeTensorEntry Raw<T>(string name, DType dtype, T[] data) where T : unmanaged =>
        SafeTensorEntry.Raw(name, dtype, [data.Length], MemoryMarshal.AsBytes(data.AsSpan()).ToArray());

    /// <summary>
    /// Reads the checkpoint at <paramref name="path"/> into <paramref name="into"/> and returns where the build stands.
    /// </summary>
    /// <param name="path">The checkpoint.</param>
    /// <param name="settings">This build's settings: the checkpoint's must be the same.</param>
    /// <param name="contexts">Contexts of this build (example contexts must index them).</param>
    /// <param name="contextSize">Positions per context.</param>
    /// <param name="into">The build's state, overwritten with the checkpoint's.</param>
    /// <exception cref="InputError">
    /// Not a feature-build checkpoint, another format version, other settings (the differences listed), or damaged: a
    /// tensor missing, of another dtype or length, or out of range (counts, heap slots, contexts, positions, NaN or
    /// negative activations). The message names the file and the field or tensor.
    /// </exception>
    public static FeatureBuildPosition Read(string path, JsonObject settings, int contexts, int contextSize, State into)
    {
        using var file = SaeLensFormat.OpenSafeTensors(path);
        if (!file.Metadata.TryGetValue(MetadataKey, out var json))
            throw new InputError($"{path}: not a Loupe feature-build checkpoint (no '{MetadataKey}' metadata)");
        var meta = JsonInput.ParseNode(System.Text.Encoding.UTF8.GetBytes(json), $"{path}: metadata '{MetadataKey}'") as JsonObject
            ?? throw new InputError($"{path}: metadata '{MetadataKey}' is not a JSON object");
        long Int(string key, long min, long max)
        {
            if (meta[key] is not JsonValue v || !v.TryGetValue(out long x))
                throw InputError.Expected(path, $"checkpoint field '{key}'", "an integer", meta[key]?.ToJsonString() ?? "nothing");
            return x >= min && x <= max ? x : throw InputError.Expected(path, $"checkpoint field '{key}'", $"{min}…{max}", x);
        }
        long version = Int("format_version", long.MinValue, long.MaxValue);
        if (version != Version) throw InputError.Expected(path, "checkpoint format_version", Version.ToString(CultureInfo.InvariantCulture), version);
        var differences = new List<string>();
        foreach (var (key, want) in settings)
        {
            string have = meta[key]?.ToJsonString() ?? "nothing", wanted = want?.ToJsonString() ?? "null";
            if (have != wanted) differences.Add($"{key}: checkpoint has {Cut(have)}, this build has {Cut(wanted)}");
        }
        if (differences.Count > 0)
            throw new InputError($"{path}: was written by a build with different settings; build with the same settings, or delete it to start over. Differences: {string.Join("; ", differences)}");
        var at = new FeatureBuildPosition((int)Int("pass", 1, 2), (int)Int("next_context", 0, contexts));

        var s = into;
        Copy(file, path, "n_active", DType.I64, s.NActive);
        Copy(file, path, "sum", DType.F64, s.Sum);
        Copy(file, path, "max", DType.F32, s.Max);
        Copy(file, path, "histogram", DType.I64, s.Histogram);
        Copy(file, path, "top.threshold", DType.F32, s.Top.Threshold);
        Copy(file, path, "top.heap", DType.I32, s.Top.Heap);
        Copy(file, path, "samples.seen", DType.I64, s.Samples.Seen);
        ReadSlots(file, path, "top", s.Top.Slots, contexts, contextSize);
        ReadSlots(file, path, "samples", s.Samples.Slots, contexts, contextSize);

        for (int f = 0; f < s.NActive.Length; f++)
        {
            if (s.NActive[f] < 0 || !double.IsFinite(s.Sum[f]) || s.Sum[f] < 0 || !float.IsFinite(s.Max[f]) || s.Max[f] < 0)
                throw new InputError($"{path}: feature {f}'s statistics (n_active {s.NActive[f]}, sum {s.Sum[f]}, max {s.Max[f]}) are not counts and finite non-negative sums");
            if (s.Top.Slots.Count[f] > s.NActive[f])
                throw new InputError($"{path}: feature {f} keeps {s.Top.Slots.Count[f]} top examples but was active {s.NActive[f]} times");
        }
        if (s.Histogram.Any(c => c < 0)) throw new InputError($"{path}: tensor 'histogram' holds a negative count");
        int k = s.Top.Slots.Capacity;
        for (int f = 0; f < s.Top.Slots.Count.Length; f++)
        {
            int n = s.Top.Slots.Count[f];
            var used = new HashSet<int>();
            for (int i = 0; i < n; i++)
            {
                int slot = s.Top.Heap[f * k + i];
                if (slot < f * k || slot >= f * k + n || !used.Add(slot))
                    throw new InputError($"{path}: tensor 'top.heap' entry {f * k + i} is {slot}; feature {f}'s heap must hold its slots {f * k}…{f * k + n - 1} once each");
            }
            float root = n == k ? s.Top.Slots.Act[s.Top.Heap[f * k]] : float.NegativeInfinity;
            if (!s.Top.Threshold[f].Equals(root))
                throw new InputError($"{path}: tensor 'top.threshold' entry {f} is {s.Top.Threshold[f]}; feature {f}'s kept examples make it {root}");
        }
        for (int g = 0; g < s.Samples.Seen.Length; g++)
            if (s.Samples.Seen[g] < s.Samples.Slots.Count[g] || (s.Samples.Slots.Count[g] < s.Samples.Slots.Capacity && s.Samples.Seen[g] != s.Samples.Slots.Count[g]))
                throw new InputError($"{path}: tensor 'samples.seen' entry {g} is {s.Samples.Seen[g]} for {s.Samples.Slots.Count[g]} kept samples");
        return at;
    }

    static void ReadSlots(SafeTensorsFile file, string path, string prefix, ExampleSlots slots, int contexts, int contextSize)
    {
        Copy(file, path, prefix + ".act", DType.F32, slots.Act);
        Copy(file, path, prefix + ".context", DType.I32, slots.Context);
        Copy(file, path, prefix + ".position", DType.I32, slots.Position);
        Copy(file, path, prefix + ".windows", DType.F32, slots.Windows);
        Copy(file, path, prefix + ".count", DType.I32, slots.Count);
        for (int g = 0; g < slots.Count.Length; g++)
        {
            if (slots.Count[g] < 0 || slots.Count[g] > slots.Capacity)
                throw new InputError($"{path}: tensor '{prefix}.count' entry {g} is {slots.Count[g]}; expected 0…{slots.Capacity}");
            for (int slot = g * slots.Capacity; slot < g * slots.Capacity + slots.Count[g]; slot++)
            {
                if (!(slots.Act[slot] > 0) || !float.IsFinite(slots.Act[slot]))
                    throw new InputError($"{path}: tensor '{prefix}.act' entry {slot} is {slots.Act[slot]}; a kept example's activation is finite and > 0");
                if ((uint)slots.Context[slot] >= (uint)contexts || (uint)slots.Position[slot] >= (uint)contextSize)
                    throw new InputError($"{path}: example {slot} of '{prefix}' is at context {slots.Context[slot]}, position {slots.Position[slot]}; this build has {contexts} contexts of {contextSize}");
            }
        }
        foreach (var w in slots.Windows)
            if (!float.IsFinite(w)) throw new InputError($"{path}: tensor '{prefix}.windows' holds {w}; activations are finite");
    }

    static void Copy<T>(SafeTensorsFile file, string path, string name, DType dtype, T[] into) where T : unmanaged
    {
        if (!file.TryGetInfo(name, out var info)) throw new InputError($"{path}: tensor '{name}' is missing");
        if (info.DType != dtype) throw InputError.Expected(path, $"tensor '{name}'", dtype.ToString(), info.DType);
        long elements = info.Shape.Aggregate(1L, (a, d) => a * d);
        if (elements != into.Length) throw InputError.Expected(path, $"tensor '{name}'", $"{into.Length} elements", elements);
        file.GetBytes(name).CopyTo(MemoryMarshal.AsBytes(into.AsSpan()));
    }

    static string Cut(string s) => s.Length <= 80 ? s : s[..77] + "…";
}
