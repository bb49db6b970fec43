namespace Loupe.Models.Loading;

/// <summary>
/// Element types of the safetensors format, spelled as in its JSON header
/// (<c>"F32"</c>, <c>"BF16"</c>, …). All are stored little-endian.
/// </summary>
public enum DType
{
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    BOOL,
    F8_E4M3,
    F8_E5M2,
}

/// <summary>Size and spelling of each <see cref="DType"/>.</summary>
public static class DTypes
{
    /// <summary>Bytes per element: 8, 4, 2 or 1.</summary>
    public static int SizeOf(this DType dtype) => dtype switch
    {
        DType.F64 or DType.I64 or DType.U64 => 8,
        DType.F32 or DType.I32 or DType.U32 => 4,
        DType.F16 or DType.BF16 or DType.I16 or DType.U16 => 2,
        DType.I8 or DType.U8 or DType.BOOL or DType.F8_E4M3 or DType.F8_E5M2 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    /// <summary>True for F64, F32, F16, BF16 (the dtypes <c>GetFloat32</c> accepts).</summary>
    public static bool IsFloatingPoint(this DType dtype) =>
        dtype is DType.F64 or DType.F32 or DType.F16 or DType.BF16;

    /// <summary>The header spelling, e.g. <c>"BF16"</c>.</summary>
    public static string ToHeaderString(this DType dtype) => dtype.ToString();

    /// <summary>Parses a header spelling (case-sensitive, as the format requires).</summary>
    public static bool TryParse(string? text, out DType dtype)
    {
        switch (text)
        {
            case "F64": dtype = DType.F64; return true;
            case "F32": dtype = DType.F32; return true;
            case "F16": dtype = DType.F16; return true;
            case "BF16": dtype = DType.BF16; return true;
            case "I64": dtype = DType.I64; return true;
            case "I32": dtype = DType.I32; return true;
            case "I16": dtype = DType.I16; return true;
            case "I8": dtype = DType.I8; return true;
            case "U64": dtype = DType.U64; return true;
            case "U32": dtype = DType.U32; return true;
            case "U16": dtype = DType.U16; return true;
            case "U8": dtype = DType.U8; return true;
            case "BOOL": dtype = DType.BOOL; return true;
            case "F8_E4M3": dtype = DType.F8_E4M3; return true;
            case "F8_E5M2": dtype = DType.F8_E5M2; return true;
            default: dtype = default; return false;
        }
    }
}

/// <summary>
/// One tensor entry of a safetensors header. <see cref="Begin"/> and <see cref="End"/> are byte
/// offsets relative to the start of the data buffer (after the 8-byte length and the header).
/// </summary>
/// <param name="Name">Tensor name, e.g. <c>transformer.h.0.attn.c_attn.weight</c>.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions, outermost first; empty for a scalar. Do not mutate.</param>
/// <param name="Begin">First byte, relative to the data buffer.</param>
/// <param name="End">One past the last byte, relative to the data buffer.</param>
public sealed record SafeTensorInfo(string Name, DType DType, long[] Shape, long Begin, long End)
{
    /// <summary>Product of <see cref="Shape"/> (1 for a scalar).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n = checked(n * d);
            return n;
        }
    }

    /// <summary><c>End - Begin</c>.</summary>
    public long ByteLength => End - Begin;

    /// <summary>Shape as text, e.g. <c>[512, 64]</c>.</summary>
    public string ShapeString => "[" + string.Join(", ", Shape) + "]";

    /// <inheritdoc />
    public override string ToString() => $"{Name}: {DType} {ShapeString} @ [{Begin}, {End})";
}
