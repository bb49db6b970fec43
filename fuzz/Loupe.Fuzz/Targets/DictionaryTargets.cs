using Loupe.Dictionaries.Sae;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;

namespace Loupe.Fuzz.Targets;

/// <summary>Encoding and decoding with a loaded dictionary must give finite values.</summary>
static class DictionaryChecks
{
    public static void EncodeDecode(SparseDictionary dict)
    {
        var s = dict.Shape;
        const int batch = 2;
        var x = SeedFiles.Floats(s.DIn * batch, 9, 2f);
        var acts = dict.Encode(x, batch);
        Require.Finite(acts, "encoded activations");
        var recon = new float[s.DOut * batch];
        dict.Decode(acts, x, batch, recon);
        Require.Finite(recon, "reconstruction");
    }

    public static SparseDictionary Make(SaeShape shape, SaeActivation activation, int seed)
    {
        var dict = new SparseDictionary(shape, activation);
        dict.Initialize(seed, decoderNorm: 1f, initThreshold: 0.05f);
        return dict;
    }
}

/// <summary><c>SaeLensFormat.Load</c> on cfg.json + sae_weights.safetensors (SAEs and transcoders of every architecture), then encode/decode.</summary>
public sealed class SaeLensTarget : FuzzTarget
{
    public override string Name => "saelens";
    public override int DefaultIterations => 2500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var seeds = new List<Seed>();
        var resid = new SaeLensConfig { HookName = "blocks.0.hook_resid_post", HookLayer = 0, ModelName = "fuzz" };
        var cases = new (string Id, SparseDictionary Dict, SaeLensConfig Template)[]
        {
            ("standard", DictionaryChecks.Make(SaeShape.Sae(16, 32), new ReluActivation(), 1), resid),
            ("topk", DictionaryChecks.Make(SaeShape.Sae(16, 32), new TopKActivation(4), 2), resid),
            ("jumprelu", DictionaryChecks.Make(SaeShape.Sae(16, 32, applyBDecToInput: false), new JumpReluActivation(), 3), resid),
            ("transcoder", DictionaryChecks.Make(SaeShape.Transcoder(16, 32, 12), new ReluActivation(), 4),
                resid with { HookName = "blocks.0.ln2.hook_normalized", HookNameOut = "blocks.0.hook_mlp_out" }),
            ("skip-transcoder", DictionaryChecks.Make(SaeShape.Transcoder(16, 24, 16, skip: true), new TopKActivation(3), 5),
                resid with { HookName = "blocks.0.ln2.hook_normalized", HookNameOut = "blocks.0.hook_mlp_out" }),
        };
        foreach (var (id, dict, template) in cases)
        {
            var folder = Path.Combine(context.Scratch, "saelens", id);
            SaeLensFormat.Save(folder, dict, template);
            seeds.Add(SeedFiles.FromFolder($"generated:saelens-{id}", folder, SaeLensFormat.ConfigFile, SaeLensFormat.WeightsFile));
        }
        // a Matryoshka training checkpoint: architecture matryoshka_batchtopk with k, topk_threshold and matryoshka_widths
        var matryoshka = DictionaryChecks.Make(SaeShape.Sae(16, 32), new MatryoshkaBatchTopKActivation(4, [4, 12, 32]), 6);
        matryoshka.P.Threshold[0] = 0.2f;
        var matryoshkaFolder = Path.Combine(context.Scratch, "saelens", "matryoshka-training");
        SaeLensFormat.Save(matryoshkaFolder, matryoshka, resid, trainingCheckpoint: true);
        seeds.Add(SeedFiles.FromFolder("generated:saelens-matryoshka-training", matryoshkaFolder, SaeLensFormat.ConfigFile, SaeLensFormat.WeightsFile));
        // a gated SAE (b_gate, b_mag, r_mag instead of b_enc), as SAELens 6 saves one
        seeds.Add(SeedFiles.FromFolder("repo:tests/data/saelens/gated", context.Repo("tests/data/saelens/gated"), SaeLensFormat.ConfigFile, SaeLensFormat.WeightsFile));
        if (context.Shared("fixtures/attribution/transcoders/layer_0") is { } tc)
            seeds.Add(SeedFiles.FromFolder("shared:fixtures/attribution/transcoders/layer_0", tc, SaeLensFormat.ConfigFile, SaeLensFormat.WeightsFile));
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input) => DictionaryChecks.EncodeDecode(SaeLensFormat.Load(folder).Dictionary);
}

/// <summary><c>Npy.ReadFloat32</c> (from bytes and from a stream) on .npy files.</summary>
public sealed class NpyTarget : FuzzTarget
{
    public override string Name => "npy";
    public override int DefaultIterations => 3000;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var f8 = new byte[8 * 6];
        for (int i = 0; i < 6; i++) BitConverter.TryWriteBytes(f8.AsSpan(8 * i), i * 0.5);
        var f2 = new byte[2 * 4];
        for (int i = 0; i < 4; i++) BitConverter.TryWriteBytes(f2.AsSpan(2 * i), (Half)(i - 1.5f));
        (string Id, byte[] Bytes)[] files =
        [
            ("f4-1d", NpyMutators.Write(SeedFiles.Floats(16, 1), 16)),
            ("f4-2d", NpyMutators.Write(SeedFiles.Floats(32, 2), 8, 4)),
            ("f4-3d", NpyMutators.Write(SeedFiles.Floats(24, 3), 2, 3, 4)),
            ("f4-empty", NpyMutators.Write([], 0)),
            ("f4-scalar", NpyMutators.WriteRaw(BitConverter.GetBytes(1.5f), "<f4", [], "()")),
            ("f8-2d", NpyMutators.WriteRaw(f8, "<f8", [2, 3])),
            ("f2-1d", NpyMutators.WriteRaw(f2, "<f2", [4])),
        ];
        return [.. files.Select(f => new Seed($"generated:npy-{f.Id}", [new SeedFile("array.npy", f.Bytes, FileKind.Npy)]))];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var path = Path.Combine(folder, "array.npy");
        var fromBytes = Npy.ReadFloat32(File.ReadAllBytes(path), path, out var header);
        Require.That(fromBytes.LongLength == header.ElementCount, $"{fromBytes.Length} values read for shape {header.ShapeText}");
        using var stream = File.OpenRead(path);
        var fromStream = Npy.ReadFloat32(stream, path, out _);
        Require.That(fromStream.AsSpan().SequenceEqual(fromBytes), "reading from a stream and from bytes disagree");
    }
}

/// <summary>
/// <c>GemmaScopeFormat.Load</c> on params.npz (W_enc, W_dec, b_enc, b_dec, threshold), and <c>DictionaryFile.Load</c> on Gemma
/// Scope 2 folders (params.safetensors with w_enc, w_dec, b_enc, b_dec, threshold, affine_skip_connection + config.json with
/// Hugging Face module names as hooks); then encode/decode.
/// </summary>
public sealed class GemmaScopeTarget : FuzzTarget
{
    public override string Name => "gemmascope";
    public override int DefaultIterations => 2500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        const int dIn = 16, dSae = 32;
        var threshold = SeedFiles.Floats(dSae, 5, 0.1f).Select(MathF.Abs).ToArray();
        var members = new (string, byte[])[]
        {
            ("W_enc.npy", NpyMutators.Write(SeedFiles.Floats(dIn * dSae, 1), dIn, dSae)),
            ("W_dec.npy", NpyMutators.Write(SeedFiles.Floats(dSae * dIn, 2), dSae, dIn)),
            ("b_enc.npy", NpyMutators.Write(SeedFiles.Floats(dSae, 3, 0.1f), dSae)),
            ("b_dec.npy", NpyMutators.Write(SeedFiles.Floats(dIn, 4, 0.1f), dIn)),
            ("threshold.npy", NpyMutators.Write(threshold, dSae)),
        };
        return
        [
            new("generated:gemmascope-stored", [new SeedFile("params.npz", NpyMutators.Zip(members), FileKind.Npz)]),
            new("generated:gemmascope-deflated", [new SeedFile("params.npz", NpyMutators.Zip(members, compress: true), FileKind.Npz)]),
            GemmaScope2(context, "gemmascope2-sae", dIn, dSae, dIn, affine: false, "model.layers.3.output", null),
            GemmaScope2(context, "gemmascope2-affine-transcoder", dIn, dSae, dIn, affine: true,
                "model.layers.5.pre_feedforward_layernorm.output", "model.layers.5.post_feedforward_layernorm.output"),
        ];
    }

    /// <summary>A Gemma Scope 2 folder: params.safetensors (w_enc [d_in, d_sae] …) and config.json as the release writes them.</summary>
    internal static Seed GemmaScope2(SeedContext context, string id, int dIn, int dSae, int dOut, bool affine, string hookIn, string? hookOut)
    {
        string folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "gemmascope2", id)).FullName;
        var tensors = new List<(string, int[], ReadOnlyMemory<float>)>
        {
            ("w_enc", [dIn, dSae], SeedFiles.Floats(dIn * dSae, 11)), ("w_dec", [dSae, dOut], SeedFiles.Floats(dSae * dOut, 12)),
            ("b_enc", [dSae], SeedFiles.Floats(dSae, 13, 0.1f)), ("b_dec", [dOut], SeedFiles.Floats(dOut, 14, 0.1f)),
            ("threshold", [dSae], SeedFiles.Floats(dSae, 15, 0.1f).Select(MathF.Abs).ToArray()),
        };
        if (affine) tensors.Add(("affine_skip_connection", [dIn, dOut], SeedFiles.Floats(dIn * dOut, 16)));
        Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(folder, "params.safetensors"), tensors);
        File.WriteAllText(Path.Combine(folder, "config.json"), System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["hf_hook_point_in"] = hookIn, ["hf_hook_point_out"] = hookOut ?? hookIn, ["width"] = dSae, ["model_name"] = "google/gemma-3-fuzz",
            ["architecture"] = "jump_relu", ["l0"] = 8, ["affine_connection"] = affine, ["type"] = hookOut is null ? "sae" : "transcoder",
        }));
        return SeedFiles.AllOf($"generated:{id}", folder);
    }

    public override void Execute(string folder, FuzzInput input)
    {
        if (File.Exists(Path.Combine(folder, "params.npz")))
            DictionaryChecks.EncodeDecode(GemmaScopeFormat.Load(Path.Combine(folder, "params.npz"), "blocks.0.hook_resid_post").Dictionary);
        else
            DictionaryChecks.EncodeDecode(DictionaryFile.Load(folder).Dictionary);
    }
}

/// <summary>
/// <c>DictionaryFile.Load</c> on EleutherAI sparsify folders (cfg.json with d_in, num_latents, k, transcode, skip_connection
/// + sae.safetensors with encoder.weight, encoder.bias, W_dec, b_dec, W_skip), then encode/decode.
/// </summary>
public sealed class SparsifyTarget : FuzzTarget
{
    public override string Name => "sparsify";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        Seed Folder(string id, int dIn, int dSae, int k, bool transcode, bool skip)
        {
            string folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "sparsify", id)).FullName;
            var tensors = new List<(string, int[], ReadOnlyMemory<float>)>
            {
                ("encoder.weight", [dSae, dIn], SeedFiles.Floats(dSae * dIn, 21)), ("encoder.bias", [dSae], SeedFiles.Floats(dSae, 22, 0.1f)),
                ("W_dec", [dSae, dIn], SeedFiles.Floats(dSae * dIn, 23)), ("b_dec", [dIn], SeedFiles.Floats(dIn, 24, 0.1f)),
            };
            if (skip) tensors.Add(("W_skip", [dIn, dIn], SeedFiles.Floats(dIn * dIn, 25, 0.1f)));
            Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(folder, SparsifyFormat.WeightsFile), tensors);
            File.WriteAllText(Path.Combine(folder, SparsifyFormat.ConfigFile), System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["activation"] = "topk", ["expansion_factor"] = 32, ["normalize_decoder"] = true, ["num_latents"] = dSae, ["k"] = k,
                ["multi_topk"] = false, ["skip_connection"] = skip, ["transcode"] = transcode, ["d_in"] = dIn,
            }));
            return SeedFiles.AllOf($"generated:sparsify-{id}", folder);
        }
        return [Folder("sae", 16, 32, 4, transcode: false, skip: false), Folder("skip-transcoder", 16, 24, 3, transcode: true, skip: true)];
    }

    public override void Execute(string folder, FuzzInput input) => DictionaryChecks.EncodeDecode(DictionaryFile.Load(folder).Dictionary);
}

/// <summary>
/// <c>DictionaryFile.Load</c> on saprmarks/dictionary_learning trainer folders (ae.pt, a torch.save state dict, + config.json
/// with trainer.dict_class, activation_dim, dict_size, k, submodule_name), then encode/decode: every class Loupe reads.
/// </summary>
public sealed class DictionaryLearningTarget : FuzzTarget
{
    public override string Name => "dictionary-learning";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string root = context.Repo("tests/data/pytorch/dictionary_learning");
        return [.. new[] { "standard", "new", "topk", "batch_topk", "matryoshka", "jumprelu", "gated" }
            .Select(name => SeedFiles.AllOf($"repo:tests/data/pytorch/dictionary_learning/{name}", Path.Combine(root, name)))];
    }

    public override void Execute(string folder, FuzzInput input) => DictionaryChecks.EncodeDecode(DictionaryFile.Load(folder).Dictionary);
}

/// <summary>
/// <c>CrosscoderFiles.Load</c> on crosscoder folders (dictionary_learning's trainer folder and hub layout, BatchTopK with its
/// code normalisation, encoder_layers, torch.compile'd names; Kissane's {N}.pt + {N}_cfg.json), then encode/decode by source
/// and the decoder diff.
/// </summary>
public sealed class CrosscoderTarget : FuzzTarget
{
    public override string Name => "crosscoder";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string root = context.Repo("tests/data/crosscoders");
        return [.. new[] { "dl-relu", "dl-compiled", "dl-batchtopk-hub", "dl-batchtopk-sae", "dl-encoder-layers", "kissane" }
            .Select(name => SeedFiles.AllOf($"repo:tests/data/crosscoders/{name}", Path.Combine(root, name)))];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var cc = Loupe.Dictionaries.Crosscoders.CrosscoderFiles.Load(folder);
        const int rows = 2;
        var x = Enumerable.Range(0, cc.Sources.Count).Select(s => SeedFiles.Floats(rows * cc.Width, 9 + s, 2f)).ToArray();
        var latents = cc.Encode(x, rows);
        Require.Finite(latents, "encoded activations");
        foreach (var recon in cc.Decode(latents, rows)) Require.Finite(recon, "reconstruction");
        var diff = Loupe.Dictionaries.Crosscoders.CrosscoderDiff.Compute(cc);
        foreach (var l in diff.Latents)
            if (l.RelativeNorm is { } r && !(r >= 0 && r <= 1) || l.NormDiff is { } d && !(d >= 0 && d <= 1) || l.Cosine is { } c && !(c >= -1 && c <= 1))
                throw new InvalidOperationException($"latent {l.Index}: statistics out of range ({l.RelativeNorm}, {l.NormDiff}, {l.Cosine})");
    }
}
