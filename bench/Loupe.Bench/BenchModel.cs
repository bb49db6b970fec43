namespace Loupe.Bench;

/// <summary>
/// A benchmark model: real architecture and shapes, random weights. Names and hyper-parameters
/// are TransformerLens's (<c>n_layers, d_model, n_heads, d_mlp, d_vocab, n_ctx</c>); the fixture
/// writer turns them into the family's Hugging Face config.json and tensor names.
/// </summary>
/// <param name="Name">Folder name in the fixture cache and the label in every table.</param>
/// <param name="ModelType">config.json model_type: <c>gpt2</c>, <c>gpt_neox</c> or <c>llama</c>.</param>
/// <param name="NLayers">Transformer blocks.</param>
/// <param name="DModel">Residual-stream width.</param>
/// <param name="NHeads">Query heads per attention layer.</param>
/// <param name="DMlp">MLP hidden width (per branch for Llama's SwiGLU).</param>
/// <param name="DVocab">Vocabulary size.</param>
/// <param name="NCtx">Context length (position table or rotary table size).</param>
/// <param name="Activation">The MLP nonlinearity as config.json names it.</param>
/// <param name="RotaryPct">Fraction of d_head that is rotated (GPT-NeoX only).</param>
/// <param name="NKvHeads">Key/value heads (Llama's grouped-query attention); 0 = as many as query heads.</param>
public sealed record BenchModel(
    string Name, string ModelType, int NLayers, int DModel, int NHeads, int DMlp, int DVocab, int NCtx,
    string Activation, double RotaryPct = 0, int NKvHeads = 0)
{
    public int DHead => DModel / NHeads;

    public int KvHeads => NKvHeads > 0 ? NKvHeads : NHeads;

    /// <summary>GPT-NeoX and Llama store every projection as nn.Linear <c>[d_out, d_in]</c>; GPT-2's Conv1D is <c>[d_in, d_out]</c>.</summary>
    public bool WeightsAreOutIn => ModelType is "gpt_neox" or "llama";

    /// <summary>GPT-2 small (124M): 12 layers, d_model 768, 12 heads, tied unembedding, gelu_new.</summary>
    public static BenchModel Gpt2Small { get; } = new("gpt2-small", "gpt2", 12, 768, 12, 3072, 50257, 1024, "gelu_new");

    /// <summary>Pythia-160m: GPT-NeoX, 12 layers, d_model 768, parallel residual, 25 % rotary, exact gelu, untied unembedding.</summary>
    public static BenchModel Pythia160m { get; } = new("pythia-160m", "gpt_neox", 12, 768, 12, 3072, 50304, 2048, "gelu", 0.25);

    /// <summary>The same two families at toy size for <c>--quick</c> (CI smoke run).</summary>
    public static BenchModel Gpt2Tiny { get; } = new("gpt2-tiny", "gpt2", 2, 128, 4, 512, 1024, 1024, "gelu_new");

    public static BenchModel PythiaTiny { get; } = new("pythia-tiny", "gpt_neox", 2, 128, 4, 512, 1024, 2048, "gelu", 0.25);

    /// <summary>
    /// The attribution bench's model: GPT-2-small-sized (12 layers, d_model 768, 12 query heads) in the Llama
    /// architecture — RMSNorm, rotary over all of d_head (θ 10000), SwiGLU d_mlp 2048, grouped-query attention
    /// with 4 key/value heads, 32000-token vocabulary, untied unembedding, n_ctx 4096.
    /// </summary>
    public static BenchModel LlamaSmall { get; } = new("llama-small", "llama", 12, 768, 12, 2048, 32000, 4096, "silu", NKvHeads: 4);

    /// <summary>The same at toy size for <c>attribution --quick</c>: 2 layers, d_model 128, 4 heads (2 key/value), n_ctx 512.</summary>
    public static BenchModel LlamaTiny { get; } = new("llama-tiny", "llama", 2, 128, 4, 344, 1024, 512, "silu", NKvHeads: 2);

    /// <summary>Every model the fixture writer knows (for <c>--models</c>).</summary>
    public static IReadOnlyList<BenchModel> All { get; } = [Gpt2Small, Pythia160m, Gpt2Tiny, PythiaTiny, LlamaSmall, LlamaTiny];

    public static IReadOnlyList<BenchModel> Defaults(bool quick) => quick ? [Gpt2Tiny, PythiaTiny] : [Gpt2Small, Pythia160m];
}
