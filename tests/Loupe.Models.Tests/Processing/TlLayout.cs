using Loupe.Models.Layers;
using Loupe.Models.Loading;
using Loupe.Models.Processing;

namespace Loupe.Models.Tests.Processing;

/// <summary>A loaded model's weights in TransformerLens's state-dict names and layouts (W_Q [n_heads, d_model, d_head], …).</summary>
static class TlLayout
{
    public static Dictionary<string, (int[] Shape, float[] Data)> Weights(HookedTransformer m)
    {
        var c = m.Config;
        int D = c.DModel, H = c.NHeads, dh = c.DHead;
        var sd = new Dictionary<string, (int[], float[])>
        {
            ["embed.W_E"] = ([c.DVocab, D], m.EmbeddingWeights.ToArray()),
        };
        if (!m.PositionWeights.IsEmpty) sd["pos_embed.W_pos"] = ([m.PositionWeights.Length / D, D], m.PositionWeights.ToArray());
        for (int l = 0; l < c.NLayers; l++)
        {
            var a = m.Anatomy(l);
            string b = $"blocks.{l}.";
            AddNorm(sd, b + "ln1", a.Ln1);
            var attn = a.Attention;
            string[] parts = ["Q", "K", "V"];
            for (int part = 0; part < 3; part++)
            {
                var lin = attn.Qkv ?? (part == 0 ? attn.Q! : part == 1 ? attn.K! : attn.V!);
                int heads = part == 0 ? H : attn.NKvHeads;
                var w = new float[heads * D * dh];
                var bias = new float[heads * dh];
                for (int h = 0; h < heads; h++)
                    for (int j = 0; j < dh; j++)
                    {
                        int col = WeightProcessor.ProjectionColumn(attn, part, h, j);
                        for (int d = 0; d < D; d++) w[(h * D + d) * dh + j] = At(lin, d, col);
                        if (!lin.Bias.IsEmpty) bias[h * dh + j] = lin.Bias.Span[col];
                    }
                sd[$"{b}attn.W_{parts[part]}"] = ([heads, D, dh], w);
                sd[$"{b}attn.b_{parts[part]}"] = ([heads, dh], bias);
            }
            sd[b + "attn.W_O"] = ([H, dh, D], Dense(attn.O));
            sd[b + "attn.b_O"] = ([D], BiasOf(attn.O));
            if (a.Mlp is { } mlp)
            {
                AddNorm(sd, b + "ln2", a.Ln2!);
                sd[b + "mlp.W_in"] = ([D, mlp.In.DOut], Dense(mlp.In));
                sd[b + "mlp.b_in"] = ([mlp.In.DOut], BiasOf(mlp.In));
                sd[b + "mlp.W_out"] = ([mlp.Out.DIn, D], Dense(mlp.Out));
                sd[b + "mlp.b_out"] = ([D], BiasOf(mlp.Out));
            }
        }
        if (m.FinalNormLayer is { } final) AddNorm(sd, "ln_final", final);
        sd["unembed.W_U"] = ([D, c.VocabOut], Dense(m.UnembedLayer));
        sd["unembed.b_U"] = ([c.VocabOut], BiasOf(m.UnembedLayer));
        return sd;
    }

    /// <summary>Writes <paramref name="m"/> as a TransformerLens-native checkpoint (config.json + model.safetensors) in a new temp folder.</summary>
    public static string SaveAsTransformerLens(HookedTransformer m, string actFn)
    {
        var c = m.Config;
        string dir = Path.Combine(Path.GetTempPath(), "loupe-tl-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        string norm = c.Normalization switch { NormKind.LayerNorm => "\"LN\"", NormKind.RmsNorm => "\"RMS\"", _ => "null" };
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""
            {"format": "transformer_lens", "n_layers": {{c.NLayers}}, "d_model": {{c.DModel}}, "n_ctx": {{c.NCtx}}, "d_head": {{c.DHead}},
             "n_heads": {{c.NHeads}}, "d_mlp": {{c.DMlp}}, "d_vocab": {{c.DVocab}}, "act_fn": "{{actFn}}", "normalization_type": {{norm}},
             "eps": {{c.NormEps}}, "attn_only": false, "positional_embedding_type": "standard"}
            """);
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"),
            Weights(m).Select(p => (p.Key, p.Value.Shape, (ReadOnlyMemory<float>)p.Value.Data)));
        return dir;
    }

    static void AddNorm(Dictionary<string, (int[], float[])> sd, string name, Norm norm)
    {
        if (norm.Kind == NormKind.None || norm.Folded) return;
        if (!norm.Weight.IsEmpty) sd[name + ".w"] = ([norm.Weight.Length], norm.Weight.ToArray().Select(v => v + norm.WeightOffset).ToArray());
        if (!norm.Bias.IsEmpty) sd[name + ".b"] = ([norm.Bias.Length], norm.Bias.ToArray());
    }

    static float At(Linear lin, int i, int o) => lin.Weight.Span[WeightProcessor.Index(lin, i, o)];

    /// <summary>W as a row-major [d_in, d_out] array.</summary>
    static float[] Dense(Linear lin)
    {
        var w = new float[lin.DIn * lin.DOut];
        for (int i = 0; i < lin.DIn; i++)
            for (int o = 0; o < lin.DOut; o++) w[i * lin.DOut + o] = At(lin, i, o);
        return w;
    }

    static float[] BiasOf(Linear lin) => lin.Bias.IsEmpty ? new float[lin.DOut] : lin.Bias.ToArray();
}
