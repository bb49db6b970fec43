using System.Diagnostics;
using Loupe.Attribution.Engine;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Tensors;

namespace Loupe.Attribution;

/// <summary>What an attribution cost.</summary>
/// <param name="ActiveFeatures">Active features on the prompt (outside position 0).</param>
/// <param name="FeatureNodes">Feature nodes in the graph.</param>
/// <param name="Batches">Batched backward passes run.</param>
/// <param name="Elapsed">Wall time of the whole attribution, forward included.</param>
/// <param name="ForwardTime">Wall time of one forward pass of the model on the prompt.</param>
/// <param name="EstimatedBytes">The memory the attribution was estimated to take (printed before the backward passes).</param>
public sealed record AttributionStats(int ActiveFeatures, int FeatureNodes, int Batches, TimeSpan Elapsed, TimeSpan ForwardTime, long EstimatedBytes)
{
    /// <summary>The cost in forward-pass equivalents: elapsed time over one forward pass's time.</summary>
    public double PassEquivalents => ForwardTime.TotalSeconds > 0 ? Elapsed.TotalSeconds / ForwardTime.TotalSeconds : double.NaN;
}

/// <summary>
/// Computes a prompt's attribution graph through a replacement model as circuit-tracer's <c>attribute</c>
/// does (Ameisen et al. 2025): one forward pass captures the local replacement model; logit rows first,
/// then feature rows (all of them, or greedily by influence up to <see cref="AttributionSettings.MaxFeatureNodes"/>),
/// each a batch of target rows through one linear backward pass.
/// </summary>
public sealed partial class Attributor
{
    readonly HookedTransformer _model;
    readonly IMlpReplacement _transcoders;
    readonly AttributionSettings _settings;
    readonly DeviceMlpReplacement? _device;

    /// <summary>
    /// With a model on a device, the transcoders' weights are uploaded here, once (the replacement model, the
    /// backward and the read-outs then stay on the device; see <see cref="Attribute"/>).
    /// </summary>
    /// <param name="model">The model, on any backend.</param>
    /// <param name="transcoders">What replaces its MLPs.</param>
    /// <param name="settings">Attribution settings (defaults when null).</param>
    /// <exception cref="InputError">The model is on a device and the transcoders have no device kernels.</exception>
    public Attributor(HookedTransformer model, IMlpReplacement transcoders, AttributionSettings? settings = null)
        : this(model, transcoders, settings, null) { }

    /// <summary>With transcoder weights already on the model's device (uploaded once by the caller, shared by attributions).</summary>
    /// <param name="model">The model, on the backend the weights were uploaded to.</param>
    /// <param name="transcoders">The transcoders' weights on that backend.</param>
    /// <param name="settings">Attribution settings (defaults when null).</param>
    public Attributor(HookedTransformer model, DeviceMlpReplacement transcoders, AttributionSettings? settings = null)
        : this(model, transcoders?.Replacement!, settings, transcoders) { }

    Attributor(HookedTransformer model, IMlpReplacement transcoders, AttributionSettings? settings, DeviceMlpReplacement? device)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _transcoders = transcoders ?? throw new ArgumentNullException(nameof(transcoders));
        if (device is not null && device.Backend != model.Backend)
            throw new ArgumentException($"the transcoders' weights are on {device.Backend.Device}, the model on {model.Backend.Device}", nameof(transcoders));
        _device = device ?? (model.Backend.Device.IsCpu ? null : DeviceMlpReplacement.Upload(transcoders, model.Backend));
        _settings = settings ?? new AttributionSettings();
        if (_settings.MaxLogits < 1) throw new ArgumentOutOfRangeException(nameof(settings), $"max logits must be ≥ 1, not {_settings.MaxLogits}");
        if (!(_settings.LogitProbability > 0 && _settings.LogitProbability <= 1)) throw new ArgumentOutOfRangeException(nameof(settings), $"the logit probability must be in (0, 1], not {_settings.LogitProbability}");
        if (_settings.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(settings), $"the batch size must be ≥ 1, not {_settings.BatchSize}");
        if (_settings.MaxFeatureNodes is < 0) throw new ArgumentOutOfRangeException(nameof(settings), $"max feature nodes must be ≥ 0, not {_settings.MaxFeatureNodes}");
        if (_settings.ZeroPositions is < 1) throw new ArgumentOutOfRangeException(nameof(settings), $"zero positions must be ≥ 1, not {_settings.ZeroPositions}");
    }

    /// <summary>What the last <see cref="Attribute"/> cost.</summary>
    public AttributionStats? Stats { get; private set; }

    void Log(string line) => _settings.Log?.Invoke(line);

    int ZeroPositions(int[] tokens) => _settings.ZeroPositions ?? AttributionSettings.DefaultZeroPositions(_model.Config.Architecture, tokens);

    /// <summary>The attribution graph of <paramref name="tokens"/> (unpruned).</summary>
    /// <exception cref="InputError">The transcoders do not fit the model, the prompt is empty or too long, a token is outside the vocabulary, or no feature is active.</exception>
    public AttributionGraph Attribute(int[] tokens, string? prompt = null)
    {
        var clock = Stopwatch.StartNew();
        var s = ReplacementState.Capture(_model, _transcoders, tokens, _device, ZeroPositions(tokens));
        var cfg = _model.Config;
        int L = cfg.NLayers, T = s.Positions, D = s.DModel, F = s.Active.Length;
        int errorOffset = F, tokenOffset = F + L * T, logitOffset = F + (L + 1) * T;

        var (logitIds, logitProbs, logitVectors, logitLabels) = _settings.Targets is { } explicitTargets
            ? ExplicitTargets(explicitTargets, s.LastLogits ?? HostLogits(s.DeviceLastLogits!))
            : s.LastLogits is { } lastLogits ? WithoutLabels(SalientLogits(lastLogits)) : WithoutLabels(SalientLogitsOnDevice(s.DeviceLastLogits!));
        // On a device the logit directions (W_U columns from its host copy, demeaned) go in once, as constants.
        var logitTensor = s.OnDevice
            ? _model.Backend.ToDevice(Tensor.FromArray([.. logitVectors.SelectMany(v => v)], logitVectors.Length, D), Tensors.Backends.TransferKind.Weights)
            : null;
        int nLogits = logitIds.Length, totalNodes = logitOffset + nLogits;
        int maxFeatures = Math.Min(_settings.MaxFeatureNodes ?? F, F);
        int N = Math.Min(_settings.BatchSize, Math.Max(nLogits, maxFeatures));

        // Sources by the place they write: per MLP output, the decoder rows of the features that write it
        // (each distinct feature once) and that layer's error vectors; then the token embeddings.
        var (readouts, tokenReadout) = Readouts(s);

        long rowBytes = 4L * (maxFeatures + nLogits) * totalNodes;
        long working = EstimateWorkingBytes(s, readouts, tokenReadout, N, totalNodes);
        long budget = _settings.MaxMemoryBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2;
        using var rows = new RowStore(totalNodes, maxFeatures + nLogits, Math.Max(0, budget - working), _settings.ScratchDirectory ?? Path.GetTempPath());
        long estimate = working + (rows.OnDisk ? 4L * N * totalNodes : rowBytes) + GraphBytes(maxFeatures, nLogits, L, T);
        Log($"attribution: {T} positions, {F} active features, {nLogits} logit targets (p = {logitProbs.Sum():0.####}), {maxFeatures} feature nodes, batches of {N}");
        Log($"attribution: memory ≈ {Bytes(estimate)} (patterns, sources and gradients {Bytes(working)}; rows {Bytes(rowBytes)}{(rows.OnDisk ? " streamed to " + rows.ScratchPath : " in memory")})");

        var backward = new LinearBackward(s, N, _settings.CausalBlock);
        float[]? blockBuffer = null;
        int batches = 0;
        var rowToNode = new int[maxFeatures + nLogits];
        var rowLayer = new int[maxFeatures + nLogits];

        // Logit rows first: injected at the final norm's output, last position.
        for (int i = 0; i < nLogits; i += N)
        {
            int n = Math.Min(N, nLogits - i);
            var specs = Enumerable.Range(i, n).Select(j => logitTensor is null
                ? TargetRow(backward, s, L, T - 1, logitVectors[j])
                : DeviceTargetRow(backward, s, L, T - 1, into => _model.Backend.CopyRows(logitTensor, (long)j * D, D, into, 0, D, 1, D))).ToArray();
            Append(rows, blockBuffer = ComputeRows(s, backward, readouts, tokenReadout, specs, totalNodes, reuse: blockBuffer), n);
            for (int j = 0; j < n; j++) (rowToNode[i + j], rowLayer[i + j]) = (logitOffset + i + j, L);
            batches++;
        }

        // Feature rows: every feature, or greedily by influence on the logits.
        int row = nLogits, visitedCount = 0;
        var visited = new bool[F];
        var encoder = new float[D];
        while (visitedCount < maxFeatures)
        {
            int[] pending;
            if (maxFeatures == F)
                pending = [.. Enumerable.Range(0, F)];
            else
            {
                var influence = Influence.Partial(rows, totalNodes, logitProbs, rowToNode, rowLayer);
                int queue = Math.Min(_settings.UpdateInterval * N, maxFeatures - visitedCount);
                pending = [.. Enumerable.Range(0, F).Where(f => !visited[f]).OrderByDescending(f => influence[f]).ThenBy(f => f).Take(queue)];
            }
            // Rows of one batch cost up to their last position (causal attention): group the queue by position.
            pending = [.. pending.OrderBy(f => s.Active[f].Position).ThenBy(f => f)];
            for (int start = 0; start < pending.Length; start += N)
            {
                int n = Math.Min(N, pending.Length - start);
                var specs = new RowSpec[n];
                for (int j = 0; j < n; j++)
                {
                    var (l, p, f) = s.Active[pending[start + j]];
                    if (_device is { } dev && s.OnDevice)
                    {
                        specs[j] = DeviceTargetRow(backward, s, l, p, into => dev.EncoderDirection(l, f, into, 0));
                        continue;
                    }
                    _transcoders.EncoderDirection(l, f, encoder);
                    specs[j] = TargetRow(backward, s, l, p, encoder);
                }
                Append(rows, blockBuffer = ComputeRows(s, backward, readouts, tokenReadout, specs, totalNodes, reuse: blockBuffer), n);
                for (int j = 0; j < n; j++)
                {
                    rowToNode[row + j] = pending[start + j];
                    rowLayer[row + j] = s.Active[pending[start + j]].Layer;
                    visited[pending[start + j]] = true;
                }
                row += n;
                visitedCount += n;
                batches++;
            }
            Log($"attribution: {visitedCount}/{maxFeatures} feature rows");
        }

        var graph = Assemble(s, rows, rowToNode, visited, maxFeatures, nLogits, totalNodes, logitIds, logitProbs, prompt);
        graph = graph with { Provenance = Provenance(), LogitLabels = logitLabels, LogitVectors = _settings.Targets is null ? null : logitVectors };
        clock.Stop();
        Stats = new AttributionStats(F, maxFeatures, batches, clock.Elapsed, s.ForwardTime, estimate);
        Log($"attribution: {batches} batched backward passes in {clock.Elapsed.TotalSeconds:0.##} s = {Stats.PassEquivalents:0.#} forward-pass equivalents");
        return graph;
    }

    /// <summary>
    /// One row of a batched backward pass: gradient vectors (already through the frozen norm they enter by)
    /// added to the residual stream at <see cref="Positions"/>. <see cref="Layer"/> = n_layers: at the top
    /// (a logit); otherwise at layer <see cref="Layer"/>'s MLP input (a feature), or just below its attention
    /// (<see cref="AfterAttention"/>: what one head passed back, for per-head attribution).
    /// </summary>
    /// <remarks>With <see cref="DeviceVectors"/> (<c>[positions, d_model]</c> on the model's device) <see cref="Vectors"/> is unused.</remarks>
    internal readonly record struct RowSpec(int Layer, bool AfterAttention, int[] Positions, float[] Vectors, Tensor? DeviceVectors = null);

    /// <summary>The row of a target: a feature's encoder direction at its MLP input, or a logit's demeaned unembedding at the final norm.</summary>
    RowSpec TargetRow(LinearBackward backward, ReplacementState s, int layer, int position, float[] direction)
    {
        // A residual SAE's feature reads the stream itself; a transcoder's reads the MLP input, after ln2 (or resid_mid).
        var norm = layer == _model.Config.NLayers ? _model.FinalNormLayer : s.InputNorm(layer);
        var v = new float[direction.Length];
        backward.FrozenNormHost(norm, position, direction, v, layer < _model.Config.NLayers && s.InputBeforeWeight(layer));
        return new RowSpec(layer, false, [position], v);
    }

    /// <summary>The row of a target on the device: its direction written there by <paramref name="write"/>, through the frozen norm there.</summary>
    RowSpec DeviceTargetRow(LinearBackward backward, ReplacementState s, int layer, int position, Action<Tensor> write)
    {
        var be = _model.Backend;
        int D = _model.Config.DModel;
        var norm = layer == _model.Config.NLayers ? _model.FinalNormLayer : s.InputNorm(layer);
        var raw = be.Empty(1, D);
        write(raw);
        var v = be.Empty(1, D);
        backward.FrozenNormDevice(norm, [position], raw, v, layer < _model.Config.NLayers && s.InputBeforeWeight(layer));
        return new RowSpec(layer, false, [position], [], v);
    }

    /// <summary>
    /// Runs one batch of rows through the linear backward and returns them <c>[rows, width]</c>: for each row,
    /// A[row, source] at every source column. With <paramref name="skipAttention"/> only the residual path is followed.
    /// </summary>
    internal float[] ComputeRows(ReplacementState s, LinearBackward backward, SourceReadout[] readouts, SourceReadout tokenReadout,
        RowSpec[] specs, int width, bool skipAttention = false, float[]? reuse = null)
    {
        var be = _model.Backend;
        int L = s.Layers, N = backward.Rows, D = s.DModel, n = specs.Length;
        var g = backward.Gradient();
        int top = specs.Max(t => t.Layer);
        // Attention is causal: nothing reaches beyond the last position a row starts at.
        int P = specs.Max(t => t.Positions.Max()) + 1;

        // Until a row has been injected the gradient is zero: read-outs and cuts before that are skipped.
        bool live = false;
        void InjectAt(int layer, bool afterAttention)
        {
            var rows = Enumerable.Range(0, n).Where(i => specs[i].Layer == layer && specs[i].AfterAttention == afterAttention).ToArray();
            if (rows.Length == 0) return;
            live = true;
            foreach (int i in rows.Where(i => specs[i].DeviceVectors is not null))
                backward.Inject(g, specs[i].DeviceVectors!, specs[i].Positions, [.. Enumerable.Repeat(i, specs[i].Positions.Length)]);
            rows = [.. rows.Where(i => specs[i].DeviceVectors is null)];
            if (rows.Length == 0) return;
            var positions = rows.SelectMany(i => specs[i].Positions).ToArray();
            var owners = rows.SelectMany(i => Enumerable.Repeat(i, specs[i].Positions.Length)).ToArray();
            var vectors = new float[(long)positions.Length * D];
            int at = 0;
            foreach (int i in rows)
            {
                specs[i].Vectors.AsSpan(0, specs[i].Positions.Length * D).CopyTo(vectors.AsSpan(at * D));
                at += specs[i].Positions.Length;
            }
            backward.Inject(g, vectors, positions, owners);
        }

        InjectAt(L, false);
        long blockLength = (long)n * width;
        var block = reuse is not null && reuse.LongLength >= blockLength ? reuse : new float[blockLength];
        Array.Clear(block, 0, (int)blockLength);
        // On the CPU the read-out buffer is host memory and is read in place. On a device every read-out of the batch
        // writes its own section of one buffer, which comes back in one copy at the end of the batch.
        bool deferred = !be.Device.IsCpu;
        var sections = new Dictionary<SourceReadout, long>(ReferenceEqualityComparer.Instance);
        var read = new List<SourceReadout>();
        Tensor? all = null;
        if (deferred)
        {
            long at = 0;
            foreach (var r in readouts.Append(tokenReadout))
                if (!sections.ContainsKey(r)) { sections[r] = at; at += (long)N * r.Count; }
            all = backward.Readout(checked((int)Math.Max(1, at / N)));
        }
        float[]? host = null;
        void ReadOut(SourceReadout readout)
        {
            if (all is not null)
            {
                readout.Read(be, g, N, all, P, sections[readout]);
                read.Add(readout);
                return;
            }
            var r = backward.Readout(readout.Count);
            readout.Read(be, g, N, r, P);
            ReadOnlySpan<float> values;
            if (r.IsHost) values = r.Span;
            else
            {
                int used = N * Math.Max(1, readout.Count);
                if (host is null || host.Length < used) host = new float[used];
                r.Storage.Slice(0, used).CopyTo(host);
                values = host.AsSpan(0, used);
            }
            readout.Scatter(values, n, block, width, P);
        }
        // A residual SAE's cut: read its sources with the gradient arriving from above, stop that gradient
        // (what passes the cut is the SAE's features and error), start the rows of its own features.
        void CutAt(int l)
        {
            if (live)
            {
                ReadOut(readouts[l]);
                be.Fill(g, 0f);
            }
            InjectAt(l, false);
        }
        for (int l = Math.Min(top, L - 1); l >= 0; l--)
        {
            var a = _model.Anatomy(l);
            if (s.Cuts is { } cuts)
            {
                // Backward through block l: resid_post, (the frozen MLP passes nothing), resid_mid, attention, resid_pre.
                if (cuts[l] == CutPoint.Post) CutAt(l);
                if (cuts[l] == CutPoint.Mid) CutAt(l);
                if (!skipAttention) backward.AddAttention(l, g, g, P);
                InjectAt(l, true);
                if (cuts[l] == CutPoint.Pre) CutAt(l);
                continue;
            }
            if (live) ReadOut(readouts[l]);
            // A skip transcoder's x·W_skip is a live linear path from the MLP's input to its output (circuit-tracer's too).
            var viaSkip = live ? backward.SkipGradient(l, g, P) : null;
            if (a.Parallel)
            {
                if (!skipAttention) backward.AddAttention(l, g, g, P);
                if (viaSkip is not null) be.Add(backward.Prefix(g, P), viaSkip, backward.Prefix(g, P));
                InjectAt(l, false);
            }
            else
            {
                if (viaSkip is not null) be.Add(backward.Prefix(g, P), viaSkip, backward.Prefix(g, P));
                InjectAt(l, false);
                if (!skipAttention) backward.AddAttention(l, g, g, P);
            }
            InjectAt(l, true);
        }
        ReadOut(tokenReadout);
        if (all is not null)
        {
            long used = sections.Count == 0 ? 0 : sections.Max(e => e.Value + (long)N * e.Key.Count);
            if (host is null || host.Length < used) host = new float[used];
            all.Storage.Slice(0, used).CopyTo(host.AsSpan(0, (int)used));
            foreach (var r in read) r.Scatter(host.AsSpan(checked((int)sections[r]), N * r.Count), n, block, width, P);
        }
        return block;
    }

    static void Append(RowStore store, float[] block, int n)
    {
        for (int i = 0; i < n; i++) store.Append(block.AsSpan(i * store.Width, store.Width));
    }

    /// <summary>
    /// circuit-tracer's <c>compute_salient_logits</c>: the smallest set of top tokens whose cumulative probability
    /// reaches the threshold (at most MaxLogits), with their demeaned unembedding columns.
    /// </summary>
    (int[] Ids, float[] Probs, float[][] Vectors) SalientLogits(float[] logits)
    {
        int V = logits.Length, D = _model.Config.DModel;
        double max = logits.Max(), sum = 0;
        var probs = new double[V];
        for (int v = 0; v < V; v++) sum += probs[v] = Math.Exp(logits[v] - max);
        for (int v = 0; v < V; v++) probs[v] /= sum;
        int k = Math.Min(_settings.MaxLogits, V);
        var top = Enumerable.Range(0, V).OrderByDescending(v => probs[v]).ThenBy(v => v).Take(k).ToArray();
        int cut = k;
        double cumulative = 0;
        for (int i = 0; i < k; i++)
        {
            cumulative += (float)probs[top[i]];
            if (cumulative >= _settings.LogitProbability) { cut = i + 1; break; }
        }
        top = top[..cut];

        return (top, [.. top.Select(j => (float)probs[j])], DemeanedUnembedding(top));
    }

    /// <summary>
    /// <see cref="SalientLogits"/> with the logits on the device: softmax and the top MaxLogits there, and only those
    /// probabilities and token ids come back (two copies).
    /// </summary>
    (int[] Ids, float[] Probs, float[][] Vectors) SalientLogitsOnDevice(Tensor logits)
    {
        var be = _model.Backend;
        int V = logits.Length, k = Math.Min(_settings.MaxLogits, V);
        var probs = be.Empty(1, V);
        be.SoftmaxRows(new Tensor(logits.Storage, 1, V), 1, V, probs);
        var values = be.Empty(1, k);
        var indices = be.Empty(1, k);
        be.TopKRows(probs, 1, V, k, values, indices);
        var p = new float[k];
        var ids = new float[k];
        values.CopyTo(p);
        indices.CopyTo(ids);
        var top = Enumerable.Range(0, k).OrderByDescending(i => p[i]).ThenBy(i => (int)ids[i]).ToArray();
        int cut = k;
        double cumulative = 0;
        for (int i = 0; i < k; i++)
        {
            cumulative += p[top[i]];
            if (cumulative >= _settings.LogitProbability) { cut = i + 1; break; }
        }
        int[] tokens = [.. top[..cut].Select(i => (int)ids[i])];
        return (tokens, [.. top[..cut].Select(i => p[i])], DemeanedUnembedding(tokens));
    }

    static (int[], float[], float[][], string?[]?) WithoutLabels((int[] Ids, float[] Probs, float[][] Vectors) salient) => (salient.Ids, salient.Probs, salient.Vectors, null);

    // The last position's logits on the host, for explicit targets on a device: one row of d_vocab floats (the salient
    // path reads back only its top k).
    static float[] HostLogits(Tensor logits)
    {
        var host = new float[logits.Length];
        logits.CopyTo(host);
        return host;
    }

    /// <summary>
    /// circuit-tracer's <c>AttributionTargets</c> from a list: each token with its probability and demeaned unembedding
    /// column; each difference and custom direction under a virtual id V + its index, with its label.
    /// </summary>
    /// <exception cref="InputError">No targets, a token id outside the vocabulary, or a custom vector that is not d_model long.</exception>
    (int[] Ids, float[] Probs, float[][] Vectors, string?[] Labels) ExplicitTargets(IReadOnlyList<AttributionTarget> targets, float[] logits)
    {
        int V = logits.Length, D = _model.Config.DModel;
        if (targets.Count == 0) throw new InputError("attribution targets: expected at least one target, found none (leave them out for the salient next tokens)");
        static int[] TokensOf(AttributionTarget t) => t.Kind switch
        {
            AttributionTargetKind.Token => [t.TokenId],
            AttributionTargetKind.Difference => [t.TokenId, t.OtherTokenId],
            _ => [],
        };
        foreach (var t in targets)
            foreach (int id in TokensOf(t))
                if (id < 0 || id >= V) throw InputError.Expected("attribution target", t.ToString(), $"a token id in 0..{V - 1}", id);
        double max = logits.Max(), sum = 0;
        var probs = new double[V];
        for (int v = 0; v < V; v++) sum += probs[v] = Math.Exp(logits[v] - max);
        for (int v = 0; v < V; v++) probs[v] /= sum;
        var tokens = targets.SelectMany(TokensOf).Distinct().ToArray();
        var columns = tokens.Zip(DemeanedUnembedding(tokens)).ToDictionary(x => x.First, x => x.Second);
        string Text(int id) => _model.Tokenizer is { } tok ? tok.Decode([id]) : $"<{id}>";
        var (ids, p, vectors, labels) = (new int[targets.Count], new float[targets.Count], new float[targets.Count][], new string?[targets.Count]);
        for (int i = 0; i < targets.Count; i++)
        {
            var t = targets[i];
            switch (t.Kind)
            {
                case AttributionTargetKind.Token:
                    (ids[i], p[i], vectors[i]) = (t.TokenId, (float)probs[t.TokenId], [.. columns[t.TokenId]]);
                    break;
                case AttributionTargetKind.Difference:
                    var (x, y) = (columns[t.TokenId], columns[t.OtherTokenId]);
                    (ids[i], p[i], labels[i]) = (V + i, (float)Math.Max(Math.Abs(probs[t.TokenId] - probs[t.OtherTokenId]), 1e-6), $"logit({Text(t.TokenId)})-logit({Text(t.OtherTokenId)})");
                    vectors[i] = [.. x.Zip(y, (a, b) => a - b)];
                    break;
                default:
                    if (t.Vector!.Length != D) throw InputError.Expected("attribution target", t.Label!, $"a vector of d_model = {D} values", t.Vector.Length);
                    (ids[i], p[i], vectors[i], labels[i]) = (V + i, (float)t.Weight, [.. t.Vector], t.Label);
                    break;
            }
        }
        return (ids, p, vectors, labels);
    }

    /// <summary>W_U[:, j] − mean over the vocabulary of W_U[:, v], for each token j.</summary>
    float[][] DemeanedUnembedding(int[] tokens)
    {
        int D = _model.Config.DModel, V = _model.Config.VocabOut;
        var mean = new double[D];
        for (int v = 0; v < V; v++)
        {
            var col = _model.UnembedDirection(v);
            for (int d = 0; d < D; d++) mean[d] += col[d];
        }
        return [.. tokens.Select(j =>
        {
            var col = _model.UnembedDirection(j);
            for (int d = 0; d < D; d++) col[d] = (float)(col[d] - mean[d] / V);
            return col;
        })];
    }

    AttributionGraph Assemble(ReplacementState s, RowStore edges, int[] rowToNode, bool[] visited, int maxFeatures, int nLogits,
        int totalNodes, int[] logitIds, float[] logitProbs, string? prompt)
    {
        int F = s.Active.Length, L = s.Layers, T = s.Positions, D = s.DModel;
        var selected = Enumerable.Range(0, F).Where(f => visited[f]).ToArray();
        // Columns kept: the selected features, then every non-feature node.
        var columns = selected.Concat(Enumerable.Range(F, totalNodes - F)).ToArray();
        int n = columns.Length;
        var featureRow = new int[F];
        Array.Fill(featureRow, -1);
        for (int i = 0; i < selected.Length; i++) featureRow[selected[i]] = i;
        // Only feature and logit rows can be nonzero: they are all that is kept (features, then logits).
        var targetRows = new float[(long)rowToNode.Length * n];
        for (int r = 0; r < rowToNode.Length; r++)
        {
            int node = rowToNode[r];
            int target = node < F ? featureRow[node] : selected.Length + (node - (totalNodes - nLogits));
            var src = edges.Row(r);
            var dst = targetRows.AsSpan(checked((int)((long)target * n)), n);
            for (int c = 0; c < n; c++) dst[c] = src[columns[c]];
        }
        return new AttributionGraph
        {
            InputTokens = s.Tokens,
            Prompt = prompt,
            TokenStrings = _model.Tokenizer is { } tok ? [.. s.Tokens.Select(t => tok.Decode([t]))] : null,
            Layers = L,
            ActiveFeatures = s.Active,
            ActivationValues = s.ActiveValues,
            SelectedFeatures = selected,
            LogitTokens = logitIds,
            LogitProbabilities = logitProbs,
            TargetRows = targetRows,
            ErrorVectors = s.Errors,
            TokenVectors = s.TokenVectors,
        };
    }

    (SourceReadout[] Layers, SourceReadout Tokens) Readouts(ReplacementState s)
    {
        int L = s.Layers, T = s.Positions, tokenOffset = s.Active.Length + L * T;
        var readouts = new SourceReadout[L];
        for (int t = 0; t < L; t++) readouts[t] = FeatureReadout(s, t);
        (int, int, int, float)[] tokenSources = [.. Enumerable.Range(0, T).Select(p => (p, tokenOffset + p, p, 1f))];
        var tokens = s.DeviceTokenVectors is { } onDevice
            ? new SourceReadout(_model.Backend, T, s.DModel, onDevice, tokenSources)
            : new SourceReadout(_model.Backend, T, s.DModel, s.TokenVectors, tokenSources);
        return (readouts, tokens);
    }

    /// <summary>The read-out of MLP output <paramref name="t"/>: every active feature that writes it, and layer t's error nodes.</summary>
    SourceReadout FeatureReadout(ReplacementState s, int t)
    {
        int T = s.Positions, D = s.DModel, F = s.Active.Length, L = s.Layers;
        var tableRow = new Dictionary<(int Layer, int Feature), int>();
        var sources = new List<(int, int, int, float)>();
        for (int i = 0; i < F; i++)
        {
            var (l, p, f) = s.Active[i];
            if (l > t || _transcoders.LastTarget(l) < t) continue;
            if (!tableRow.TryGetValue((l, f), out int row)) tableRow[(l, f)] = row = tableRow.Count;
            sources.Add((p, i, row, s.ActiveValues[i]));
        }
        int distinct = tableRow.Count;
        for (int p = 0; p < T; p++) sources.Add((p, F + t * T + p, distinct + p, 1f));
        if (s.OnDevice)
        {
            // The table on the device: each source layer's decoder rows to t gathered from the uploaded weights (the
            // active features are sorted by layer, so each layer's rows are one block), then layer t's error vectors.
            var be = _model.Backend;
            var onDevice = be.Empty(distinct + T, D);
            foreach (var group in tableRow.OrderBy(e => e.Value).GroupBy(e => e.Key.Layer))
            {
                int first = group.First().Value, count = group.Count();
                s.Device!.DecoderRows(group.Key, t, [.. group.Select(e => e.Key.Feature)],
                    new Tensor(onDevice.Storage.Slice((long)first * D, (long)count * D), count, D));
            }
            be.CopyRows(s.DeviceErrors!, (long)t * T * D, D, onDevice, (long)distinct * D, D, T, D);
            return new SourceReadout(be, T, D, onDevice, sources);
        }
        var table = new float[(long)(distinct + T) * D];
        foreach (var ((l, f), row) in tableRow) _transcoders.DecoderDirection(l, f, t, table.AsSpan(row * D, D));
        s.Errors.AsSpan(t * T * D, T * D).CopyTo(table.AsSpan(distinct * D));
        return new SourceReadout(_model.Backend, T, D, table, sources);
    }

    /// <summary>Bytes of everything but the rows: frozen patterns, source tables, gradient buffers, one batch of read-outs.</summary>
    GraphProvenance Provenance() => new(
        $"{_model.Source ?? _model.Config.SourcePath ?? "(in memory)"} ({_model.Config.Architecture}" +
            (_model.Processing.IsNone ? ")" : $", weight processing {_model.Processing.Describe()})"),
        Dictionaries.Harvest.HarvestManifest.Fingerprint(_model),
        _transcoders.Source,
        _transcoders.Fingerprint,
        _settings.Describe(),
        LoupeVersion,
        DateTimeOffset.UtcNow);

    /// <summary>This build's version (the assembly's informational version).</summary>
    public static string LoupeVersion { get; } =
        typeof(Attributor).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion ?? "0.0.0";

    static long EstimateWorkingBytes(ReplacementState s, SourceReadout[] readouts, SourceReadout tokens, int N, int totalNodes)
    {
        var cfg = s.Model.Config;
        long T = s.Positions, D = s.DModel;
        long patterns = 4L * cfg.NLayers * cfg.NHeads * T * T;
        long sources = readouts.Sum(r => r.Bytes) + tokens.Bytes;
        long gradients = 4L * T * N * (4 * D + (cfg.NHeads + cfg.KvHeads) * cfg.DHead);
        // On a device every read-out of a batch has its own section of one buffer (read back once per batch).
        long sections = s.OnDevice ? readouts.Sum(r => (long)r.Count) + tokens.Count : readouts.Max(r => (long)r.Count);
        long results = 4L * N * (sections + totalNodes);
        long captured = 4L * (cfg.NLayers + 1) * T * D * 2;
        return patterns + sources + gradients + results + captured;
    }

    /// <summary>Bytes of the finished graph's adjacency.</summary>
    static long GraphBytes(int features, int logits, int layers, int positions)
    {
        long n = features + logits + (long)(layers + 1) * positions;
        return 4L * (features + logits) * n;
    }

    static string Bytes(long b) => b >= 1L << 30 ? $"{b / (double)(1L << 30):0.##} GiB" : $"{b / (double)(1L << 20):0.#} MiB";
}
