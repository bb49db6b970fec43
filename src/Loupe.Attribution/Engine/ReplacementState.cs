using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Attribution.Engine;

/// <summary>
/// The local replacement model of one prompt: everything its linear backward needs, taken from one
/// clean forward pass. Attention patterns and the scales of every norm are frozen at their values on
/// the prompt; each MLP output is the transcoders' reconstruction plus a fixed error vector, so the
/// model is linear from any source (feature, error, token) to any target (feature pre-activation,
/// demeaned logit). Position 0 is treated as circuit-tracer does: its features and errors are not sources.
/// </summary>
internal sealed record ReplacementState
{
    public required HookedTransformer Model { get; init; }
    public required IMlpReplacement Transcoders { get; init; }
    public required int[] Tokens { get; init; }
    /// <summary>Per layer: the attention pattern <c>[1, H, T, T]</c> on the model's backend.</summary>
    public required Tensor[] Patterns { get; init; }
    /// <summary>
    /// Per norm (by its scale hook): the frozen σ per position <c>[T]</c> (host). With a device model they stay on the
    /// device (<see cref="DeviceScales"/>) and this reads them back on first use (per-head attribution only).
    /// </summary>
    public Dictionary<string, float[]> Scales
    {
        get
        {
            if (_scales is null)
            {
                _scales = new Dictionary<string, float[]>(StringComparer.Ordinal);
                foreach (var (name, t) in DeviceScales!) _scales[name] = t.ToCpu().Span.ToArray();
            }
            return _scales;
        }
        init => _scales = value;
    }
    Dictionary<string, float[]>? _scales;

    /// <summary>With a device model: σ per position <c>[T]</c> of each norm, on the device; null on the CPU.</summary>
    public Dictionary<string, Tensor>? DeviceScales { get; init; }

    /// <summary>With a device model: the replacement's weights there; null on the CPU.</summary>
    public DeviceMlpReplacement? Device { get; init; }

    /// <summary>With a device model: the error vectors <c>[L·T, d_model]</c> on the device.</summary>
    public Tensor? DeviceErrors { get; init; }

    /// <summary>With a device model: the token vectors <c>[T, d_model]</c> on the device.</summary>
    public Tensor? DeviceTokenVectors { get; init; }

    /// <summary>With a device model: the logits at the last position <c>[d_vocab_out]</c> on the device (<see cref="LastLogits"/> is null).</summary>
    public Tensor? DeviceLastLogits { get; init; }

    /// <summary>The replacement model lives on a device: tables, scales and target vectors are device tensors.</summary>
    public bool OnDevice => Device is not null;
    /// <summary>Active features (layer, position, feature), sorted, and their activations.</summary>
    public required (int Layer, int Position, int Feature)[] Active { get; init; }
    public required float[] ActiveValues { get; init; }
    /// <summary>Error vectors <c>[L, T, d_model]</c> (zero at position 0).</summary>
    public required float[] Errors { get; init; }
    /// <summary>Token embedding vectors as they enter the residual stream (hook_embed) <c>[T, d_model]</c>.</summary>
    public required float[] TokenVectors { get; init; }
    /// <summary>Logits at the last position <c>[d_vocab_out]</c> (null with a device model: see <see cref="DeviceLastLogits"/>).</summary>
    public required float[]? LastLogits { get; init; }
    /// <summary>Wall time of the capture forward pass: the unit of the cost in pass equivalents.</summary>
    public required TimeSpan ForwardTime { get; init; }
    /// <summary>
    /// Where each layer's SAE cuts the residual stream when the dictionaries are residual-stream SAEs
    /// (<c>hook_resid_pre/mid/post</c>; what passes the cut is its features plus its error, MLPs are frozen
    /// whole); null for MLP transcoders.
    /// </summary>
    public required CutPoint[]? Cuts { get; init; }

    /// <summary>The dictionaries are SAEs on the residual stream, not transcoders.</summary>
    public bool ResidualSaes => Cuts is not null;

    /// <summary>
    /// The frozen norm between the residual stream and what layer <paramref name="layer"/>'s features read: ln2 for transcoders on
    /// the MLP input; null for those reading the stream before ln2 (<c>hook_resid_mid</c>, or TransformerLens's
    /// <c>hook_mlp_in</c>) and for residual-stream SAEs.
    /// </summary>
    public Norm? InputNorm(int layer) =>
        ResidualSaes || ReadsStream(Transcoders.InputHook(layer), layer) ? null : Model.Anatomy(layer).Ln2;

    /// <summary>Whether <paramref name="hook"/> is the stream the MLP branch of <paramref name="layer"/> reads, before ln2.</summary>
    static bool ReadsStream(string hook, int layer) => hook == HookNames.ResidMid(layer) || hook == HookNames.HookMlpIn(layer);

    /// <summary>
    /// Whether layer <paramref name="layer"/>'s features read an RMSNorm's <c>ln2.hook_normalized</c>, which is before its
    /// weight (TransformerLens): then the frozen ln2 between the stream and them is <c>x/σ</c>, without the weight.
    /// </summary>
    public bool InputBeforeWeight(int layer) =>
        InputNorm(layer) is { HooksBeforeWeight: true } norm && Transcoders.InputHook(layer) == norm.NormalizedHook;

    public int Layers => Model.Config.NLayers;
    public int Positions => Tokens.Length;
    public int DModel => Model.Config.DModel;

    /// <summary>Runs the prompt once and captures the replacement model.</summary>
    /// <exception cref="InputError">The transcoders do not fit the model, the prompt does not fit the context, or no feature is active.</exception>
    /// <param name="model">The model.</param>
    /// <param name="transcoders">What replaces its MLPs.</param>
    /// <param name="tokens">The prompt.</param>
    /// <param name="device">The transcoders' weights on the model's device (uploaded here when null and the model is on one).</param>
    /// <param name="zeroPositions">Leading positions whose features and errors are not sources (circuit-tracer's BOS: 1).</param>
    public static ReplacementState Capture(HookedTransformer model, IMlpReplacement transcoders, int[] tokens, DeviceMlpReplacement? device = null, int zeroPositions = 1)
    {
        var cfg = model.Config;
        int L = cfg.NLayers, T = tokens.Length, D = cfg.DModel;
        var cuts = CheckFits(model, transcoders);
        if (T == 0) throw new InputError("the prompt is empty; an attribution graph needs at least one token");
        if (zeroPositions > 1 && zeroPositions >= T)
            throw new InputError($"the prompt has {T} token(s) and its first {zeroPositions} are not sources (BOS{(zeroPositions > 1 ? " and chat prefix" : "")}); an attribution graph needs a token after them");

        var hooks = new HashSet<string>(StringComparer.Ordinal) { HookNames.Embed };
        for (int l = 0; l < L; l++)
        {
            var a = model.Anatomy(l);
            hooks.Add(transcoders.InputHook(l));
            hooks.Add(transcoders.OutputHook(l));
            hooks.Add(HookNames.Pattern(l));
            foreach (var n in Norms(a)) hooks.Add(n.ScaleHook);
        }
        if (model.FinalNormLayer is { Kind: not NormKind.None } fin) hooks.Add(fin.ScaleHook);

        var options = new RunOptions { CacheFilter = hooks.Contains };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var run = model.Run(TokenBatch.Single(tokens), options);
        if (!model.Backend.Device.IsCpu)
        {
            var onDevice = CaptureOnDevice(model, device ?? DeviceMlpReplacement.Upload(transcoders, model.Backend), tokens, hooks, run, cuts, zeroPositions);
            clock.Stop();
            return onDevice with { ForwardTime = clock.Elapsed };
        }
        var lastLogits = LastRow(run.Logits);
        clock.Stop();
        var cache = run.Cache;

        var scales = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var name in hooks.Where(h => h.EndsWith(".hook_scale", StringComparison.Ordinal)))
            scales[name] = cache[name].ToCpu().Span.ToArray();
        var patterns = new Tensor[L];
        for (int l = 0; l < L; l++) patterns[l] = cache[HookNames.Pattern(l)];

        // Encode every layer's MLP input; reconstruct every MLP output; the error is what is left.
        var inputs = new float[L][];
        var acts = new float[L][];
        for (int l = 0; l < L; l++)
        {
            inputs[l] = cache[transcoders.InputHook(l)].ToCpu().Span.ToArray();
            int F = transcoders.Features(l);
            var pre = new float[T * F];
            acts[l] = new float[T * F];
            transcoders.Encode(l, inputs[l], T, pre, acts[l]);
            // A NaN pre-activation can come out of ReLU as 0: check both.
            foreach (var (checkedValues, what) in new[] { (pre, "pre-activation"), (acts[l], "activation") })
            {
                int bad = Array.FindIndex(checkedValues, v => !float.IsFinite(v));
                if (bad >= 0)
                    throw new InputError($"{transcoders.Source}: the {what} of feature {bad % F} of layer {l} is {checkedValues[bad]} at position {bad / F}; the transcoders produce non-finite values on this prompt (check their weights)");
            }
        }
        var errors = new float[L * T * D];
        var recon = new float[T * D];
        for (int t = 0; t < L; t++)
        {
            transcoders.Reconstruct(t, acts, inputs, T, recon);
            var mlpOut = cache[transcoders.OutputHook(t)].ToCpu().Span;
            var err = errors.AsSpan(t * T * D, T * D);
            System.Numerics.Tensors.TensorPrimitives.Subtract(mlpOut, recon, err);
            err[..(zeroPositions * D)].Clear(); // the first positions (BOS, a chat prefix): not sources
        }

        var active = new List<(int, int, int)>();
        var values = new List<float>();
        for (int l = 0; l < L; l++)
        {
            int F = transcoders.Features(l);
            for (int p = zeroPositions; p < T; p++)
                for (int f = 0; f < F; f++)
                {
                    float v = acts[l][p * F + f];
                    if (v != 0f) { active.Add((l, p, f)); values.Add(v); }
                }
        }
        if (active.Count == 0)
            throw new InputError($"no feature of the transcoders ({transcoders.Source}) is active on this prompt after its first {zeroPositions} position(s); there is nothing to attribute (is it the right model and hook?)");

        return new ReplacementState
        {
            Model = model,
            Transcoders = transcoders,
            Tokens = tokens,
            Patterns = patterns,
            Scales = scales,
            Active = [.. active],
            ActiveValues = [.. values],
            Errors = errors,
            TokenVectors = cache[HookNames.Embed].ToCpu().Span.ToArray(),
            LastLogits = lastLogits,
            ForwardTime = clock.Elapsed,
            Cuts = cuts,
        };
    }

    /// <summary>
    /// The capture with the model on a device: encode, reconstruct and errors as backend ops on the cached hooks; what
    /// comes back is the graph's own data — the nonzero activations (top-k lists grown until every nonzero is inside),
    /// the error vectors and the token vectors, one copy each — and a position/feature/value for a non-finite one.
    /// </summary>
    static ReplacementState CaptureOnDevice(HookedTransformer model, DeviceMlpReplacement device, int[] tokens, HashSet<string> hooks,
        ForwardResult run, CutPoint[]? cuts, int zeroPositions)
    {
        var be = model.Backend;
        var transcoders = device.Replacement;
        int L = model.Config.NLayers, T = tokens.Length, D = model.Config.DModel;
        var cache = run.Cache;
        var scales = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var name in hooks.Where(h => h.EndsWith(".hook_scale", StringComparison.Ordinal)))
            scales[name] = new Tensor(cache[name].Storage, T);
        var patterns = new Tensor[L];
        for (int l = 0; l < L; l++) patterns[l] = cache[HookNames.Pattern(l)];

        var acts = new Tensor[L];
        var active = new List<(int, int, int)>();
        var values = new List<float>();
        for (int l = 0; l < L; l++)
        {
            int F = transcoders.Features(l);
            var pre = device.EncodePre(l, new Tensor(cache[transcoders.InputHook(l)].Storage, T, D), T);
            CheckFinite(be, pre, transcoders, l, F, "pre-activation");
            acts[l] = device.Activate(l, pre, T);
            CheckFinite(be, acts[l], transcoders, l, F, "activation");
            // The first positions are not sources: their rows are never read.
            if (T > zeroPositions)
                foreach (var (row, feature, value) in Nonzero(be, new Tensor(acts[l].Storage.Slice((long)zeroPositions * F, (long)(T - zeroPositions) * F), T - zeroPositions, F), T - zeroPositions, F))
                {
                    active.Add((l, row + zeroPositions, feature));
                    values.Add(value);
                }
        }
        if (active.Count == 0)
            throw new InputError($"no feature of the transcoders ({transcoders.Source}) is active on this prompt after its first {zeroPositions} position(s); there is nothing to attribute (is it the right model and hook?)");
        var order = Enumerable.Range(0, active.Count).OrderBy(i => active[i]).ToArray();

        var errors = be.Empty(L * T, D);
        for (int t = 0; t < L; t++)
        {
            var recon = device.Reconstruct(t, acts, T, new Tensor(cache[transcoders.InputHook(t)].Storage, T, D)); // with a skip path, as the host's
            var err = new Tensor(errors.Storage.Slice((long)t * T * D, (long)T * D), T, D);
            be.Scale(recon, -1f, recon);
            be.Add(new Tensor(cache[transcoders.OutputHook(t)].Storage, T, D), recon, err);
            be.Fill(new Tensor(err.Storage.Slice(0, (long)zeroPositions * D), zeroPositions * D), 0f); // the first positions: not sources
        }
        var tokenVectors = new Tensor(cache[HookNames.Embed].Storage, T, D);
        int V = run.Logits.Dim(2);
        return new ReplacementState
        {
            Model = model,
            Transcoders = transcoders,
            Tokens = tokens,
            Patterns = patterns,
            DeviceScales = scales,
            Device = device,
            Active = [.. order.Select(i => active[i])],
            ActiveValues = [.. order.Select(i => values[i])],
            Errors = errors.ToCpu().Span.ToArray(),
            DeviceErrors = errors,
            TokenVectors = tokenVectors.ToCpu().Span.ToArray(),
            DeviceTokenVectors = tokenVectors,
            LastLogits = null,
            DeviceLastLogits = new Tensor(run.Logits.Storage.Slice((long)(T - 1) * V, V), V),
            ForwardTime = TimeSpan.Zero,
            Cuts = cuts,
        };
    }

    static void CheckFinite(IComputeBackend be, Tensor values, IMlpReplacement transcoders, int layer, int width, string what)
    {
        long bad = be.IndexOfNonFinite(values);
        if (bad < 0) return;
        var one = new float[1];
        new Tensor(values.Storage.Slice(bad, 1), 1).CopyTo(one);
        throw new InputError($"{transcoders.Source}: the {what} of feature {bad % width} of layer {layer} is {one[0]} at position {bad / width}; the transcoders produce non-finite values on this prompt (check their weights)");
    }

    /// <summary>
    /// The nonzero entries of activations <c>[rows, n]</c> on the device, by row then feature: the top-k of each row read
    /// back with k doubled until every row's k-th value is 0 (all nonzeros inside), or the dense rows when that is cheaper.
    /// </summary>
    static List<(int Row, int Feature, float Value)> Nonzero(IComputeBackend be, Tensor acts, int rows, int n)
    {
        var found = new List<(int, int, float)>();
        for (int k = Math.Min(32, n); 2 * k < n; k *= 2)
        {
            var topValues = be.Empty(rows, k);
            var topIndices = be.Empty(rows, k);
            be.TopKRows(acts, rows, n, k, topValues, topIndices);
            var v = new float[rows * k];
            topValues.CopyTo(v);
            bool complete = true;
            for (int r = 0; r < rows && complete; r++) complete = v[r * k + k - 1] == 0;
            if (!complete) continue;
            var index = new float[rows * k];
            topIndices.CopyTo(index);
            for (int r = 0; r < rows; r++)
            {
                var row = new List<(int, int, float)>();
                for (int j = 0; j < k; j++)
                    if (v[r * k + j] != 0) row.Add((r, (int)index[r * k + j], v[r * k + j]));
                found.AddRange(row.OrderBy(e => e.Item2));
            }
            return found;
        }
        var dense = new float[rows * n];
        acts.CopyTo(dense);
        for (int r = 0; r < rows; r++)
            for (int f = 0; f < n; f++)
                if (dense[r * n + f] != 0) found.Add((r, f, dense[r * n + f]));
        return found;
    }

    static float[] LastRow(Tensor logits)
    {
        int T = logits.Dim(1), V = logits.Dim(2);
        return logits.ToCpu().Span.Slice((T - 1) * V, V).ToArray();
    }

    /// <summary>Every norm of a block whose scale the replacement model freezes.</summary>
    public static IEnumerable<Norm> Norms(BlockAnatomy a)
    {
        foreach (var n in new[] { a.Ln1, a.AttentionPostNorm, a.Ln2, a.MlpPostNorm })
            if (n is { Kind: not NormKind.None }) yield return n;
    }

    /// <summary>Checks the dictionaries against the model; for residual-stream SAEs, where each cuts the stream (null: MLP transcoders).</summary>
    static CutPoint[]? CheckFits(HookedTransformer model, IMlpReplacement tc)
    {
        var cfg = model.Config;
        string model_ = model.Source ?? cfg.Architecture;
        if (tc.Layers != cfg.NLayers)
            throw new InputError($"{tc.Source}: the transcoders replace {tc.Layers} layers; {model_} has {cfg.NLayers}");
        if (tc.DIn != cfg.DModel || tc.DOut != cfg.DModel)
            throw new InputError($"{tc.Source}: the transcoders map d_in {tc.DIn} → d_out {tc.DOut}; {model_} has d_model {cfg.DModel} (a transcoder for another model?)");
        // A dictionary on the residual stream reads and rewrites one point; a transcoder that reads resid_mid writes the MLP output.
        bool residual = CutOf(tc.InputHook(0), 0) is not null && tc.OutputHook(0) == tc.InputHook(0);
        var cuts = residual ? new CutPoint[cfg.NLayers] : null;
        for (int l = 0; l < cfg.NLayers; l++)
        {
            var a = model.Anatomy(l);
            if (residual)
            {
                var cut = CutOf(tc.InputHook(l), l);
                if (cut is null || tc.OutputHook(l) != tc.InputHook(l) || tc.LastTarget(l) != l)
                    throw new InputError($"{tc.Source}: layer {l}'s dictionary reads '{tc.InputHook(l)}' and writes '{tc.OutputHook(l)}'; residual-stream graphs need an SAE on one of blocks.{l}.hook_resid_pre/mid/post in every layer");
                if (cut == CutPoint.Mid && (a.Parallel || a.Mlp is null))
                    throw new InputError($"{tc.Source}: layer {l}'s SAE reads '{tc.InputHook(l)}', but {model_} has no resid_mid in layer {l} (parallel or attention-only block)");
                cuts![l] = cut.Value;
                continue;
            }
            if (a.Mlp is null || a.Ln2 is null)
                throw new InputError($"{model_} has no MLP in layer {l}; an attribution graph over transcoders replaces MLPs (use residual-stream SAEs on blocks.ℓ.hook_resid_post instead)");
            string expectIn = a.Ln2.Kind == NormKind.None ? $"blocks.{l}.hook_resid_mid" : a.Ln2.NormalizedHook;
            // circuit-tracer's Llama transcoders and its cross-layer transcoders read resid_mid, before ln2; its mlp.hook_in is the MLP's input.
            // TransformerLens's hook_mlp_in is the stream the MLP branch reads (resid_mid; resid_pre in a parallel block).
            bool readsStream = tc.InputHook(l) == HookNames.HookMlpIn(l) || (tc.InputHook(l) == HookNames.ResidMid(l) && !a.Parallel);
            if (tc.InputHook(l) != expectIn && tc.InputHook(l) != HookNames.MlpIn(l) && !readsStream)
                throw new InputError($"{tc.Source}: the transcoder of layer {l} reads '{tc.InputHook(l)}'; attribution needs it to read the MLP input '{HookNames.MlpIn(l)}', '{expectIn}', '{HookNames.HookMlpIn(l)}'{(a.Parallel ? "" : $" or '{HookNames.ResidMid(l)}'")} (or SAEs on blocks.ℓ.hook_resid_post in every layer)");
            if (tc.OutputHook(l) != HookNames.MlpOut(l))
                throw new InputError($"{tc.Source}: the transcoder of layer {l} writes '{tc.OutputHook(l)}'; attribution needs it to write '{HookNames.MlpOut(l)}'");
            if (tc.LastTarget(l) < l || tc.LastTarget(l) >= cfg.NLayers)
                throw new InputError($"{tc.Source}: features of layer {l} write up to layer {tc.LastTarget(l)}, outside {l}…{cfg.NLayers - 1}");
        }
        return cuts;
    }

    static CutPoint? CutOf(string hook, int layer) =>
        hook == HookNames.ResidPre(layer) ? CutPoint.Pre : hook == HookNames.ResidMid(layer) ? CutPoint.Mid : hook == HookNames.ResidPost(layer) ? CutPoint.Post : null;
}

/// <summary>Where a residual-stream SAE sits in its block: before attention, between attention and MLP, or after the MLP.</summary>
internal enum CutPoint { Pre, Mid, Post }

internal static class BackwardWalk
{
    /// <summary>
    /// The attention layers a gradient injected at a target passes (in backward order) before it reaches the next
    /// SAE cut below it: the heads that can carry an edge into that target. <paramref name="layer"/> = n_layers is a logit
    /// (the stream after the last block); otherwise the target's SAE sits at <c>cuts[layer]</c>.
    /// </summary>
    public static IEnumerable<int> AttentionLayersBelow(CutPoint[] cuts, int layer)
    {
        int L = cuts.Length;
        // Backward order within layer l: Post, (MLP), Mid, Attention, Pre.
        int l = Math.Min(layer, L - 1);
        int stage = layer == L ? 0 : cuts[layer] switch { CutPoint.Post => 1, CutPoint.Mid => 3, _ => 5 };
        for (; l >= 0; l--, stage = 0)
            for (; stage <= 4; stage++)
            {
                if (stage == 0 && cuts[l] == CutPoint.Post) yield break;
                if (stage == 2 && cuts[l] == CutPoint.Mid) yield break;
                if (stage == 3) yield return l;
                if (stage == 4 && cuts[l] == CutPoint.Pre) yield break;
            }
    }
}
