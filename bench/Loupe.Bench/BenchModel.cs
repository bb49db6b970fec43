namespace Loupe.Bench;

/// <summary>
/// A benchmark model: real architecture and shapes, random weights. Names and hyper-parameters
/// are TransformerLens's (<c>n_layers, d_model, n_heads, d_mlp, d_vocab, n_ctx</c>); the fixture
/// writer turns them into the family's Hugging Face config.json and tensor names.
/// </summary>
/// <param name="Name">Folder name in the fixture cache and the label in every table.</param>
/// <param name="ModelType">config.json model_type: <c>gpt2</c> or <c>gpt_neox</c>.</param>
/// <param name="RotaryPct">Fraction of d_head that is rotated (GPT-NeoX only).</param>
public sealed record BenchModel(
    string Name, string ModelType, int NLayers, int DModel, int NHeads, int DMlp, int DVocab, int NCtx,
    string Activation, double RotaryPct = 0)
{
    public int DHead => DModel / NHeads;

    /// <summary>GPT-NeoX stores every projection as nn.Linear <c>[d_out, d_in]</c>; GPT-2's Conv1D is <c>[d_in, d_out]</c>.</summary>
    public bool WeightsAreOutIn => ModelType == "gpt_neox";

    /// <summary>GPT-2 small (124M): 12 layers, d_model 768, 12 heads, tied unembedding, gelu_new.</summary>
    public static BenchModel Gpt2Small { get; } = new("gpt2-small", "gpt2", 12, 768, 12, 3072, 50257, 1024, "gelu_new");

    /// <summary>Pythia-160m: GPT-NeoX, 12 layers, d_model 768, parallel residual, 25 % rotary, exact gelu, untied unembedding.</summary>
    public static BenchModel Pythia160m { get; } = new("pythia-160m", "gpt_neox", 12, 768, 12, 3072, 50304, 2048, "gelu", 0.25);

    /// <summary>The same two families at toy size for <c>--quick</c> (CI smoke run).</summary>
    public static BenchModel Gpt2Tiny { get; } = new("gpt2-tiny", "gpt2", 2, 128, 4, 512, 1024, 1024, "gelu_new");

    public static BenchModel PythiaTiny { get; } = new("pythia-tiny", "gpt_neox", 2, 128, 4, 512, 1024, 2048, "gelu", 0.25);

    public static IReadOnlyList<BenchModel> Defaults(bool quick) => quick ? [Gpt2Tiny, PythiaTiny] : [Gpt2Small, Pythia160m];
}
