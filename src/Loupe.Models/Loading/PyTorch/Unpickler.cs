using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace Loupe.Models.Loading.PyTorch;

// The values a restricted unpickler builds. Nothing here runs code: a global is only a name, and "calling" one either
// builds one of the few values below (an ordered dict, a tensor view of a storage, a tuple) or an Opaque placeholder.

/// <summary>A Python tuple (also what a set or torch.Size becomes).</summary>
internal sealed record PyTuple(object?[] Items);

/// <summary>A Python list.</summary>
internal sealed class PyList(List<object?> items)
{
    public List<object?> Items { get; } = items;
}

/// <summary>A Python dict or OrderedDict, in insertion order (a later value for a key replaces the earlier one).</summary>
internal sealed class PyDict
{
    static readonly object NoneKey = new();
    readonly Dictionary<object, int> _index = [];

    public List<KeyValuePair<object?, object?>> Items { get; } = [];

    public void Set(object? key, object? value)
    {
        if (_index.TryGetValue(key ?? NoneKey, out int at)) Items[at] = new(key, value);
        else
        {
            _index.Add(key ?? NoneKey, Items.Count);
            Items.Add(new(key, value));
        }
    }
}

/// <summary>A reference to a global by name (<c>module.name</c>), never imported.</summary>
internal sealed record PyGlobal(string Module, string Name)
{
    public override string ToString() => Module + "." + Name;
}

/// <summary>What calling a global Loupe does not know gives: a placeholder that remembers what it was.</summary>
internal sealed record Opaque(string What);

/// <summary>A persistent reference to a tensor storage (<c>('storage', torch.FloatStorage, key, location, numel)</c>).</summary>
internal sealed record StorageRef(string Key, DType DType, long Numel, string Location, string TypeName);

/// <summary>A tensor: a strided view of a storage (what <c>torch._utils._rebuild_tensor_v2</c> would build).</summary>
internal sealed record TensorRef(StorageRef Storage, long Offset, long[] Shape, long[] Stride);

/// <summary>
/// A pickle reader that builds data and never runs code (protocols 0–5): globals are resolved against a short list of
/// torch and Python names that a <c>torch.save</c> state dict uses (as <c>torch.load(weights_only=True)</c> does), and
/// any other global becomes an <see cref="Opaque"/> placeholder instead of being imported. Persistent ids (torch's
/// storages) are handed to a callback.
/// </summary>
internal sealed class Unpickler
{
    /// <summary>Memo slots and stack entries beyond any real checkpoint (a 70B model's pickle has ~10^5 objects).</summary>
    public const int MaxObjects = 50_000_000;

    readonly string _where;
    readonly Func<object?, object?> _persistentLoad;
    readonly Dictionary<long, object?> _memo = [];
    readonly List<object?> _stack = [];
    readonly Stack<int> _marks = new();

    static readonly object Mark = new();

    public Unpickler(string where, Func<object?, object?> persistentLoad)
    {
        _where = where;
        _persistentLoad = persistentLoad;
    }

    /// <summary>Reads one pickle starting at <paramref name="position"/>, leaving it just after the STOP opcode.</summary>
    /// <exception cref="InputError">A malformed or truncated pickle, an opcode Loupe does not read (the message names the file, opcode and byte).</exception>
    public object? Load(ReadOnlySpan<byte> data, ref int position)
    {
        _stack.Clear();
        _marks.Clear();
        _memo.Clear();
        var r = new Reader(data, position, _where);
        while (true)
        {
            int at = r.Position;
            byte op = r.Byte();
            switch (op)
            {
                case 0x80: // PROTO
                    int protocol = r.Byte();
                    if (protocol > 5) throw r.Bad(at, $"pickle protocol {protocol}; expected 0 to 5");
                    break;
                case 0x95: r.Bytes(8); break; // FRAME: a length hint only
                case (byte)'.': // STOP
                    if (_stack.Count != 1 || _marks.Count != 0) throw r.Bad(at, $"STOP with {_stack.Count} values on the stack; expected exactly one");
                    position = r.Position;
                    return _stack[0];

                case (byte)'N': Push(null); break;
                case 0x88: Push(true); break;
                case 0x89: Push(false); break;
                case (byte)'K': Push((long)r.Byte()); break;                                   // BININT1
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(r.Bytes(2))); break; // BININT2
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(r.Bytes(4))); break;  // BININT
                case 0x8a: Push(Long(r.Bytes(r.Byte()))); break;                              // LONG1
                case 0x8b: Push(Long(r.Bytes(Length32(ref r, at)))); break;                   // LONG4
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(r.Bytes(8))); break; // BINFLOAT
                case (byte)'I': Push(TextInt(ref r, at)); break;                              // INT (01/00 are True/False)
                case (byte)'L': Push(TextLong(ref r, at)); break;
                case (byte)'F': Push(TextFloat(ref r, at)); break;

                case (byte)'X': Push(Utf8(ref r, Length32(ref r, at), at)); break;            // BINUNICODE
                case 0x8c: Push(Utf8(ref r, r.Byte(), at)); break;                            // SHORT_BINUNICODE
                case 0x8d: Push(Utf8(ref r, Length64(ref r, at), at)); break;                 // BINUNICODE8
                case (byte)'V': Push(r.Line().ToString()); break;                             // UNICODE (raw-unicode-escape; ASCII here)
                case (byte)'T': Push(Latin1(r.Bytes(Length32(ref r, at)))); break;            // BINSTRING (Python 2 str)
                case (byte)'U': Push(Latin1(r.Bytes(r.Byte()))); break;                       // SHORT_BINSTRING
                case (byte)'S': Push(TextString(ref r, at)); break;                           // STRING
                case (byte)'B': Push(r.Bytes(Length32(ref r, at)).ToArray()); break;          // BINBYTES
                case (byte)'C': Push(r.Bytes(r.Byte()).ToArray()); break;                     // SHORT_BINBYTES
                case 0x8e: Push(r.Bytes(Length64(ref r, at)).ToArray()); break;               // BINBYTES8
                case 0x96: Push(r.Bytes(Length64(ref r, at)).ToArray()); break;               // BYTEARRAY8

                case (byte)'(': _marks.Push(_stack.Count); break;                             // MARK
                case (byte)')': Push(new PyTuple([])); break;                                 // EMPTY_TUPLE
                case 0x85: Push(new PyTuple(PopN(1, ref r, at))); break;                       // TUPLE1
                case 0x86: Push(new PyTuple(PopN(2, ref r, at))); break;                       // TUPLE2
                case 0x87: Push(new PyTuple(PopN(3, ref r, at))); break;                       // TUPLE3
                case (byte)'t': Push(new PyTuple(PopToMark(ref r, at))); break;              // TUPLE
                case (byte)']': Push(new PyList([])); break;                                  // EMPTY_LIST
                case (byte)'l': Push(new PyList([.. PopToMark(ref r, at)])); break;          // LIST
                case (byte)'}': Push(new PyDict()); break;                                    // EMPTY_DICT
                case (byte)'d': Push(DictOf(PopToMark(ref r, at), ref r, at)); break;        // DICT
                case 0x8f: Push(new PyList([])); break;                                       // EMPTY_SET (read as a list)
                case 0x91: Push(new PyTuple(PopToMark(ref r, at))); break;                   // FROZENSET
                case (byte)'a': { var v = Pop(ref r, at); ListAt(Top(ref r, at), ref r, at).Add(v); break; } // APPEND
                case (byte)'e': case 0x90: { var items = PopToMark(ref r, at); ListAt(Top(ref r, at), ref r, at).AddRange(items); break; } // APPENDS, ADDITEMS
                case (byte)'s': { var v = Pop(ref r, at); var k = Pop(ref r, at); DictAt(Top(ref r, at), ref r, at).Set(Key(k, ref r, at), v); break; } // SETITEM
                case (byte)'u': // SETITEMS
                {
                    var items = PopToMark(ref r, at);
                    if (items.Length % 2 != 0) throw r.Bad(at, "SETITEMS with an odd number of values");
                    var dict = DictAt(Top(ref r, at), ref r, at);
                    for (int i = 0; i < items.Length; i += 2) dict.Set(Key(items[i], ref r, at), items[i + 1]);
                    break;
                }

                case (byte)'0': Pop(ref r, at); break;                                       // POP
                case (byte)'1': PopToMark(ref r, at); break;                                 // POP_MARK
                case (byte)'2': Push(Top(ref r, at)); break;                                 // DUP
                case (byte)'p': Memo(TextIndex(ref r, at), Top(ref r, at)); break; // PUT
                case (byte)'q': Memo(r.Byte(), Top(ref r, at)); break;                       // BINPUT
                case (byte)'r': Memo(BinaryPrimitives.ReadUInt32LittleEndian(r.Bytes(4)), Top(ref r, at)); break; // LONG_BINPUT
                case 0x94: Memo(_memo.Count, Top(ref r, at)); break;                          // MEMOIZE
                case (byte)'g': Push(Recall(TextIndex(ref r, at), ref r, at)); break;        // GET
                case (byte)'h': Push(Recall(r.Byte(), ref r, at)); break;                    // BINGET
                case (byte)'j': Push(Recall(BinaryPrimitives.ReadUInt32LittleEndian(r.Bytes(4)), ref r, at)); break; // LONG_BINGET

                case (byte)'c': // GLOBAL module\nname\n
                {
                    string module = Ascii(r.Line(), ref r, at), name = Ascii(r.Line(), ref r, at);
                    Push(new PyGlobal(module, name));
                    break;
                }
                case 0x93: // STACK_GLOBAL
                {
                    var name = Pop(ref r, at);
                    var module = Pop(ref r, at);
                    if (module is not string m || name is not string n) throw r.Bad(at, "STACK_GLOBAL without two strings");
                    Push(new PyGlobal(m, n));
                    break;
                }
                case (byte)'R': { var args = Pop(ref r, at); var f = Pop(ref r, at); Push(Call(f, Args(args, ref r, at), ref r, at)); break; } // REDUCE
                case 0x81: { var args = Pop(ref r, at); var cls = Pop(ref r, at); Push(Call(cls, Args(args, ref r, at), ref r, at)); break; } // NEWOBJ
                case 0x92: { Pop(ref r, at); var args = Pop(ref r, at); var cls = Pop(ref r, at); Push(Call(cls, Args(args, ref r, at), ref r, at)); break; } // NEWOBJ_EX
                case (byte)'b': { Pop(ref r, at); Top(ref r, at); break; } // BUILD: instance state (an OrderedDict's _metadata) is not needed
                case (byte)'Q': Push(_persistentLoad(Pop(ref r, at))); break;                 // BINPERSID
                case (byte)'P': Push(_persistentLoad(Ascii(r.Line(), ref r, at))); break;      // PERSID
                case (byte)'i': case (byte)'o': // INST, OBJ: old-style instances, never built
                {
                    string what = op == 'i' ? Ascii(r.Line(), ref r, at) + "." + Ascii(r.Line(), ref r, at) : "an old-style object";
                    PopToMark(ref r, at);
                    Push(new Opaque(what));
                    break;
                }
                default:
                    throw r.Bad(at, $"opcode 0x{op:x2}, which a torch.save checkpoint does not use" +
                                    (op is 0x82 or 0x83 or 0x84 ? " (the copyreg extension registry)" : op is 0x97 or 0x98 ? " (out-of-band buffers)" : ""));
            }
        }
    }

    void Push(object? value)
    {
        if (_stack.Count >= MaxObjects) throw new InputError($"{_where}: the pickle holds more than {MaxObjects} values at once");
        _stack.Add(value);
    }

    object? Pop(ref Reader r, int at)
    {
        int floor = _marks.Count > 0 ? _marks.Peek() : 0;
        if (_stack.Count <= floor) throw r.Bad(at, "an opcode takes a value from an empty stack");
        var v = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return v;
    }

    object? Top(ref Reader r, int at)
    {
        if (_stack.Count == 0) throw r.Bad(at, "an opcode reads the top of an empty stack");
        return _stack[^1];
    }

    object?[] PopN(int n, ref Reader r, int at)
    {
        var items = new object?[n];
        for (int i = n - 1; i >= 0; i--) items[i] = Pop(ref r, at);
        return items;
    }

    object?[] PopToMark(ref Reader r, int at)
    {
        if (_marks.Count == 0) throw r.Bad(at, "an opcode needs a MARK that was never set");
        int mark = _marks.Pop();
        var items = _stack.GetRange(mark, _stack.Count - mark).ToArray();
        _stack.RemoveRange(mark, _stack.Count - mark);
        return items;
    }

    void Memo(long index, object? value)
    {
        if (_memo.Count >= MaxObjects && !_memo.ContainsKey(index))
            throw new InputError($"{_where}: the pickle memoizes more than {MaxObjects} values");
        _memo[index] = value;
    }

    object? Recall(long index, ref Reader r, int at) =>
        _memo.TryGetValue(index, out var v) ? v : throw r.Bad(at, $"recalls memo slot {index}, which was never stored");

    static List<object?> ListAt(object? target, ref Reader r, int at) =>
        target is PyList l ? l.Items : throw r.Bad(at, $"appends to {Describe(target)}; expected a list");

    static PyDict DictAt(object? target, ref Reader r, int at) =>
        target is PyDict d ? d : throw r.Bad(at, $"sets an item on {Describe(target)}; expected a dict");

    static object? Key(object? key, ref Reader r, int at) =>
        key is null or string or long or bool or double or PyTuple ? key : throw r.Bad(at, $"uses {Describe(key)} as a dict key");

    static PyDict DictOf(object?[] items, ref Reader r, int at)
    {
        if (items.Length % 2 != 0) throw r.Bad(at, "DICT with an odd number of values");
        var d = new PyDict();
        for (int i = 0; i < items.Length; i += 2) d.Set(Key(items[i], ref r, at), items[i + 1]);
        return d;
    }

    static object?[] Args(object? args, ref Reader r, int at) =>
        args is PyTuple t ? t.Items : throw r.Bad(at, $"calls with {Describe(args)} as arguments; expected a tuple");

    /// <summary>What a call would build, for the globals a state dict uses; anything else is a named placeholder.</summary>
    object? Call(object? callable, object?[] args, ref Reader r, int at)
    {
        if (callable is not PyGlobal g) return new Opaque($"the result of calling {Describe(callable)}");
        switch (g.Module, g.Name)
        {
            case ("collections", "OrderedDict") or ("builtins" or "__builtin__", "dict"):
                if (args.Length == 0) return new PyDict();
                if (args.Length == 1 && args[0] is PyList pairs)
                {
                    var d = new PyDict();
                    foreach (var p in pairs.Items)
                        if (p is PyTuple { Items.Length: 2 } kv) d.Set(Key(kv.Items[0], ref r, at), kv.Items[1]);
                        else throw r.Bad(at, $"{g}() with an item that is not a (key, value) pair");
                    return d;
                }
                return new Opaque($"{g} with {args.Length} arguments");
            case ("torch._utils", "_rebuild_tensor_v2" or "_rebuild_tensor" or "_rebuild_tensor_v3"):
                return Tensor(g, args, ref r, at);
            case ("torch._utils", "_rebuild_parameter" or "_rebuild_parameter_with_state"):
                return args.Length >= 1 && args[0] is TensorRef t ? t : throw r.Bad(at, $"{g} without a tensor as its first argument");
            case ("torch._tensor", "_rebuild_from_type_v2" or "_rebuild_from_type"):
                // (func, type, args, state): a tensor subclass; the data is func(*args).
                if (args.Length >= 3 && args[2] is PyTuple inner) return Call(args[0], inner.Items, ref r, at);
                throw r.Bad(at, $"{g} with {args.Length} arguments; expected (func, type, args, state)");
            case ("torch", "Size") or ("builtins" or "__builtin__", "tuple" or "set" or "frozenset"):
                if (args.Length == 1 && args[0] is PyTuple tuple) return tuple;
                if (args.Length == 1 && args[0] is PyList list) return new PyTuple([.. list.Items]);
                if (args.Length == 0) return new PyTuple([]);
                return new Opaque(g.ToString());
            case ("_codecs", "encode"):
                // Protocol 2 writes Python 3 bytes as _codecs.encode(text, 'latin1').
                if (args.Length == 2 && args[0] is string text && args[1] is "latin1" or "latin-1") return Encoding.Latin1.GetBytes(text);
                return new Opaque(g.ToString());
            case ("torch", "device"):
                return args.Length >= 1 && args[0] is string device ? device : new Opaque(g.ToString());
            default:
                return new Opaque(g.ToString());
        }
    }

    static TensorRef Tensor(PyGlobal g, object?[] args, ref Reader r, int at)
    {
        // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]);
        // _rebuild_tensor(storage, storage_offset, size, stride); v3 adds dtype after the hooks.
        if (args.Length < 4) throw r.Bad(at, $"{g} with {args.Length} arguments; expected (storage, offset, size, stride, …)");
        if (args[0] is not StorageRef storage) throw r.Bad(at, $"{g} with {Describe(args[0])} as its storage; expected a persistent storage reference");
        if (args[1] is not long offset || offset < 0) throw r.Bad(at, $"{g} with storage offset {Describe(args[1])}; expected a non-negative integer");
        var shape = Dims(args[2], "size", g, ref r, at);
        var stride = Dims(args[3], "stride", g, ref r, at);
        if (shape.Length != stride.Length) throw r.Bad(at, $"{g} with size [{string.Join(", ", shape)}] and stride [{string.Join(", ", stride)}] of different lengths");
        return new TensorRef(storage, offset, shape, stride);
    }

    static long[] Dims(object? value, string what, PyGlobal g, ref Reader r, int at)
    {
        if (value is not PyTuple t) throw r.Bad(at, $"{g} with {what} {Describe(value)}; expected a tuple of integers");
        var dims = new long[t.Items.Length];
        for (int i = 0; i < dims.Length; i++)
            dims[i] = t.Items[i] is long d && d >= 0 ? d : throw r.Bad(at, $"{g} with {what}[{i}] = {Describe(t.Items[i])}; expected a non-negative integer");
        return dims;
    }

    /// <summary>A value in words, for messages.</summary>
    public static string Describe(object? v) => v switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        string s => "'" + (s.Length > 40 ? s[..40] + "…" : s) + "'",
        byte[] b => $"bytes of length {b.Length}",
        PyTuple t => $"a tuple of {t.Items.Length}",
        PyList l => $"a list of {l.Items.Count}",
        PyDict d => $"a dict of {d.Items.Count}",
        PyGlobal g => g.ToString(),
        Opaque o => o.What,
        StorageRef s => $"storage {s.Key}",
        TensorRef t => $"a tensor [{string.Join(", ", t.Shape)}]",
        _ => v.GetType().Name,
    };

    static object Long(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length == 0) return 0L;
        if (bytes.Length > 8) return new Opaque($"an integer of {bytes.Length} bytes");
        long v = (bytes[^1] & 0x80) != 0 ? -1L : 0L; // two's complement, little-endian, sign-extended
        for (int i = bytes.Length - 1; i >= 0; i--) v = (v << 8) | bytes[i];
        return v;
    }

    static int Length32(ref Reader r, int at)
    {
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(r.Bytes(4));
        return n <= int.MaxValue ? (int)n : throw r.Bad(at, $"a length of {n} bytes");
    }

    static int Length64(ref Reader r, int at)
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(r.Bytes(8));
        return n <= int.MaxValue ? (int)n : throw r.Bad(at, $"a length of {n} bytes");
    }

    static string Utf8(ref Reader r, int length, int at)
    {
        var bytes = r.Bytes(length);
        // Python writes lone surrogates with surrogatepass; refuse them rather than guess.
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw r.Bad(at, "a string that is not valid UTF-8");
        return Encoding.UTF8.GetString(bytes);
    }

    static string Latin1(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);

    static string Ascii(ReadOnlySpan<byte> line, ref Reader r, int at)
    {
        foreach (byte b in line)
            if (b is < 0x20 or > 0x7e) throw r.Bad(at, "a text argument with a non-ASCII byte");
        return Encoding.ASCII.GetString(line);
    }

    static object TextInt(ref Reader r, int at)
    {
        string s = Ascii(r.Line(), ref r, at);
        if (s == "01") return true;
        if (s == "00") return false;
        return long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v) ? v : throw r.Bad(at, $"INT '{s}'");
    }

    static object TextLong(ref Reader r, int at)
    {
        string s = Ascii(r.Line(), ref r, at).TrimEnd('L');
        return long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v) ? v : new Opaque($"the integer {s}");
    }

    static double TextFloat(ref Reader r, int at)
    {
        string s = Ascii(r.Line(), ref r, at);
        return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : throw r.Bad(at, $"FLOAT '{s}'");
    }

    static string TextString(ref Reader r, int at)
    {
        string s = Ascii(r.Line(), ref r, at);
        if (s.Length >= 2 && (s[0] == '\'' || s[0] == '"') && s[^1] == s[0]) return s[1..^1];
        throw r.Bad(at, "STRING without quotes");
    }

    static long TextIndex(ref Reader r, int at) =>
        long.TryParse(Ascii(r.Line(), ref r, at), NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v : throw r.Bad(at, "PUT or GET without a memo index");

    ref struct Reader(ReadOnlySpan<byte> data, int position, string where)
    {
        readonly ReadOnlySpan<byte> _data = data;
        public int Position = position;

        public byte Byte()
        {
            if (Position >= _data.Length) throw Bad(Position, "the pickle ends before its STOP opcode (truncated?)");
            return _data[Position++];
        }

        public ReadOnlySpan<byte> Bytes(int n)
        {
            if (n > _data.Length - Position) throw Bad(Position, $"the pickle ends inside a {n}-byte argument (truncated?)");
            var s = _data.Slice(Position, n);
            Position += n;
            return s;
        }

        public ReadOnlySpan<byte> Line()
        {
            int nl = _data[Position..].IndexOf((byte)'\n');
            if (nl < 0) throw Bad(Position, "the pickle ends inside a text argument (truncated?)");
            var s = _data.Slice(Position, nl);
            Position += nl + 1;
            return s;
        }

        public readonly InputError Bad(int at, string what) => new($"{where}: not a readable pickle at byte {at}: {what}");
    }
}
