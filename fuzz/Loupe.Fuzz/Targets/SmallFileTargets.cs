using Loupe.Circuits.Weights;
using Loupe.Explain;
using Loupe.Fuzz.Engine;
using Loupe.Models.Loading;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>AttentionWeights.FromGpt2Checkpoint</c>, what <c>loupe weights composition</c> reads from a GPT-2 checkpoint that may
/// hold only the attention layers (and config.json's n_head), then the composition report built from it: every score finite.
/// </summary>
public sealed class Gpt2AttentionTarget : FuzzTarget
{
    public override string Name => "gpt2-attention";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string gpt2 = context.Repo("tests/data/reference/gpt2");
        var seeds = new List<Seed> { SeedFiles.FromFolder("repo:tests/data/reference/gpt2", gpt2, "config.json", "model.safetensors") };
        // A partial checkpoint as a researcher saves one: attention, ln_1 and positions only, named without the fixture's "transformer." prefix.
        string partial = Directory.CreateDirectory(Path.Combine(context.Scratch, "gpt2-attention")).FullName;
        using (var full = SafeTensorsFile.Open(Path.Combine(gpt2, "model.safetensors")))
        {
            var kept = full.Names.Where(n => n.Contains(".attn.c_", StringComparison.Ordinal) || n.Contains(".ln_1.", StringComparison.Ordinal) || n.EndsWith("wpe.weight", StringComparison.Ordinal))
                .Select(n => (n["transformer.".Length..], full.GetInfo(n).Shape.Select(d => (int)d).ToArray(), (ReadOnlyMemory<float>)full.GetFloat32(n).ToArray())).ToList();
            SafeTensorsWriter.Write(Path.Combine(partial, "attention.safetensors"), kept);
        }
        File.Copy(Path.Combine(gpt2, "config.json"), Path.Combine(partial, "config.json"));
        seeds.Add(SeedFiles.FromFolder("generated:gpt2-attention-partial", partial, "config.json", "attention.safetensors"));
        return seeds;
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var weights = AttentionWeights.FromGpt2Checkpoint(folder);
        var report = CompositionReport.Build(weights, threshold: 0.6, partners: 3, positions: 16);
        foreach (var kind in new[] { CompositionKind.Q, CompositionKind.K, CompositionKind.V })
            foreach (var s in report.Scores.Of(kind)) Require.Finite(s, $"a {kind}-composition score");
        foreach (var head in report.PreviousTokenHeads) Require.Finite(head.PreviousTokenScore, $"{head.Head}'s previous-token score");
    }
}

/// <summary><c>PriceTable.Load</c>, the model price table <c>loupe explain</c> reads to report what a run costs.</summary>
public sealed class PriceTableTarget : FuzzTarget
{
    public override string Name => "price-table";
    public override int DefaultIterations => 1500;

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        string folder = Directory.CreateDirectory(Path.Combine(context.Scratch, "prices")).FullName;
        _ = PriceTable.Load(Path.Combine(folder, "prices.json")); // writes the default table
        return [SeedFiles.FromFolder("generated:price-table-default", folder, "prices.json")];
    }

    public override void Execute(string folder, FuzzInput input)
    {
        var table = PriceTable.Load(Path.Combine(folder, "prices.json"));
        foreach (var (model, price) in table.Prices)
        {
            Require.Finite(price.InputPerMillion, $"{model}'s input price");
            Require.Finite(price.OutputPerMillion, $"{model}'s output price");
        }
    }
}

/// <summary>
/// SAELens's registry (<c>pretrained_saes.yaml</c>, what <c>--sae saelens:RELEASE/SAE_ID</c> reads): <c>SaeLensRegistry.Read</c>,
/// then every release's every SAE id resolved to a hub path that names its repository.
/// </summary>
public sealed class SaeLensRegistryTarget : FuzzTarget
{
    public override string Name => "saelens-registry";
    public override int DefaultIterations => 1500;


    /// <summary>tests/data/saelens/pretrained_saes.yaml: SAELens's schema (null conversion, nested maps and lists beside the ids, quoted values, both list indents).</summary>
    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context) =>
        [new Seed("repo:tests/data/saelens/pretrained_saes.yaml", [new SeedFile("pretrained_saes.yaml", File.ReadAllBytes(context.Repo("tests/data/saelens/pretrained_saes.yaml")), FileKind.Text)])];

    public override void Execute(string folder, FuzzInput input)
    {
        var registry = Loupe.Dictionaries.Sae.SaeLensRegistry.Read(Path.Combine(folder, "pretrained_saes.yaml"));
        foreach (var name in registry.Releases)
        {
            var release = registry[name]!;
            Require.That(release.RepoId.Length > 0, $"release {name} without a repository was accepted");
            if (name.Length == 0 || name.Contains('/')) continue; // cannot be named as RELEASE/SAE_ID (SAELens's names have no '/')
            foreach (var (id, path) in release.Saes)
            {
                if (id.Length == 0) continue;
                var (spec, _, _) = registry.Resolve(name + "/" + id);
                Require.That(spec == $"hf:{release.RepoId}/{path.Trim('/')}", $"{name}/{id} resolved to {spec}");
            }
        }
    }
}
