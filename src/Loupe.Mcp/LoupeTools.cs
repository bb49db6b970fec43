using System.ComponentModel;
using Loupe.Attribution;
using Loupe.Attribution.Graph;
using Loupe.Causal.Lens;
using Loupe.Causal.Patching;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Explain;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Metrics;
using Loupe.Steering;
using Loupe.Steering.Monitors;
using ModelContextProtocol;
using ModelContextProtocol.Server;

namespace Loupe.Mcp;

/// <summary>
/// Loupe's tools for agents. Each is a thin caller of the library code the CLI verbs use. One model is loaded
/// per server and its forward passes are not re-entrant, so calls run one at a time. Bad arguments (and damaged
/// served files) become tool errors whose message says what was wrong; the server keeps serving.
/// The model may live on a device (<c>loupe mcp --device</c>): every tool reads results on the host explicitly —
/// the library calls it makes return host values (next-token tables, sweep tables, graphs, readings), and
/// <c>cache_hook</c> asks for its hook to be copied to host memory as the pass reaches it.
/// </summary>
[McpServerToolType]
public sealed class LoupeTools(HookedTransformer model, McpArtifacts artifacts, McpExplainer? explainer = null)
{
    /// <summary>Most values a tool returns for one position, so a reply stays readable.</summary>
    public const int MaxValues = 4096;

    /// <summary>Most tokens a tool generates in one call.</summary>
    public const int MaxNewTokens = 256;

    readonly Lock _gate = new();
    // The served transcoders, read on the first attribute call and kept; on a device their weights are uploaded then, once
    // per server, and every later graph reuses them (as loupe serve does).
    (IMlpReplacement Host, DeviceMlpReplacement? Device)? _transcoders;
    // Explaining waits on an endpoint, not the model: it has its own gate so model tools are not blocked meanwhile, and
    // two calls never write one store at once.
    readonly SemaphoreSlim _explainGate = new(1, 1);
    // The embedding scorer's encoder (all-MiniLM-L6-v2 from NuGet), loaded on the first call that asks for it and kept.
    SentenceEncoderEmbedder? _embedder;

    [McpServerTool(Name = "list_artifacts", ReadOnly = true, UseStructuredContent = true), Description("The files this server was started with, by name and kind (sae, transcoders, feature_store, vector, persona_vector, concept_monitor). Other tools take these names, never paths.")]
    public IReadOnlyList<Artifact> ListArtifacts() => artifacts.All;

    [McpServerTool(Name = "model_info", ReadOnly = true, UseStructuredContent = true), Description("The loaded model: architecture, sizes, every hook point with its axes (the names cache_hook and steer take), and the device and backend its passes run on.")]
    public ModelInfo ModelInfo() => Guard(() =>
    {
        var c = model.Config;
        return new ModelInfo(model.Source ?? "", c.Architecture, c.NLayers, c.DModel, c.NHeads, c.DHead, c.DMlp, c.DVocab, c.VocabOut, c.NCtx,
            model.Tokenizer is not null, model.Processing.Describe(),
            [.. model.HookPoints.Select(h => new HookInfo(h.Name, h.Layer, h.Axes, h.Sizes))], model.Backend.Device.ToString(), model.Backend.Name);
    });

    [McpServerTool(Name = "run", ReadOnly = true, UseStructuredContent = true), Description("Run the model on a prompt (or token ids) and return the top-k next tokens with probabilities; optionally a greedy continuation.")]
    public RunResult Run(
        [Description("Text to run, tokenized with the model's tokenizer (BOS as its template says). Give this or tokens.")] string? prompt = null,
        [Description("Raw token ids instead of a prompt (no BOS added).")] int[]? tokens = null,
        [Description("How many next tokens to return (1..100).")] int topK = 10,
        [Description("Greedy continuation length (0 = none, at most 256).")] int maxNewTokens = 0) => Guard(() =>
    {
        Check.InRange(topK, 1, 100, "argument", nameof(topK));
        Check.InRange(maxNewTokens, 0, MaxNewTokens, "argument", nameof(maxNewTokens));
        var ids = Input(prompt, tokens);
        var top = NextTokens.TopK(model, ids, topK)[0];
        int[]? continuation = null;
        int n = Math.Min(maxNewTokens, model.Config.NCtx - ids.Length);
        if (n > 0) continuation = model.Generate([ids], new GenerationOptions(n, 0f))[0];
        return new RunResult(ids, [.. top.Select(t => Score(t.Token, t.Probability))], continuation,
            continuation is null || model.Tokenizer is null ? null : model.Tokenizer.Decode(continuation, skipSpecialTokens: true));
    });

    [McpServerTool(Name = "lens", ReadOnly = true, UseStructuredContent = true), Description("The logit lens at one position: the residual stream before each block and after the last, through the model's final norm and unembedding — the answer's logit, probability and rank at each stage, the top token there, the entropy and the KL from the model's own distribution. With tunedLens, also a served tuned lens (each stage through its trained translator first), which reads early layers far more faithfully.")]
    public LensResult Lens(
        [Description("Text to read. Give this or tokens.")] string? prompt = null,
        [Description("Raw token ids instead of a prompt.")] int[]? tokens = null,
        [Description("The token to follow; exactly one token (default: the model's own top token at the position).")] string? answer = null,
        [Description("The answer as a token id instead of text.")] int? answerId = null,
        [Description("A competing token: also report logit(answer) − logit(wrong) per stage.")] string? wrong = null,
        [Description("The competing token as an id.")] int? wrongId = null,
        [Description("The position to read (negative counts from the end).")] int position = -1,
        [Description("A served tuned lens's name from list_artifacts.")] string? tunedLens = null) => Guard(() =>
    {
        var ids = Input(prompt, tokens);
        int p = Check.InRange(position < 0 ? position + ids.Length : position, 0, ids.Length - 1, "argument", nameof(position));
        var lens = tunedLens is null ? null : Loupe.Causal.Lens.TunedLens.Load(artifacts.Get(tunedLens, nameof(tunedLens), McpArtifacts.TunedLens).Path);
        var batch = TokenBatch.Single(ids);
        int a = OneToken(answer, answerId, nameof(answer)) ?? NextTokens.TopK(model, ids, 1, allPositions: true)[p][0].Token;
        int? w = OneToken(wrong, wrongId, nameof(wrong));
        var logit = LogitLens.Run(model, batch, a, w, p);
        var tuned = lens is null ? null : LogitLens.Run(model, batch, a, w, p, tuned: lens);
        LensStageResult[] Stages(LogitLensResult r) => [.. r.Stages.Select(s => new LensStageResult(s.Label, s.Layer, s.AnswerLogit, s.AnswerProb, s.AnswerRank,
            w is null ? null : s.LogitDiff, s.TopToken, Text(s.TopToken), s.Entropy, s.KlToFinal))];
        return new LensResult(ids, p, a, Text(a), w, w is int wi ? Text(wi) : null, Stages(logit), tunedLens, tuned is null ? null : Stages(tuned),
            lens?.ProcessingWarning(model));
    });

    [McpServerTool(Name = "cache_hook", ReadOnly = true, UseStructuredContent = true), Description("Run a prompt and read one hook point's activation: its shape and summary statistics (mean, std, min, max, L2 norm), and optionally its values at one position.")]
    public CacheResult CacheHook(
        [Description("A hook point name from model_info, e.g. blocks.0.hook_resid_post.")] string hook,
        [Description("Text to run. Give this or tokens.")] string? prompt = null,
        [Description("Raw token ids instead of a prompt.")] int[]? tokens = null,
        [Description("Also return the activation's values at this position (negative counts from the end), for hooks with a pos axis.")] int? position = null) => Guard(() =>
    {
        var point = model.HookPoints.FirstOrDefault(h => h.Name == hook)
            ?? throw new InputError($"hook: '{hook}' is not a hook point of this model; see model_info (e.g. {string.Join(", ", model.HookPoints.Take(4).Select(h => h.Name))})");
        var ids = Input(prompt, tokens);
        var result = model.RunWithCache(TokenBatch.Single(ids), hook, new RunOptions { CacheOn = CacheLocation.Host });
        var t = result.Cache[hook];
        var data = t.Data.Span;
        int[] shape = t.Shape.ToArray();
        float[]? values = null;
        int? pos = null;
        if (position is int p)
        {
            int axis = point.Axes.ToList().IndexOf(HookAxis.Pos);
            if (axis < 0) throw new InputError($"position: {hook} has no pos axis (axes: {string.Join(", ", point.Axes)})");
            pos = Check.InRange(p < 0 ? p + shape[axis] : p, 0, shape[axis] - 1, "argument", nameof(position));
            values = ValuesAt(data, shape, axis, pos.Value);
            if (values.Length > MaxValues) throw new InputError($"position: {hook} has {values.Length} values per position, more than the {MaxValues} a reply carries");
        }
        return new CacheResult(hook, ids, point.Axes, shape, Stats(data), pos, values);
    });

    [McpServerTool(Name = "patch", ReadOnly = true, UseStructuredContent = true), Description("Activation patching over resid_pre (layer × position): run the clean and corrupt prompts, patch each clean activation into the corrupt run, and measure logit(answer) − logit(wrong) at the last position (log p(answer) without wrong). Normalized 1 = clean behaviour restored.")]
    public PatchResult Patch(
        [Description("The clean prompt (or give cleanTokens).")] string? clean = null,
        [Description("The corrupt prompt; must tokenize to as many tokens as the clean one (or give corruptTokens).")] string? corrupt = null,
        [Description("Clean token ids instead of the clean prompt.")] int[]? cleanTokens = null,
        [Description("Corrupt token ids instead of the corrupt prompt.")] int[]? corruptTokens = null,
        [Description("The answer the clean prompt leads to; exactly one token (e.g. \" Paris\").")] string? answer = null,
        [Description("The competing answer (the corrupt prompt's); exactly one token.")] string? wrong = null,
        [Description("The answer as a token id instead of text.")] int? answerId = null,
        [Description("The competing answer as a token id instead of text.")] int? wrongId = null,
        [Description("How many top cells to list (by normalized value).")] int top = 8) => Guard(() =>
    {
        Check.InRange(top, 0, 1000, "argument", nameof(top));
        var cleanIds = Input(clean, cleanTokens, nameof(clean), nameof(cleanTokens));
        var corruptIds = Input(corrupt, corruptTokens, nameof(corrupt), nameof(corruptTokens));
        if (cleanIds.Length != corruptIds.Length)
            throw new InputError($"clean and corrupt must have the same number of tokens: clean has {cleanIds.Length}, corrupt {corruptIds.Length}");
        int a = OneToken(answer, answerId, nameof(answer)) ?? throw new InputError("give answer or answerId");
        int? w = OneToken(wrong, wrongId, nameof(wrong));
        IMetric metric = w is int wr ? new LogitDiff(a, wr, -1) : new LogProb(a, -1);
        var result = ActivationPatching.Sweep(model, TokenBatch.Single(cleanIds), TokenBatch.Single(corruptIds), metric, PatchTarget.ResidPre,
            new PatchOptions { LastPositionLogitsOnly = true });
        var normalized = result.Normalized;
        var cells = result.Cells.Select((c, i) => new PatchCellResult(c.Layer, c.Position, Text(cleanIds[c.Position]) ?? cleanIds[c.Position].ToString(System.Globalization.CultureInfo.InvariantCulture),
            result.Values[i], double.IsFinite(normalized[i]) ? normalized[i] : null)).ToArray();
        return new PatchResult(metric.Name, result.CleanValue, result.CorruptValue, model.Config.NLayers, cleanIds.Length, cells,
            [.. cells.OrderByDescending(c => c.Normalized ?? double.NegativeInfinity).Take(top)], result.ForwardPasses);
    });

    [McpServerTool(Name = "attribute", ReadOnly = true, UseStructuredContent = true), Description("An attribution graph of a prompt through the served transcoders: its logit targets, the features with most influence on the logits, and the strongest path of direct effects into the top logit. Needs the server started with --transcoders.")]
    public AttributeResult Attribute(
        [Description("Text to trace. Give this or tokens.")] string? prompt = null,
        [Description("Raw token ids instead of a prompt.")] int[]? tokens = null,
        [Description("At most this many feature nodes, chosen by influence (default: every active feature).")] int? maxFeatureNodes = null,
        [Description("How many features to list.")] int top = 10,
        [Description("Next tokens to explain instead of the most likely ones: each one token's text (e.g. \" Paris\") or #ID.")] string[]? targets = null,
        [Description("Two tokens X and Y (text or #ID): also explain logit(X) − logit(Y), the direction u_X − u_Y weighted |p_X − p_Y|.")] string[]? contrast = null) => Guard(() =>
    {
        var tc = artifacts.All.FirstOrDefault(x => x.Kind == McpArtifacts.Transcoders)
            ?? throw new InputError("attribute needs transcoders: start the server with --transcoders DIR");
        Check.InRange(top, 1, 1000, "argument", nameof(top));
        if (maxFeatureNodes is int mf) Check.InRange(mf, 1, int.MaxValue, "argument", nameof(maxFeatureNodes));
        var ids = Input(prompt, tokens);
        if (_transcoders is null)
        {
            var host = MlpReplacements.Load(tc.Path, model, log: Console.Error.WriteLine);
            // On a GPU: where the decoders go and what goes up, said (stderr: stdout is the protocol) or refused before the upload.
            if (DeviceMlpReplacement.Plan(host, model.Backend) is { } plan) Console.Error.WriteLine(plan);
            _transcoders = (host, model.Backend.Device.IsCpu ? null : DeviceMlpReplacement.Upload(host, model.Backend));
        }
        if (contrast is not null && contrast.Length != 2) throw InputError.Expected("argument", nameof(contrast), "two token texts", contrast.Length);
        List<AttributionTarget>? explicitTargets = targets is { Length: > 0 } || contrast is not null ? [.. (targets ?? []).Select(t => AttributionTarget.Token(TargetToken(t, nameof(targets))))] : null;
        if (contrast is not null) explicitTargets!.Add(AttributionTarget.Difference(TargetToken(contrast[0], nameof(contrast)), TargetToken(contrast[1], nameof(contrast))));
        var settings = new AttributionSettings { MaxFeatureNodes = maxFeatureNodes, Targets = explicitTargets };
        var attributor = _transcoders.Value.Device is { } uploaded ? new Attributor(model, uploaded, settings) : new Attributor(model, _transcoders.Value.Host, settings);
        var graph = attributor.Attribute(ids, prompt);
        var pruning = GraphPruning.Prune(graph);
        var scores = GraphScores.Compute(graph);
        GraphNodeResult NodeResult(int i)
        {
            var n = graph.Node(i);
            double influence = i < pruning.NodeInfluence.Length ? pruning.NodeInfluence[i] : 0;
            string? token = n.Kind switch { NodeKind.Token => Text(n.Index), NodeKind.Logit => graph.LogitLabels?[i - graph.LogitOffset] ?? Text(n.Index), _ => n.Position >= 0 && n.Position < ids.Length ? Text(ids[n.Position]) : null };
            string id = n.Kind switch
            {
                NodeKind.Feature => $"feature L{n.Layer}@{n.Position}#{n.Index}",
                NodeKind.Error => $"error L{n.Layer}@{n.Position}",
                NodeKind.Token => $"token @{n.Position}",
                _ => $"logit {n.Index}",
            };
            return new GraphNodeResult(id, n.Kind.ToString().ToLowerInvariant(), n.Layer, n.Position, n.Index, n.Value, influence, token);
        }
        var topFeatures = Enumerable.Range(0, graph.SelectedFeatures.Length).OrderByDescending(i => pruning.NodeInfluence[i]).Take(top).Select(NodeResult).ToArray();
        return new AttributeResult(ids, graph.ActiveFeatures.Length, graph.SelectedFeatures.Length, pruning.KeptNodes().Length, pruning.KeptEdgeCount(),
            [.. graph.LogitTokens.Zip(graph.LogitProbabilities).Select((x, j) => new TokenScore(x.First, graph.LogitLabels?[j] ?? Text(x.First), x.Second))], topFeatures,
            [.. PathToTopLogit(graph).Select(NodeResult)], scores.Replacement, scores.Completeness);
    });

    /// <summary>From the top logit back to a token or error node, each step the source with the largest direct effect (features and logits are the only nodes with inputs).</summary>
    static List<int> PathToTopLogit(AttributionGraph graph)
    {
        var path = new List<int>();
        if (graph.LogitTokens.Length == 0) return path;
        int node = graph.LogitOffset;
        path.Add(node);
        while (node >= graph.LogitOffset || node < graph.ErrorOffset)
        {
            var row = graph.Row(node);
            int best = -1;
            for (int s = 0; s < graph.LogitOffset; s++)
                if (row[s] > 0 && !path.Contains(s) && (best < 0 || row[s] > row[best])) best = s;
            if (best < 0) break;
            path.Add(best);
            node = best;
        }
        path.Reverse();
        return path;
    }

    [McpServerTool(Name = "feature_lookup", ReadOnly = true, UseStructuredContent = true), Description("A feature of a served feature store: density, activation range, top examples as text with the activating token marked «thus», promoted and suppressed tokens, and stored explanations with their scores.")]
    public FeatureLookupResult FeatureLookup(
        [Description("A feature store's name from list_artifacts (an SAE's name when its folder has features.db).")] string store,
        [Description("The feature index (0..d_sae−1).")] int feature,
        [Description("How many top examples to return.")] int examples = 5,
        [Description("How many promoted/suppressed tokens to return.")] int tokens = 10) => Guard(() =>
    {
        Check.InRange(examples, 0, 100, "argument", nameof(examples));
        Check.InRange(tokens, 0, 100, "argument", nameof(tokens));
        var artifact = artifacts.Get(store, nameof(store), McpArtifacts.FeatureStore);
        using var db = FeatureStore.Open(artifact.Path);
        var s = db.Feature(feature);
        string Tok(int id) => Text(id) ?? db.TokenText(id) ?? $"<{id}>";
        var tops = db.Examples(feature, FeatureStoreSchema.Top, examples).Select(e =>
        {
            var window = e.WindowTokens;
            int marked = e.Position - e.WindowStart;
            string text = string.Concat(window.Select((id, i) => i == marked ? "«" + Tok(id) + "»" : Tok(id)));
            return new FeatureExampleResult(text, e.Activation, e.ContextId, e.Position, e.Kind, e.Bin);
        }).ToArray();
        TokenScore Row(LogitRow r) => new(r.TokenId, r.TokenStr ?? Tok(r.TokenId), r.Value);
        return new FeatureLookupResult(store, db.Hook, feature, s.NActive, s.Density, s.MaxAct, s.MeanAct, s.DecoderNorm, tops,
            [.. db.Logits(feature, FeatureStoreSchema.Promoted).Take(tokens).Select(Row)],
            [.. db.Logits(feature, FeatureStoreSchema.Suppressed).Take(tokens).Select(Row)],
            [.. db.Explanations(feature).Select(x => new ExplanationResult(x.ExplainerModel, x.Text, FiniteScores(x.Scores)))]);
    });

    [McpServerTool(Name = "steer", ReadOnly = true, UseStructuredContent = true), Description("Greedy continuations of a prompt with and without coefficient × a direction added at a hook on every position: an SAE feature's decoder direction (sae + feature) or a served vector file (vector).")]
    public SteerResult Steer(
        [Description("Steering strength: coefficient × the direction is added (negative steers away).")] float coefficient,
        [Description("Text to continue. Give this or tokens.")] string? prompt = null,
        [Description("Raw token ids instead of a prompt.")] int[]? tokens = null,
        [Description("A served SAE's name (with feature).")] string? sae = null,
        [Description("The SAE feature whose decoder direction steers.")] int? feature = null,
        [Description("A served vector, persona vector or monitor file's name (instead of sae + feature).")] string? vector = null,
        [Description("The tensor in the vector file, when it holds several.")] string? tensor = null,
        [Description("The hook to edit; default: the SAE's hook or the one the vector file records.")] string? hook = null,
        [Description("Tokens to generate (1..256).")] int maxNewTokens = 24) => Guard(() =>
    {
        Check.InRange(maxNewTokens, 1, MaxNewTokens, "argument", nameof(maxNewTokens));
        Check.Finite(coefficient, float.MinValue, float.MaxValue, "argument", nameof(coefficient));
        if ((sae is null) == (vector is null)) throw new InputError("give either sae + feature or vector");
        float[] direction;
        string hookName, source;
        string? warning = null;
        if (sae is not null)
        {
            if (feature is not int f) throw new InputError("feature: give the SAE feature to steer with");
            var (dict, cfg) = DictionaryFile.Load(artifacts.Get(sae, nameof(sae), McpArtifacts.Sae).Path);
            Check.InRange(f, 0, dict.Shape.DSae - 1, "argument", nameof(feature));
            int dOut = dict.Shape.DOut;
            direction = dict.P.WDec.AsSpan(f * dOut, dOut).ToArray();
            hookName = hook ?? cfg.HookName;
            source = $"decoder direction of feature {f} of SAE {sae}";
            if (hook is null) warning = ProcessingAgreement.Mismatch(model, hookName, cfg);
        }
        else
        {
            var path = artifacts.Get(vector!, nameof(vector), McpArtifacts.Vector, McpArtifacts.PersonaVector, McpArtifacts.ConceptMonitor).Path;
            var loaded = SteeringVector.Load(path, tensor, hook);
            direction = loaded.Direction.ToArray();
            hookName = loaded.HookName;
            source = $"vector {vector}{(tensor is null ? "" : ":" + tensor)}";
        }
        ActivationEdits.RequireHook(model, hookName);
        int? width = model.HookPoints.FirstOrDefault(h => h.Name == hookName)?.Sizes[^1];
        if (width is int d && d != direction.Length)
            throw new InputError($"the direction has {direction.Length} values but {hookName} is {d} wide");
        var ids = Input(prompt, tokens);
        int n = Math.Min(maxNewTokens, model.Config.NCtx - ids.Length);
        if (n < 1) throw new InputError($"prompt: {ids.Length} tokens leave no room in the context of {model.Config.NCtx}");
        var edit = new SteeringVector(hookName, direction, coefficient, SteeringPositions.All);
        var greedy = new GenerationOptions(n, 0f);
        int[] plain = model.Generate([ids], greedy)[0];
        int[] steered = model.Generate([ids], greedy, ActivationEdits.Options(model, edit))[0];
        double norm = Math.Sqrt(direction.Sum(x => (double)x * x));
        return new SteerResult(hookName, source, coefficient, norm, ids, Decode([.. ids, .. plain]), Decode([.. ids, .. steered]), plain, steered, warning);
    });

    [McpServerTool(Name = "monitor", ReadOnly = true, UseStructuredContent = true), Description("Read a prompt (and optionally its greedy continuation) with a served concept monitor or persona vector: the projection of every token's activation on its direction, their mean, the threshold and whether the text is flagged.")]
    public MonitorResult Monitor(
        [Description("A served concept monitor or persona vector's name from list_artifacts.")] string monitor,
        [Description("The text to read (or to continue). Give this or tokens.")] string? prompt = null,
        [Description("Raw token ids instead of a prompt.")] int[]? tokens = null,
        [Description("Generate this many tokens greedily and read them with the prompt (0 = read the prompt only).")] int generate = 0) => Guard(() =>
    {
        Check.InRange(generate, 0, MaxNewTokens, "argument", nameof(generate));
        var artifact = artifacts.Get(monitor, nameof(monitor), McpArtifacts.ConceptMonitor, McpArtifacts.PersonaVector);
        ConceptMonitor? concept = artifact.Kind == McpArtifacts.ConceptMonitor ? ConceptMonitor.Load(artifact.Path) : null;
        var direction = concept?.Direction ?? PersonaVector.Load(artifact.Path);
        if (direction.Vector.Length != model.Config.DModel)
            throw new InputError($"monitor: {monitor} has {direction.Vector.Length} dimensions; the model's d_model is {model.Config.DModel}");
        var ids = Input(prompt, tokens);
        int[] read = ids;
        string? generated = null;
        int n = Math.Min(generate, model.Config.NCtx - ids.Length);
        if (n > 0)
        {
            var continuation = model.Generate([ids], new GenerationOptions(n, 0f, StopAtEos: false))[0];
            read = [.. ids, .. continuation];
            generated = model.Tokenizer?.Decode(continuation, skipSpecialTokens: true);
        }
        var reading = concept is not null ? concept.Read(model, read) : direction.Monitor(model, read);
        return new MonitorResult(monitor, artifact.Kind, direction.HookName, concept?.Name,
            [.. reading.Tokens.Select((id, i) => new TokenProjection(id, Text(id), reading.Projections[i]))],
            reading.Mean, reading.Threshold, reading.ExpressesTrait, generated);
    });

    /// <summary>The scores without undefined metrics (an AUROC without logprobs is NaN, which JSON cannot carry).</summary>
    static IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> FiniteScores(IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> scores) =>
        scores.ToDictionary(s => s.Key, s => (IReadOnlyDictionary<string, double>)s.Value.Where(m => double.IsFinite(m.Value)).ToDictionary(m => m.Key, m => m.Value));

    [McpServerTool(Name = "explain_feature", Destructive = false, UseStructuredContent = true), Description("Explain one feature of a served feature store with the explainer endpoint the server was started with (as `loupe explain`): an explanation from its top examples with the activating tokens marked, scored by detection and fuzzing on held-out examples; stored in the feature store (feature_lookup shows it). Answers are cached: asking again sends nothing. Needs the server started with --explainer-url and --explainer-model.")]
    public async Task<ExplainFeatureResult> ExplainFeature(
        [Description("A feature store's name from list_artifacts (an SAE's name when its folder has features.db).")] string store,
        [Description("The feature index (0..d_sae−1); it must have activated when the store was built.")] int feature,
        [Description("Examples shown to the explainer (1..100).")] int examples = 20,
        [Description("Held-out activating examples per scorer, and as many non-activating ones for detection (1..100).")] int scoreExamples = 10,
        [Description("Scorers to run: detection, fuzzing, simulation, embedding (default detection and fuzzing; an empty list: explanation only). Simulation asks one request per window and scores the correlation of predicted and true activations; embedding asks no model: all-MiniLM-L6-v2's similarity to the explanation, AUROC.")] string[]? scorers = null,
        [Description("Seed for the held-out choice and the fuzzing marks.")] int seed = 0,
        [Description("Non-activating examples: random (default) or similar (the most similar to the activating ones by all-MiniLM-L6-v2: harder, Delphi's FAISS negatives).")] string negatives = "random",
        CancellationToken cancellationToken = default)
    {
        if (explainer is null)
            throw new McpException("explain_feature: this server has no explainer endpoint; start it with --explainer-url URL --explainer-model NAME (the API key is read from --explainer-key-env, default OPENAI_API_KEY)");
        await _explainGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            Check.InRange(examples, 1, 100, "argument", nameof(examples));
            Check.InRange(scoreExamples, 1, 100, "argument", nameof(scoreExamples));
            var artifact = artifacts.Get(store, nameof(store), McpArtifacts.FeatureStore);
            var options = new ExplainOptions
            {
                Examples = examples, ScoreExamples = scoreExamples, Seed = seed, BatchSize = explainer.BatchSize,
                Scorers = scorers ?? [ExplainOptions.Detection, ExplainOptions.Fuzzing],
                SimilarNegatives = negatives switch
                {
                    "random" => false,
                    "similar" => true,
                    _ => throw InputError.Expected("argument", nameof(negatives), "random or similar", negatives),
                },
            };
            using (var db = FeatureStore.Open(artifact.Path))
            {
                db.CheckFeature(feature);
                if (db.Feature(feature).NActive == 0) throw new InputError($"feature: {feature} never activated when the store was built; there is nothing to explain");
            }
            var prices = PriceTable.Load(explainer.PricesPath ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(artifact.Path))!, "prices.json"));
            using var cache = new RequestCache(explainer.CachePath ?? artifact.Path + ".explain-cache.db");
            using var client = new ChatClient(explainer.Endpoint, cache);
            if (options.Scorers.Contains(ExplainOptions.Embedding) || options.SimilarNegatives)
                _embedder ??= new SentenceEncoderEmbedder(ModelLoader.LoadFolder(MiniLmPackage.Materialize()), "all-MiniLM-L6-v2");
            var summary = await ExplainRunner.RunAsync(artifact.Path, [feature], client, prices, options, cancellationToken: cancellationToken, embedder: _embedder).ConfigureAwait(false);
            var outcome = summary.Outcomes.SingleOrDefault();
            using var read = FeatureStore.Open(artifact.Path);
            var stored = read.Explanations(feature).FirstOrDefault(x => x.ExplainerModel == explainer.Endpoint.Model)
                ?? throw new InvalidOperationException($"feature {feature}: the explanation was not stored");
            var usage = outcome?.Usage;
            return new ExplainFeatureResult(store, read.Hook, feature, stored.ExplainerModel, stored.Text, FiniteScores(stored.Scores),
                AlreadyStored: outcome is null, Requests: usage?.Requests ?? 0, SentRequests: outcome?.Fresh.Requests ?? 0,
                PromptTokens: usage?.PromptTokens ?? 0, CompletionTokens: usage?.CompletionTokens ?? 0, CostUsd: usage?.CostUsd);
        }
        catch (Exception e) when (e is InputError or IOException or UnauthorizedAccessException or ArgumentException or KeyNotFoundException or FormatException or EndpointError)
        {
            throw new McpException(e.Message.ReplaceLineEndings(" ").Trim(), e);
        }
        finally
        {
            _explainGate.Release();
        }
    }

    /// <summary>Runs a tool body on the model, one call at a time; bad input becomes a tool error with its message.</summary>
    T Guard<T>(Func<T> body)
    {
        lock (_gate)
        {
            try
            {
                return body();
            }
            catch (Exception e) when (e is InputError or IOException or UnauthorizedAccessException or ArgumentException or KeyNotFoundException or FormatException)
            {
                throw new McpException(e.Message.ReplaceLineEndings(" ").Trim(), e);
            }
        }
    }

    int[] Input(string? prompt, int[]? tokens, string promptName = "prompt", string tokensName = "tokens")
    {
        if ((prompt is null) == (tokens is null)) throw new InputError($"give exactly one of {promptName} or {tokensName}");
        var ids = prompt is not null ? Encode(prompt, promptName) : tokens!;
        if (ids.Length == 0) throw new InputError($"{tokensName}: empty");
        if (ids.Length > model.Config.NCtx) throw new InputError($"{tokensName}: {ids.Length} tokens, more than n_ctx = {model.Config.NCtx}");
        int vocab = model.Config.DVocab;
        foreach (int id in ids)
            if ((uint)id >= (uint)vocab) throw new InputError($"{tokensName}: id {id} is outside [0, {vocab - 1}] (d_vocab = {vocab})");
        return ids;
    }

    int[] Encode(string text, string parameter)
    {
        var tokenizer = model.Tokenizer ?? throw new InputError($"{parameter}: the model has no tokenizer; pass token ids instead");
        var ids = tokenizer.Encode(text);
        if (ids.Length == 0) throw new InputError($"{parameter}: the prompt encodes to no tokens");
        if (ids.Length > model.Config.NCtx) throw new InputError($"{parameter}: {ids.Length} tokens, more than n_ctx = {model.Config.NCtx}");
        return ids;
    }

    int? OneToken(string? text, int? id, string parameter, string? alternative = null)
    {
        alternative ??= parameter + "Id";
        if (text is not null && id is not null) throw new InputError($"give {parameter} or {parameter}Id, not both");
        if (id is int given) return Check.InRange(given, 0, model.Config.VocabOut - 1, "argument", parameter + "Id");
        if (text is null) return null;
        var tokenizer = model.Tokenizer ?? throw new InputError($"{parameter}: the model has no tokenizer; give {alternative}");
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        if (ids.Length != 1)
            throw new InputError($"{parameter} \"{text}\" must be exactly one token but tokenizes to {ids.Length}: [{string.Join(", ", ids.Select(i => Text(i)))}]; give {alternative} instead");
        return ids[0];
    }

    /// <summary>An attribution target's token: #ID, or a text that is one token.</summary>
    int TargetToken(string text, string parameter) =>
        AttributionTarget.TryParseId(text, out int id)
            ? Check.InRange(id, 0, model.Config.VocabOut - 1, "argument", parameter)
            : OneToken(text, null, parameter, "#ID")!.Value;

    string? Text(int id) => model.Tokenizer is { } t && id >= 0 && id < t.VocabSize ? t.Decode([id]) : null;

    TokenScore Score(int id, double value) => new(id, Text(id), value);

    string Decode(int[] ids) => model.Tokenizer?.Decode(ids, skipSpecialTokens: true) ?? string.Join(",", ids);

    static ActivationStats Stats(ReadOnlySpan<float> data)
    {
        double sum = 0, sumSq = 0, min = double.PositiveInfinity, max = double.NegativeInfinity;
        foreach (float v in data) { sum += v; sumSq += (double)v * v; min = Math.Min(min, v); max = Math.Max(max, v); }
        long n = data.Length;
        double mean = n == 0 ? 0 : sum / n;
        return new ActivationStats(n, mean, n == 0 ? 0 : Math.Sqrt(Math.Max(0, sumSq / n - mean * mean)), n == 0 ? 0 : min, n == 0 ? 0 : max, Math.Sqrt(sumSq));
    }

    /// <summary>The values of batch row 0 at index <paramref name="index"/> of axis <paramref name="axis"/>, in memory order.</summary>
    static float[] ValuesAt(ReadOnlySpan<float> data, int[] shape, int axis, int index)
    {
        long inner = 1;
        for (int d = axis + 1; d < shape.Length; d++) inner *= shape[d];
        long outer = 1; // axes between batch (0) and the chosen axis
        for (int d = 1; d < axis; d++) outer *= shape[d];
        var values = new float[outer * inner];
        for (long o = 0; o < outer; o++)
            data.Slice((int)((o * shape[axis] + index) * inner), (int)inner).CopyTo(values.AsSpan((int)(o * inner), (int)inner));
        return values;
    }
}
