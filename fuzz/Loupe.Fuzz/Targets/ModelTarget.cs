using Loupe.Fuzz.Engine;
using Loupe.Models;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>ModelLoader.LoadFolder</c> on config.json + model.safetensors (+ tokenizer.json; TransformerLens folders: a .pth), then one forward pass:
/// a load that succeeds must give finite logits (a NaN weight or a NaN-producing config value must be refused at load).
/// </summary>
public sealed class ModelTarget : FuzzTarget
{
    public override string Name => "model";
    public override int DefaultIterations => 1000;
    public override TimeSpan Timeout => TimeSpan.FromSeconds(10);

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var seeds = new List<Seed>();
        foreach (var family in new[] { "gpt2", "gpt_neox", "gpt_neo", "llama", "llama3", "qwen2", "qwen3", "gemma2", "gemma3", "bert" })
            seeds.Add(SeedFiles.FromFolder($"repo:tests/data/reference/{family}", context.Repo($"tests/data/reference/{family}"), "config.json", "model.safetensors"));
        // Phi-3 with partial rotary, LongRoPE and a sliding window (fused q/k/v and gate/up)
        seeds.Add(SeedFiles.FromFolder("repo:tests/data/phi3-longrope", context.Repo("tests/data/phi3-longrope"), "config.json", "model.safetensors"));
        // TransformerLens's own runs: a NeelNanda config with a shortformer, a HookedTransformerConfig with LNPre (torch.save weights)
        seeds.Add(SeedFiles.FromFolder("repo:tests/data/transformer_lens/shortformer-attn-only-2l", context.Repo("tests/data/transformer_lens/shortformer-attn-only-2l"), "config.json", "model_final.pth"));
        seeds.Add(SeedFiles.FromFolder("repo:tests/data/transformer_lens/gelu-2l-lnpre", context.Repo("tests/data/transformer_lens/gelu-2l-lnpre"), "config.json", "model.pth"));
        seeds.Add(SeedFiles.FromFolder("repo:tests/data/transformer_lens/solu-2l", context.Repo("tests/data/transformer_lens/solu-2l"), "config.json", "model_final.pth"));
        foreach (var model in new[] { "stories260K", "induction-attn-only-2l", "addition-5digit-1l" })
            if (context.Shared($"models/{model}") is { } folder)
                seeds.Add(SeedFiles.FromFolder($"shared:models/{model}", folder, "config.json", "model.safetensors", "tokenizer.json"));
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input) => LoadAndRun(folder);

    /// <summary>Loads the model folder and runs it: finite logits required, the tokenizer (if any) exercised.</summary>
    public static void LoadAndRun(string folder)
    {
        using var model = ModelLoader.LoadFolder(folder);
        int vocab = model.Config.DVocab, n = Math.Clamp(model.Config.NCtx, 1, 3);
        var ids = Enumerable.Range(1, n).Select(i => i % Math.Max(1, vocab)).ToArray();
        var logits = model.Run(ids).Logits;
        Require.Finite(logits.Span, $"logits of tokens [{string.Join(",", ids)}]");
        if (model.Tokenizer is { } tokenizer)
        {
            var encoded = tokenizer.Encode("Once upon a time");
            _ = tokenizer.Decode(encoded);
        }
    }
}
