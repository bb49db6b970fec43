using System.Net;

namespace Loupe.Serve;

/// <summary>How <c>loupe serve</c> listens and what it serves.</summary>
public sealed record ServeOptions
{
    /// <summary>The address to bind; loopback unless the user asks otherwise (any other address needs a token).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 = a free port chosen by the OS (tests).</summary>
    public int Port { get; init; } = 8765;
    /// <summary>The access token; null on loopback = none; null elsewhere = one is generated.</summary>
    public string? Token { get; init; }
    /// <summary>The folder whose graph/circuit/patching JSON files are listed and served by id; null = none.</summary>
    public string? GraphsDir { get; init; }
    /// <summary>The transcoders (as for <c>loupe intervene</c>) that let the Graph page ablate or scale features; null = no interventions.</summary>
    public string? TranscodersDir { get; init; }
    /// <summary>A tuned lens (as for <c>loupe lens --tuned</c>) the Prompt page shows beside the logit lens; null = none.</summary>
    public string? TunedLensPath { get; init; }

    /// <summary>Where a cross-layer transcoder's decoders are kept (<see cref="TranscodersDir"/>).</summary>
    public Loupe.Dictionaries.Transcoders.DecoderStorage Decoders { get; init; }

    /// <summary>With the model on a GPU, where a cross-layer transcoder's decoders go (<see cref="TranscodersDir"/>).</summary>
    public Loupe.Dictionaries.Transcoders.DeviceDecoders DeviceDecoders { get; init; }
    /// <summary>Feature stores (features.db files, or folders searched for them) the Features and Steering pages read; by id, never by path.</summary>
    public IReadOnlyList<string> FeatureStores { get; init; } = [];
    /// <summary>Crosscoders (folders or files <c>loupe crosscoder</c> reads) the Diff page shows; by id, never by path.</summary>
    public IReadOnlyList<string> Crosscoders { get; init; } = [];
    /// <summary>Model diffs (<c>loupe diff</c> output folders, or their diff.json) the Diff page shows; by id, never by path.</summary>
    public IReadOnlyList<string> ModelDiffs { get; init; } = [];
    /// <summary>The dictionary behind the feature stores when a store's recorded sae_path is not at hand (--sae).</summary>
    public string? SaePath { get; init; }
    /// <summary>Requests with a larger body are answered 413.</summary>
    public long MaxBodyBytes { get; init; } = 1 << 20;
    /// <summary>The longest prompt accepted, in tokens (also never more than the model's n_ctx).</summary>
    public int MaxPromptTokens { get; init; } = 256;
    /// <summary>The longest prompt text accepted, in characters (checked before tokenizing).</summary>
    public int MaxPromptChars { get; init; } = 4000;
    /// <summary>Jobs running at once; one more is refused with 429.</summary>
    public int MaxRunningJobs { get; init; } = 2;
    /// <summary>Requests waiting for the model at once; one more is answered 503 (the model runs one pass at a time).</summary>
    public int MaxQueuedModelRequests { get; init; } = 256;
    /// <summary>
    /// The head detection the Attention page shows (computed once, on its first request); null: the library's defaults
    /// (10 repeated-token sequences). Fewer, shorter sequences answer sooner where a forward pass is slow (the emulated device).
    /// </summary>
    public Loupe.Circuits.Heads.HeadDetectionSettings? HeadDetection { get; init; }

    /// <summary>Whether the OpenAI-compatible API (/v1) is served, beside the web app or alone.</summary>
    public OpenAiMode OpenAi { get; init; } = OpenAiMode.Off;
    /// <summary>The folder of steering/persona/monitor vectors and SAEs requests may name by id (OpenAI API); null = none.</summary>
    public string? VectorsDir { get; init; }
    /// <summary>The model id the OpenAI API answers to; null = the model folder's name.</summary>
    public string? ModelId { get; init; }

    public bool IsLoopback =>
        Host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || IPAddress.TryParse(Host, out var ip) && IPAddress.IsLoopback(ip);
}

/// <summary>Whether <c>loupe serve</c> answers the OpenAI-compatible API.</summary>
public enum OpenAiMode
{
    /// <summary>Only the web app and /api.</summary>
    Off,
    /// <summary>/v1 beside the web app (--openai).</summary>
    Beside,
    /// <summary>/v1 alone; every other path is 404 (--openai-only).</summary>
    Only,
}
