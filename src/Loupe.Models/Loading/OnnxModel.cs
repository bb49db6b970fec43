using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Loupe.Models.Loading;

/// <summary>An ONNX initializer: a named constant tensor of the graph (weights).</summary>
/// <param name="Name">The initializer's name (TensorProto.name).</param>
/// <param name="Dims">Its shape (TensorProto.dims).</param>
/// <param name="DataType">ONNX TensorProto.DataType (1 = FLOAT, 7 = INT64, …).</param>
/// <param name="Floats">The values when <paramref name="DataType"/> is FLOAT, else null.</param>
public sealed record OnnxInitializer(string Name, long[] Dims, int DataType, float[]? Floats);

/// <summary>An ONNX graph node: its operator and the names of the values it reads and writes.</summary>
/// <param name="OpType">The operator (MatMul, Add, …).</param>
/// <param name="Inputs">Names of its inputs.</param>
/// <param name="Outputs">Names of its outputs.</param>
public sealed record OnnxNode(string OpType, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs);

/// <summary>
/// The parts of an ONNX model Loupe reads: the graph's nodes and its initializers (weights). A small reader
/// of the protobuf wire format for <c>ModelProto → GraphProto (7) → node (1) / initializer (5)</c>;
/// <c>TensorProto</c>: dims (1), data_type (2), float_data (4), name (8), raw_data (9), data_location (14).
/// Nothing is executed: the graph is only read to name the weights.
/// </summary>
public sealed class OnnxModel
{
    /// <summary>ONNX TensorProto.DataType FLOAT.</summary>
    public const int Float = 1;

    OnnxModel(IReadOnlyList<OnnxNode> nodes, IReadOnlyList<OnnxInitializer> initializers)
    {
        Nodes = nodes;
        Initializers = initializers;
    }

    public IReadOnlyList<OnnxNode> Nodes { get; }
    public IReadOnlyList<OnnxInitializer> Initializers { get; }

    /// <summary>Parses a serialized ModelProto; <paramref name="where"/> names it in errors.</summary>
    /// <exception cref="InputError">The bytes are not a well-formed ONNX model (truncated, corrupt, no graph, external data).</exception>
    public static OnnxModel Parse(ReadOnlyMemory<byte> bytes, string where)
    {
        var nodes = new List<OnnxNode>();
        var initializers = new List<OnnxInitializer>();
        bool graphSeen = false;
        try
        {
            var model = new Reader(bytes);
            while (model.Next(out int field, out int wire))
            {
                if (field == 7 && wire == 2)
                {
                    graphSeen = true;
                    var graph = new Reader(model.Bytes());
                    while (graph.Next(out int gField, out int gWire))
                    {
                        if (gField == 1 && gWire == 2) nodes.Add(ReadNode(new Reader(graph.Bytes())));
                        else if (gField == 5 && gWire == 2) initializers.Add(ReadTensor(new Reader(graph.Bytes()), where));
                        else graph.Skip(gWire);
                    }
                }
                else model.Skip(wire);
            }
        }
        catch (FormatException e)
        {
            throw new InputError($"{where}: not a well-formed ONNX model ({e.Message}); the file may be truncated or corrupt");
        }
        if (!graphSeen || initializers.Count == 0)
            throw new InputError($"{where}: not an ONNX model with weights (no graph or no initializers); the file may be truncated or corrupt");
        return new OnnxModel(nodes, initializers);
    }

    static OnnxNode ReadNode(Reader r)
    {
        var inputs = new List<string>();
        var outputs = new List<string>();
        string op = "";
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) inputs.Add(r.String());
            else if (field == 2 && wire == 2) outputs.Add(r.String());
            else if (field == 4 && wire == 2) op = r.String();
            else r.Skip(wire);
        }
        return new OnnxNode(op, inputs, outputs);
    }

    static OnnxInitializer ReadTensor(Reader r, string where)
    {
        var dims = new List<long>();
        int dataType = 0;
        string name = "";
        ReadOnlyMemory<byte> raw = default;
        var floats = new List<float>();
        while (r.Next(out int field, out int wire))
        {
            switch (field, wire)
            {
                case (1, 0): dims.Add((long)r.Varint()); break;
                case (1, 2):
                    var packed = new Reader(r.Bytes());
                    while (!packed.AtEnd) dims.Add((long)packed.Varint());
                    break;
                case (2, 0): dataType = (int)r.Varint(); break;
                case (4, 5): floats.Add(BitConverter.Int32BitsToSingle((int)r.Fixed32())); break;
                case (4, 2):
                    var block = r.Bytes();
                    if (block.Length % 4 != 0) throw new FormatException("float_data is not a whole number of floats");
                    foreach (var f in MemoryMarshal.Cast<byte, float>(block.Span)) floats.Add(f);
                    break;
                case (8, 2): name = r.String(); break;
                case (9, 2): raw = r.Bytes(); break;
                case (14, 0):
                    if (r.Varint() == 1) throw new InputError($"{where}: initializer '{name}' keeps its data in an external file, which Loupe does not read");
                    break;
                default: r.Skip(wire); break;
            }
        }
        float[]? values = null;
        if (dataType == Float)
        {
            long count = 1;
            foreach (long d in dims)
            {
                // A weight Loupe can hold: every dimension 0..2^31-1 and at most 2^31-1 values in all (an overflowing product could match any data length).
                if (d < 0 || d > int.MaxValue) throw new FormatException($"initializer '{name}' has a dimension of {d} in its shape [{string.Join(", ", dims)}]");
                count *= d;
                if (count > int.MaxValue) throw new FormatException($"initializer '{name}' has shape [{string.Join(", ", dims.Take(16))}{(dims.Count > 16 ? ", …" : "")}]: more than 2^31 - 1 values");
            }
            if (!raw.IsEmpty)
            {
                if (raw.Length != count * 4) throw new FormatException($"initializer '{name}' has {raw.Length} bytes of raw_data; its shape [{string.Join(", ", dims)}] needs {count * 4}");
                values = new float[count];
                for (int i = 0; i < values.Length; i++) values[i] = BinaryPrimitives.ReadSingleLittleEndian(raw.Span.Slice(i * 4, 4));
            }
            else
            {
                if (floats.Count != count) throw new FormatException($"initializer '{name}' has {floats.Count} float_data values; its shape [{string.Join(", ", dims)}] needs {count}");
                values = [.. floats];
            }
        }
        return new OnnxInitializer(name, [.. dims], dataType, values);
    }

    /// <summary>A cursor over protobuf wire-format bytes; every read checks the bounds.</summary>
    sealed class Reader(ReadOnlyMemory<byte> data)
    {
        int _pos;

        public bool AtEnd => _pos >= data.Length;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (AtEnd) return false;
            ulong key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            if (field == 0) throw new FormatException($"field number 0 at byte {_pos}");
            return true;
        }

        public ulong Varint()
        {
            ulong value = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (AtEnd) throw new FormatException("a varint runs past the end of its message");
                byte b = data.Span[_pos++];
                value |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return value;
            }
            throw new FormatException("a varint is longer than 10 bytes");
        }

        public uint Fixed32()
        {
            Need(4);
            uint v = BinaryPrimitives.ReadUInt32LittleEndian(data.Span.Slice(_pos, 4));
            _pos += 4;
            return v;
        }

        public ReadOnlyMemory<byte> Bytes()
        {
            ulong length = Varint();
            if (length > int.MaxValue) throw new FormatException($"a field claims {length} bytes");
            Need((int)length);
            var slice = data.Slice(_pos, (int)length);
            _pos += (int)length;
            return slice;
        }

        public string String() => Encoding.UTF8.GetString(Bytes().Span);

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: Need(8); _pos += 8; break;
                case 2: Bytes(); break;
                case 5: Need(4); _pos += 4; break;
                default: throw new FormatException($"unsupported wire type {wire} at byte {_pos}");
            }
        }

        void Need(int count)
        {
            if (count < 0 || _pos + (long)count > data.Length)
                throw new FormatException($"a field of {count} bytes at byte {_pos} runs past the end of its message ({data.Length} bytes)");
        }
    }
}
