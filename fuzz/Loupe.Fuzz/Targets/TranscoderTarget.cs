using System.Globalization;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Fuzz.Engine;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>MlpReplacements.Load</c>, what <c>loupe attribute --transcoders</c> reads: cross-layer transcoders in Loupe's layout
/// (cfg.json + clt_weights.safetensors) and circuit-tracer's (W_enc_ℓ / W_dec_ℓ.safetensors + config.yaml), circuit-tracer's
/// per-layer transcoders (layer_ℓ.safetensors) and SAELens per-layer folders; then every layer encoded and reconstructed
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
        var perLayer = new CircuitTracerTranscoders([DictionaryChecks.Make(SaeShape.Transcoder(DModel, DSae, DModel), new ReluActivation(), 7),
            DictionaryChecks.Make(SaeShape.Transcoder(DModel, DSae, DModel, skip: true), new ReluActivation(), 8)]);
        perLayer.Save(Folder("plt-circuit-tracer"), "fuzz");
        Add("plt-circuit-tracer", Folder("plt-circuit-tracer"));
        seeds.Add(WithLayers(SeedFiles.AllOf("repo:tests/data/attribution/transcoders", context.Repo("tests/data/attribution/transcoders")), 3));
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
        var replacement = MlpReplacements.Load(folder, layers);
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
        for (int t = 0; t < replacement.Layers; t++)
        {
            var recon = new float[rows * replacement.DOut];
            replacement.Reconstruct(t, acts, inputs, rows, recon);
            Require.Finite(recon, $"layer {t} reconstruction");
        }
    }
}
