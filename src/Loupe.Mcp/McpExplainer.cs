using Loupe.Explain;

namespace Loupe.Mcp;

/// <summary>
/// The explainer endpoint <c>explain_feature</c> asks, fixed when the server starts (an agent never chooses where requests
/// go or which key they carry).
/// </summary>
/// <param name="Endpoint">The OpenAI-compatible endpoint, model, key and limits (as <c>loupe explain</c> takes them).</param>
/// <param name="PricesPath">The price table; null: <c>prices.json</c> beside the feature store (written with list prices on first use).</param>
/// <param name="CachePath">The request cache; null: <c>STORE.explain-cache.db</c>, the cache <c>loupe explain</c> uses.</param>
/// <param name="BatchSize">Examples per scorer request.</param>
public sealed record McpExplainer(EndpointOptions Endpoint, string? PricesPath = null, string? CachePath = null, int BatchSize = 5);
