using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Models.Processing;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tokenizers;

namespace Loupe.Models;

/// <summary>
/// How a block is wired. Sequential: <c>resid_mid = resid_pre + post1(attn(ln1(resid_pre)))</c>,
/// <c>resid_post = resid_mid + post2(mlp(ln2(resid_mid)))</c>. Parallel (GPT-NeoX, GPT-J): both branches
/// read resid_pre and <c>resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))</c>.
/// The post norms (Gemma 2's sandwich norms) are null where a family has none; <see cref="Mlp"/> and
/// <see cref="Ln2"/> are null for attention-only models.
/// </summary>
/// <param name="Ln1">The norm before attention.</param>
/// <param name="Attention">The attention layer.</param>
/// <param name="AttentionPostNorm">The norm after attention, before the residual add (hook_attn_out is after it), or null.</param>
/// <param name="Ln2">The norm before the MLP, or null without an MLP.</param>
/// <param name="Mlp">The MLP, or null for attention-only models.</param>
/// <param name="MlpPostNorm">The norm after the MLP (hook_mlp_out is after it), or null.</param>
/// <param name="Parallel">Attention and MLP both read resid_pre.</param>
public sealed record BlockAnatomy(Norm Ln1, AttentionLayer Attention, Norm? AttentionPostNorm, Norm? Ln2, MlpLayer? Mlp, Norm? MlpPostNorm, bool Parallel);

/// <summary>
/// A transformer whose every internal activation can be read or replaced by its TransformerLens
/// name. The pipeline shared by all families lives here:
/// 1. check the tokens (ids in the vocabulary, length within the context);
/// 2. embed (<c>hook_embed</c>, <c>hook_pos_embed</c>) into the residual stream;
/// 3. run each block (family-specific, <see cref="Block"/>);
/// 4. final norm (<c>ln_final.*</c>), unembed, optional logit soft-capping.
/// </summary>
public abstract class HookedTransformer : IDisposable
{
    IReadOnlyList<string>? _hookNames;
    IReadOnlyList<HookPoint>? _hookPoints;
    readonly List<IHookSplice> _splices = [];

    protected HookedTransformer(ModelConfig config, IComputeBackend? backend)
    {
        Config = config;
        Backend = backend ?? CpuBackend.Instance;
    }

    public ModelConfig Config { get; }
    public IComputeBackend Backend { get; }
    /// <summary>
    /// Dead intermediates kept between passes so that the next pass reuses them instead of allocating (at most
    /// <see cref="ScratchPool.DefaultCapacityBytes"/>, <c>LOUPE_SCRATCH_POOL_MB</c>); <see cref="ScratchPool.Clear"/> gives
    /// the memory back.
    /// </summary>
    public ScratchPool ScratchPool { get; } = new(ScratchPool.DefaultCapacityBytes);
    /// <summary>The tokenizer loaded beside the weights, when the model folder has one.</summary>
    public ITokenizer? Tokenizer { get; internal set; }
    /// <summary>Where the model was loaded from.</summary>
    public string? Source { get; internal set; }
    /// <summary>Keeps memory-mapped weights alive for the model's lifetime.</summary>
    internal IDisposable? WeightOwner { get; set; }

    DeviceWeight _embedding = new(default, [0]), _positions = new(default, [0]);

    /// <summary>Token embedding W_E <c>[d_vocab, d_model]</c> (host memory).</summary>
    protected ReadOnlyMemory<float> WE
    {
        get => _embedding.Host;
        init => _embedding = new DeviceWeight(value, [Config.DVocab, Config.DModel]);
    }

    /// <summary>Learned positions W_pos <c>[n_ctx, d_model]</c>; empty for rotary or position-free models.</summary>
    protected ReadOnlyMemory<float> WPos
    {
        get => _positions.Host;
        init => _positions = new DeviceWeight(value, [value.Length / Config.DModel, Config.DModel]);
    }
    /// <summary>Token embedding W_E <c>[d_vocab, d_model]</c> as the model holds it (read-only; host memory).</summary>
    public ReadOnlyMemory<float> EmbeddingWeights => WE;

    /// <summary>Learned positions W_pos <c>[n_ctx, d_model]</c> (read-only; host memory); empty for rotary or position-free models.</summary>
    public ReadOnlyMemory<float> PositionWeights => WPos;

    /// <summary>The weight processing applied at load (TransformerLens's fold_ln, centering, …); <see cref="WeightProcessing.None"/> by default.</summary>
    public WeightProcessing Processing { get; internal set; } = WeightProcessing.None;

    /// <summary>Swaps in processed W_E and W_pos (same shapes). Only at load (weight processing), before any run.</summary>
    internal void ReplaceEmbeddings(ReadOnlyMemory<float> embedding, ReadOnlyMemory<float> positions)
    {
        if (embedding.Length != WE.Length || positions.Length != WPos.Length) throw new ArgumentException("processed embeddings must keep their shapes");
        _embedding = new DeviceWeight(embedding, [Config.DVocab, Config.DModel]);
        _positions = new DeviceWeight(positions, [positions.Length / Config.DModel, Config.DModel]);
    }

    protected Norm? FinalNorm { get; init; }
    /// <summary>Unembedding: <c>[d_model] → [d_vocab_out]</c>.</summary>
    protected Linear Unembed
    {
        get;
        init
        {
            field = value;
            value.Name ??= "unembed.W_U";
        }
    } = null!;

    /// <summary>The final norm (ln_final), or null for models without one — read-only access for lenses and attribution.</summary>
    public Norm? FinalNormLayer => FinalNorm;

    /// <summary>The unembedding W_U (and b_U): <c>[d_model] → [d_vocab_out]</c>.</summary>
    public Linear UnembedLayer => Unembed;

    /// <summary>
    /// Column <paramref name="token"/> of W_U as a <c>[d_model]</c> vector: the residual-stream direction
    /// whose dot product (after the final norm) gives that token's logit.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The token is outside d_vocab_out.</exception>
    public float[] UnembedDirection(int token)
    {
        int V = Config.VocabOut, D = Config.DModel;
        if ((uint)token >= (uint)V) throw new ArgumentOutOfRangeException(nameof(token), $"token id {token} is outside the output vocabulary (d_vocab_out = {V})");
        var w = Unembed.Weight.Span; // the host copy of W_U
        var column = new float[D];
        for (int d = 0; d < D; d++) column[d] = Unembed.WeightIsOutIn ? w[token * D + d] : w[d * V + token];
        return column;
    }

    /// <summary>
    /// Whether the residual stream is a running sum of the embedding and every attention and MLP output, read through
    /// the final norm and the unembedding (decoders). False for post-LayerNorm encoders (BERT), whose blocks renormalise it.
    /// </summary>
    public virtual bool ResidualIsSumOfComponents => true;

    /// <summary>Refuses <paramref name="analysis"/> on models whose residual stream is not a sum of component outputs.</summary>
    /// <exception cref="InputError">This model is such a model (the message names the analysis and why).</exception>
    public void RequireResidualSum(string analysis)
    {
        if (!ResidualIsSumOfComponents)
            throw new InputError($"{analysis} reads the residual stream as embed + Σ attn_out + Σ mlp_out; {Config.Architecture} renormalises it after every sub-layer (post-LayerNorm), so {analysis} does not apply to {Source ?? Config.Architecture}");
    }

    /// <summary>The number of parameters (weights and biases) the model holds.</summary>
    public abstract long ParameterCount { get; }

    /// <summary>
    /// One block: reads resid_pre <c>[batch, pos, d_model]</c> and returns resid_post. By default the pre-norm
    /// sequential block wired as <see cref="Anatomy"/> describes it; families with another wiring override it.
    /// </summary>
    protected virtual Tensor Block(int layer, ForwardContext ctx, Tensor residPre)
    {
        var a = SequentialAnatomy(layer);
        return SequentialBlock(layer, ctx, residPre, a.Ln1, a.Attention, a.Ln2, a.Mlp);
    }

    /// <summary>
    /// The parts of block <paramref name="layer"/> and how they are wired, for analyses that walk the block
    /// themselves (attribution graphs freeze its norms and attention patterns and trace the linear rest).
    /// </summary>
    public abstract BlockAnatomy Anatomy(int layer);

    /// <summary>The block's backward: d resid_post → d resid_pre, through every hook point of the block (the default matches <see cref="Block"/>'s).</summary>
    protected virtual Tensor BlockBackward(int layer, ForwardContext ctx, Tensor dResidPost)
    {
        var a = SequentialAnatomy(layer);
        return SequentialBlockBackward(layer, ctx, dResidPost, a.Ln1, a.Attention, a.Ln2, a.Mlp);
    }

    /// <summary>The block's anatomy, which the default <see cref="Block"/> can run only when it is a plain sequential one.</summary>
    BlockAnatomy SequentialAnatomy(int layer)
    {
        var a = Anatomy(layer);
        if (a.Parallel || a.AttentionPostNorm is not null || a.MlpPostNorm is not null)
            throw new NotSupportedException($"{GetType().Name}: block {layer} is parallel or has post norms; the family must override Block and BlockBackward");
        return a;
    }

    /// <summary>
    /// Every hook point this model has, in forward order — including the sub-hooks of splices attached
    /// with <see cref="AddSplice"/> (e.g. <c>blocks.2.hook_resid_post.hook_sae_acts_post</c>).
    /// </summary>
    public IReadOnlyList<string> HookPointNames => _hookNames ??= DiscoverHookNames();

    /// <summary>
    /// The model's own hook points (names, layers, axes and sizes) in forward order, declared from
    /// <see cref="Config"/> without running the model. Splice sub-hooks are not among them.
    /// </summary>
    public IReadOnlyList<HookPoint> HookPoints => _hookPoints ??= [.. Hooks.HookPoints.Declare(Config).Select(p => p with { Device = Backend.Device })];

    IReadOnlyList<string> DiscoverHookNames()
    {
        var names = HookPoints.Select(p => p.Name).ToList();
        // Each attached splice's sub-hooks come right after the hook it replaces, where the forward pass reaches them.
        foreach (var splice in _splices)
            names.InsertRange(names.IndexOf(splice.OutputHook) + 1, splice.SubHookNames);
        return names;
    }

    /// <summary>
    /// <see cref="HookPointNames"/> plus the sub-hooks of the splices in <paramref name="options"/>, each
    /// right after the hook it replaces: the names a run with those options can cache or hook.
    /// </summary>
    public IReadOnlyList<string> HookPointNamesWith(RunOptions? options)
    {
        if (options is null || options.Splices.Count == 0) return HookPointNames;
        CheckSplices(options.Splices);
        var names = new List<string>(HookPointNames);
        foreach (var splice in options.Splices)
            names.InsertRange(names.IndexOf(splice.OutputHook) + 1, splice.SubHookNames);
        return names;
    }

    /// <summary>The splices attached to the model, in the order they were added.</summary>
    public IReadOnlyList<IHookSplice> Splices => _splices;

    /// <summary>
    /// Attaches a splice (an SAE or transcoder) to every later run — forward, backward, generation and
    /// everything built on them (patching, attribution) — until the returned handle is disposed or
    /// <see cref="RemoveSplice"/> is called. Its sub-hooks join <see cref="HookPointNames"/>. A one-token
    /// run checks that it fits before it is kept. Not thread-safe: attach and detach between runs.
    /// </summary>
    /// <exception cref="ArgumentException">Its input or output hook is not a hook point of this model (the message lists the closest names), or a splice already replaces that hook.</exception>
    /// <exception cref="Exception">Whatever the splice throws on the one-token run (e.g. an <see cref="ArgumentException"/> when its width does not fit the hook); it is not attached.</exception>
    public IDisposable AddSplice(IHookSplice splice)
    {
        ArgumentNullException.ThrowIfNull(splice);
        CheckSplices([splice]);
        if (_splices.Any(s => s.OutputHook == splice.OutputHook))
            throw new ArgumentException($"a splice already replaces '{splice.OutputHook}'; remove it first (one SAE or transcoder per hook point)", nameof(splice));
        _splices.Add(splice);
        _hookNames = null;
        try
        {
            // One token through the model checks that the splice fits (its width, its hooks' order) before it is kept.
            Run(TokenBatch.Single(Config.BosTokenId is int bos && bos < Config.DVocab ? bos : 0), new RunOptions { LastPositionLogitsOnly = true });
        }
        catch
        {
            _splices.Remove(splice);
            _hookNames = null;
            throw;
        }
        return new SpliceHandle(this, splice);
    }

    /// <summary>Detaches a splice added with <see cref="AddSplice"/>; returns false when it was not attached.</summary>
    public bool RemoveSplice(IHookSplice splice)
    {
        if (!_splices.Remove(splice)) return false;
        _hookNames = null;
        return true;
    }

    sealed class SpliceHandle(HookedTransformer model, IHookSplice splice) : IDisposable
    {
        public void Dispose() => model.RemoveSplice(splice);
    }

    /// <exception cref="ArgumentException">A splice's input or output hook is not a hook point of this model.</exception>
    void CheckSplices(IReadOnlyList<IHookSplice> splices)
    {
        if (splices.Count == 0) return;
        var known = HookPointNames;
        foreach (var splice in splices)
            foreach (var (hook, role) in new[] { (splice.OutputHook, "replaces"), (splice.InputHook, "reads") })
                if (!known.Contains(hook))
                    throw new ArgumentException($"a splice {role} hook '{hook}', which is not a hook point of this model ({Config.Architecture}); closest: {string.Join(", ", HookNames.Closest(hook, known))}", nameof(splices));
    }

    /// <summary>
    /// Bytes a cache of <paramref name="hooks"/> takes for a batch of <paramref name="batch"/> × <paramref name="positions"/>
    /// tokens (fp32), from the declared hook points — known before the run. Hooks that are not declared
    /// (splice sub-hooks) are not counted; <paramref name="uncounted"/> says how many.
    /// </summary>
    public long EstimateCacheBytes(IEnumerable<string> hooks, int batch, int positions, out int uncounted)
    {
        var declared = HookPoints.ToDictionary(p => p.Name, StringComparer.Ordinal);
        long bytes = 0;
        uncounted = 0;
        foreach (var name in hooks)
        {
            if (!declared.TryGetValue(name, out var point)) { uncounted++; continue; }
            bytes += 4 * point.Shape(batch, positions).Aggregate(1L, (a, d) => a * d);
        }
        return bytes;
    }

    /// <summary>Runs the model on one sequence.</summary>
    public ForwardResult Run(int[] tokens, RunOptions? options = null) => Run(TokenBatch.Single(tokens), options);

    /// <summary>
    /// Runs the model and records the hook points matching <paramref name="hookPatterns"/> (comma-separated globs; null = all but
    /// the per-head input copies, <c>hook_q_input</c> and kin, which a pattern must name: <see cref="HookPattern.Matches"/>).
    /// </summary>
    public ForwardResult RunWithCache(TokenBatch tokens, string? hookPatterns = null, RunOptions? options = null)
    {
        options ??= new RunOptions();
        if (hookPatterns is null) options.CacheAll();
        else
        {
            var selected = new HashSet<string>(new HookPattern(hookPatterns).Select(HookPointNamesWith(options)), StringComparer.Ordinal);
            options.CacheFilter = selected.Contains;
        }
        return Run(tokens, options);
    }

    /// <summary>Runs the model on a batch with the given hooks and cache filter.</summary>
    /// <exception cref="InputError">A token id is outside the vocabulary or the sequence exceeds n_ctx.</exception>
    public ForwardResult Run(TokenBatch tokens, RunOptions? options = null)
    {
        CheckTokens(tokens, 0);
        options ??= new RunOptions();
        CheckSplices(options.Splices);
        var ctx = new ForwardContext(Backend, options, tokens.Batch, tokens.Length, tokens.Positions(), tokens.Valid, null, -1, tokens.Ids, _splices, ScratchPool);
        var logits = Forward(tokens, ctx);
        var scratch = ctx.UnreleasedScratch();
        ctx.ReturnScratch();
        return new ForwardResult(logits, ctx.Cache) { Scratch = scratch, Pool = ScratchPool };
    }

    /// <summary>
    /// Gives the storage of <paramref name="result"/>'s logits and cached activations to this model's
    /// <see cref="ScratchPool"/>, so that a later pass of a similar shape reuses it instead of allocating: a harvest loop
    /// that copies out what it keeps calls this after each batch. Only storage the pass itself allocated goes back (not a
    /// tensor a hook put in its place); the result's cache is emptied (reading it then names this), and
    /// <paramref name="result"/>'s logits and every tensor a hook received in that pass must not be read again.
    /// </summary>
    /// <exception cref="ArgumentException">The result came from another model, or was already recycled.</exception>
    public void Recycle(ForwardResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        if (result.Recycled) throw new ArgumentException("this forward result was already recycled", nameof(result));
        if (result.Pool is not null && !ReferenceEquals(result.Pool, ScratchPool))
            throw new ArgumentException("this forward result came from another model; recycle it on the model that ran it", nameof(result));
        var cached = result.Cache.TakeAll();
        if (result.Scratch is not { } scratch) return; // a result made elsewhere: nothing is known to be scratch
        var wholes = new HashSet<TensorStorage>(ReferenceEqualityComparer.Instance); // a tensor cached under two names goes back once
        foreach (var tensor in cached.Append(result.Logits))
            if (scratch.TryGetValue(tensor.Storage, out var whole)) wholes.Add(whole);
        ScratchPool.Return(wholes);
    }

    /// <summary>
    /// Forward and backward: the metric's value and d metric / d activation at every hook point
    /// matching <paramref name="gradientHooks"/> (comma-separated globs; null = all but the per-head input copies, which are
    /// recorded only when named: see <see cref="HookNames.IsPerHeadInput"/>). Gradient hooks in
    /// <paramref name="options"/> may edit gradients on the way back. Forward-hook edits are treated as
    /// additive (identity Jacobian). Memory: every activation the backward needs is kept until it ends —
    /// about the size of a full activation cache of the forward pass.
    /// </summary>
    public GradientResult RunWithGradients(TokenBatch tokens, Metrics.IMetric metric, string? gradientHooks = null, RunOptions? options = null)
    {
        options ??= new RunOptions();
        if (gradientHooks is not null)
        {
            var selected = new HashSet<string>(new HookPattern(gradientHooks).Select(HookPointNamesWith(options)), StringComparer.Ordinal);
            options.GradientFilter = selected.Contains;
        }
        else options.GradientFilter ??= static name => !HookNames.IsPerHeadInput(name); // n_heads copies of resid_pre each: only when named
        if (options.LastPositionLogitsOnly) throw new ArgumentException("a backward pass needs logits at every position; unset LastPositionLogitsOnly");
        CheckTokens(tokens, 0);
        CheckSplices(options.Splices);
        var ctx = new ForwardContext(Backend, options, tokens.Batch, tokens.Length, tokens.Positions(), tokens.Valid, null, -1, tokens.Ids, _splices, ScratchPool)
        {
            Saved = new Dictionary<object, object>(ReferenceEqualityComparer.Instance),
        };
        var logits = Forward(tokens, ctx);
        var (value, dLogits) = Metrics.MetricOnDevice.Evaluate(metric, logits, Backend);
        if (!double.IsFinite(value)) throw new InvalidOperationException($"metric {metric.Name} is {value}; cannot differentiate");
        Backward(ctx, logits, dLogits, metric.PositionsRead(tokens.Length));
        ctx.ReturnScratch();
        return new GradientResult(value, logits, ctx.Cache, ctx.Gradients);
    }

    /// <summary>
    /// Backward from d logits through the unembedding, final norm, blocks (in reverse) and embeddings.
    /// <paramref name="positionsRead"/>: the only positions where d logits can be non-zero (null: any).
    /// </summary>
    void Backward(ForwardContext ctx, Tensor logits, Tensor dLogits, int[]? positionsRead = null)
    {
        int B = logits.Dim(0), T = logits.Dim(1), D = Config.DModel;
        var be = ctx.Backend;
        if (Config.FinalLogitSoftCap > 0)
        {
            // Forward: logits = cap·tanh(z/cap) ⇒ dz = d logits · (1 − (logits/cap)²).
            var dz = be.Empty(B, T, Config.VocabOut);
            be.SoftCapBackward(logits, dLogits, Config.FinalLogitSoftCap, dz);
            dLogits = dz;
        }
        // Forward: logits = normed·W_U + b_U.
        var dNormed = UnembedBackward(ctx, dLogits, B, T, positionsRead);
        var dResid = ctx.Replacing(dNormed, HeadBackward(ctx, dNormed));
        for (int l = Config.NLayers - 1; l >= 0; l--) dResid = BlockBackward(l, ctx, dResid);
        EmbedBackward(ctx, dResid);
    }

    /// <summary>
    /// d normed = d logits·W_Uᵀ. When the metric reads a few positions, only their rows are gathered and multiplied
    /// (the full product is as costly as the forward's unembedding, ~a quarter of a small model's forward); the other
    /// rows of d normed are zero.
    /// </summary>
    Tensor UnembedBackward(ForwardContext ctx, Tensor dLogits, int B, int T, int[]? positionsRead)
    {
        var be = ctx.Backend;
        int D = Config.DModel, V = Config.VocabOut;
        var dNormed = ctx.GradScratch(B, T, D);
        if (positionsRead is null || positionsRead.Length * 2 > T)
        {
            Unembed.BackwardInput(be, dLogits, B * T, dNormed);
            return dNormed;
        }
        int P = positionsRead.Length;
        var rows = ctx.GradScratch(B * P, V);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < P; i++)
                be.CopyRows(dLogits, ((long)b * T + positionsRead[i]) * V, V, rows, ((long)b * P + i) * V, V, 1, V);
        var dRows = ctx.GradScratch(B * P, D);
        Unembed.BackwardInput(be, rows, B * P, dRows);
        ctx.Release(rows);
        be.Fill(dNormed, 0f);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < P; i++)
                be.CopyRows(dRows, ((long)b * P + i) * D, D, dNormed, ((long)b * T + positionsRead[i]) * D, D, 1, D);
        ctx.Release(dRows);
        return dNormed;
    }

    /// <summary>What stands between the last block and the unembedding: the final norm by default (BERT: its MLM transform).</summary>
    protected virtual Tensor Head(ForwardContext ctx, Tensor resid) => FinalNorm is null ? resid : FinalNorm.Forward(ctx, -1, resid);

    /// <summary>The backward of <see cref="Head"/>: d (unembedding input) → d (last block's output).</summary>
    protected virtual Tensor HeadBackward(ForwardContext ctx, Tensor dNormed) => FinalNorm is null ? dNormed : FinalNorm.Backward(ctx, -1, dNormed);

    /// <summary>The backward of <see cref="Embed"/>: receives d resid_pre of block 0.</summary>
    protected virtual void EmbedBackward(ForwardContext ctx, Tensor dResid)
    {
        // Forward: resid_pre.0 = hook_embed (+ hook_pos_embed); both receive the residual gradient. Shortformer positions
        // never joined the stream: theirs is what the attention layers' queries and keys sent them.
        if (Config.ShortformerPositions)
        {
            var dPos = ctx.ShortformerPositionGradient;
            if (dPos is null)
            {
                dPos = ctx.GradScratch(dResid.Shape.ToArray());
                ctx.Backend.Fill(dPos, 0f);
            }
            ctx.GradHook(HookNames.PosEmbed, -1, dPos);
        }
        else if (!WPos.IsEmpty) ctx.GradHook(HookNames.PosEmbed, -1, dResid);
        ctx.GradHook(HookNames.Embed, -1, dResid);
    }

    /// <summary>Backward of <see cref="SequentialBlock"/>, hook point by hook point in reverse.</summary>
    protected Tensor SequentialBlockBackward(int l, ForwardContext ctx, Tensor dResidPost, Norm ln1, AttentionLayer attn, Norm? ln2, MlpLayer? mlp)
    {
        var names = attn.Names;
        dResidPost = ctx.GradHook(names.ResidPost, l, dResidPost);
        Tensor dResidMid = dResidPost;
        if (mlp is not null)
        {
            // Forward: resid_post = resid_mid + mlp(ln2(hook_mlp_in)), hook_mlp_in = resid_mid.
            var dMlpOut = ctx.GradHook(names.MlpOut, l, dResidPost);
            var viaMlp = ctx.GradHook(names.HookMlpIn, l, SubLayerBackward(ctx, mlp.Backward(ctx, dMlpOut), d => ln2!.Backward(ctx, l, d)));
            dResidMid = ctx.GradHook(names.ResidMid, l, SumGradients(ctx, dResidPost, viaMlp));
            ctx.Release(dMlpOut); // a hook's replacement of d resid_post; else the same tensor, released just above
        }
        // Forward: resid_mid = resid_pre + attn(ln1(resid_pre)).
        var dAttnOut = ctx.GradHook(names.AttnOut, l, dResidMid);
        var viaAttn = AttentionBranchBackward(ctx, l, dAttnOut, ln1, attn);
        var dResidPre = SumGradients(ctx, dResidMid, viaAttn);
        ctx.Release(dAttnOut);
        return ctx.GradHook(names.ResidPre, l, dResidPre);
    }

    /// <summary>d (the sub-layer's norm input) from d (the sub-layer's input): the latter is released once the norm's backward read it.</summary>
    protected static Tensor SubLayerBackward(ForwardContext ctx, Tensor dLayerInput, Func<Tensor, Tensor> normBackward) =>
        ctx.Replacing(dLayerInput, normBackward(dLayerInput));

    /// <summary>The sum of two gradients into a new tensor (<see cref="ForwardContext.GradScratch"/>); both addends are released.</summary>
    protected static Tensor SumGradients(ForwardContext ctx, Tensor a, Tensor b)
    {
        var y = ctx.GradScratch(a.Shape.ToArray());
        ctx.Backend.Add(a, b, y);
        ctx.Release(a);
        ctx.Release(b);
        return y;
    }

    /// <summary>The sum of three gradients into a new tensor; the addends are released.</summary>
    protected static Tensor SumGradients(ForwardContext ctx, Tensor a, Tensor b, Tensor c)
    {
        var y = ctx.GradScratch(a.Shape.ToArray());
        ctx.Backend.Add(a, b, y);
        ctx.Backend.Add(y, c, y);
        ctx.Release(a);
        ctx.Release(b);
        ctx.Release(c);
        return y;
    }

    /// <summary>Forward pass within a context (also used by generation with a KV cache).</summary>
    /// <exception cref="InputError">The logits are not finite; the message names the first hook point whose activation was NaN or ±∞.</exception>
    internal Tensor Forward(TokenBatch tokens, ForwardContext ctx)
    {
        var logits = ForwardUnchecked(tokens, ctx);
        if (ctx.DefersFiniteCheck) return logits;
        // One vectorized scan of the logits; only when it fails is the pass re-run hook by hook.
        long bad = ctx.Backend.IndexOfNonFinite(logits);
        if (bad >= 0 && !ctx.ChecksFinite) throw NonFiniteLogits(tokens, ctx, logits, bad);
        return logits;
    }

    /// <summary>
    /// Re-runs the pass with a check at every hook point and names the first whose activation is NaN
    /// or ±∞ (the weights were checked at load, so this is where the values went bad: a hook, a splice,
    /// or an overflow). User hooks run a second time on this path.
    /// </summary>
    InputError NonFiniteLogits(TokenBatch tokens, ForwardContext ctx, Tensor logits, long bad)
    {
        string model = Source ?? Config.SourcePath ?? Config.Architecture;
        string found = $"{NonFinite.Describe(logits.ToCpu().Span[(int)bad])} at {NonFinite.Unravel((int)bad, logits.Shape)} of {logits.ShapeString}";
        try
        {
            ForwardUnchecked(tokens, ctx.ForFiniteCheck());
        }
        catch (NonFiniteActivationException e)
        {
            string where = e.AfterHooks
                ? $"first at hook point {e.Hook}, made non-finite by a hook or splice there ({e.Message[(e.Hook.Length + 2)..]})"
                : $"first at hook point {e.Hook} ({e.Message[(e.Hook.Length + 2)..]})";
            return new InputError($"{model}: the forward pass produced non-finite values, {where}; the logits hold {found}");
        }
        return new InputError($"{model}: the logits hold {found}, although every hook point was finite (the final norm, unembedding or soft-cap overflowed)");
    }

    Tensor ForwardUnchecked(TokenBatch tokens, ForwardContext ctx)
    {
        var be = ctx.Backend;
        var resid = Embed(tokens, ctx);
        for (int l = 0; l < Config.NLayers; l++) resid = Block(l, ctx, resid);
        if (ctx.LastPositionLogitsOnly && tokens.Length > 1)
            resid = LastPosition(be, resid);
        var normed = Head(ctx, resid);
        int B = normed.Dim(0), T = normed.Dim(1);
        var logits = be.Empty(B, T, Config.VocabOut);
        Unembed.Forward(be, normed, B * T, logits);
        if (Config.FinalLogitSoftCap > 0) be.SoftCap(logits, Config.FinalLogitSoftCap, logits);
        return logits;
    }

    /// <summary>hook_embed (+ hook_pos_embed) summed into resid_pre of block 0 (a shortformer's positions are kept aside for attention).</summary>
    protected virtual Tensor Embed(TokenBatch tokens, ForwardContext ctx)
    {
        var be = ctx.Backend;
        int B = tokens.Batch, T = tokens.Length, D = Config.DModel;
        var embed = ctx.Scratch(B, T, D);
        be.Embedding(_embedding.On(be)!, D, tokens.Ids, Config.EmbedScale, embed);
        embed = ctx.Hook(HookNames.Embed, -1, embed);
        if (WPos.IsEmpty) return embed;
        var pos = ctx.Scratch(B, T, D);
        be.Embedding(_positions.On(be)!, D, ctx.Positions, 1f, pos);
        pos = ctx.Hook(HookNames.PosEmbed, -1, pos);
        if (!Config.ShortformerPositions) return SumReleasing(ctx, embed, pos);
        ctx.ShortformerPositions = pos;              // attention adds it to its queries and keys (AttentionInputs)
        return embed;
    }

    /// <summary>
    /// The pre-norm sequential block (GPT-2, Llama, Qwen2, Mistral, TransformerLens checkpoints):
    /// <c>resid_mid = resid_pre + attn(ln1(resid_pre))</c>, <c>resid_post = resid_mid + mlp(ln2(resid_mid))</c>.
    /// Attention-only models skip the MLP and resid_mid, as TransformerLens does.
    /// </summary>
    protected Tensor SequentialBlock(int l, ForwardContext ctx, Tensor residPre, Norm ln1, AttentionLayer attn, Norm? ln2, MlpLayer? mlp)
    {
        var names = attn.Names;
        residPre = ctx.Hook(names.ResidPre, l, residPre);
        // hook_attn_out is exactly what is added to the residual stream.
        var attnOut = ctx.Hook(names.AttnOut, l, AttentionBranch(ctx, l, residPre, ln1, attn));
        if (mlp is null) return ctx.Hook(names.ResidPost, l, SumReleasing(ctx, residPre, attnOut));
        var residMid = ctx.Hook(names.ResidMid, l, SumReleasing(ctx, residPre, attnOut));
        var mlpIn = MlpBranchInput(ctx, names, residMid);
        var mlpOut = ctx.Hook(names.MlpOut, l, SubLayer(ctx, mlpIn, ln2!.Forward(ctx, l, mlpIn), mlp.Forward));
        return ctx.Hook(names.ResidPost, l, SumReleasing(ctx, residMid, mlpOut));
    }

    /// <summary>
    /// attn(ln1(<paramref name="residPre"/>)), through TransformerLens's per-head input hooks (<c>hook_attn_in</c>,
    /// <c>hook_q_input</c>, … : see <see cref="AttentionInputs"/>), which split the pass per head only when something edits them
    /// or reads their gradient.
    /// </summary>
    protected static Tensor AttentionBranch(ForwardContext ctx, int l, Tensor residPre, Norm ln1, AttentionLayer attn) =>
        AttentionInputs.Forward(ctx, l, residPre, ln1, attn);

    /// <summary>Backward of <see cref="AttentionBranch"/>: d (attention's output) → the gradient it sends to resid_pre.</summary>
    protected static Tensor AttentionBranchBackward(ForwardContext ctx, int l, Tensor dAttention, Norm ln1, AttentionLayer attn) =>
        AttentionInputs.Backward(ctx, l, dAttention, ln1, attn);

    /// <summary>
    /// TransformerLens's <c>hook_mlp_in</c>: the stream the MLP branch reads. Copied only when something reads the hook, so
    /// what a hook or splice does there reaches the MLP alone while the skip path keeps <paramref name="stream"/>; else
    /// <paramref name="stream"/> itself. The backward passes the MLP branch's gradient through the same hook
    /// (<see cref="ForwardContext.GradHook"/> at <see cref="BlockHookNames.HookMlpIn"/>) before it joins the residual's.
    /// </summary>
    protected static Tensor MlpBranchInput(ForwardContext ctx, BlockHookNames names, Tensor stream)
    {
        if (!ctx.Wants(names.HookMlpIn)) return stream;
        int d = stream.Dim(-1);
        var copy = ctx.Scratch(stream.Shape.ToArray());
        ctx.Backend.CopyRows(stream, 0, d, copy, 0, d, stream.Length / d, d);
        return ctx.Hook(names.HookMlpIn, names.Layer, copy);
    }

    /// <summary>Runs <paramref name="layer"/> on <paramref name="normed"/> (the norm of the stream), then releases <paramref name="normed"/> unless it is the stream itself (a norm of kind None).</summary>
    protected static Tensor SubLayer(ForwardContext ctx, Tensor resid, Tensor normed, Func<ForwardContext, Tensor, Tensor> layer)
    {
        var output = layer(ctx, normed);
        if (!ReferenceEquals(normed, resid)) ctx.Release(normed);
        return output;
    }

    /// <summary><c>a + b</c> into a new tensor, after which both addends are released (dead unless a hook point exposed them).</summary>
    protected static Tensor SumReleasing(ForwardContext ctx, Tensor a, Tensor b)
    {
        var y = Sum(ctx, a, b);
        ctx.Release(a);
        ctx.Release(b);
        return y;
    }

    /// <summary><c>a + b</c> into a new tensor (residual additions never write into a hooked tensor).</summary>
    protected static Tensor Sum(ForwardContext ctx, Tensor a, Tensor b)
    {
        var y = ctx.Scratch(a.Shape.ToArray());
        ctx.Backend.Add(a, b, y);
        return y;
    }

    /// <summary><c>a + b + c</c> into a new tensor.</summary>
    protected static Tensor Sum(ForwardContext ctx, Tensor a, Tensor b, Tensor c)
    {
        var y = Sum(ctx, a, b);
        ctx.Backend.Add(y, c, y);
        return y;
    }

    /// <summary><c>a + b + c</c> into a new tensor, after which the addends are released.</summary>
    protected static Tensor SumReleasing(ForwardContext ctx, Tensor a, Tensor b, Tensor c)
    {
        var y = Sum(ctx, a, b, c);
        ctx.Release(a);
        ctx.Release(b);
        ctx.Release(c);
        return y;
    }

    static Tensor LastPosition(IComputeBackend be, Tensor x)
    {
        int B = x.Dim(0), T = x.Dim(1), D = x.Dim(2);
        var y = be.Empty(B, 1, D);
        be.CopyRows(x, (long)(T - 1) * D, T * D, y, 0, D, B, D);
        return y;
    }

    internal void CheckTokens(TokenBatch tokens, int offset)
    {
        for (int i = 0; i < tokens.Ids.Length; i++)
        {
            int id = tokens.Ids[i];
            if ((uint)id >= (uint)Config.DVocab)
                throw new InputError($"token id {id} at batch {i / tokens.Length}, position {i % tokens.Length} is outside the vocabulary (d_vocab = {Config.DVocab})");
        }
        if (offset + tokens.Length > Config.NCtx)
            throw new InputError($"the sequence has {offset + tokens.Length} positions but the model's context is n_ctx = {Config.NCtx}");
    }

    /// <summary>
    /// Generates continuations with a KV cache; hooks in <paramref name="options"/> stay active on
    /// every step (<see cref="HookContext.GenerationStep"/> tells them which). Rows of different
    /// lengths are left-padded. Returns only the new tokens of each row. <see cref="GenerationOptions.OnToken"/>
    /// sees each token as it is picked (streaming, monitors, early stops); <paramref name="cancel"/> is checked
    /// before every step.
    /// </summary>
    public int[][] Generate(IReadOnlyList<int[]> prompts, GenerationOptions generation, RunOptions? options = null, CancellationToken cancel = default)
    {
        options ??= new RunOptions();
        if (Config.Architecture == "bert")
            throw new InputError($"{Source ?? Config.Architecture}: an encoder (bidirectional attention) does not generate text; run it, or read its masked-token predictions");
        var batch = TokenBatch.FromRows(prompts, Config.EosTokenId ?? 0, PaddingSide.Left);
        CheckTokens(batch, 0);
        CheckSplices(options.Splices);
        int maxNew = Math.Min(generation.MaxNewTokens, Config.NCtx - batch.Length);
        if (maxNew < generation.MaxNewTokens && generation.MaxNewTokens > 0 && maxNew <= 0)
            throw new InputError($"the prompt already fills the context (n_ctx = {Config.NCtx}); no token can be generated");
        var cache = new KvCache(Backend, Config.NLayers, batch.Batch, batch.Length + Math.Max(maxNew, 0), Config.KvHeads, Config.DHead);
        var sampler = new Sampler(generation);
        var outputs = Enumerable.Range(0, batch.Batch).Select(_ => new List<int>()).ToArray();
        var finished = new bool[batch.Batch];
        var realCount = new int[batch.Batch];
        for (int b = 0; b < batch.Batch; b++) realCount[b] = prompts[b].Length;

        var lastOptions = CloneForLastPosition(options);
        var current = batch;
        int[] positions = batch.Positions();
        for (int step = 0; step <= maxNew - 1; step++)
        {
            cancel.ThrowIfCancellationRequested();
            bool[]? keyValid = batch.Valid is null ? null : cache.MaskWithIncoming(current.Length, current.Valid);
            var ctx = new ForwardContext(Backend, lastOptions, current.Batch, current.Length, positions, keyValid, cache, step, current.Ids, _splices, ScratchPool);
            var logits = Forward(current, ctx);
            ctx.ReturnScratch();
            cache.Advance(current.Length, current.Valid);
            // Greedy decoding picks on the device (one id per row comes back); sampling reads the last logits.
            int[]? picks = generation.Temperature == 0f ? Backend.ArgMaxRows(logits, batch.Batch, Config.VocabOut) : null;
            var hostLogits = picks is null ? logits.ToCpu() : null;
            float[]? sharedLogits = null; // one host copy per step for every row's OnToken
            var next = new int[batch.Batch];
            for (int b = 0; b < batch.Batch; b++)
            {
                next[b] = finished[b] ? (Config.EosTokenId ?? 0) : picks?[b] ?? sampler.Sample(hostLogits!.Span.Slice(b * Config.VocabOut, Config.VocabOut));
                if (finished[b]) continue;
                outputs[b].Add(next[b]);
                if (generation.StopAtEos && next[b] == Config.EosTokenId) finished[b] = true;
                if (generation.OnToken is { } onToken)
                {
                    sharedLogits ??= hostLogits?.Span.ToArray();
                    var token = new GeneratedToken(b, outputs[b].Count - 1, next[b], logits, sharedLogits, Config.VocabOut, Backend);
                    if (!onToken(token)) finished[b] = true;
                }
            }
            if (finished.All(f => f)) break;
            current = new TokenBatch(next, batch.Batch, 1);
            positions = new int[batch.Batch];
            for (int b = 0; b < batch.Batch; b++) positions[b] = realCount[b]++;
        }
        return outputs.Select(o => o.ToArray()).ToArray();
    }

    static RunOptions CloneForLastPosition(RunOptions options)
    {
        var copy = new RunOptions { CacheFilter = options.CacheFilter, LastPositionLogitsOnly = true, CacheOn = options.CacheOn };
        foreach (var (name, hooks) in options.Hooks)
            foreach (var h in hooks) copy.AddHook(name, h);
        foreach (var splice in options.Splices) copy.AddSplice(splice);
        return copy;
    }

    public void Dispose()
    {
        ScratchPool.Clear();
        WeightOwner?.Dispose();
        GC.SuppressFinalize(this);
    }
}
