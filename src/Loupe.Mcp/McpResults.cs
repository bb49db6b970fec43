namespace Loupe.Mcp;

// The tools' outputs: plain records, serialised to JSON for the client (camelCase). Doubles that can be
// undefined (an empty mean) are nullable, since JSON has no NaN.

/// <summary>A hook point: its name, block (−1 outside blocks), axes and the sizes the model fixes (null where the run does).</summary>
public sealed record HookInfo(string Name, int Layer, IReadOnlyList<string> Axes, IReadOnlyList<int?> Sizes);

/// <summary>What <c>model_info</c> returns; <c>Device</c> and <c>Backend</c> say where every tool's forward passes run.</summary>
public sealed record ModelInfo(string Source, string Architecture, int Layers, int DModel, int Heads, int DHead, int DMlp,
    int DVocab, int DVocabOut, int NCtx, bool HasTokenizer, string WeightProcessing, IReadOnlyList<HookInfo> HookPoints,
    string Device, string Backend);

/// <summary>A token with its text (null without a tokenizer) and a probability or value.</summary>
public sealed record TokenScore(int Id, string? Text, double Value);

/// <summary>What <c>run</c> returns: the prompt's tokens, the top next tokens by probability, and the greedy continuation when asked.</summary>
/// <summary>One stage of the <c>lens</c> tool: the answer's logit, probability and rank there, the logit difference to the wrong token, the top token,
/// the entropy of the stage's distribution and its KL from the model's (final) distribution, in nats.</summary>
public sealed record LensStageResult(string Stage, int Layer, double AnswerLogit, double AnswerProb, int AnswerRank, double? LogitDiff, int TopToken, string? TopTokenText,
    double Entropy, double KlToFinal);

/// <summary>The <c>lens</c> tool's result: the logit lens at one position and, when asked for, a served tuned lens at the same stages.</summary>
public sealed record LensResult(int[] Tokens, int Position, int Answer, string? AnswerText, int? Wrong, string? WrongText, IReadOnlyList<LensStageResult> LogitLens,
    string? TunedLens, IReadOnlyList<LensStageResult>? TunedLensStages, string? Warning);

public sealed record RunResult(int[] Tokens, IReadOnlyList<TokenScore> TopNextTokens, int[]? Continuation, string? ContinuationText);

/// <summary>Summary statistics of an activation.</summary>
public sealed record ActivationStats(long Count, double Mean, double Std, double Min, double Max, double L2Norm);

/// <summary>What <c>cache_hook</c> returns: the activation's shape, statistics and, when asked, its values at one position.</summary>
public sealed record CacheResult(string Hook, int[] Tokens, IReadOnlyList<string> Axes, int[] Shape, ActivationStats Stats,
    int? Position, float[]? ValuesAtPosition);

/// <summary>
/// One cell of a patching sweep: layer, position, the metric with the patch, and it normalised ((m − corrupt)/(clean − corrupt);
/// null when clean and corrupt give the same metric, so there is nothing to restore).
/// </summary>
public sealed record PatchCellResult(int Layer, int Position, string PositionToken, double Value, double? Normalized);

/// <summary>What <c>patch</c> returns: the metric on the clean and corrupt runs, every resid_pre cell, and the top cells.</summary>
public sealed record PatchResult(string Metric, double CleanValue, double CorruptValue, int Layers, int Positions,
    IReadOnlyList<PatchCellResult> Cells, IReadOnlyList<PatchCellResult> TopCells, int ForwardPasses);

/// <summary>A node of an attribution graph: feature, error, token or logit, with its layer, position, index and influence on the logits.</summary>
public sealed record GraphNodeResult(string Id, string Kind, int Layer, int Position, int Index, double Value, double Influence, string? Token);

/// <summary>What <c>attribute</c> returns: the graph's size, its logit targets, the most influential features and the strongest path into the top logit.</summary>
public sealed record AttributeResult(int[] Tokens, int ActiveFeatures, int FeatureNodes, int KeptNodes, long KeptEdges,
    IReadOnlyList<TokenScore> LogitTargets, IReadOnlyList<GraphNodeResult> TopFeatures, IReadOnlyList<GraphNodeResult> PathToTopLogit,
    double ReplacementScore, double CompletenessScore);

/// <summary>A feature example: the activating token marked «thus» in its window, the activation and where it is.</summary>
public sealed record FeatureExampleResult(string Text, double Activation, int ContextId, int Position, string Kind, int? Bin);

/// <summary>A stored explanation of a feature and its scores.</summary>
public sealed record ExplanationResult(string ExplainerModel, string Text, IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> Scores);

/// <summary>What <c>feature_lookup</c> returns.</summary>
public sealed record FeatureLookupResult(string Store, string Hook, int Feature, long NActive, double Density, double MaxActivation, double? MeanActivation,
    double DecoderNorm, IReadOnlyList<FeatureExampleResult> TopExamples, IReadOnlyList<TokenScore> PromotedTokens,
    IReadOnlyList<TokenScore> SuppressedTokens, IReadOnlyList<ExplanationResult> Explanations);

/// <summary>
/// What <c>steer</c> returns: the edit and both greedy continuations; <c>Warning</c>, when an SAE feature steers, says that the
/// SAE was trained on a model loaded with other weight processing where that changes the values at its hook (else null).
/// </summary>
public sealed record SteerResult(string Hook, string Source, float Coefficient, double VectorNorm, int[] Tokens,
    string Unsteered, string Steered, int[] UnsteeredTokens, int[] SteeredTokens, string? Warning = null);

/// <summary>A token and the monitor's projection on it.</summary>
public sealed record TokenProjection(int Id, string? Text, double Projection);

/// <summary>What <c>monitor</c> returns: per-token projections, their mean, the threshold and the verdict.</summary>
public sealed record MonitorResult(string Monitor, string Kind, string Hook, string? Concept, IReadOnlyList<TokenProjection> Tokens,
    double Mean, double Threshold, bool Flagged, string? Generated);

/// <summary>
/// What <c>explain_feature</c> returns: the stored explanation and its scores (scorer → metric → value), whether it was
/// already stored (nothing asked), and the usage of the answers it needed (cached ones included; <c>SentRequests</c>
/// went to the endpoint in this call), with their cost when the price table knows the explainer model.
/// </summary>
public sealed record ExplainFeatureResult(string Store, string Hook, int Feature, string ExplainerModel, string Explanation,
    IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> Scores, bool AlreadyStored, int Requests, int SentRequests,
    long PromptTokens, long CompletionTokens, double? CostUsd);
