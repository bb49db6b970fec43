using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Tensors;

namespace Loupe.Attribution;

/// <summary>How an intervention changes a feature's activation.</summary>
public enum InterventionKind
{
    /// <summary>Set the activation to the value.</summary>
    Set,
    /// <summary>Multiply the activation by the value (0 ablates, 2 doubles).</summary>
    Scale,
}

/// <summary>An edit of one feature's activation at one position (or every position with <see cref="Position"/> = −1).</summary>
/// <param name="Layer">The feature's layer.</param>
/// <param name="Position">The position, or −1 for every position (also those generated).</param>
/// <param name="Feature">The feature index.</param>
/// <param name="Value">The new activation (<see cref="InterventionKind.Set"/>) or the factor (<see cref="InterventionKind.Scale"/>).</param>
/// <param name="Kind">Set or scale.</param>
public readonly record struct FeatureIntervention(int Layer, int Position, int Feature, float Value, InterventionKind Kind = InterventionKind.Set);

/// <summary>A vector added to the residual stream at a hook (<c>hook_embed</c> or where the dictionaries write), at one position.</summary>
/// <param name="Hook">The hook point, e.g. <c>blocks.1.hook_mlp_out</c> (transcoders), <c>blocks.1.hook_resid_post</c> (residual SAEs) or <c>hook_embed</c>.</param>
/// <param name="Position">The position.</param>
/// <param name="Vector">What is added, length d_model.</param>
public sealed record AddedVector(string Hook, int Position, float[] Vector);

/// <summary>The values a frozen run holds fixed: attention patterns, norm scales and MLP outputs of one prompt.</summary>
public sealed class FrozenActivations
{
    internal FrozenActivations(int positions, Dictionary<string, Tensor> values, Dictionary<int, Tensor> skipBases)
    {
        Positions = positions;
        Values = values;
        SkipBases = skipBases;
    }

    /// <summary>The prompt length they were captured at; frozen runs must have this many positions.</summary>
    public int Positions { get; }

    internal Dictionary<string, Tensor> Values { get; }

    /// <summary>
    /// Per layer with a skip transcoder, the prompt's MLP output minus its skip term (<c>mlp_out − x_prompt·W_skip</c>): the skip
    /// path stays live in a frozen run, whose MLP output there is this plus the run's own <c>x·W_skip</c>.
    /// </summary>
    internal Dictionary<int, Tensor> SkipBases { get; }
}

/// <summary>The outcome of a run with interventions.</summary>
/// <param name="Run">Logits <c>[1, T, V]</c> and the activations the run was asked to record.</param>
/// <param name="LastLogits">The logits at the last position.</param>
/// <param name="Top">The most likely next tokens at the last position, with probabilities.</param>
public sealed record InterventionResult(ForwardResult Run, float[] LastLogits, (int Token, float Probability)[] Top);

/// <summary>
/// The replacement model as something to intervene on: feature activations set or scaled, vectors
/// added, in a free run (everything downstream responds) or a frozen one (attention patterns, norm
/// scales and MLP outputs held at a prompt's values: only direct effects, the attribution graph's
/// linear model). An edited feature changes the MLP outputs it writes by <c>(a′ − a)·W_dec</c>; the rest of
/// each MLP output is the model's own (free) or the frozen prompt's (frozen), as in circuit-tracer.
/// With the model on a device the transcoders' weights are uploaded there once and the edits run as backend ops
/// (<see cref="DeviceInterventions"/>): a run copies the token ids in and the last position's logits out.
/// </summary>
public sealed class ReplacementModel
{
    readonly DeviceMlpReplacement? _device;

    /// <summary>With a model on a device, uploads the transcoders' weights to it here, once (when they have device kernels).</summary>
    public ReplacementModel(HookedTransformer model, IMlpReplacement transcoders) : this(model, transcoders, null) { }

    /// <summary>With transcoder weights already on the model's device (uploaded once by the caller, shared with an <see cref="Attributor"/>).</summary>
    public ReplacementModel(HookedTransformer model, DeviceMlpReplacement transcoders) : this(model, transcoders?.Replacement!, transcoders) { }

    ReplacementModel(HookedTransformer model, IMlpReplacement transcoders, DeviceMlpReplacement? device)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        Transcoders = transcoders ?? throw new ArgumentNullException(nameof(transcoders));
        if (device is not null && device.Backend != model.Backend)
            throw new ArgumentException($"the transcoders' weights are on {device.Backend.Device}, the model on {model.Backend.Device}", nameof(transcoders));
        // A replacement without device kernels (another IMlpReplacement) edits on the host, one copy each way per hook.
        _device = device ?? (model.Backend.Device.IsCpu || !DeviceMlpReplacement.Supports(transcoders) ? null : DeviceMlpReplacement.Upload(transcoders, model.Backend));
    }

    public HookedTransformer Model { get; }
    public IMlpReplacement Transcoders { get; }

    /// <summary>Captures the patterns, norm scales and MLP outputs of <paramref name="tokens"/> for frozen runs.</summary>
    public FrozenActivations Freeze(int[] tokens)
    {
        var names = FrozenHooks().ToHashSet(StringComparer.Ordinal);
        var skipLayers = SkipLayers().ToArray();
        var cached = names.Concat(skipLayers.Select(Transcoders.InputHook)).ToHashSet(StringComparer.Ordinal);
        var run = Model.Run(TokenBatch.Single(tokens), new RunOptions { CacheFilter = cached.Contains });
        var be = Model.Backend;
        int T = tokens.Length, D = Model.Config.DModel;
        var bases = new Dictionary<int, Tensor>();
        foreach (int l in skipLayers)
        {
            var b = be.Empty(T, D);
            be.CopyRows(run.Cache[Transcoders.OutputHook(l)], 0, D, b, 0, D, T, D);
            be.Gemm(false, false, T, D, D, -1f, run.Cache[Transcoders.InputHook(l)], 0, D, SkipOn(l), 0, D, 1f, b, 0, D);
            bases[l] = b;
        }
        return new FrozenActivations(T, names.ToDictionary(n => n, n => run.Cache[n], StringComparer.Ordinal), bases);
    }

    // The skip path's weights on the model's backend: the device copy when the transcoders were uploaded, else the host array.
    Tensor SkipOn(int layer) => _device?.SkipWeights(layer)
        ?? Model.Backend.ToDevice(Tensor.FromArray(Transcoders.SkipWeights(layer)!, Model.Config.DModel, Model.Config.DModel), Loupe.Tensors.Backends.TransferKind.Weights);

    IEnumerable<int> SkipLayers() => Enumerable.Range(0, Transcoders.Layers).Where(l => Transcoders.SkipWeights(l) is not null);

    // A skip transcoder's x·W_skip is live in the replacement model (as in circuit-tracer): a frozen MLP output at a layer
    // with one is the prompt's value minus its skip term (frozen at Freeze) plus x·W_skip, x being what the transcoder reads in this run.
    void InstallFrozenSkip(RunOptions options, FrozenActivations frozen, int layer)
    {
        var be = Model.Backend;
        int T = frozen.Positions, D = Model.Config.DModel;
        var weights = SkipOn(layer);
        var baseline = frozen.SkipBases[layer];
        var input = be.Empty(T, D);
        options.AddHook(Transcoders.InputHook(layer), (x, _) =>
        {
            be.CopyRows(x, 0, D, input, 0, D, T, D);
            return null;
        });
        options.AddHook(Transcoders.OutputHook(layer), (y, _) =>
        {
            var result = be.Empty(y.Shape.ToArray());
            be.CopyRows(baseline, 0, D, result, 0, D, T, D);
            be.Gemm(false, false, T, D, D, 1f, input, 0, D, weights, 0, D, 1f, result, 0, D);
            return result;
        });
    }

    IEnumerable<string> FrozenHooks()
    {
        for (int l = 0; l < Model.Config.NLayers; l++)
        {
            var a = Model.Anatomy(l);
            yield return HookNames.Pattern(l);
            if (a.Mlp is not null) yield return HookNames.MlpOut(l);
            foreach (var n in new[] { a.Ln1, a.AttentionPostNorm, a.Ln2, a.MlpPostNorm })
                if (n is { Kind: not NormKind.None }) yield return n.ScaleHook;
        }
        if (Model.FinalNormLayer is { Kind: not NormKind.None } f) yield return f.ScaleHook;
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> with <paramref name="edits"/> and <paramref name="additions"/>, frozen to
    /// <paramref name="frozen"/> when given. <paramref name="cache"/> selects activations to record.
    /// </summary>
    /// <exception cref="ArgumentException">An edit names a layer, position or feature that does not exist, or the frozen values are for another length.</exception>
    public InterventionResult Run(int[] tokens, IReadOnlyList<FeatureIntervention>? edits = null, FrozenActivations? frozen = null,
        IReadOnlyList<AddedVector>? additions = null, Func<string, bool>? cache = null, int topK = 10)
    {
        edits ??= [];
        additions ??= [];
        Check(edits, tokens.Length);
        if (frozen is not null && frozen.Positions != tokens.Length)
            throw new ArgumentException($"the frozen values are for {frozen.Positions} positions; this run has {tokens.Length}", nameof(frozen));
        var options = new RunOptions { CacheFilter = cache };
        Install(options, edits, frozen, additions);
        var run = Model.Run(TokenBatch.Single(tokens), options);
        int T = run.Logits.Dim(1), V = run.Logits.Dim(2);
        // On a device only the last position's row comes back (one copy): the reported probabilities and logit changes.
        var last = _device is null ? run.Logits.ToCpu().Span.Slice((T - 1) * V, V).ToArray()
            : new Tensor(run.Logits.Storage.Slice((long)(T - 1) * V, V), V).ToCpu().Span.ToArray();
        return new InterventionResult(run, last, Top(last, topK));
    }

    /// <summary>Generates from <paramref name="prompt"/> with the feature edits active on every step (free run; position −1 edits reach new tokens).</summary>
    public int[] Generate(int[] prompt, IReadOnlyList<FeatureIntervention> edits, GenerationOptions generation)
    {
        Check(edits, int.MaxValue);
        var options = new RunOptions();
        Install(options, edits, null, []);
        return Model.Generate([prompt], generation, options)[0];
    }

    void Check(IReadOnlyList<FeatureIntervention> edits, int positions)
    {
        foreach (var e in edits)
        {
            if ((uint)e.Layer >= (uint)Transcoders.Layers) throw new ArgumentException($"intervention on layer {e.Layer}: the transcoders have layers 0…{Transcoders.Layers - 1}", nameof(edits));
            if ((uint)e.Feature >= (uint)Transcoders.Features(e.Layer)) throw new ArgumentException($"intervention on feature {e.Feature} of layer {e.Layer}: it has {Transcoders.Features(e.Layer)} features", nameof(edits));
            if (e.Position < -1 || e.Position >= positions) throw new ArgumentException($"intervention at position {e.Position}: the prompt has {positions} positions (−1 = all)", nameof(edits));
            if (!float.IsFinite(e.Value)) throw new ArgumentException($"intervention value {e.Value} is not finite", nameof(edits));
        }
    }

    void Install(RunOptions options, IReadOnlyList<FeatureIntervention> edits, FrozenActivations? frozen, IReadOnlyList<AddedVector> additions)
    {
        int L = Transcoders.Layers, D = Model.Config.DModel;
        var be = Model.Backend;
        // Frozen values first (patterns, scales, whole MLP outputs): the edits' hooks below then add to them.
        if (frozen is not null)
        {
            var skipOutputs = frozen.SkipBases.Keys.ToDictionary(Transcoders.OutputHook, l => l, StringComparer.Ordinal);
            foreach (var (name, value) in frozen.Values)
            {
                if (skipOutputs.TryGetValue(name, out int skipLayer)) InstallFrozenSkip(options, frozen, skipLayer);
                else options.AddHook(name, (_, _) => value);
            }
        }
        CheckAdditions(additions, D);
        if (_device is not null)
        {
            DeviceInterventions.Install(options, _device, edits, additions, D);
            return;
        }

        // Per layer, the current activations of the edited features (host), read at the transcoder's input.
        var deltas = new Dictionary<int, List<(int Position, int Feature, float Delta)>>();
        var byLayer = edits.GroupBy(e => e.Layer).ToDictionary(g => g.Key, g => g.ToArray());
        foreach (var (layer, layerEdits) in byLayer)
        {
            int l = layer;
            options.AddHook(Transcoders.InputHook(l), (x, ctx) =>
            {
                int T = x.Dim(1), F = Transcoders.Features(l);
                var host = x.ToCpu().Span;
                var pre = new float[T * F];
                var acts = new float[T * F];
                Transcoders.Encode(l, host[..(T * D)], T, pre, acts);
                var list = new List<(int, int, float)>();
                for (int i = 0; i < T; i++)
                {
                    int pos = ctx.PositionOffset + i;
                    foreach (var e in layerEdits)
                    {
                        if (e.Position != -1 && e.Position != pos) continue;
                        float a = acts[i * F + e.Feature];
                        float target = e.Kind == InterventionKind.Set ? e.Value : a * e.Value;
                        if (target != a) list.Add((i, e.Feature, target - a));
                    }
                }
                deltas[l] = list;
                return null;
            });
        }

        for (int t = 0; t < L; t++)
        {
            int target = t;
            var sources = byLayer.Keys.Where(l => l <= target && Transcoders.LastTarget(l) >= target).ToArray();
            var added = additions.Where(a => a.Hook == Transcoders.OutputHook(target)).ToArray();
            if (sources.Length == 0 && added.Length == 0) continue;
            options.AddHook(Transcoders.OutputHook(target), (y, ctx) =>
            {
                var outHost = y.ToCpu().Span.ToArray();
                var dec = new float[D];
                foreach (var l in sources)
                    foreach (var (i, f, delta) in deltas.GetValueOrDefault(l) ?? [])
                    {
                        Transcoders.DecoderDirection(l, f, target, dec);
                        var row = outHost.AsSpan(i * D, D);
                        for (int d = 0; d < D; d++) row[d] += delta * dec[d];
                    }
                foreach (var a in added) AddAt(outHost, a, ctx.PositionOffset, D);
                return be.ToDevice(Tensor.FromArray(outHost, y.Shape.ToArray()));
            });
        }
        var embedAdds = additions.Where(a => a.Hook == HookNames.Embed).ToArray();
        if (embedAdds.Length > 0)
            options.AddHook(HookNames.Embed, (y, ctx) =>
            {
                var host = y.ToCpu().Span.ToArray();
                foreach (var a in embedAdds) AddAt(host, a, ctx.PositionOffset, D);
                return be.ToDevice(Tensor.FromArray(host, y.Shape.ToArray()));
            });
    }

    /// <exception cref="ArgumentException">A vector is added elsewhere than at hook_embed or where the dictionaries write, or is not d_model long.</exception>
    void CheckAdditions(IReadOnlyList<AddedVector> additions, int d)
    {
        var places = Enumerable.Range(0, Transcoders.Layers).Select(Transcoders.OutputHook).Append(HookNames.Embed).ToHashSet(StringComparer.Ordinal);
        foreach (var a in additions)
        {
            if (!places.Contains(a.Hook))
                throw new ArgumentException($"vectors can be added at hook_embed or where the dictionaries write ({Transcoders.OutputHook(0)}, …), not at '{a.Hook}'", nameof(additions));
            if (a.Vector.Length != d) throw new ArgumentException($"the vector added at {a.Hook} has {a.Vector.Length} values; d_model is {d}", nameof(additions));
        }
    }

    static void AddAt(float[] host, AddedVector a, int offset, int d)
    {
        int i = a.Position - offset;
        if (i < 0 || (i + 1) * d > host.Length) return;
        var row = host.AsSpan(i * d, d);
        for (int j = 0; j < d; j++) row[j] += a.Vector[j];
    }

    static (int, float)[] Top(float[] logits, int k)
    {
        double max = logits.Max(), sum = 0;
        foreach (var v in logits) sum += Math.Exp(v - max);
        return [.. Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(k)
            .Select(i => (i, (float)(Math.Exp(logits[i] - max) / sum)))];
    }
}
