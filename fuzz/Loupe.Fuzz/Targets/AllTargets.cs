using Loupe.Fuzz.Engine;

namespace Loupe.Fuzz.Targets;

/// <summary>Every parser the fuzzer knows, by name (the --parser values and the CI test cases).</summary>
public static class AllTargets
{
    public static IReadOnlyList<FuzzTarget> Create() =>
    [
        new SafeTensorsTarget(), new CheckpointTarget(), new ModelTarget(), new TokenizerJsonTarget(), new VocabMergesTarget(),
        new SaeLensTarget(), new NpyTarget(), new GemmaScopeTarget(), new HarvestTarget(), new FeatureStoreTarget(), new CliTarget(),
        new ChatTemplateTarget(), new OnnxTarget(), new GraphSafetensorsTarget(), new GraphJsonTarget(), new TranscoderTarget(), new VectorTarget(),
        new Gpt2AttentionTarget(), new PriceTableTarget(), new ResumeTarget(), new ServeTarget(), new ServedArtifactsTarget(), new McpTarget(),
        new TextSourceTarget(), new HubTarget(), new FeatureResumeTarget(), new TunedLensTarget(), new SaeLensRegistryTarget(), new SparsifyTarget(),
        new PyTorchTarget(), new DictionaryLearningTarget(), new CrosscoderTarget(), new ModelDiffTarget(),
    ];

    public static IReadOnlyList<string> Names { get; } = [.. Create().Select(t => t.Name)];

    public static FuzzTarget ByName(string name) =>
        Create().FirstOrDefault(t => t.Name == name) ?? throw new ArgumentException($"unknown parser '{name}'; known: {string.Join(", ", Names)}");
}
