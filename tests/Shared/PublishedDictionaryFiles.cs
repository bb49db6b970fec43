using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using System.Text.Json;

namespace Loupe.Testing;

/// <summary>
/// Writes dictionaries in the layouts others publish them in, from plain arrays and with the framework alone (no Loupe
/// writer, so a loader is never checked against its own twin): numpy's <c>.npz</c> (Gemma Scope) and safetensors
/// (Gemma Scope 2, circuit-tracer). Arrays are row-major float32.
/// </summary>
public static class PublishedDictionaryFiles
{
    /// <summary>A Gemma Scope <c>params.npz</c>: W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec, threshold.</summary>
    public static void WriteGemmaScopeNpz(string file, int dIn, int dSae, int dOut, float[] wEnc, float[] bEnc, float[] wDec, float[] bDec, float[] threshold)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(file))!);
        using var zip = new ZipArchive(File.Create(file), ZipArchiveMode.Create);
        foreach (var (name, shape, data) in new (string, long[], float[])[]
                 { ("W_enc", [dIn, dSae], wEnc), ("W_dec", [dSae, dOut], wDec), ("b_enc", [dSae], bEnc), ("b_dec", [dOut], bDec), ("threshold", [dSae], threshold) })
        {
            using var s = zip.CreateEntry(name + ".npy", CompressionLevel.Fastest).Open();
            s.Write(Npy(shape, data));
        }
    }

    /// <summary>numpy's .npy v1.0 of a little-endian float32 C-order array.</summary>
    public static byte[] Npy(long[] shape, float[] data)
    {
        string dims = shape.Length == 1 ? $"{shape[0]}," : string.Join(", ", shape);
        string header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}";
        int total = 10 + header.Length + 1;
        header += new string(' ', (total + 63) / 64 * 64 - total) + "\n";
        var ms = new MemoryStream();
        ms.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0, (byte)(header.Length & 0xFF), (byte)(header.Length >> 8)]);
        ms.Write(Encoding.Latin1.GetBytes(header));
        ms.Write(Bytes(data));
        return ms.ToArray();
    }

    /// <summary>A safetensors file of float32 tensors (and optionally int64 ones), header then data in order.</summary>
    public static void WriteSafetensors(string file, IEnumerable<(string Name, long[] Shape, float[] Data)> tensors, IEnumerable<(string Name, long[] Shape, long[] Data)>? ints = null)
    {
        var header = new Dictionary<string, object>();
        var blobs = new List<byte[]>();
        long offset = 0;
        void Add(string name, string dtype, long[] shape, byte[] bytes)
        {
            header[name] = new { dtype, shape, data_offsets = new[] { offset, offset + bytes.Length } };
            blobs.Add(bytes);
            offset += bytes.Length;
        }
        foreach (var (name, shape, data) in tensors) Add(name, "F32", shape, Bytes(data));
        foreach (var (name, shape, data) in ints ?? [])
        {
            var b = new byte[data.Length * 8];
            for (int i = 0; i < data.Length; i++) BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(8 * i), data[i]);
            Add(name, "I64", shape, b);
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(file))!);
        using var fs = File.Create(file);
        var len = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)json.Length);
        fs.Write(len);
        fs.Write(json);
        foreach (var b in blobs) fs.Write(b);
    }

    /// <summary>
    /// A Gemma Scope 2 folder: <c>params.safetensors</c> (w_enc [d_in, d_sae], w_dec [d_sae, d_out], b_enc, b_dec, threshold,
    /// affine_skip_connection [d_in, d_out] when given) and, when <paramref name="hookIn"/> is given, <c>config.json</c> with the
    /// release's fields.
    /// </summary>
    public static void WriteGemmaScope2(string folder, int dIn, int dSae, int dOut, float[] wEnc, float[] bEnc, float[] wDec, float[] bDec, float[] threshold,
        float[]? affineSkip = null, string? hookIn = null, string? hookOut = null)
    {
        var tensors = new List<(string, long[], float[])>
        {
            ("w_enc", [dIn, dSae], wEnc), ("w_dec", [dSae, dOut], wDec), ("b_enc", [dSae], bEnc), ("b_dec", [dOut], bDec), ("threshold", [dSae], threshold),
        };
        if (affineSkip is not null) tensors.Add(("affine_skip_connection", [dIn, dOut], affineSkip));
        WriteSafetensors(Path.Combine(folder, "params.safetensors"), tensors);
        if (hookIn is null) return;
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["hf_hook_point_in"] = hookIn, ["hf_hook_point_out"] = hookOut ?? hookIn, ["width"] = dSae, ["model_name"] = "google/gemma-3-test",
            ["architecture"] = "jump_relu", ["l0"] = 12, ["affine_connection"] = affineSkip is not null, ["type"] = hookOut is null ? "sae" : "transcoder",
        }));
    }

    /// <summary>
    /// One layer file of a Gemma Scope 2 cross-layer transcoder, <c>params_layer_{layer}.safetensors</c>: w_enc [d_in, d_sae],
    /// w_dec [d_sae, n_layers, d_out] (every slot, those of earlier layers included), b_enc, b_dec, threshold, and
    /// affine_skip_connection [d_in, d_out] when given.
    /// </summary>
    public static void WriteGemmaScope2CltLayer(string folder, int layer, int layers, int dIn, int dSae, int dOut,
        float[] wEnc, float[] bEnc, float[] wDec, float[] bDec, float[] threshold, float[]? affineSkip = null)
    {
        var tensors = new List<(string, long[], float[])>
        {
            ("w_enc", [dIn, dSae], wEnc), ("w_dec", [dSae, layers, dOut], wDec), ("b_enc", [dSae], bEnc), ("b_dec", [dOut], bDec), ("threshold", [dSae], threshold),
        };
        if (affineSkip is not null) tensors.Add(("affine_skip_connection", [dIn, dOut], affineSkip));
        WriteSafetensors(Path.Combine(folder, $"params_layer_{layer}.safetensors"), tensors);
    }

    /// <summary>
    /// Gemma Scope 2's <c>w_dec [d_sae, n_layers, d_out]</c> for source layer <paramref name="layer"/> from a CLT layer's
    /// decoder in Loupe's and circuit-tracer's layout, <c>[d_sae, n_layers − layer, d_out]</c>; the slots of earlier layers hold <paramref name="unused"/>.
    /// </summary>
    public static float[] GemmaScope2CltDecoder(float[] compact, int layer, int layers, int dSae, int dOut, float unused = 0f)
    {
        int used = (layers - layer) * dOut;
        var all = new float[dSae * layers * dOut];
        for (int f = 0; f < dSae; f++)
        {
            all.AsSpan(f * layers * dOut, layer * dOut).Fill(unused);
            compact.AsSpan(f * used, used).CopyTo(all.AsSpan((f * layers + layer) * dOut, used));
        }
        return all;
    }

    static byte[] Bytes(float[] data)
    {
        var b = new byte[data.Length * 4];
        for (int i = 0; i < data.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), data[i]);
        return b;
    }
}
