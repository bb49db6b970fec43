using System.Runtime.InteropServices;
using System.Text;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;
using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// An ONNX BERT as a model folder holds it (model.onnx beside config.json): <c>OnnxModel.Parse</c>, the mapping of its
/// initializers to Hugging Face names (<c>OnnxBertWeights.ToHuggingFace</c>, which names anonymous MatMul weights from the
/// graph), the conversion to safetensors, then <c>ModelLoader.LoadFolder</c> and one forward pass with finite logits.
/// The seeds are exports of the repository's BERT fixture written the way torch.onnx writes them.
/// </summary>
public sealed class OnnxTarget : FuzzTarget
{
    public override string Name => "onnx";
    public override int DefaultIterations => 1500;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(10);

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string bert = context.Repo("tests/data/reference/bert");
        var config = new SeedFile("config.json", File.ReadAllBytes(Path.Combine(bert, "config.json")), FileKind.Json, Mutable: false);
        using var weights = SafeTensorsFile.Open(Path.Combine(bert, "model.safetensors"));
        var tensors = weights.Names.Select(n => (Name: n, Shape: weights.GetInfo(n).Shape.Select(d => (long)d).ToArray(), Data: weights.GetFloat32(n).ToArray())).ToList();
        return
        [
            new("repo:tests/data/reference/bert as onnx (raw_data)", [new SeedFile(OnnxBertWeights.FileName, OnnxExport.Write(tensors, floatData: false), FileKind.Protobuf), config]),
            new("repo:tests/data/reference/bert as onnx (float_data)", [new SeedFile(OnnxBertWeights.FileName, OnnxExport.Write(tensors, floatData: true), FileKind.Protobuf), config]),
        ];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        string onnx = Path.Combine(folder, OnnxBertWeights.FileName);
        // The conversion as WeightsFolder does it, into the case folder instead of the shared cache (one cache entry per input would fill the disk).
        string converted = Directory.CreateDirectory(Path.Combine(folder, "converted")).FullName;
        OnnxBertWeights.Convert(File.ReadAllBytes(onnx), onnx, Path.Combine(converted, SafeTensorsCheckpoint.SingleFileName));
        File.Copy(Path.Combine(folder, "config.json"), Path.Combine(converted, "config.json"), overwrite: true);
        using var model = ModelLoader.LoadFolder(converted);
        var ids = new[] { 1, 2, 3 };
        var logits = model.Run(ids).Logits;
        Require.Finite(logits.Span, "logits of tokens [1,2,3]");
    }
}

/// <summary>
/// Writes a BERT's weights as torch.onnx exports them: LayerNorm, embedding and bias tensors as named initializers, every
/// linear weight as an anonymous <c>[in, out]</c> initializer read by a MatMul whose output an Add with the named bias reads,
/// plus an INT64 <c>position_ids</c> buffer. Only what <c>OnnxModel</c> reads is written (no value infos or opset details).
/// </summary>
public static class OnnxExport
{
    public static byte[] Write(IReadOnlyList<(string Name, long[] Shape, float[] Data)> tensors, bool floatData)
    {
        var graph = new MemoryStream();
        int anonymous = 0;
        string hidden = "input_hidden";
        foreach (var (name, shape, data) in tensors)
        {
            bool linear = shape.Length == 2 && name.EndsWith(".weight", StringComparison.Ordinal) && !name.Contains("embeddings.", StringComparison.Ordinal)
                && tensors.Any(t => t.Name == name[..^".weight".Length] + ".bias");
            if (!linear)
            {
                Message(graph, 5, Tensor(name, shape, data, floatData));
                continue;
            }
            // HF stores [out, in]; the export multiplies x @ W with W [in, out].
            long dOut = shape[0], dIn = shape[1];
            var transposed = new float[data.Length];
            for (long o = 0; o < dOut; o++)
                for (long i = 0; i < dIn; i++) transposed[i * dOut + o] = data[o * dIn + i];
            string weight = $"onnx::MatMul_{1000 + anonymous++}", product = $"/{name}/MatMul_output_0", sum = $"/{name}/Add_output_0";
            Message(graph, 5, Tensor(weight, [dIn, dOut], transposed, floatData));
            Message(graph, 1, Node("MatMul", [hidden, weight], [product]));
            Message(graph, 1, Node("Add", [name[..^".weight".Length] + ".bias", product], [sum]));
            hidden = sum;
        }
        // The position_ids buffer: INT64, dropped by the mapping.
        var ids = new MemoryStream();
        Varint(ids, 1, 1); Varint(ids, 1, 64);
        Varint(ids, 2, 7);
        Bytes(ids, 8, Encoding.UTF8.GetBytes("embeddings.position_ids"));
        Bytes(ids, 9, MemoryMarshal.AsBytes(Enumerable.Range(0, 64).Select(i => (long)i).ToArray().AsSpan()).ToArray());
        Message(graph, 5, ids);
        Bytes(graph, 2, Encoding.UTF8.GetBytes("main_graph"));

        var model = new MemoryStream();
        Varint(model, 1, 8); // ir_version
        Bytes(model, 2, Encoding.UTF8.GetBytes("pytorch"));
        Message(model, 7, graph);
        return model.ToArray();
    }

    static MemoryStream Tensor(string name, long[] shape, float[] data, bool floatData)
    {
        var t = new MemoryStream();
        if (floatData)
            foreach (var d in shape) Varint(t, 1, (ulong)d); // repeated, unpacked
        else
        {
            var dims = new MemoryStream();
            foreach (var d in shape) ProtobufMutators.WriteVarint(dims, (ulong)d);
            Bytes(t, 1, dims.ToArray()); // packed
        }
        Varint(t, 2, 1); // FLOAT
        var values = MemoryMarshal.AsBytes(data.AsSpan()).ToArray();
        if (floatData) Bytes(t, 4, values); // packed float_data
        Bytes(t, 8, Encoding.UTF8.GetBytes(name));
        if (!floatData) Bytes(t, 9, values); // raw_data
        return t;
    }

    static MemoryStream Node(string op, string[] inputs, string[] outputs)
    {
        var n = new MemoryStream();
        foreach (var i in inputs) Bytes(n, 1, Encoding.UTF8.GetBytes(i));
        foreach (var o in outputs) Bytes(n, 2, Encoding.UTF8.GetBytes(o));
        Bytes(n, 3, Encoding.UTF8.GetBytes(outputs[0].Replace("_output_0", "", StringComparison.Ordinal)));
        Bytes(n, 4, Encoding.UTF8.GetBytes(op));
        return n;
    }

    static void Varint(Stream s, int field, ulong value)
    {
        ProtobufMutators.WriteVarint(s, ((ulong)field << 3) | 0);
        ProtobufMutators.WriteVarint(s, value);
    }

    static void Bytes(Stream s, int field, byte[] bytes)
    {
        ProtobufMutators.WriteVarint(s, ((ulong)field << 3) | 2);
        ProtobufMutators.WriteVarint(s, (ulong)bytes.Length);
        s.Write(bytes);
    }

    static void Message(Stream s, int field, MemoryStream message) => Bytes(s, field, message.ToArray());
}
