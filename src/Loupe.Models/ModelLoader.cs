using Loupe.Models.Families;
using Loupe.Models.Loading;
using Loupe.Tensors.Backends;
using Loupe.Tokenizers;

namespace Loupe.Models;

/// <summary>
/// Loads a model from a local folder (config.json + *.safetensors + tokenizer files) or a hub id.
/// Weights stay memory-mapped; a family is chosen from config.json's model_type (or
/// <c>"format": "transformer_lens"</c>).
/// </summary>
public static class ModelLoader
{
    /// <summary>model_type values (config.json) this build can run.</summary>
    public static IReadOnlyList<string> SupportedModelTypes { get; } = ["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma2", "transformer_lens"];

    /// <summary>Loads from a local folder, or downloads a hub id into the HF cache first.</summary>
    public static async Task<HookedTransformer> LoadAsync(string modelIdOrPath, IProgress<DownloadProgress>? progress = null,
        IComputeBackend? backend = null, CancellationToken ct = default)
    {
        string folder = Directory.Exists(modelIdOrPath) ? modelIdOrPath : await new HubClient().ResolveAsync(modelIdOrPath, progress: progress, ct: ct);
        return LoadFolder(folder, backend);
    }

    /// <summary>Loads from a local folder only (never touches the network).</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="NotSupportedException">The config names an architecture Loupe does not run.</exception>
    /// <exception cref="InvalidDataException">The config or weights are malformed, missing or of the wrong shape.</exception>
    public static HookedTransformer LoadFolder(string folder, IComputeBackend? backend = null)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"model folder not found: {folder}");
        var config = HfConfig.Load(Path.Combine(folder, "config.json"));
        string modelType = config.String("format") == "transformer_lens" ? "transformer_lens"
            : config.String("model_type") ?? throw config.Missing("model_type", "the architecture, e.g. \"llama\"");
        if (!SupportedModelTypes.Contains(modelType))
            throw new NotSupportedException($"{config.Path}: model_type '{modelType}' is not supported; supported: {string.Join(", ", SupportedModelTypes)}");
        var weights = new WeightSource(SafeTensorsCheckpoint.Open(folder), folder);
        try
        {
            HookedTransformer model = modelType switch
            {
                "gpt2" => Gpt2Model.Load(config, weights, backend),
                "gpt_neox" => GptNeoXModel.Load(config, weights, backend),
                "gemma2" => Gemma2Model.Load(config, weights, backend),
                "transformer_lens" => TransformerLensModel.Load(config, weights, backend),
                _ => LlamaModel.Load(modelType, config, weights, backend),
            };
            model.WeightOwner = weights;
            model.Source = folder;
            model.Tokenizer = LoadTokenizer(folder);
            return model;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    static ITokenizer? LoadTokenizer(string folder) =>
        File.Exists(Path.Combine(folder, "tokenizer.json")) || File.Exists(Path.Combine(folder, "vocab.json"))
            ? TokenizerLoader.FromFolder(folder)
            : null;
}
