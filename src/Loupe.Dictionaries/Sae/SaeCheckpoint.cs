// SAE training checkpoints, in the file layout of TrainingCheckpoint.cs: parameters as trained (before the input
// scaling is folded), Adam moments, since_fired [d_sae], carried rows; metadata "loupe_checkpoint" adds
// scaling_factor to the shared fields. One file, written to a temporary name and renamed, so a kill at any moment
// leaves either the previous checkpoint or the new one — never a mixture.
using System.Text.Json.Nodes;

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

    JsonObject CheckpointState(BatchCursor cursor)
    {
        var state = TrainingCheckpoint.State(CheckpointVersion, StepsDone, cursor);
        state["scaling_factor"] = BitConverter.SingleToInt32Bits(ScalingFactor);
        // a Matryoshka SAE's widths are part of its architecture: a resumed run must have the same levels
        state["architecture"] = _dict.Activation is MatryoshkaBatchTopKActivation m ? $"{_dict.Architecture} {m}" : _dict.Architecture;
        state["shape"] = _dict.Shape.ToString();
        state["options"] = _o.ToString();
        state["data"] = _data?.Description ?? "";
        return state;
    }

    /// <summary>Writes a checkpoint to <paramref name="path"/> atomically (temp file + rename).</summary>
    /// <exception cref="InvalidOperationException">The trainer has not begun.</exception>
    /// <exception cref="InputError">The path exists and is not a regular file.</exception>
    public void SaveCheckpoint(string path)
    {
        if (_batches is null) throw new InvalidOperationException("nothing to checkpoint: call Begin first");
        SyncToHost();
        var cursor = _batches.Cursor;
        var moments = _m.Trainable(_dict.Activation).Zip(_v.Trainable(_dict.Activation), (m, v) => (m.Name, m.Data, v.Data));
        TrainingCheckpoint.Write(path, AllBuffers(_dict.P), moments, _sinceFired, cursor, MetadataKey, CheckpointState(cursor), "loupe-sae-checkpoint");
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
        var expected = CheckpointState(new BatchCursor(0, 0, 0, [], null));
        expected["data"] = data.Description;
        using var file = new TrainingCheckpoint.Reader(path, MetadataKey, "SAE", CheckpointVersion, expected);
        int step = file.Int("step", 0, _o.Steps);
        float scaling = BitConverter.Int32BitsToSingle(file.Int("scaling_factor", int.MinValue, int.MaxValue));
        if (!(scaling > 0) || !float.IsFinite(scaling)) throw InputError.Expected(path, "checkpoint field 'scaling_factor'", "a finite number > 0", scaling);

        // Everything is read and checked into new arrays first; the trainer's state changes only once all of it is good.
        var loaded = new List<(float[] Into, float[] Values)>();
        foreach (var (name, buffer) in AllBuffers(_dict.P))
            if (buffer.Length > 0) loaded.Add((buffer, file.Parameter(name, buffer.Length, minusInfinityAllowed: name == "log_threshold"))); // θ ≤ 0 fires like θ = 0
        foreach (var ((name, m), (_, v)) in _m.Trainable(_dict.Activation).Zip(_v.Trainable(_dict.Activation)))
        {
            var (mv, vv) = file.Moments(name, m.Length);
            loaded.Add((m, mv));
            loaded.Add((v, vv));
        }
        var since = file.SinceFired(_sinceFired.Length, "d_sae");
        var cursor = file.Cursor(data, _o.BatchSize);

        foreach (var (into, values) in loaded) values.CopyTo(into, 0);
        since.CopyTo(_sinceFired, 0);
        ScalingFactor = scaling;
        StepsDone = step;
        _folded = false;
        _data = data;
        Attach(data, cursor);
        UploadToDevice();
    }
}
