using System.Globalization;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>MlpReplacements.Load</c>, what <c>loupe attribute --transcoders</c> reads: cross-layer transcoders in Loupe's layout
/// (cfg.json + clt_weights.safetensors) and circuit-tracer's (W_enc_ℓ / W_dec_ℓ.safetensors + config.yaml), circuit-tracer's
/// per-layer transcoders (layer_ℓ.safetensors), a circuit-tracer config.yaml listing one file per layer (Gemma Scope .npz,
/// Gemma Scope 2 params.safetensors) and SAELens per-layer folders; then every layer encoded and reconstructed
/// with finite results. Each seed's n_layers.txt (not mutated) gives the model's layer count the loader is told.
/// </summary>
public sealed class TranscoderTarget : FuzzTarget
{
    public override string Name => "transcoders";
    public override int DefaultIterations => 2500;

    const int Layers = 2, DModel = 8, DSae = 16;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var seeds = new List<Seed>();
        string Folder(string id) => Directory.CreateDirectory(Path.Combine(context.Scratch, "transcoders", id)).FullName;
        void Add(string id, string folder) => seeds.Add(WithLayers(SeedFiles.AllOf($"generated:{id}", folder), Layers));

        foreach (var (id, activation) in new (string, SaeActivation)[]
                 { ("relu", new ReluActivation()), ("jumprelu", new JumpReluActivation()), ("topk", new TopKActivation(3)), ("batchtopk", new BatchTopKActivation(3)) })
        {
            var clt = Clt(activation, id.Length);
            CltFiles.Save(Folder($"clt-loupe-{id}"), clt, new Dictionary<string, string> { ["model"] = "fuzz" });
            Add($"clt-loupe-{id}", Folder($"clt-loupe-{id}"));
            if (activation is not TopKActivation)
            {
                CltFiles.SaveCircuitTracer(Folder($"clt-circuit-tracer-{id}"), clt, "fuzz");
                Add($"clt-circuit-tracer-{id}", Folder($"clt-circuit-tracer-{id}"));
            }
        }
        // Gemma Scope 2's CLT layout: params_layer_ℓ.safetensors, w_dec [d_sae, L, d] with every slot, an affine skip path.
        string gs2Folder = Folder("clt-gemma-scope-2");
        var gs2Clt = Clt(new JumpReluActivation(), 9);
        for (int l = 0; l < Layers; l++)
        {
            var wDec = new float[DSae * Layers * DModel];
            for (int f = 0; f < DSae; f++)
                for (int t = l; t < Layers; t++)
                    gs2Clt.P.WDec[l].AsSpan(gs2Clt.DecoderOffset(l, f, t), DModel).CopyTo(wDec.AsSpan((f * Layers + t) * DModel, DModel));
            Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(gs2Folder, $"params_layer_{l}.safetensors"), new List<(string, int[], ReadOnlyMemory<float>)>
            {
                ("w_enc", [DModel, DSae], gs2Clt.P.WEnc[l]), ("w_dec", [DSae, Layers, DModel], wDec), ("b_enc", [DSae], gs2Clt.P.BEnc[l]),
                ("b_dec", [DModel], gs2Clt.P.BDec[l]), ("threshold", [DSae], Enumerable.Repeat(0.05f, DSae).ToArray()),
                ("affine_skip_connection", [DModel, DModel], SeedFiles.Floats(DModel * DModel, 60 + l, 0.2f)),
            });
        }
        Add("clt-gemma-scope-2", gs2Folder);

        var perLayer = new CircuitTracerTranscoders([DictionaryChecks.Make(SaeShape.Transcoder(DModel, DSae, DModel), new ReluActivation(), 7),
            DictionaryChecks.Make(SaeShape.Transcoder(DModel, DSae, DModel, skip: true), new ReluActivation(), 8)]);
        perLayer.Save(Folder("plt-circuit-tracer"), "fuzz");
        Add("plt-circuit-tracer", Folder("plt-circuit-tracer"));
        seeds.Add(WithLayers(SeedFiles.AllOf("repo:tests/data/attribution/transcoders", context.Repo("tests/data/attribution/transcoders")), 3));

        // circuit-tracer's listed layout: config.yaml naming one file per layer — a Gemma Scope params.npz, a Gemma Scope 2
        // affine transcoder — as its presets publish them.
        string listed = Folder("listed");
        var npz = new (string, byte[])[]
        {
            ("W_enc.npy", NpyMutators.Write(SeedFiles.Floats(DModel * DSae, 21), DModel, DSae)),
            ("W_dec.npy", NpyMutators.Write(SeedFiles.Floats(DSae * DModel, 22), DSae, DModel)),
            ("b_enc.npy", NpyMutators.Write(SeedFiles.Floats(DSae, 23, 0.1f), DSae)),
            ("b_dec.npy", NpyMutators.Write(SeedFiles.Floats(DModel, 24, 0.1f), DModel)),
            ("threshold.npy", NpyMutators.Write(SeedFiles.Floats(DSae, 25, 0.1f).Select(MathF.Abs).ToArray(), DSae)),
        };
        Directory.CreateDirectory(Path.Combine(listed, "gemma-scope"));
        File.WriteAllBytes(Path.Combine(listed, "gemma-scope", "params.npz"), NpyMutators.Zip(npz));
        var gs2 = GemmaScopeTarget.GemmaScope2(context, "listed-layer-1", DModel, DSae, DModel, affine: true,
            "model.layers.1.pre_feedforward_layernorm.output", "model.layers.1.post_feedforward_layernorm.output");
        foreach (var f in gs2.Files) File.WriteAllBytes(Path.Combine(Directory.CreateDirectory(Path.Combine(listed, "layer_1")).FullName, f.Name), f.Bytes);
        File.WriteAllText(Path.Combine(listed, "config.yaml"),
            "model_kind: transcoder_set\nfeature_input_hook: \"mlp.hook_in\"\nfeature_output_hook: \"mlp.hook_out\"\ntranscoders:\n" +
            "  - \"gemma-scope/params.npz\"\n  - layer_1/params.safetensors\n");
        Add("listed", listed);
        return seeds;
    }

    static Seed WithLayers(Seed seed, int layers) =>
        seed with { Files = [.. seed.Files, new SeedFile("n_layers.txt", System.Text.Encoding.UTF8.GetBytes(layers.ToString(CultureInfo.InvariantCulture)), FileKind.Text, Mutable: false)] };

    static CrossLayerTranscoder Clt(SaeActivation activation, int seed)
    {
        var clt = new CrossLayerTranscoder(new CltShape(Layers, DModel, DSae, DModel), activation);
        int s = seed * 10;
        for (int l = 0; l < Layers; l++)
        {
            SeedFiles.Floats(clt.P.WEnc[l].Length, s++).CopyTo(clt.P.WEnc[l], 0);
            SeedFiles.Floats(clt.P.BEnc[l].Length, s++, 0.1f).CopyTo(clt.P.BEnc[l], 0);
            SeedFiles.Floats(clt.P.WDec[l].Length, s++).CopyTo(clt.P.WDec[l], 0);
            SeedFiles.Floats(clt.P.BDec[l].Length, s++, 0.1f).CopyTo(clt.P.BDec[l], 0);
            Array.Fill(clt.P.Act[l].LogThreshold, MathF.Log(0.05f));
            Array.Fill(clt.P.Act[l].Threshold, 0.05f);
        }
        return clt;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        int layers = int.Parse(File.ReadAllText(Path.Combine(folder, "n_layers.txt")), CultureInfo.InvariantCulture);
        if (GemmaScope2Clt.IsFolder(folder))
        {
            // Read mapped only (its decoders hold every slot): every feature's rows and the fingerprint read and checked.
            using var clt = (MappedCrossLayerTranscoder)MlpReplacements.Load(folder, layers);
            Exercise(clt, layers);
            var row = new float[clt.DOut];
            for (int l = 0; l < clt.Layers; l++)
                for (int f = 0; f < clt.Features(l); f++) clt.DecoderDirection(l, f, l, row);
            _ = clt.Fingerprint;
            return;
        }
        // A CLT, and circuit-tracer's per-layer files, also load with their decoders mapped: a corrupt decoder is refused when its
        // feature is decoded rather than at load, so that path runs first, on its own; where both load they must be the same
        // function and fingerprint.
        float[][]? mappedRecon = null;
        string? mappedFingerprint = null;
        if (File.Exists(Path.Combine(folder, "W_enc_0.safetensors")) || File.Exists(Path.Combine(folder, CltFiles.WeightsFile))
            || File.Exists(Path.Combine(folder, "layer_0.safetensors")))
        {
            try
            {
                var mapped = MlpReplacements.Load(folder, layers, decoders: DecoderStorage.Mapped);
                using var unmap = (IDisposable)mapped;
                mappedRecon = Exercise(mapped, layers);
                var row = new float[mapped.DOut];
                for (int l = 0; l < mapped.Layers; l++)
                    for (int f = 0; f < mapped.Features(l); f++)
                    {
                        mapped.DecoderDirection(l, f, mapped.LastTarget(l), row);
                        Require.Finite(row, $"decoder of feature {f} of layer {l}");
                    }
                mappedFingerprint = mapped.Fingerprint;
            }
            catch (InputError) { mappedRecon = null; }
        }
        var replacement = MlpReplacements.Load(folder, layers, decoders: DecoderStorage.Memory);
        var recon = Exercise(replacement, layers);
        if (mappedFingerprint is not null)
        {
            Require.That(mappedFingerprint == replacement.Fingerprint, $"mapped fingerprint {mappedFingerprint}, in memory {replacement.Fingerprint}");
            for (int t = 0; t < recon.Length; t++)
                for (int i = 0; i < recon[t].Length; i++)
                    Require.That(Math.Abs(recon[t][i] - mappedRecon![t][i]) <= 1e-4f * (1 + Math.Abs(recon[t][i])),
                        $"layer {t} reconstruction [{i}]: {recon[t][i]} in memory, {mappedRecon[t][i]} mapped");
        }
    }

    // Every layer encoded and reconstructed from the same inputs, with finite results; the reconstructions.
    static float[][] Exercise(IMlpReplacement replacement, int layers)
    {
        Require.That(replacement.Layers == layers, $"{replacement.Layers} layers loaded for a {layers}-layer model");
        const int rows = 2;
        var acts = new List<float[]>();
        var inputs = new List<float[]>();
        for (int l = 0; l < replacement.Layers; l++)
        {
            int features = replacement.Features(l);
            var x = SeedFiles.Floats(rows * replacement.DIn, 100 + l, 2f);
            var pre = new float[rows * features];
            var a = new float[rows * features];
            replacement.Encode(l, x, rows, pre, a);
            Require.Finite(pre, $"layer {l} pre-activations");
            Require.Finite(a, $"layer {l} activations");
            acts.Add(a);
            inputs.Add(x);
        }
        var recons = new float[replacement.Layers][];
        for (int t = 0; t < replacement.Layers; t++)
        {
            recons[t] = new float[rows * replacement.DOut];
            replacement.Reconstruct(t, acts, inputs, rows, recons[t]);
            Require.Finite(recons[t], $"layer {t} reconstruction");
        }
        return recons;
    }
}
