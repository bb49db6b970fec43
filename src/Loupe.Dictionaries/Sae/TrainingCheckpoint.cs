// The checkpoint file both trainers write (SaeTrainer, CltTrainer): one safetensors file holding everything a
// run needs to continue bit-exactly, written to a temporary name and renamed.
//
// Tensors:  param.<name>                    every parameter buffer
//           adam_m.<name>, adam_v.<name>     Adam moments of every trainable tensor
//           since_fired   I64               tokens since each feature last fired
//           carry_inputs, carry_targets      rows carried into the current data window (absent when none)
// Metadata: <key> = JSON {format_version, step, epoch, window, batches_taken, …, architecture, shape, options, data}
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Sae;

/// <summary>Writes and reads the training checkpoint file shared by the dictionary trainers (layout above).</summary>
internal static class TrainingCheckpoint
{
    /// <summary>The settings a resumed run must share with the one that wrote the checkpoint.</summary>
    public static readonly string[] SettingKeys = ["architecture", "shape", "options", "data"];

    /// <summary>The metadata fields every checkpoint has: the format version and the data cursor.</summary>
    public static JsonObject State(int version, int step, BatchCursor cursor) => new()
    {
        ["format_version"] = version,
        ["step"] = step,
        ["epoch"] = cursor.Epoch,
        ["window"] = cursor.Window,
        ["batches_taken"] = cursor.BatchesTaken,
    };

    /// <summary>Writes the file atomically; empty parameter buffers are left out.</summary>
    /// <exception cref="InputError">The path exists and is not a regular file.</exception>
    public static void Write(string path, IEnumerable<(string Name, float[] Data)> parameters,
        IEnumerable<(string Name, float[] M, float[] V)> moments, long[] sinceFired, BatchCursor cursor,
        string metadataKey, JsonObject state, string format)
    {
        var entries = new List<SafeTensorEntry>();
        foreach (var (name, data) in parameters)
            if (data.Length > 0) entries.Add(SafeTensorEntry.F32("param." + name, [data.Length], data));
        foreach (var (name, m, v) in moments)
        {
            entries.Add(SafeTensorEntry.F32("adam_m." + name, [m.Length], m));
            entries.Add(SafeTensorEntry.F32("adam_v." + name, [v.Length], v));
        }
        entries.Add(SafeTensorEntry.I64("since_fired", [sinceFired.Length], sinceFired));
        if (cursor.CarryInputs.Length > 0) entries.Add(SafeTensorEntry.F32("carry_inputs", [cursor.CarryInputs.Length], cursor.CarryInputs));
        if (cursor.CarryTargets is { Length: > 0 } ct) entries.Add(SafeTensorEntry.F32("carry_targets", [ct.Length], ct));
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        OutputFiles.EnsureReplaceable(path);
        SafeTensorsWriter.Write(path, entries, new Dictionary<string, string> { [metadataKey] = state.ToJsonString(), ["format"] = format });
    }

    /// <summary>
    /// An open checkpoint: its metadata parsed and its version and settings checked. Every tensor is read and checked
    /// into new arrays, so the trainer changes its state only once everything is good.
    /// </summary>
    public sealed class Reader : IDisposable
    {
        readonly SafeTensorsFile _file;
        readonly JsonObject _state;

        /// <param name="path">The checkpoint.</param>
        /// <param name="metadataKey">Its metadata key.</param>
        /// <param name="what">What wrote it, for messages ("SAE", "CLT").</param>
        /// <param name="version">The format version this build reads.</param>
        /// <param name="expected">This run's settings (<see cref="SettingKeys"/>).</param>
        /// <exception cref="InputError">Not such a checkpoint, corrupt metadata, another version, or other settings (listed).</exception>
        public Reader(string path, string metadataKey, string what, int version, JsonObject expected)
        {
            Path = path;
            _file = SaeLensFormat.OpenSafeTensors(path);
            try
            {
                if (!_file.Metadata.TryGetValue(metadataKey, out var json))
                    throw new InputError($"{path}: not a Loupe {what} checkpoint (no '{metadataKey}' metadata)");
                _state = JsonInput.ParseNode(System.Text.Encoding.UTF8.GetBytes(json), $"{path}: metadata '{metadataKey}'") as JsonObject
                    ?? throw new InputError($"{path}: checkpoint metadata is not a JSON object");
                int found = Int("format_version", int.MinValue, int.MaxValue);
                if (found != version) throw InputError.Expected(path, "checkpoint format_version", version.ToString(CultureInfo.InvariantCulture), found);
                var diffs = new List<string>();
                foreach (var key in SettingKeys)
                {
                    string want = expected[key]!.GetValue<string>(), have = Text(key);
                    if (want != have) diffs.Add($"{key}: checkpoint has {Cut(have)}, this run has {want}");
                }
                if (diffs.Count > 0)
                    throw new InputError($"{path}: was written by a run with different settings; use another output folder or the same settings. Differences: {string.Join("; ", diffs)}");
            }
            catch
            {
                _file.Dispose();
                throw;
            }
        }

        public string Path { get; }

        /// <exception cref="InputError">The field is missing, not an integer, or outside [min, max].</exception>
        public int Int(string key, long min, long max)
        {
            var node = _state[key];
            if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out long value))
                throw InputError.Expected(Path, $"checkpoint field '{key}'", "an integer", node is null ? null : Cut(node.ToJsonString()));
            return Check.InRange(value, min, max, Path, $"checkpoint field '{key}'");
        }

        string Text(string key) => _state[key] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : "(missing)";

        /// <summary>The data cursor (epoch, window, batches taken, carried rows), checked against the data and the batch size.</summary>
        /// <exception cref="InputError">A field is out of range, or the carried rows are not fewer than one batch of whole rows.</exception>
        public BatchCursor Cursor(IRowWindows data, int batchSize)
        {
            int epoch = Int("epoch", 0, int.MaxValue), window = Int("window", 0, data.WindowCount - 1);
            int batchesTaken = Int("batches_taken", 0, int.MaxValue / batchSize);
            var carryIn = Floats("carry_inputs", -1, optional: true);
            float[]? carryOut = data.HasTargets ? Floats("carry_targets", -1, optional: true) : null;
            // Rows carried into a window are fewer than one batch; inputs and targets carry the same rows.
            long carryRows = carryIn.Length / data.DIn;
            if (carryIn.Length % data.DIn != 0 || carryRows >= batchSize)
                throw InputError.Expected(Path, "tensor 'carry_inputs'", $"fewer than one batch ({batchSize}) of whole rows of {data.DIn}", $"{carryIn.Length} floats");
            if (carryOut is not null && carryOut.Length != carryRows * data.DOut)
                throw InputError.Expected(Path, "tensor 'carry_targets'", $"{carryRows} rows of {data.DOut} floats, like carry_inputs", $"{carryOut.Length} floats");
            SaeLensFormat.ThrowIfNotFinite(carryIn, $"{Path}: tensor 'carry_inputs'");
            if (carryOut is not null) SaeLensFormat.ThrowIfNotFinite(carryOut, $"{Path}: tensor 'carry_targets'");
            return new BatchCursor(epoch, window, batchesTaken, carryIn, carryOut);
        }

        /// <summary>A float32 vector of <paramref name="length"/> elements (any length when negative).</summary>
        /// <exception cref="InputError">Missing (unless optional), of another dtype or length, or unreadable.</exception>
        public float[] Floats(string name, int length, bool optional = false)
        {
            if (!_file.TryGetInfo(name, out var info))
                return optional ? [] : throw new InputError($"{Path}: tensor '{name}' is missing");
            if (info.DType != DType.F32 || info.Shape.Length != 1 || (length >= 0 && info.Shape[0] != length) || info.Shape[0] > Check.MaxArrayElements)
                throw InputError.Expected(Path, $"tensor '{name}'", $"F32 [{(length >= 0 ? length.ToString(CultureInfo.InvariantCulture) : "n")}]", $"{info.DType} [{string.Join(", ", info.Shape)}]");
            try { return _file.GetFloat32(name).ToArray(); }
            catch (Exception e) when (e is InvalidDataException or NotSupportedException)
            { throw new InputError($"{Path}: tensor '{name}': {e.Message}", e); }
        }

        /// <summary>A parameter: finite, except that <paramref name="minusInfinityAllowed"/> admits −∞ (a JumpReLU log-threshold).</summary>
        public float[] Parameter(string name, int length, bool minusInfinityAllowed = false)
        {
            var values = Floats("param." + name, length);
            if (!minusInfinityAllowed) SaeLensFormat.ThrowIfNotFinite(values, $"{Path}: tensor 'param.{name}'");
            else if (Array.FindIndex(values, v => float.IsNaN(v) || float.IsPositiveInfinity(v)) is int i and >= 0)
                throw InputError.Expected(Path, $"tensor 'param.{name}' element {i}", "a finite number", values[i]);
            else SaeLensFormat.ThrowIfLogThresholdTooLarge(values, $"{Path}: tensor 'param.{name}'"); // −∞ allowed only for log thresholds
            return values;
        }

        /// <summary>Adam's two moments of one tensor: the first finite, the second finite and ≥ 0.</summary>
        public (float[] M, float[] V) Moments(string name, int length)
        {
            var m = Floats("adam_m." + name, length);
            var v = Floats("adam_v." + name, length);
            SaeLensFormat.ThrowIfNotFinite(m, $"{Path}: tensor 'adam_m.{name}'");
            if (Array.FindIndex(v, x => !(x >= 0) || float.IsPositiveInfinity(x)) is int i and >= 0)
                throw InputError.Expected(Path, $"tensor 'adam_v.{name}' element {i}", "a finite number ≥ 0 (a second moment)", v[i]);
            return (m, v);
        }

        /// <summary>Tokens since each feature last fired: I64, <paramref name="length"/> counts ≥ 0.</summary>
        public long[] SinceFired(int length, string lengthName)
        {
            if (!_file.TryGetInfo("since_fired", out var info)) throw new InputError($"{Path}: tensor 'since_fired' is missing");
            if (info.Shape.Length != 1 || info.Shape[0] != length || info.DType.IsFloatingPoint())
                throw InputError.Expected(Path, "tensor 'since_fired'", $"I64 [{length}] ({lengthName})", $"{info.DType} [{string.Join(", ", info.Shape)}]");
            long[] since;
            try { since = _file.GetInt64("since_fired"); }
            catch (Exception e) when (e is InvalidDataException or NotSupportedException) { throw new InputError($"{Path}: tensor 'since_fired': {e.Message}", e); }
            if (Array.FindIndex(since, x => x < 0) is int neg and >= 0)
                throw InputError.Expected(Path, $"tensor 'since_fired' element {neg}", "a token count ≥ 0", since[neg]);
            return since;
        }

        public void Dispose() => _file.Dispose();
    }

    static string Cut(string s) => s.Length > 80 ? s[..77] + "..." : s;
}
