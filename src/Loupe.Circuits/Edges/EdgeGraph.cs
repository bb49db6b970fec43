using Loupe.Models;

namespace Loupe.Circuits.Edges;

/// <summary>What a source node of the graph is: the token embedding, one head's output, or an MLP's output.</summary>
public enum SourceKind { Input, Head, Mlp }

/// <summary>Which input of a downstream node an edge enters.</summary>
public enum SlotKind { Query, Key, Value, Mlp, Logits }

/// <summary>
/// A node whose output is written into the residual stream.
/// <c>input</c> = hook_embed (token embedding only), <c>a{l}.h{h}</c> = hook_result[:, :, h] (z_h·W_O[h], no b_O),
/// <c>m{l}</c> = hook_mlp_out.
/// </summary>
/// <param name="Name">EAP-IG's name: <c>input</c>, <c>a1.h3</c>, <c>m0</c>.</param>
/// <param name="Kind">What the node is.</param>
/// <param name="Layer">The block, or -1 for the input.</param>
/// <param name="Head">The head index, or -1 when not a head.</param>
public sealed record SourceNode(string Name, SourceKind Kind, int Layer, int Head);

/// <summary>
/// An input slot that reads the residual stream: a head's q, k or v input (the residual stream before ln1,
/// as only that head's projection sees it), an MLP's input (before ln2), or the logits (the final resid_post,
/// before ln_final).
/// </summary>
/// <param name="Name">EAP-IG's name: <c>a1.h3&lt;k&gt;</c>, <c>m0</c>, <c>logits</c>.</param>
/// <param name="Kind">Which input.</param>
/// <param name="Layer">The block (the last block for the logits).</param>
/// <param name="Head">The head index, or -1 when not a head.</param>
public sealed record DestinationSlot(string Name, SlotKind Kind, int Layer, int Head);

/// <summary>An edge <c>source → destination</c>, named as EAP-IG names it (<c>a0.h2->a1.h1&lt;k&gt;</c>).</summary>
/// <param name="Name">EAP-IG's edge name.</param>
/// <param name="Source">Index into <see cref="EdgeGraph.Sources"/>.</param>
/// <param name="Destination">Index into <see cref="EdgeGraph.Destinations"/>.</param>
public sealed record Edge(string Name, int Source, int Destination);

/// <summary>
/// EAP-IG's computational graph of a sequential pre-norm transformer.
/// Ordering (EAP-IG's, so score matrices line up index for index):
///   sources: <c>input</c>, then per layer <c>a{l}.h0 … a{l}.h{H−1}</c>, <c>m{l}</c>;
///   destinations: per layer <c>a{l}.h*&lt;q&gt;</c>, then <c>&lt;k&gt;</c>, then <c>&lt;v&gt;</c>, then <c>m{l}</c>; finally <c>logits</c>;
///   edges: per layer, for each upstream source, for each head, q, k, v; then every source upstream of <c>m{l}</c>
///   (including that layer's heads); finally every source into <c>logits</c>.
/// Attention-only models have no MLP nodes (EAP-IG would carry <c>m{l}</c> nodes whose edges all score 0).
/// </summary>
public sealed class EdgeGraph
{
    readonly Dictionary<string, int> _edgeIndex;

    EdgeGraph(IReadOnlyList<SourceNode> sources, IReadOnlyList<DestinationSlot> destinations, IReadOnlyList<Edge> edges)
    {
        Sources = sources;
        Destinations = destinations;
        Edges = edges;
        _edgeIndex = edges.Select((e, i) => (e.Name, i)).ToDictionary(x => x.Name, x => x.i, StringComparer.Ordinal);
    }

    public IReadOnlyList<SourceNode> Sources { get; }
    public IReadOnlyList<DestinationSlot> Destinations { get; }
    public IReadOnlyList<Edge> Edges { get; }

    /// <summary>The index of the edge named <paramref name="name"/>, or -1.</summary>
    public int IndexOf(string name) => _edgeIndex.TryGetValue(name, out int i) ? i : -1;

    /// <summary>
    /// Why edge attribution cannot run on <paramref name="model"/> (parallel blocks or post-norms: a head's output is then not
    /// what reaches the residual stream; grouped-query attention: heads share their k/v inputs), or null when it can.
    /// </summary>
    public static string? Unsupported(HookedTransformer model)
    {
        var cfg = model.Config;
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var block = model.Anatomy(l);
            if (block.Parallel || block.AttentionPostNorm is not null || block.MlpPostNorm is not null)
                return $"edge attribution needs sequential pre-norm blocks; block {l} of {cfg.Architecture} is parallel or has post-norms";
        }
        if (cfg.KvHeads != cfg.NHeads)
            return $"edge attribution needs one kv head per head; {cfg.Architecture} has {cfg.KvHeads} kv heads for {cfg.NHeads} heads";
        if (cfg.ShortformerPositions)
            return "edge attribution reads each head's query, key and value inputs as ln1 of the residual stream; this model's queries and keys " +
                   "also read its shortformer positions, which are no node of the graph";
        return null;
    }

    /// <summary>The graph of <paramref name="model"/>.</summary>
    /// <exception cref="NotSupportedException">The model has parallel blocks or post-norms (a head's output is then not what reaches the residual stream).</exception>
    public static EdgeGraph FromModel(HookedTransformer model)
    {
        var cfg = model.Config;
        if (cfg.ShortformerPositions) throw new NotSupportedException(Unsupported(model));
        int L = cfg.NLayers, H = cfg.NHeads;
        var sources = new List<SourceNode> { new("input", SourceKind.Input, -1, -1) };
        var destinations = new List<DestinationSlot>();
        var edges = new List<Edge>();
        string[] letters = ["q", "k", "v"];
        SlotKind[] kinds = [SlotKind.Query, SlotKind.Key, SlotKind.Value];
        for (int l = 0; l < L; l++)
        {
            var block = model.Anatomy(l);
            if (block.Parallel || block.AttentionPostNorm is not null || block.MlpPostNorm is not null)
                throw new NotSupportedException($"edge attribution needs sequential pre-norm blocks; block {l} of {cfg.Architecture} is parallel or has post-norms");
            int upstream = sources.Count;
            // slot index of (letter, head) in this layer
            int firstSlot = destinations.Count;
            for (int s = 0; s < 3; s++)
                for (int h = 0; h < H; h++)
                    destinations.Add(new($"a{l}.h{h}<{letters[s]}>", kinds[s], l, h));
            for (int p = 0; p < upstream; p++)
                for (int h = 0; h < H; h++)
                    for (int s = 0; s < 3; s++)
                        edges.Add(new($"{sources[p].Name}->a{l}.h{h}<{letters[s]}>", p, firstSlot + s * H + h));
            for (int h = 0; h < H; h++) sources.Add(new($"a{l}.h{h}", SourceKind.Head, l, h));
            if (block.Mlp is null) continue;
            destinations.Add(new($"m{l}", SlotKind.Mlp, l, -1));
            for (int p = 0; p < sources.Count; p++) edges.Add(new($"{sources[p].Name}->m{l}", p, destinations.Count - 1));
            sources.Add(new($"m{l}", SourceKind.Mlp, l, -1));
        }
        destinations.Add(new("logits", SlotKind.Logits, L - 1, -1));
        for (int p = 0; p < sources.Count; p++) edges.Add(new($"{sources[p].Name}->logits", p, destinations.Count - 1));
        return new EdgeGraph(sources, destinations, edges);
    }
}
