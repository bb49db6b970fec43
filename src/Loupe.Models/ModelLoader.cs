using Loupe.Models.Families;
using Loupe.Models.Loading;
using Loupe.Models.Processing;
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
    public static IReadOnlyList<string> SupportedModelTypes { get; } = ["gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "gemma3", "bert", "transformer_lens"];

    /// <summary>
    /// Loads from a local folder, or downloads a hub id into the HF cache first — a TransformerLens name such as
    /// <c>gpt2-small</c> or <c>pythia-70m</c> stands for its Hugging Face id (<see cref="TransformerLensNames"/>);
    /// <paramref name="processing"/> as in <see cref="LoadFolder"/>.
    /// </summary>
    /// <remarks><c>planned</c> hears what a download will fetch (files, bytes) before it starts (see <see cref="HubClient.ResolveAsync"/>).</remarks>
    public static async Task<HookedTransformer> LoadAsync(string modelIdOrPath, IProgress<DownloadProgress>? progress = null,
        IComputeBackend? backend = null, CancellationToken ct = default, WeightProcessing? processing = null, Action<HubPathListing>? planned = null)
    {
        ArgumentNullException.ThrowIfNull(modelIdOrPath);
        if (Directory.Exists(modelIdOrPath)) return LoadFolder(modelIdOrPath, backend, processing);
        using var hub = new HubClient();
        string folder = await hub.ResolveAsync(TransformerLensNames.HubIdFor(modelIdOrPath) ?? modelIdOrPath, progress: progress, ct: ct, planned: planned);
        var model = LoadFolder(folder, backend, processing);
        try
        {
            // TransformerLens configs (NeelNanda's toy models) name a tokenizer kept in its own repository.
            if (model.Tokenizer is null && model.Config.TokenizerName is { } repo && HubClient.IsValidRepoId(repo))
                model.Tokenizer = TokenizerLoader.FromFolder(await hub.ResolveTokenizerAsync(repo, progress: progress, ct: ct));
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }


    /// <summary>
    /// Loads from a local folder only (never touches the network). <paramref name="processing"/> (default none)
    /// applies TransformerLens's weight processing after the family loads; processed tensors become new host
    /// arrays, the rest stays memory-mapped; <see cref="HookedTransformer.Processing"/> records it.
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException">There is no config.json, or no safetensors weights.</exception>
    /// <exception cref="InputError">
    /// The config names an architecture Loupe does not run, a field is missing, mistyped or out of range, or the
    /// weights are malformed, missing, of the wrong shape or not finite (the message names the file, field or tensor),
    /// or a processing option is not exact for this model (the message names the option and why).
    /// </exception>
    public static HookedTransformer LoadFolder(string folder, IComputeBackend? backend = null, WeightProcessing? processing = null)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"model folder not found: {folder}");
        var config = HfConfig.Load(Path.Combine(folder, "config.json"));
        string modelType = ModelTypeOf(config);
        // A folder with only model.onnx (a BERT export) reads weights converted once into a cache folder.
        string weightsPath = modelType == "transformer_lens" ? TransformerLensModel.WeightsPath(folder) : OnnxBertWeights.WeightsFolder(folder);
        var weights = new WeightSource(SafeTensorsCheckpoint.Open(weightsPath), folder);
        try
        {
            HookedTransformer model = modelType switch
            {
                "gpt2" => Gpt2Model.Load(config, weights, backend),
                "gpt_neox" => GptNeoXModel.Load(config, weights, backend),
                "gpt_neo" => GptNeoModel.Load(config, weights, backend),
                "gemma2" => Gemma2Model.Load(config, weights, backend),
                "gemma3_text" => Gemma2Model.Load(config, weights, backend, gemma3: true),
                "gemma3" => Gemma3LanguageModel(config, ref weights, backend),
                "transformer_lens" => TransformerLensModel.Load(config, weights, backend),
                "bert" => BertModel.Load(config, weights, backend),
                _ => LlamaModel.Load(modelType, config, weights, backend),
            };
            model.WeightOwner = weights;
            model.Source = folder;
            model.Tokenizer = LoadTokenizer(folder);
            if (processing is { IsNone: false }) WeightProcessor.Apply(model, processing);
            return model;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The language model inside a Gemma3ForConditionalGeneration checkpoint: config.json's <c>text_config</c> with
    /// Gemma3TextConfig's defaults for the fields it leaves out, and the decoder's tensors under
    /// <c>language_model.model.</c> (transformers 4.50–4.51) or <c>model.language_model.</c> (later); the vision tower and
    /// projector are not loaded. On text this is what Gemma3ForConditionalGeneration computes.
    /// </summary>
    static HookedTransformer Gemma3LanguageModel(HfConfig config, ref WeightSource weights, IComputeBackend? backend)
    {
        var text = config.Section("text_config", Gemma3TextDefaults);
        if (text.String("model_type") is { } inner && inner != "gemma3_text")
            throw text.Invalid("model_type", $"expected gemma3_text inside a gemma3 checkpoint, found '{inner}'");
        weights = weights.WithPrefixes(("language_model.model.", "model."), ("model.language_model.", "model."),
            ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."));
        if (!weights.Contains("model.embed_tokens.weight"))
            throw new InputError($"{weights.Where}: no language-model tensors (language_model.model.* or model.language_model.*) in this gemma3 checkpoint");
        return Gemma2Model.Load(text, weights, backend, gemma3: true);
    }

    /// <summary>transformers' Gemma3TextConfig defaults (4.50+), for the fields a multimodal checkpoint's text_config omits.</summary>
    static readonly IReadOnlyDictionary<string, object?> Gemma3TextDefaults = new Dictionary<string, object?>
    {
        ["model_type"] = "gemma3_text",
        ["vocab_size"] = 262_208,
        ["hidden_size"] = 2304,
        ["intermediate_size"] = 9216,
        ["num_hidden_layers"] = 26,
        ["num_attention_heads"] = 8,
        ["num_key_value_heads"] = 4,
        ["head_dim"] = 256,
        ["hidden_activation"] = "gelu_pytorch_tanh",
        ["max_position_embeddings"] = 131_072,
        ["rms_norm_eps"] = 1e-6,
        ["rope_theta"] = 1_000_000.0,
        ["rope_local_base_freq"] = 10_000.0,
        ["query_pre_attn_scalar"] = 256,
        ["sliding_window"] = 4096,
        ["sliding_window_pattern"] = 6,
        ["final_logit_softcapping"] = null,
        ["attn_logit_softcapping"] = null,
        ["bos_token_id"] = 2,
        ["eos_token_id"] = 1,
        ["pad_token_id"] = 0,
    };

    /// <summary>The family to run: "transformer_lens" for TL checkpoints, else config.json's model_type.</summary>
    static string ModelTypeOf(HfConfig config)
    {
        if (config.String("format") == "transformer_lens" || IsNeelToyModelConfig(config)) return "transformer_lens";
        string supported = string.Join(", ", SupportedModelTypes);
        string? modelType = config.String("model_type");
        if (modelType is null)
        {
            string architectures = config.Element("architectures") is { ValueKind: System.Text.Json.JsonValueKind.Array } a
                ? $" (architectures: {a.GetRawText()})" : "";
            throw new InputError($"{config.Path}: model_type: expected one of {supported}, found no model_type field{architectures}");
        }
        if (!SupportedModelTypes.Contains(modelType))
            throw new InputError($"{config.Path}: model_type: expected one of {supported}, found {InputError.Show(modelType)} (not supported)");
        return modelType;
    }

    /// <summary>
    /// A config.json as NeelNanda's toy models (gelu-1l, attn-only-2l, …) publish it: HookedTransformerConfig-style fields
    /// (n_layers, d_model, d_head, n_heads, d_vocab, act_fn, attn_only) and no model_type.
    /// </summary>
    static bool IsNeelToyModelConfig(HfConfig config) =>
        !config.Has("model_type") && new[] { "n_layers", "d_model", "d_head", "n_heads", "d_vocab", "n_ctx" }.All(config.Has)
        && (config.Has("act_fn") || config.Has("attn_only"));

    static ITokenizer? LoadTokenizer(string folder) =>
        File.Exists(Path.Combine(folder, "tokenizer.json")) || File.Exists(Path.Combine(folder, "vocab.json")) || File.Exists(Path.Combine(folder, "vocab.txt"))
            ? TokenizerLoader.FromFolder(folder)
            : null;
}
