using System.Text.Json;
using Loupe.Models;
using Loupe.Models.Layers;
using Loupe.Models.Loading;

namespace Loupe.Circuits.Weights;

/// <summary>
/// Every attention head's weights in TransformerLens's orientation (row vectors, <c>x·W</c>), read
/// from a loaded model or from a checkpoint that holds only attention (e.g. GPT-2 small without MLP
/// or token embedding). Shapes, per layer and head:
///   W_Q, W_K, W_V [d_model, d_head]   (GQA: W_K, W_V are the head's kv group's)
///   W_O           [d_head, d_model]
///   b_Q, b_K, b_V [d_head]            (zeros when the model has no bias)
///   b_O           [d_model] per layer
///   ln1 weight, bias [d_model]        (the norm that reads the residual stream into the head)
///   W_pos         [n_ctx, d_model]    (learned positions, when there are any)
/// </summary>
public sealed class AttentionWeights
{
    internal AttentionWeights(int nLayers, int nHeads, int dModel, int dHead, NormKind normKind, float normEps, string source)
    {
        NLayers = nLayers; NHeads = nHeads; DModel = dModel; DHead = dHead;
        NormKind = normKind; NormEps = normEps; Source = source;
        WQ = Jagged<float>(dModel * dHead); WK = Jagged<float>(dModel * dHead); WV = Jagged<float>(dModel * dHead);
        WO = Jagged<float>(dHead * dModel); BQ = Jagged<float>(dHead); BK = Jagged<float>(dHead); BV = Jagged<float>(dHead);
        BO = [.. Enumerable.Range(0, nLayers).Select(_ => new float[dModel])];
        Ln1Weight = new float[nLayers][]; Ln1Bias = new float[nLayers][];
        for (int l = 0; l < nLayers; l++) { Ln1Weight[l] = [.. Enumerable.Repeat(1f, dModel)]; Ln1Bias[l] = new float[dModel]; }
    }

    T[][][] Jagged<T>(int size) =>
        [.. Enumerable.Range(0, NLayers).Select(_ => Enumerable.Range(0, NHeads).Select(_ => new T[size]).ToArray())];

    public int NLayers { get; }
    public int NHeads { get; }
    public int DModel { get; }
    public int DHead { get; }
    public NormKind NormKind { get; }
    public float NormEps { get; }
    /// <summary>Where the weights came from (a model folder or a checkpoint file).</summary>
    public string Source { get; }
    /// <summary>Which processing has been applied (TransformerLens's names), e.g. <c>["fold_ln", "center_writing_weights"]</c>.</summary>
    public IReadOnlyList<string> Processing { get; private set; } = [];

    /// <summary>W_Q <c>[layer][head][d_model·d_head]</c>, row-major <c>[d_model, d_head]</c>.</summary>
    public float[][][] WQ { get; private init; }
    public float[][][] WK { get; private init; }
    public float[][][] WV { get; private init; }
    /// <summary>W_O <c>[layer][head][d_head·d_model]</c>, row-major <c>[d_head, d_model]</c>.</summary>
    public float[][][] WO { get; private init; }
    public float[][][] BQ { get; private init; }
    public float[][][] BK { get; private init; }
    public float[][][] BV { get; private init; }
    /// <summary>b_O per layer <c>[d_model]</c>.</summary>
    public float[][] BO { get; private init; }
    /// <summary>ln1's weight per layer <c>[d_model]</c> (ones once folded, or when the model has no norm there).</summary>
    public float[][] Ln1Weight { get; private init; }
    public float[][] Ln1Bias { get; private init; }
    /// <summary>Learned positions W_pos <c>[n_ctx, d_model]</c>, or null (rotary or unknown).</summary>
    public float[]? Positions { get; internal set; }

    /// <summary>
    /// Shortformer positions (TransformerLens's attention-only toy models): W_pos is added to ln1's output for the queries and
    /// keys, never to the stream (<see cref="ModelConfig.ShortformerPositions"/>).
    /// </summary>
    public bool Shortformer { get; internal set; }
    public int NCtx => Positions is null ? 0 : Positions.Length / DModel;

    /// <summary>W_QK = W_Q·W_Kᵀ <c>[d_model, d_model]</c>: query residual on the left, key residual on the right.</summary>
    public FactoredMatrix QK(int layer, int head) =>
        new(ToDouble(WQ[layer][head]), SmallLinearAlgebra.Transpose(ToDouble(WK[layer][head]), DModel, DHead), DModel, DHead, DModel);

    /// <summary>W_OV = W_V·W_O <c>[d_model, d_model]</c>: maps a source residual (row vector) to what the head writes.</summary>
    public FactoredMatrix OV(int layer, int head) =>
        new(ToDouble(WV[layer][head]), ToDouble(WO[layer][head]), DModel, DHead, DModel);

    internal static double[] ToDouble(ReadOnlySpan<float> x)
    {
        var d = new double[x.Length];
        for (int i = 0; i < x.Length; i++) d[i] = x[i];
        return d;
    }

    /// <summary>
    /// TransformerLens's <c>fold_ln</c> for the heads' reading weights: ln1's weight multiplies the rows of
    /// W_Q, W_K, W_V, its bias moves into b_Q, b_K, b_V, and for LayerNorm the reading
    /// weights are centred over d_model (the norm's input is mean-free, so that component is never read).
    /// ln1 is then weight 1, bias 0. With <paramref name="centerWriting"/> (LayerNorm only, as
    /// TransformerLens's <c>center_writing_weights</c>) W_O's rows are centred over d_model.
    /// </summary>
    /// <param name="centerWriting">Also centre W_O (ignored for RMSNorm models, where it would change the function).</param>
    /// <remarks>A shortformer's weights are returned as they are: the positions join after ln1, so its weight cannot move into
    /// W_Q and W_K (TransformerLens turns fold_ln off for such models too).</remarks>
    public AttentionWeights FoldLayerNorm(bool centerWriting = true)
    {
        if (Shortformer) return this;
        bool layerNorm = NormKind == NormKind.LayerNorm;
        var folded = new AttentionWeights(NLayers, NHeads, DModel, DHead, NormKind, NormEps, Source) { Positions = Positions };
        var processing = new List<string>(Processing);
        if (!processing.Contains("fold_ln")) processing.Add("fold_ln");
        bool centreO = centerWriting && layerNorm;
        if (centreO && !processing.Contains("center_writing_weights")) processing.Add("center_writing_weights");
        for (int l = 0; l < NLayers; l++)
        {
            BO[l].CopyTo(folded.BO[l], 0);
            if (centreO)
            {
                float mean = BO[l].Average();
                for (int d = 0; d < DModel; d++) folded.BO[l][d] -= mean;
            }
            for (int h = 0; h < NHeads; h++)
            {
                FoldReading(WQ[l][h], BQ[l][h], Ln1Weight[l], Ln1Bias[l], folded.WQ[l][h], folded.BQ[l][h], layerNorm);
                FoldReading(WK[l][h], BK[l][h], Ln1Weight[l], Ln1Bias[l], folded.WK[l][h], folded.BK[l][h], layerNorm);
                FoldReading(WV[l][h], BV[l][h], Ln1Weight[l], Ln1Bias[l], folded.WV[l][h], folded.BV[l][h], layerNorm);
                var wo = folded.WO[l][h];
                WO[l][h].CopyTo(wo, 0);
                if (centreO)
                    for (int e = 0; e < DHead; e++)
                    {
                        var row = wo.AsSpan(e * DModel, DModel);
                        double mean = 0;
                        foreach (float x in row) mean += x;
                        mean /= DModel;
                        for (int d = 0; d < DModel; d++) row[d] -= (float)mean;
                    }
            }
        }
        folded.Processing = processing;
        return folded;
    }

    void FoldReading(float[] w, float[] b, float[] lnW, float[] lnB, float[] wOut, float[] bOut, bool centre)
    {
        for (int e = 0; e < DHead; e++)
        {
            double bias = b[e];
            for (int d = 0; d < DModel; d++) bias += (double)lnB[d] * w[d * DHead + e];
            bOut[e] = (float)bias;
            double mean = 0;
            for (int d = 0; d < DModel; d++) mean += (double)lnW[d] * w[d * DHead + e];
            mean = centre ? mean / DModel : 0;
            for (int d = 0; d < DModel; d++) wOut[d * DHead + e] = (float)(lnW[d] * w[d * DHead + e] - mean);
        }
    }

    /// <summary>
    /// Reads a loaded model's heads from <c>model.Anatomy(l).Attention</c>: separate or fused
    /// (concatenated <c>[q|k|v]</c> or per-head interleaved) projections, either weight orientation,
    /// grouped-query attention. Learned positions are the model's W_pos (processed, when it was), else
    /// read from the model folder's safetensors when there is a <c>wpe.weight</c> (GPT-2 layout).
    /// </summary>
    public static AttentionWeights FromModel(HookedTransformer model)
    {
        var cfg = model.Config;
        var first = model.Anatomy(0);
        var w = new AttentionWeights(cfg.NLayers, cfg.NHeads, cfg.DModel, cfg.DHead, first.Ln1.Kind, first.Ln1.Eps, model.Source ?? "model");
        int D = cfg.DModel, E = cfg.DHead;
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var block = model.Anatomy(l);
            var attn = block.Attention;
            int H = attn.NHeads, kvH = attn.NKvHeads, group = H / kvH;
            int qWidth = H * E, kvWidth = kvH * E;
            if (block.Ln1.Kind != NormKind.None && block.Ln1.Weight.Length == D)
            {
                var lw = block.Ln1.Weight.Span;
                for (int d = 0; d < D; d++) w.Ln1Weight[l][d] = lw[d] + block.Ln1.WeightOffset;
                if (block.Ln1.Bias.Length == D) block.Ln1.Bias.Span.CopyTo(w.Ln1Bias[l]);
            }
            for (int h = 0; h < H; h++)
            {
                int g = h / group;
                // (linear, first output column) for q, k, v of this head.
                (Linear lin, int col) q, k, v;
                if (attn.Qkv is { } fused)
                {
                    q = attn.Layout == FusedQkvLayout.Concatenated ? (fused, h * E) : (fused, h * 3 * E);
                    k = attn.Layout == FusedQkvLayout.Concatenated ? (fused, qWidth + g * E) : (fused, h * 3 * E + E);
                    v = attn.Layout == FusedQkvLayout.Concatenated ? (fused, qWidth + kvWidth + g * E) : (fused, h * 3 * E + 2 * E);
                }
                else
                {
                    q = (attn.Q!, h * E); k = (attn.K!, g * E); v = (attn.V!, g * E);
                }
                ReadColumns(q.lin, q.col, E, w.WQ[l][h], w.BQ[l][h]);
                ReadColumns(k.lin, k.col, E, w.WK[l][h], w.BK[l][h]);
                ReadColumns(v.lin, v.col, E, w.WV[l][h], w.BV[l][h]);
                ReadRows(attn.O, h * E, E, w.WO[l][h]);
            }
            if (attn.O.Bias.Length == D) attn.O.Bias.Span.CopyTo(w.BO[l]);
        }
        // The model's own W_pos (as processed on load, e.g. centred), else a GPT-2-layout wpe beside it.
        w.Shortformer = cfg.ShortformerPositions;
        if (!model.PositionWeights.IsEmpty) w.Positions = model.PositionWeights.ToArray();
        else if (model.Source is { } src && Directory.Exists(src) && cfg.RotaryDim == 0) w.Positions = TryReadPositions(src, D);
        return w;
    }

    static float Get(Linear lin, int i, int o) =>
        lin.WeightIsOutIn ? lin.Weight.Span[o * lin.DIn + i] : lin.Weight.Span[i * lin.DOut + o];

    /// <summary>Output columns <c>[col, col+count)</c> of a linear map as <c>[d_in, count]</c> (and their bias).</summary>
    static void ReadColumns(Linear lin, int col, int count, float[] into, float[]? bias)
    {
        for (int i = 0; i < lin.DIn; i++)
            for (int e = 0; e < count; e++) into[i * count + e] = Get(lin, i, col + e);
        if (bias is not null && lin.Bias.Length == lin.DOut) lin.Bias.Span.Slice(col, count).CopyTo(bias);
    }

    /// <summary>Input rows <c>[row, row+count)</c> of a linear map as <c>[count, d_out]</c>.</summary>
    static void ReadRows(Linear lin, int row, int count, float[] into)
    {
        for (int e = 0; e < count; e++)
            for (int o = 0; o < lin.DOut; o++) into[e * lin.DOut + o] = Get(lin, row + e, o);
    }

    static float[]? TryReadPositions(string folder, int dModel)
    {
        foreach (var file in Directory.GetFiles(folder, "*.safetensors"))
        {
            using var st = SafeTensorsFile.Open(file);
            foreach (var name in (string[])["transformer.wpe.weight", "wpe.weight"])
                if (st.TryGetInfo(name, out var info) && info.Shape.Length == 2 && info.Shape[1] == dModel)
                    return st.GetFloat32(name).ToArray();
        }
        return null;
    }

    /// <summary>
    /// Loads from <paramref name="path"/>: a model folder (has config.json and loads as a model) or a
    /// GPT-2-layout safetensors checkpoint (a file, or a folder holding one) with at least every layer's
    /// attention and ln_1 — see <see cref="FromGpt2Checkpoint"/>.
    /// </summary>
    /// <exception cref="InputError">The path does not exist, or the checkpoint lacks an attention tensor.</exception>
    public static AttentionWeights Load(string path)
    {
        if (IsModelFolder(path))
        {
            using var model = ModelLoader.LoadFolder(path);
            return FromModel(model);
        }
        return FromGpt2Checkpoint(path);
    }

    /// <summary>Whether <paramref name="path"/> is a folder that loads as a whole model (config.json and a token embedding).</summary>
    public static bool IsModelFolder(string path) =>
        Directory.Exists(path) && File.Exists(Path.Combine(path, "config.json")) && IsFullModel(path);

    /// <summary>A model folder loads as a model unless its safetensors lack the token embedding (a partial checkpoint).</summary>
    static bool IsFullModel(string folder)
    {
        var files = Directory.GetFiles(folder, "*.safetensors");
        if (files.Length == 0) return true; // let the loader say what is wrong
        foreach (var file in files)
        {
            using var st = SafeTensorsFile.Open(file);
            if (st.Names.Any(n => n.EndsWith("wte.weight", StringComparison.Ordinal) || n.EndsWith("embed_tokens.weight", StringComparison.Ordinal) || n.EndsWith("W_E", StringComparison.Ordinal) || n.EndsWith("embed_in.weight", StringComparison.Ordinal)))
                return true;
        }
        return false;
    }

    /// <summary>
    /// Reads a Hugging Face GPT-2 checkpoint that may hold only part of the model: per layer
    /// <c>h.{l}.attn.c_attn.weight [d_model, 3·d_model]</c> (Conv1D <c>[in, out]</c>, columns q|k|v) and bias,
    /// <c>h.{l}.attn.c_proj.weight [d_model, d_model]</c>, <c>h.{l}.ln_1.weight/bias</c>; <c>wpe.weight</c> when
    /// present; names with or without the <c>transformer.</c> prefix. n_heads comes from a config.json beside
    /// it (<c>n_head</c>), else GPT-2's d_head = 64 (n_heads = d_model / 64).
    /// </summary>
    /// <exception cref="InputError">No such file, no safetensors in the folder, or a missing attention tensor (named).</exception>
    public static AttentionWeights FromGpt2Checkpoint(string path)
    {
        string file = path;
        if (Directory.Exists(path))
        {
            var files = Directory.GetFiles(path, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
            if (files.Length == 0) throw new InputError($"{path}: no .safetensors file in this folder");
            file = files[0];
        }
        else if (!File.Exists(path)) throw new InputError($"{path}: no such file or folder");
        string folder = Path.GetDirectoryName(Path.GetFullPath(file))!;

        using var st = SafeTensorsFile.Open(file);
        string prefix = st.Contains("transformer.h.0.attn.c_attn.weight") || st.Names.Any(n => n.StartsWith("transformer.", StringComparison.Ordinal)) ? "transformer." : "";
        string Name(string s) => prefix + s;
        SafeTensorInfo Require(string name)
        {
            if (!st.TryGetInfo(name, out var info))
                throw new InputError($"{file}: attention weights: tensor \"{name}\" is missing (this needs every layer's attn.c_attn, attn.c_proj and ln_1)");
            return info;
        }
        var attn0 = Require(Name("h.0.attn.c_attn.weight"));
        if (attn0.Shape.Length != 2 || attn0.Shape[1] != 3 * attn0.Shape[0])
            throw InputError.Expected(file, Name("h.0.attn.c_attn.weight"), "shape [d_model, 3·d_model]", "[" + string.Join(", ", attn0.Shape) + "]");
        int D = (int)attn0.Shape[0];
        int L = 0;
        while (st.Contains(Name($"h.{L}.attn.c_attn.weight")) || st.Contains(Name($"h.{L}.ln_1.weight"))) L++;
        int H = ReadHeadCount(folder) ?? Math.Max(1, D / 64);
        if (D % H != 0) throw InputError.Expected(file, "n_head", $"a divisor of d_model = {D}", H);
        int E = D / H;
        var w = new AttentionWeights(L, H, D, E, NormKind.LayerNorm, 1e-5f, file);
        // Every tensor read is checked for its shape and for finite values: a NaN weight would give NaN scores, and
        // a mis-shaped one an exception that names nothing.
        ReadOnlyMemory<float> Read(string name, params long[] shape)
        {
            var info = Require(name);
            if (!info.Shape.SequenceEqual(shape))
                throw InputError.Expected(file, $"tensor \"{name}\"", $"shape [{string.Join(", ", shape)}]", "[" + string.Join(", ", info.Shape) + "]");
            var values = st.GetFloat32(name);
            int bad = IndexOfNonFinite(values.Span);
            if (bad >= 0) throw InputError.Expected(file, $"tensor \"{name}\" element {bad}", "a finite weight", values.Span[bad]);
            return values;
        }
        ReadOnlyMemory<float> Optional(string name, params long[] shape) => st.Contains(name) ? Read(name, shape) : default;
        for (int l = 0; l < L; l++)
        {
            var qkv = new Linear(Read(Name($"h.{l}.attn.c_attn.weight"), D, 3 * D), D, 3 * D, weightIsOutIn: false, Optional(Name($"h.{l}.attn.c_attn.bias"), 3 * D));
            var proj = new Linear(Read(Name($"h.{l}.attn.c_proj.weight"), D, D), D, D, weightIsOutIn: false);
            Optional(Name($"h.{l}.attn.c_proj.bias"), D).Span.CopyTo(w.BO[l]);
            Read(Name($"h.{l}.ln_1.weight"), D).Span.CopyTo(w.Ln1Weight[l]);
            Optional(Name($"h.{l}.ln_1.bias"), D).Span.CopyTo(w.Ln1Bias[l]);
            for (int h = 0; h < H; h++)
            {
                ReadColumns(qkv, h * E, E, w.WQ[l][h], w.BQ[l][h]);
                ReadColumns(qkv, D + h * E, E, w.WK[l][h], w.BK[l][h]);
                ReadColumns(qkv, 2 * D + h * E, E, w.WV[l][h], w.BV[l][h]);
                ReadRows(proj, h * E, E, w.WO[l][h]);
            }
        }
        if (st.TryGetInfo(Name("wpe.weight"), out var wpe) && wpe.Shape.Length == 2 && wpe.Shape[1] == D)
            w.Positions = Read(Name("wpe.weight"), wpe.Shape[0], D).ToArray();
        return w;
    }

    /// <summary>The first NaN, infinite or implausibly large (past 1e10, which overflows the scores' products) value, or −1.</summary>
    static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
            if (!float.IsFinite(values[i]) || MathF.Abs(values[i]) > 1e10f) return i;
        return -1;
    }

    static int? ReadHeadCount(string folder)
    {
        string config = Path.Combine(folder, "config.json");
        if (!File.Exists(config)) return null;
        using var doc = JsonInput.Parse(InputFiles.ReadAllBytes(config, 16 << 20), config);
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("n_head", out var n)) return null;
        return n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out int h) && h > 0 ? h
            : throw InputError.Expected(config, "'n_head'", "a positive integer", JsonInput.KindName(n) == "number" ? n.GetRawText() : JsonInput.KindName(n));
    }
}
