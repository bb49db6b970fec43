using System.Text;
using Loupe.Models.Loading;

namespace Loupe.Models.Tests.Encoders;

/// <summary>Malformed ONNX initializers found by the fuzzer (parser "onnx"), on hand-written protobuf bytes.</summary>
public class OnnxModelTests
{
    static void Varint(MemoryStream s, ulong v)
    {
        for (; v >= 0x80; v >>= 7) s.WriteByte((byte)(v | 0x80));
        s.WriteByte((byte)v);
    }

    static void Field(MemoryStream s, int number, byte[] bytes)
    {
        Varint(s, ((ulong)number << 3) | 2);
        Varint(s, (ulong)bytes.Length);
        s.Write(bytes);
    }

    /// <summary>A FLOAT TensorProto: unpacked dims (1), data_type (2) = 1, name (8), raw_data (9).</summary>
    static byte[] Tensor(string name, ulong[] dims, int values)
    {
        var t = new MemoryStream();
        foreach (var d in dims) { Varint(t, 1 << 3); Varint(t, d); }
        Varint(t, 2 << 3); Varint(t, 1);
        Field(t, 8, Encoding.UTF8.GetBytes(name));
        Field(t, 9, new byte[4 * values]);
        return t.ToArray();
    }

    static byte[] Model(params byte[][] initializers)
    {
        var graph = new MemoryStream();
        foreach (var i in initializers) Field(graph, 5, i);
        var model = new MemoryStream();
        Field(model, 7, graph.ToArray());
        return model.ToArray();
    }

    [Fact]
    public void A_shape_whose_product_overflows_is_refused_not_matched_to_the_data()
    {
        // 2^62 · 4 · 3 wraps to 0 in 64 bits, which an empty raw_data matched: an overflowing product can equal any data length.
        var bytes = Model(Tensor("encoder.layer.0.output.dense.bias", [1UL << 62, 4, 3], 0));
        var e = Assert.Throws<InputError>(() => OnnxModel.Parse(bytes, "model.onnx"));
        Assert.Contains("model.onnx", e.Message);
        Assert.Contains("encoder.layer.0.output.dense.bias", e.Message);
        var negative = Assert.Throws<InputError>(() => OnnxModel.Parse(Model(Tensor("w", [ulong.MaxValue, ulong.MaxValue], 1)), "model.onnx"));
        Assert.Contains("dimension of -1", negative.Message);
    }

    [Fact]
    public void Two_initializers_with_one_name_are_refused_by_name()
    {
        var model = OnnxModel.Parse(Model(Tensor("embeddings.word_embeddings.weight", [2, 2], 4), Tensor("embeddings.word_embeddings.weight", [2, 2], 4)), "model.onnx");
        var e = Assert.Throws<InputError>(() => OnnxBertWeights.ToHuggingFace(model, "model.onnx"));
        Assert.Contains("two float initializers are named 'embeddings.word_embeddings.weight'", e.Message);
    }
}
