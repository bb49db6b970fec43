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
    /// <exception cref="InvalidDataException">The file is not a Loupe checkpoint, or is corrupt (the message names it).</exception>
    /// <exception cref="InvalidOperationException">It was written by a run with different settings (the message lists them).</exception>
    public void LoadCheckpoint(string path, IRowWindows data)
    {
        using var file = SafeTensorsFile.Open(path);
        if (!file.Metadata.TryGetValue(MetadataKey, out var json))
            throw new InvalidDataException($"{path}: not a Loupe SAE checkpoint (no '{MetadataKey}' metadata)");
        JsonObject state;
        try { state = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{path}: checkpoint metadata is not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: checkpoint metadata is not valid JSON: {e.Message}", e); }
        int version = state["format_version"]?.GetValue<int>() ?? 0;
        if (version != CheckpointVersion) throw new InvalidDataException($"{path}: checkpoint format_version {version}; this build reads {CheckpointVersion}");

        _data = data;
        var expected = CheckpointState(new BatchCursor(0, 0, 0, [], null));
        var diffs = new List<string>();
        foreach (var key in new[] { "architecture", "shape", "options", "data" })
        {
            string want = expected[key]!.GetValue<string>(), have = state[key]?.GetValue<string>() ?? "(missing)";
            if (want != have) diffs.Add($"{key}: checkpoint has {have}, this run has {want}");
        }
        if (diffs.Count > 0)
            throw new InvalidOperationException($"{path} was written by a run with different settings; use another output folder or the same settings. Differences: {string.Join("; ", diffs)}");

        float[] Read(string name, int length, bool optional = false)
        {
            if (!file.Contains(name))
                return optional ? [] : throw new InvalidDataException($"{path}: tensor '{name}' is missing");
            var info = file.GetInfo(name);
            if (info.DType != DType.F32 || info.Shape.Length != 1 || (length >= 0 && info.Shape[0] != length))
                throw new InvalidDataException($"{path}: tensor '{name}' is {info.DType} [{string.Join(", ", info.Shape)}]; expected F32 [{(length >= 0 ? length.ToString(CultureInfo.InvariantCulture) : "n")}]");
            return file.GetFloat32(name).ToArray();
        }
        foreach (var (name, buffer) in AllBuffers(_dict.P))
            if (buffer.Length > 0) Read("param." + name, buffer.Length).CopyTo(buffer, 0);
        var m = _m.Trainable(_dict.Activation).ToArray();
        var v = _v.Trainable(_dict.Activation).ToArray();
        for (int t = 0; t < m.Length; t++)
        {
            Read("adam_m." + m[t].Name, m[t].Data.Length).CopyTo(m[t].Data, 0);
            Read("adam_v." + v[t].Name, v[t].Data.Length).CopyTo(v[t].Data, 0);
        }
        if (!file.Contains("since_fired")) throw new InvalidDataException($"{path}: tensor 'since_fired' is missing");
        var since = file.GetInt64("since_fired");
        if (since.Length != _sinceFired.Length) throw new InvalidDataException($"{path}: 'since_fired' has {since.Length} entries; d_sae = {_sinceFired.Length}");
        since.CopyTo(_sinceFired, 0);
        var carryIn = Read("carry_inputs", -1, optional: true);
        float[]? carryOut = data.HasTargets ? Read("carry_targets", -1, optional: true) : null;
        ScalingFactor = BitConverter.Int32BitsToSingle(state["scaling_factor"]!.GetValue<int>());
        StepsDone = state["step"]!.GetValue<int>();
        _folded = false;
        Attach(data, new BatchCursor(state["epoch"]!.GetValue<int>(), state["window"]!.GetValue<int>(), state["batches_taken"]!.GetValue<int>(), carryIn, carryOut));
    }
}
