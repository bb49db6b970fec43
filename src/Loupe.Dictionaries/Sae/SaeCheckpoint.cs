// Training checkpoints: one safetensors file holding everything a run needs to continue bit-exactly.
//
// Tensors:  param.<name>  every parameter buffer as trained (before the input scaling is folded)
//           adam_m.<name>, adam_v.<name>   Adam moments of every trainable tensor
//           since_fired   I64 [d_sae]      tokens since each feature last fired
//           carry_inputs, carry_targets    rows carried into the current data window (absent when none)
// Metadata: "loupe_checkpoint" = JSON {format_version, step, epoch, window, batches_taken, scaling_factor,
//           architecture, shape, options, data}
// One file, written to a temporary name and renamed, so a kill at any moment leaves either the
// previous checkpoint or the new one — never a mixture.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Loupe.Models.Loading;

namespace Loupe.Dictionaries.Sae;

public sealed partial class SaeTrainer
{
    const string MetadataKey = "loupe_checkpoint";
    const int CheckpointVersion = 1;

    static IEnumerable<(string Name, float[] Data)> AllBuffers(SaeParameters p) =>
    [
        ("W_enc", p.WEnc), ("b_enc", p.BEnc), ("W_dec", p.WDec), ("b_dec", p.BDec), ("W_skip", p.WSkip),
        ("log_threshold", p.LogThreshold), ("threshold", p.Threshold),
    ];

    JsonObject CheckpointState(BatchCursor cursor) => new()
    {
        ["format_version"] = CheckpointVersion,
        ["step"] = StepsDone,
        ["epoch"] = cursor.Epoch,
        ["window"] = cursor.Window,
        ["batches_taken"] = cursor.BatchesTaken,
        ["scaling_factor"] = BitConverter.SingleToInt32Bits(ScalingFactor),
        ["architecture"] = _dict.Architecture,
        ["shape"] = _dict.Shape.ToString(),
        ["options"] = _o.ToString(),
        ["data"] = _data?.Description ?? "",
    };

    /// <summary>Writes a checkpoint to <paramref name="path"/> atomically (temp file + rename).</summary>
    /// <exception cref="InvalidOperationException">The trainer has not begun.</exception>
    /// <exception cref="InputError">The path exists and is not a regular file.</exception>
    public void SaveCheckpoint(string path)
    {
        if (_batches is null) throw new InvalidOperationException("nothing to checkpoint: call Begin first");
        var cursor = _batches.Cursor;
        var entries = new List<SafeTensorEntry>();
        foreach (var (name, data) in AllBuffers(_dict.P))
            if (data.Length > 0) entries.Add(SafeTensorEntry.F32("param." + name, [data.Length], data));
        var m = _m.Trainable(_dict.Activation).ToArray();
        var v = _v.Trainable(_dict.Activation).ToArray();
        for (int t = 0; t < m.Length; t++)
        {
            entries.Add(SafeTensorEntry.F32("adam_m." + m[t].Name, [m[t].Data.Length], m[t].Data));
            entries.Add(SafeTensorEntry.F32("adam_v." + v[t].Name, [v[t].Data.Length], v[t].Data));
        }
        entries.Add(SafeTensorEntry.I64("since_fired", [_sinceFired.Length], _sinceFired));
        if (cursor.CarryInputs.Length > 0) entries.Add(SafeTensorEntry.F32("carry_inputs", [cursor.CarryInputs.Length], cursor.CarryInputs));
        if (cursor.CarryTargets is { Length: > 0 } ct) entries.Add(SafeTensorEntry.F32("carry_targets", [ct.Length], ct));
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        OutputFiles.EnsureReplaceable(path);
        SafeTensorsWriter.Write(path, entries, new Dictionary<string, string>
        {
            [MetadataKey] = CheckpointState(cursor).ToJsonString(),
            ["format"] = "loupe-sae-checkpoint",
        });
    }

    /// <summary>
    /// Continues a run from a checkpoint written by <see cref="SaveCheckpoint"/> with the same dictionary
    /// shape, architecture, options and data; the steps that follow are bit-identical to an uninterrupted run.
    /// </summary>
    /// <exception cref="InputError">
    /// The file is not a Loupe checkpoint, is corrupt (malformed safetensors, missing or mistyped metadata fields,
    /// missing tensors or tensors of the wrong dtype or length, NaN/∞ in a parameter or moment, a cursor out of range),
    /// or was written by a run with different settings (the message lists them). Messages name the file.
    /// </exception>
    public void LoadCheckpoint(string path, IRowWindows data)
    {
        ArgumentNullException.ThrowIfNull(data);
        using var file = SaeLensFormat.OpenSafeTensors(path);
        if (!file.Metadata.TryGetValue(MetadataKey, out var json))
            throw new InputError($"{path}: not a Loupe SAE checkpoint (no '{MetadataKey}' metadata)");
        JsonObject state;
        JsonInput.Validate(System.Text.Encoding.UTF8.GetBytes(json), $"{path}: metadata '{MetadataKey}'");
        try { state = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject ?? throw new InputError($"{path}: checkpoint metadata is not a JSON object"); }
        catch (JsonException e) { throw new InputError($"{path}: checkpoint metadata is not valid JSON: {e.Message}", e); }
        int Int(string key, long min, long max)
        {
            var node = state[key];
            if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out long value))
                throw InputError.Expected(path, $"checkpoint field '{key}'", "an integer", node is null ? null : Cut(node.ToJsonString()));
            return Check.InRange(value, min, max, path, $"checkpoint field '{key}'");
        }
        string Text(string key)
        {
            var node = state[key];
            return node is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : "(missing)";
        }
        int version = Int("format_version", int.MinValue, int.MaxValue);
        if (version != CheckpointVersion) throw InputError.Expected(path, "checkpoint format_version", CheckpointVersion.ToString(CultureInfo.InvariantCulture), version);

        var expected = CheckpointState(new BatchCursor(0, 0, 0, [], null));
        expected["data"] = data.Description;
        var diffs = new List<string>();
        foreach (var key in new[] { "architecture", "shape", "options", "data" })
        {
            string want = expected[key]!.GetValue<string>(), have = Text(key);
            if (want != have) diffs.Add($"{key}: checkpoint has {Cut(have)}, this run has {want}");
        }
        if (diffs.Count > 0)
            throw new InputError($"{path}: was written by a run with different settings; use another output folder or the same settings. Differences: {string.Join("; ", diffs)}");

        int step = Int("step", 0, _o.Steps), epoch = Int("epoch", 0, int.MaxValue), window = Int("window", 0, data.WindowCount - 1);
        int batchesTaken = Int("batches_taken", 0, int.MaxValue / _o.BatchSize);
        float scaling = BitConverter.Int32BitsToSingle(Int("scaling_factor", int.MinValue, int.MaxValue));
        if (!(scaling > 0) || !float.IsFinite(scaling)) throw InputError.Expected(path, "checkpoint field 'scaling_factor'", "a finite number > 0", scaling);

        // Everything is read and checked into new arrays first; the trainer's state changes only once all of it is good.
        float[] Read(string name, int length, bool optional = false)
        {
            if (!file.TryGetInfo(name, out var info))
                return optional ? [] : throw new InputError($"{path}: tensor '{name}' is missing");
            if (info.DType != DType.F32 || info.Shape.Length != 1 || (length >= 0 && info.Shape[0] != length) || info.Shape[0] > Check.MaxArrayElements)
                throw InputError.Expected(path, $"tensor '{name}'", $"F32 [{(length >= 0 ? length.ToString(CultureInfo.InvariantCulture) : "n")}]", $"{info.DType} [{string.Join(", ", info.Shape)}]");
            float[] values;
            try { values = file.GetFloat32(name).ToArray(); }
            catch (Exception e) when (e is InvalidDataException or NotSupportedException)
            { throw new InputError($"{path}: tensor '{name}': {e.Message}", e); }
            return values;
        }
        var loaded = new List<(float[] Into, float[] Values)>();
        foreach (var (name, buffer) in AllBuffers(_dict.P))
        {
            if (buffer.Length == 0) continue;
            var values = Read("param." + name, buffer.Length);
            // log_threshold may hold −∞ (θ ≤ 0 fires like θ = 0); everything else must be finite.
            if (name == "log_threshold") { if (Array.FindIndex(values, v => float.IsNaN(v) || float.IsPositiveInfinity(v)) is int i and >= 0) NotFinite("param." + name, i, values[i]); }
            else SaeLensFormat.ThrowIfNotFinite(values, $"{path}: tensor 'param.{name}'");
            loaded.Add((buffer, values));
        }
        var m = _m.Trainable(_dict.Activation).ToArray();
        var v = _v.Trainable(_dict.Activation).ToArray();
        for (int t = 0; t < m.Length; t++)
        {
            var mv = Read("adam_m." + m[t].Name, m[t].Data.Length);
            var vv = Read("adam_v." + v[t].Name, v[t].Data.Length);
            SaeLensFormat.ThrowIfNotFinite(mv, $"{path}: tensor 'adam_m.{m[t].Name}'");
            if (Array.FindIndex(vv, x => !(x >= 0) || float.IsPositiveInfinity(x)) is int i and >= 0)
                throw InputError.Expected(path, $"tensor 'adam_v.{v[t].Name}' element {i}", "a finite number ≥ 0 (a second moment)", vv[i]);
            loaded.Add((m[t].Data, mv));
            loaded.Add((v[t].Data, vv));
        }
        if (!file.TryGetInfo("since_fired", out var sinceInfo)) throw new InputError($"{path}: tensor 'since_fired' is missing");
        if (sinceInfo.Shape.Length != 1 || sinceInfo.Shape[0] != _sinceFired.Length || sinceInfo.DType.IsFloatingPoint())
            throw InputError.Expected(path, "tensor 'since_fired'", $"I64 [{_sinceFired.Length}] (d_sae)", $"{sinceInfo.DType} [{string.Join(", ", sinceInfo.Shape)}]");
        long[] since;
        try { since = file.GetInt64("since_fired"); }
        catch (Exception e) when (e is InvalidDataException or NotSupportedException) { throw new InputError($"{path}: tensor 'since_fired': {e.Message}", e); }
        if (Array.FindIndex(since, x => x < 0) is int neg and >= 0)
            throw InputError.Expected(path, $"tensor 'since_fired' element {neg}", "a token count ≥ 0", since[neg]);
        var carryIn = Read("carry_inputs", -1, optional: true);
        float[]? carryOut = data.HasTargets ? Read("carry_targets", -1, optional: true) : null;
        // Rows carried into a window are fewer than one batch; inputs and targets carry the same rows.
        long carryRows = carryIn.Length / data.DIn;
        if (carryIn.Length % data.DIn != 0 || carryRows >= _o.BatchSize)
            throw InputError.Expected(path, "tensor 'carry_inputs'", $"fewer than one batch ({_o.BatchSize}) of whole rows of {data.DIn}", $"{carryIn.Length} floats");
        if (carryOut is not null && carryOut.Length != carryRows * data.DOut)
            throw InputError.Expected(path, "tensor 'carry_targets'", $"{carryRows} rows of {data.DOut} floats, like carry_inputs", $"{carryOut.Length} floats");
        SaeLensFormat.ThrowIfNotFinite(carryIn, $"{path}: tensor 'carry_inputs'");
        if (carryOut is not null) SaeLensFormat.ThrowIfNotFinite(carryOut, $"{path}: tensor 'carry_targets'");

        foreach (var (into, values) in loaded) values.CopyTo(into, 0);
        since.CopyTo(_sinceFired, 0);
        ScalingFactor = scaling;
        StepsDone = step;
        _folded = false;
        _data = data;
        Attach(data, new BatchCursor(epoch, window, batchesTaken, carryIn, carryOut));

        void NotFinite(string name, int i, float value) =>
            throw InputError.Expected(path, $"tensor '{name}' element {i}", "a finite number", value);
    }

    static string Cut(string s) => s.Length > 80 ? s[..77] + "..." : s;
}
