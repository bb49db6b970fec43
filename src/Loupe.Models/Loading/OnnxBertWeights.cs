using System.Security.Cryptography;

namespace Loupe.Models.Loading;

/// <summary>One weight of an ONNX BERT under its Hugging Face BertModel name.</summary>
/// <param name="HfName">The BertModel name (e.g. <c>encoder.layer.0.attention.self.query.weight</c>).</param>
/// <param name="OnnxName">The initializer it came from (e.g. <c>"927"</c>).</param>
/// <param name="Shape">The HF shape (<c>[out, in]</c> for linear weights).</param>
/// <param name="Data">Row-major values in the HF layout.</param>
/// <param name="Transposed">True when the ONNX initializer was <c>[in, out]</c> (a MatMul weight) and was transposed.</param>
public sealed record OnnxBertTensor(string HfName, string OnnxName, int[] Shape, float[] Data, bool Transposed);

/// <summary>
/// Turns an ONNX export of a BERT encoder (e.g. all-MiniLM-L6-v2) into HF BertModel weights. Named initializers
/// (<c>embeddings.*</c>, <c>encoder.layer.i.*</c> biases and LayerNorms, <c>pooler.dense.*</c>) keep their names;
/// the exporter's anonymous MatMul weights (<c>x@W</c>, stored <c>[in, out]</c>) are named from the graph: each
/// MatMul's output feeds an Add with a named bias, and the weight takes that bias's name (<c>.bias</c> → <c>.weight</c>),
/// transposed to <c>[out, in]</c>. Non-float initializers (the <c>position_ids</c> buffer) are dropped.
/// </summary>
public static class OnnxBertWeights
{
    /// <summary>The file name Loupe looks for in a model folder without safetensors weights.</summary>
    public const string FileName = "model.onnx";

    static readonly string[] NamedPrefixes = ["embeddings.", "encoder.", "pooler.", "bert.", "cls."];

    /// <summary>Maps the model's float initializers to HF BertModel names.</summary>
    /// <exception cref="InputError">A MatMul weight cannot be named from the graph, or two tensors get the same name.</exception>
    public static IReadOnlyList<OnnxBertTensor> ToHuggingFace(OnnxModel model, string where)
    {
        var byName = new Dictionary<string, OnnxInitializer>(StringComparer.Ordinal);
        foreach (var init in model.Initializers.Where(i => i.DataType == OnnxModel.Float && i.Floats is not null))
            if (!byName.TryAdd(init.Name, init))
                throw new InputError($"{where}: two float initializers are named '{init.Name}'; an ONNX graph names each value once");
        var consumers = new Dictionary<string, List<OnnxNode>>(StringComparer.Ordinal);
        foreach (var node in model.Nodes)
            foreach (var input in node.Inputs)
            {
                if (!consumers.TryGetValue(input, out var list)) consumers[input] = list = [];
                list.Add(node);
            }
        var result = new List<OnnxBertTensor>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (var node in model.Nodes.Where(n => n.OpType == "MatMul"))
        {
            var weightName = node.Inputs.FirstOrDefault(i => byName.ContainsKey(i) && !IsNamed(i));
            if (weightName is null) continue;
            var weight = byName[weightName];
            if (weight.Dims.Length != 2) throw new InputError($"{where}: MatMul weight '{weightName}' has shape [{string.Join(", ", weight.Dims)}]; expected a matrix");
            string? bias = node.Outputs.SelectMany(o => consumers.GetValueOrDefault(o) ?? [])
                .Where(n => n.OpType == "Add")
                .SelectMany(n => n.Inputs)
                .FirstOrDefault(i => byName.ContainsKey(i) && i.EndsWith(".bias", StringComparison.Ordinal));
            if (bias is null)
                throw new InputError($"{where}: MatMul weight '{weightName}' is not followed by an Add with a named bias; cannot tell which BERT weight it is");
            int dIn = (int)weight.Dims[0], dOut = (int)weight.Dims[1];
            var transposed = new float[weight.Floats!.Length];
            for (int i = 0; i < dIn; i++)
                for (int o = 0; o < dOut; o++) transposed[o * dIn + i] = weight.Floats[i * dOut + o];
            Add(new OnnxBertTensor(bias[..^".bias".Length] + ".weight", weightName, [dOut, dIn], transposed, true));
        }
        foreach (var init in byName.Values.Where(i => IsNamed(i.Name)))
            Add(new OnnxBertTensor(init.Name, init.Name, init.Dims.Select(d => (int)d).ToArray(), init.Floats!, false));
        return result;

        void Add(OnnxBertTensor t)
        {
            if (!used.Add(t.HfName)) throw new InputError($"{where}: two ONNX initializers map to BERT weight '{t.HfName}' (the second is '{t.OnnxName}')");
            result.Add(t);
        }
    }

    static bool IsNamed(string name) => NamedPrefixes.Any(p => name.StartsWith(p, StringComparison.Ordinal));

    /// <summary>Lower-case hex SHA-256 of <paramref name="bytes"/>.</summary>
    public static string Sha256(ReadOnlySpan<byte> bytes) => System.Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>Checks that <paramref name="bytes"/> hash to <paramref name="expectedSha256"/>.</summary>
    /// <exception cref="InputError">They do not (the message gives both hashes).</exception>
    public static void VerifySha256(ReadOnlySpan<byte> bytes, string expectedSha256, string where)
    {
        string actual = Sha256(bytes);
        if (!string.Equals(actual, expectedSha256, StringComparison.OrdinalIgnoreCase))
            throw new InputError($"{where}: sha256 is {actual}, expected {expectedSha256}; the file is not the one Loupe was checked against (corrupt download or another version)");
    }

    /// <summary>Reads an ONNX BERT and writes its weights as HF-named safetensors at <paramref name="safetensorsPath"/> (atomically).</summary>
    /// <exception cref="InputError">The ONNX bytes are malformed or cannot be mapped to BERT weights.</exception>
    public static void Convert(ReadOnlyMemory<byte> onnx, string where, string safetensorsPath)
    {
        var tensors = ToHuggingFace(OnnxModel.Parse(onnx, where), where);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(safetensorsPath))!);
        SafeTensorsWriter.Write(safetensorsPath, tensors.Select(t => (t.HfName, t.Shape, (ReadOnlyMemory<float>)t.Data)),
            new Dictionary<string, string> { ["source"] = where, ["onnx_sha256"] = Sha256(onnx.Span) });
    }

    /// <summary>Loupe's cache root: <c>$LOUPE_CACHE</c>, else <c>~/.cache/loupe</c>.</summary>
    public static string CacheRoot() =>
        Environment.GetEnvironmentVariable("LOUPE_CACHE") is { Length: > 0 } root ? root
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "loupe");

    /// <summary>
    /// The folder holding a model's safetensors: <paramref name="folder"/> itself, or — when it has only a
    /// <c>model.onnx</c> — a cache folder (<see cref="CacheRoot"/>/onnx/&lt;sha256&gt;) where the ONNX weights are
    /// converted once, under their HF names.
    /// </summary>
    /// <exception cref="InputError">The ONNX file is malformed or not a BERT export.</exception>
    public static string WeightsFolder(string folder)
    {
        string onnx = Path.Combine(folder, FileName);
        if (File.Exists(Path.Combine(folder, SafeTensorsCheckpoint.SingleFileName)) || File.Exists(Path.Combine(folder, SafeTensorsCheckpoint.IndexFileName))
            || !File.Exists(onnx))
            return folder;
        var bytes = File.ReadAllBytes(onnx);
        string cache = Path.Combine(CacheRoot(), "onnx", Sha256(bytes));
        string target = Path.Combine(cache, SafeTensorsCheckpoint.SingleFileName);
        if (!File.Exists(target)) Convert(bytes, onnx, target);
        return cache;
    }
}
