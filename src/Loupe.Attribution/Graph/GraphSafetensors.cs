// The raw graph as one safetensors file, with the tensor names of the circuit-tracer reference fixture
// (tests/data/attribution/graph.safetensors), so either side can read the other's file.
//
// Tensors (n = nodes, A = active features, S = selected features, T = positions, L = layers, V = logits):
//   adjacency_matrix     F32  [n, n]   rows = targets, columns = sources (node order below)
//   input_tokens         I64  [T]
//   active_features      I64  [A, 3]   (layer, pos, feature), sorted by layer, pos, feature
//   activation_values    F32  [A]
//   selected_features    I64  [S]      indices into active_features, in node order
//   logit_tokens         I64  [V]      by descending probability
//   logit_probabilities  F32  [V]
//   logit_vectors        F32  [V, d_model]  the direction of each logit row, when the targets were given explicitly
//   error_vectors        F32  [L, T, d_model]   when the graph kept them
//   token_vectors        F32  [T, d_model]      when the graph kept them
//   node_kind, node_layer, node_pos, node_feature   I64 [n]   the node table (NodeKind codes;
//                        layer −1 for tokens and L for logits; feature index / token id / vocab id, −1 for errors)
// With a pruning result:
//   node_influence       F64  [n]      (the fixture's are F32; both are read)
//   pruned.node_mask     BOOL [n]      (the fixture's are I64 0/1; both are read)
//   pruned.edge_mask     BOOL [n, n]
//   pruned.cumulative_scores  F64 [n]
//   pruned.kept_node_ids I64  [kept]
// __metadata__: format, node order, n_layers, prompt, token strings, the thresholds and the provenance
// (model and transcoder fingerprints, settings, Loupe version, time).
//
// Writing is atomic (temp file beside the target, renamed over it) and streams every tensor from the
// graph's own arrays: the adjacency is never copied.

using System.Buffers;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Loupe.Models.Loading;

namespace Loupe.Attribution.Graph;

/// <summary>A graph read back from safetensors: the graph, its pruning when the file holds one, and the file's metadata.</summary>
/// <param name="Graph">The graph.</param>
/// <param name="Pruning">The pruning result stored with it, or null.</param>
/// <param name="Metadata">The file's <c>__metadata__</c>.</param>
public sealed record GraphFile(AttributionGraph Graph, GraphPruneResult? Pruning, IReadOnlyDictionary<string, string> Metadata);

/// <summary>Writes and reads an <see cref="AttributionGraph"/> as safetensors (layout at the top of this file).</summary>
public static class GraphSafetensors
{
    /// <summary>The <c>format</c> metadata value of Loupe's graph files.</summary>
    public const string FormatName = "loupe-attribution-graph";

    /// <summary>The node order, as recorded in every file.</summary>
    public const string NodeOrder =
        "[selected features (sorted by layer, pos, feature), error nodes (layer-major, then pos: L*T), token nodes (pos: T), " +
        "logit nodes (descending probability)]; adjacency_matrix rows = targets, columns = sources: A[t, s] = direct effect of s on t";

    /// <summary>Writes <paramref name="graph"/> (and <paramref name="pruning"/> when given) to <paramref name="path"/>, atomically.</summary>
    /// <param name="path">The file to write (replaced if it exists).</param>
    /// <param name="graph">The graph.</param>
    /// <param name="pruning">A pruning result of this graph, or null.</param>
    /// <exception cref="ArgumentException">The graph's arrays disagree in length (adjacency not n×n, activations not one per active feature, …) or the pruning is for another node count.</exception>
    /// <exception cref="InputError">The path names a folder, link or device.</exception>
    /// <exception cref="IOException">The file cannot be written (an existing file is kept).</exception>
    public static void Write(string path, AttributionGraph graph, GraphPruneResult? pruning = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        int n = GraphInfluence.CheckShape(graph);
        int t = graph.Positions, layers = graph.Layers;
        CheckLengths(graph);
        if (pruning is not null && pruning.NodeCount != n)
            throw new ArgumentException($"the pruning is for {pruning.NodeCount} nodes; the graph has {n}", nameof(pruning));

        var entries = new List<SafeTensorEntry>
        {
            graph.Adjacency is { } dense
                ? SafeTensorEntry.F32("adjacency_matrix", [n, n], dense)
                : SafeTensorEntry.F32Streamed("adjacency_matrix", [n, n], stream =>
                {
                    // Row by row: the zero rows of errors and tokens are written without ever holding n×n floats.
                    for (int r = 0; r < n; r++) stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(graph.Row(r)));
                }),
            SafeTensorEntry.I64("input_tokens", [t], Longs(graph.InputTokens)),
            SafeTensorEntry.I64("active_features", [graph.ActiveFeatures.Length, 3],
                graph.ActiveFeatures.SelectMany(f => new long[] { f.Layer, f.Position, f.Feature }).ToArray()),
            SafeTensorEntry.F32("activation_values", [graph.ActivationValues.Length], graph.ActivationValues),
            SafeTensorEntry.I64("selected_features", [graph.SelectedFeatures.Length], Longs(graph.SelectedFeatures)),
            SafeTensorEntry.I64("logit_tokens", [graph.LogitTokens.Length], Longs(graph.LogitTokens)),
            SafeTensorEntry.F32("logit_probabilities", [graph.LogitProbabilities.Length], graph.LogitProbabilities),
        };
        if (graph.LogitVectors is { } logitVectors)
            entries.Add(SafeTensorEntry.F32("logit_vectors", [logitVectors.Length, logitVectors.Length == 0 ? 0 : logitVectors[0].Length], logitVectors.SelectMany(v => v).ToArray()));
        if (graph.ErrorVectors is { } errors)
            entries.Add(SafeTensorEntry.F32("error_vectors", [layers, t, errors.Length / Math.Max(1, layers * t)], errors));
        if (graph.TokenVectors is { } tokens)
            entries.Add(SafeTensorEntry.F32("token_vectors", [t, tokens.Length / Math.Max(1, t)], tokens));

        var kind = new long[n]; var layer = new long[n]; var pos = new long[n]; var feature = new long[n];
        for (int i = 0; i < n; i++)
        {
            var node = graph.Node(i);
            (kind[i], layer[i], pos[i], feature[i]) = ((long)node.Kind, node.Layer, node.Position, node.Index);
        }
        entries.Add(SafeTensorEntry.I64("node_kind", [n], kind));
        entries.Add(SafeTensorEntry.I64("node_layer", [n], layer));
        entries.Add(SafeTensorEntry.I64("node_pos", [n], pos));
        entries.Add(SafeTensorEntry.I64("node_feature", [n], feature));

        if (pruning is not null)
        {
            entries.Add(Doubles("node_influence", pruning.NodeInfluence));
            entries.Add(SafeTensorEntry.Raw("pruned.node_mask", DType.BOOL, [n], new BoolBytes(pruning.NodeMask).Memory));
            entries.Add(SafeTensorEntry.Raw("pruned.edge_mask", DType.BOOL, [n, n], new BoolBytes(pruning.EdgeMask).Memory));
            entries.Add(Doubles("pruned.cumulative_scores", pruning.CumulativeScores));
            var kept = pruning.KeptNodes();
            entries.Add(SafeTensorEntry.I64("pruned.kept_node_ids", [kept.Length], Longs(kept)));
        }

        SafeTensorsWriter.Write(path, entries, BuildMetadata(graph, pruning));
    }

    static Dictionary<string, string> BuildMetadata(AttributionGraph graph, GraphPruneResult? pruning)
    {
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = FormatName,
            ["format_version"] = "1",
            ["node_order"] = NodeOrder,
            ["n_layers"] = graph.Layers.ToString(CultureInfo.InvariantCulture),
        };
        if (graph.Prompt is { } prompt) metadata["prompt"] = prompt;
        if (graph.TokenStrings is { } strings) metadata["token_strings"] = JsonSerializer.Serialize(strings);
        if (graph.LogitLabels is { } labels) metadata["logit_labels"] = JsonSerializer.Serialize(labels);
        if (pruning is not null)
        {
            metadata["node_threshold"] = pruning.NodeThreshold.ToString("R", CultureInfo.InvariantCulture);
            metadata["edge_threshold"] = pruning.EdgeThreshold.ToString("R", CultureInfo.InvariantCulture);
        }
        if (graph.Provenance is { } p)
        {
            metadata["model"] = p.Model;
            metadata["model_fingerprint"] = p.ModelFingerprint;
            metadata["transcoders"] = p.Transcoders;
            metadata["transcoder_fingerprint"] = p.TranscoderFingerprint;
            metadata["settings"] = JsonSerializer.Serialize(p.Settings);
            metadata["loupe_version"] = p.LoupeVersion;
            metadata["created_utc"] = p.CreatedUtc.ToString("O", CultureInfo.InvariantCulture);
        }
        return metadata;
    }

    /// <summary>Reads a graph file written by <see cref="Write"/> or by the circuit-tracer fixture's generator.</summary>
    /// <param name="path">The safetensors file.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InputError">
    /// Not a valid safetensors file, a tensor missing or of the wrong shape or dtype, an index out of range,
    /// a node table that disagrees with the node order, or unreadable metadata (the message names the file and tensor).
    /// </exception>
    public static GraphFile Read(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        var md = file.Metadata;

        int[] inputTokens = Ints(file, "input_tokens", 1);
        int t = inputTokens.Length;
        long[] activeFlat = Longs(file, "active_features", 2);
        var activeShape = file.GetInfo("active_features").Shape;
        if (activeShape[1] != 3) throw Shape(file, "active_features", "[active features, 3] (layer, pos, feature)");
        var active = new (int, int, int)[activeShape[0]];
        for (int i = 0; i < active.Length; i++)
            active[i] = (ToInt(file, "active_features", activeFlat[3 * i]), ToInt(file, "active_features", activeFlat[3 * i + 1]),
                         ToInt(file, "active_features", activeFlat[3 * i + 2]));
        float[] activations = Floats(file, "activation_values", [active.Length]);
        int[] selected = Ints(file, "selected_features", 1);
        foreach (int s in selected)
            if ((uint)s >= (uint)active.Length)
                throw new InputError($"{file.Path}: tensor 'selected_features' holds {s}; expected indices into the {active.Length} active features");
        int[] logitTokens = Ints(file, "logit_tokens", 1);
        float[] logitProbabilities = Floats(file, "logit_probabilities", [logitTokens.Length]);

        var adjacencyShape = file.GetInfo("adjacency_matrix").Shape;
        if (adjacencyShape.Length != 2 || adjacencyShape[0] != adjacencyShape[1])
            throw Shape(file, "adjacency_matrix", "a square [n, n] matrix");
        long n = adjacencyShape[0];
        long errorCount = n - selected.Length - t - logitTokens.Length;
        int layers;
        if (md.TryGetValue("n_layers", out var layersText))
        {
            if (!int.TryParse(layersText, NumberStyles.Integer, CultureInfo.InvariantCulture, out layers) || layers < 0)
                throw new InputError($"{file.Path}: metadata 'n_layers' is '{layersText}'; expected a non-negative integer");
        }
        else
        {
            // The fixture's files do not record it: the error nodes (L·T of them) give it.
            if (t == 0 || errorCount < 0 || errorCount % t != 0)
                throw Shape(file, "adjacency_matrix", $"n = features + L·T errors + T tokens + logits ({selected.Length} + L·{t} + {t} + {logitTokens.Length})");
            layers = (int)(errorCount / t);
        }
        if (errorCount != (long)layers * t)
            throw new InputError($"{file.Path}: tensor 'adjacency_matrix' has {n} nodes; expected {selected.Length} features + {layers}×{t} errors + {t} tokens + {logitTokens.Length} logits = {selected.Length + (long)layers * t + t + logitTokens.Length}");

        float[] adjacency = Floats(file, "adjacency_matrix", [n, n]);
        float[]? errorVectors = file.Contains("error_vectors") ? Floats(file, "error_vectors", null) : null;
        if (errorVectors is not null)
        {
            var s = file.GetInfo("error_vectors").Shape;
            if (s.Length != 3 || s[0] != layers || s[1] != t) throw Shape(file, "error_vectors", $"[{layers}, {t}, d_model]");
        }
        float[]? tokenVectors = file.Contains("token_vectors") ? Floats(file, "token_vectors", null) : null;
        if (tokenVectors is not null)
        {
            var s = file.GetInfo("token_vectors").Shape;
            if (s.Length != 2 || s[0] != t) throw Shape(file, "token_vectors", $"[{t}, d_model]");
        }

        string[]? tokenStrings = null;
        if (md.TryGetValue("token_strings", out var stringsJson))
        {
            try { tokenStrings = JsonSerializer.Deserialize<string[]>(stringsJson); }
            catch (JsonException e) { throw new InputError($"{file.Path}: metadata 'token_strings' is not a JSON array of strings ({e.Message})", e); }
            if (tokenStrings is null || tokenStrings.Length != t)
                throw new InputError($"{file.Path}: metadata 'token_strings' holds {tokenStrings?.Length ?? 0} strings; expected one per position ({t})");
        }

        string?[]? logitLabels = null;
        if (md.TryGetValue("logit_labels", out var labelsJson))
        {
            try { logitLabels = JsonSerializer.Deserialize<string?[]>(labelsJson); }
            catch (JsonException e) { throw new InputError($"{file.Path}: metadata 'logit_labels' is not a JSON array of strings and nulls ({e.Message})", e); }
            if (logitLabels is null || logitLabels.Length != logitTokens.Length)
                throw new InputError($"{file.Path}: metadata 'logit_labels' holds {logitLabels?.Length ?? 0} labels; expected one per logit ({logitTokens.Length})");
        }
        float[][]? logitVectors = null;
        if (file.Contains("logit_vectors"))
        {
            var s = file.GetInfo("logit_vectors").Shape;
            if (s.Length != 2 || s[0] != logitTokens.Length) throw Shape(file, "logit_vectors", $"[{logitTokens.Length}, d_model]");
            var flat = Floats(file, "logit_vectors", null);
            int width = (int)s[1];
            logitVectors = [.. Enumerable.Range(0, logitTokens.Length).Select(j => flat.AsSpan(j * width, width).ToArray())];
        }

        var graph = new AttributionGraph
        {
            InputTokens = inputTokens,
            TokenStrings = tokenStrings,
            LogitLabels = logitLabels,
            LogitVectors = logitVectors,
            Prompt = md.TryGetValue("prompt", out var prompt) ? prompt : null,
            Layers = layers,
            ActiveFeatures = active,
            ActivationValues = activations,
            SelectedFeatures = selected,
            LogitTokens = logitTokens,
            LogitProbabilities = logitProbabilities,
            Adjacency = adjacency,
            ErrorVectors = errorVectors,
            TokenVectors = tokenVectors,
            Provenance = ReadProvenance(file),
        };
        CheckNodeTable(file, graph);
        return new GraphFile(graph, ReadPruning(file, graph), md);
    }

    /// <summary>The node table, when the file has one, must describe the nodes in the order this graph assigns them.</summary>
    static void CheckNodeTable(SafeTensorsFile file, AttributionGraph graph)
    {
        string[] names = ["node_kind", "node_layer", "node_pos", "node_feature"];
        if (!names.Any(file.Contains)) return;
        int n = graph.NodeCount;
        var columns = names.Select(name => Longs(file, name, 1, n)).ToArray();
        for (int i = 0; i < n; i++)
        {
            var node = graph.Node(i);
            long[] expected = [(long)node.Kind, node.Layer, node.Position, node.Index];
            for (int c = 0; c < 4; c++)
                if (columns[c][i] != expected[c])
                    throw new InputError($"{file.Path}: tensor '{names[c]}'[{i}] is {columns[c][i]}; expected {expected[c]} " +
                                         $"(node {i} is the {GraphInfluence.Describe(node)} in the node order: {NodeOrder})");
        }
    }

    static GraphProvenance? ReadProvenance(SafeTensorsFile file)
    {
        var md = file.Metadata;
        if (!md.ContainsKey("loupe_version")) return null;
        string Get(string key) => md.TryGetValue(key, out var v) ? v
            : throw new InputError($"{file.Path}: metadata has 'loupe_version' but no '{key}'; expected the full provenance");
        Dictionary<string, string> settings;
        try { settings = JsonSerializer.Deserialize<Dictionary<string, string>>(Get("settings")) ?? []; }
        catch (JsonException e) { throw new InputError($"{file.Path}: metadata 'settings' is not a JSON object of strings ({e.Message})", e); }
        if (!DateTimeOffset.TryParse(Get("created_utc"), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var created))
            throw new InputError($"{file.Path}: metadata 'created_utc' is '{md["created_utc"]}'; expected an ISO 8601 time");
        return new GraphProvenance(Get("model"), Get("model_fingerprint"), Get("transcoders"), Get("transcoder_fingerprint"),
            settings, Get("loupe_version"), created);
    }

    static GraphPruneResult? ReadPruning(SafeTensorsFile file, AttributionGraph graph)
    {
        if (!file.Contains("pruned.node_mask")) return null;
        int n = graph.NodeCount;
        return new GraphPruneResult
        {
            NodeMask = Mask(file, "pruned.node_mask", [n]),
            EdgeMask = Mask(file, "pruned.edge_mask", [n, n]),
            CumulativeScores = ReadDoubles(file, "pruned.cumulative_scores", n),
            NodeInfluence = ReadDoubles(file, "node_influence", n),
            NodeThreshold = Threshold(file, "node_threshold"),
            EdgeThreshold = Threshold(file, "edge_threshold"),
        };
    }

    /// <summary>A stored pruning's threshold: Loupe and circuit-tracer both record it, and the graph JSON reports it.</summary>
    static double Threshold(SafeTensorsFile file, string key)
    {
        if (!file.Metadata.TryGetValue(key, out var text))
            throw new InputError($"{file.Path}: the file stores a pruning (tensor 'pruned.node_mask') but its metadata has no '{key}'; expected the threshold it was pruned with");
        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) && value is >= 0 and <= 1 ? value
            : throw new InputError($"{file.Path}: metadata '{key}' is {InputError.Show(text)}; expected a number between 0 and 1");
    }

    // ---- tensor helpers ----

    static long[] Longs(int[] values) => Array.ConvertAll(values, v => (long)v);

    static SafeTensorEntry Doubles(string name, double[] values) =>
        SafeTensorEntry.Raw(name, DType.F64, [values.Length], MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    static long[] Longs(SafeTensorsFile file, string name, int rank, long? length = null)
    {
        var info = file.GetInfo(name);
        if (info.Shape.Length != rank || (length is { } l && info.Shape[0] != l))
            throw Shape(file, name, length is { } k ? $"[{k}]" : $"a rank-{rank} integer tensor");
        return file.GetInt64(name);
    }

    static int[] Ints(SafeTensorsFile file, string name, int rank) =>
        Array.ConvertAll(Longs(file, name, rank), v => ToInt(file, name, v));

    static int ToInt(SafeTensorsFile file, string name, long v) =>
        v is >= int.MinValue and <= int.MaxValue ? (int)v
            : throw new InputError($"{file.Path}: tensor '{name}' holds {v}; expected a 32-bit index");

    static float[] Floats(SafeTensorsFile file, string name, long[]? shape)
    {
        var info = file.GetInfo(name);
        if (shape is not null && !info.Shape.SequenceEqual(shape)) throw Shape(file, name, $"[{string.Join(", ", shape)}]");
        var values = file.GetFloat32(name).ToArray();
        return Finite(file, name, values);
    }

    /// <summary>A graph's numbers are finite: one NaN in the adjacency makes every influence NaN.</summary>
    static T[] Finite<T>(SafeTensorsFile file, string name, T[] values) where T : System.Numerics.IFloatingPointIeee754<T>
    {
        for (int i = 0; i < values.Length; i++)
            if (!T.IsFinite(values[i]))
                throw new InputError($"{file.Path}: tensor '{name}' holds {values[i]} at element {i}; expected finite numbers (the file is corrupt)");
        return values;
    }

    static double[] ReadDoubles(SafeTensorsFile file, string name, int n)
    {
        var info = file.GetInfo(name);
        if (info.Shape.Length != 1 || info.Shape[0] != n) throw Shape(file, name, $"[{n}]");
        return Finite(file, name, info.DType == DType.F64 ? MemoryMarshal.Cast<byte, double>(file.GetBytes(name)).ToArray()
            : Array.ConvertAll(file.GetFloat32(name).ToArray(), x => (double)x));
    }

    /// <summary>A 0/1 mask stored as BOOL, U8 (Loupe) or I64 (the fixture), read without widening it.</summary>
    static bool[] Mask(SafeTensorsFile file, string name, long[] shape)
    {
        var info = file.GetInfo(name);
        if (!info.Shape.SequenceEqual(shape)) throw Shape(file, name, $"[{string.Join(", ", shape)}]");
        var bytes = file.GetBytes(name);
        var mask = new bool[info.ElementCount];
        switch (info.DType)
        {
            case DType.BOOL or DType.U8: for (int i = 0; i < mask.Length; i++) mask[i] = CheckBit(file, name, bytes[i]); break;
            case DType.I64: { var v = MemoryMarshal.Cast<byte, long>(bytes); for (int i = 0; i < mask.Length; i++) mask[i] = CheckBit(file, name, v[i]); break; }
            case DType.I32: { var v = MemoryMarshal.Cast<byte, int>(bytes); for (int i = 0; i < mask.Length; i++) mask[i] = CheckBit(file, name, v[i]); break; }
            default: throw new InputError($"{file.Path}: tensor '{name}' has dtype {info.DType}; expected a mask (BOOL, U8, I32 or I64)");
        }
        return mask;
    }

    static bool CheckBit(SafeTensorsFile file, string name, long v) =>
        v is 0 or 1 ? v == 1 : throw new InputError($"{file.Path}: tensor '{name}' holds {v}; expected 0 or 1");

    static InputError Shape(SafeTensorsFile file, string name, string expected) =>
        new($"{file.Path}: tensor '{name}' has shape [{string.Join(", ", file.GetInfo(name).Shape)}]; expected {expected}");

    static void CheckLengths(AttributionGraph graph)
    {
        void Require(bool ok, string what) { if (!ok) throw new ArgumentException(what, nameof(graph)); }
        Require(graph.ActivationValues.Length == graph.ActiveFeatures.Length,
            $"{graph.ActivationValues.Length} activation values for {graph.ActiveFeatures.Length} active features; expected one each");
        Require(graph.LogitProbabilities.Length == graph.LogitTokens.Length,
            $"{graph.LogitProbabilities.Length} logit probabilities for {graph.LogitTokens.Length} logit tokens; expected one each");
        Require(graph.LogitLabels is null || graph.LogitLabels.Length == graph.LogitTokens.Length,
            $"{graph.LogitLabels?.Length} logit labels for {graph.LogitTokens.Length} logits; expected one each");
        Require(graph.LogitVectors is null || (graph.LogitVectors.Length == graph.LogitTokens.Length && graph.LogitVectors.All(v => v.Length == graph.LogitVectors[0].Length)),
            $"{graph.LogitVectors?.Length} logit vectors for {graph.LogitTokens.Length} logits; expected one each, all d_model long");
        Require(graph.TokenStrings is null || graph.TokenStrings.Length == graph.Positions,
            $"{graph.TokenStrings?.Length} token strings for {graph.Positions} positions; expected one each");
        long errorRows = (long)graph.Layers * graph.Positions;
        Require(graph.ErrorVectors is null || (errorRows > 0 && graph.ErrorVectors.Length % errorRows == 0),
            $"error vectors hold {graph.ErrorVectors?.Length} values; expected [{graph.Layers}, {graph.Positions}, d_model]");
        Require(graph.TokenVectors is null || (graph.Positions > 0 && graph.TokenVectors.Length % graph.Positions == 0),
            $"token vectors hold {graph.TokenVectors?.Length} values; expected [{graph.Positions}, d_model]");
    }

    /// <summary>A bool[] seen as bytes (0/1), so a mask is written straight from its array.</summary>
    sealed class BoolBytes(bool[] array) : MemoryManager<byte>
    {
        GCHandle _pin;

        public override Span<byte> GetSpan() => MemoryMarshal.AsBytes(array.AsSpan());

        public override unsafe MemoryHandle Pin(int elementIndex = 0)
        {
            if (!_pin.IsAllocated) _pin = GCHandle.Alloc(array, GCHandleType.Pinned);
            return new MemoryHandle((byte*)_pin.AddrOfPinnedObject() + elementIndex, default, this);
        }

        public override void Unpin() { if (_pin.IsAllocated) _pin.Free(); }

        protected override void Dispose(bool disposing) => Unpin();
    }
}
