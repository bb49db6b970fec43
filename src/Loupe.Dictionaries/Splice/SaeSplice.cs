// A sparse dictionary spliced into the model, with SAELens's HookedSAETransformer semantics.
//
// Shape legend: "rows" are every leading axis of the hook's activation ([batch, pos] for residual,
// MLP and attention-output hooks); the trailing axes must multiply to the dictionary's width
// (hook_z [batch, pos, head_index, d_head] is read as [batch, pos, head_index·d_head], as SAELens does).
//   input            [rows…, d_in]   activation at the input hook (= the replaced hook for an SAE)
//   original         [rows…, d_out]  activation at the output hook (the one replaced)
//   acts_pre, acts   [rows…, d_sae]
//   recons, error    [rows…, d_out]
//   output           [rows…, d_out]  reshaped back to the original's shape
//
// Forward (sub-hook names from HookNames.Sae*; hooks may read or replace each):
//   1. x      = hook_sae_input(input)
//   2. pre    = hook_sae_acts_pre((x − b_dec if apply_b_dec_to_input)·W_enc + b_enc)
//   3. acts   = hook_sae_acts_post(f(pre))                    f = the dictionary's activation, inference mode
//   4. recons = hook_sae_recons(acts·W_dec + b_dec (+ x·W_skip))
//   5. with the error term: clean = the dictionary's reconstruction of `input` with no hooks, and
//      error = hook_sae_error(original − clean); output = recons + error. Unedited, output = original
//      exactly (up to rounding); editing features changes it by exactly the decoder's change.
//   6. output = hook_sae_output(output); positions holding an excluded token keep the original
//      (error 0 there), like SAELens's exclude_special_tokens.
// Backward (forward-hook edits count as identity, as everywhere in Loupe; the error is a constant,
// as SAELens computes it under no_grad):
//   d recons = d output (0 at excluded positions);  d acts = d recons·W_decᵀ;
//   d pre = f'(pre) ⊙ d acts (f' from the unhooked acts);  d x = d pre·W_encᵀ (+ d recons·W_skipᵀ);
//   d original = d output at excluded positions (null when nothing is excluded).
// So d metric / d acts_post = d metric / d output · W_decᵀ: what attribution patching over features needs.
// With the error term, gradients upstream of the splice flow only through the dictionary (J_saeᵀ·d output),
// not through the error, exactly as in SAELens; without it the spliced model is differentiated exactly.
// With the model on a device (a GPU backend) every step above runs there as backend ops, with the dictionary's weights
// uploaded once per backend (see "on a device" below); nothing is read on the host.
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Kernels;

namespace Loupe.Dictionaries.Splice;

/// <summary>How a dictionary is spliced in.</summary>
public sealed record SaeSpliceOptions
{
    /// <summary>
    /// Add the error term (original − clean reconstruction) so the model's output is unchanged until a
    /// feature is edited (SAELens's use_error_term). Off: the reconstruction alone flows on.
    /// </summary>
    public bool UseErrorTerm { get; init; }

    /// <summary>
    /// The hook whose activation is replaced, for a transcoder (e.g. <c>blocks.1.hook_mlp_out</c>);
    /// null for an SAE, which replaces the hook it reads.
    /// </summary>
    public string? OutputHook { get; init; }

    /// <summary>
    /// Token ids at whose positions the dictionary is bypassed (the original flows on, error 0), e.g. BOS:
    /// SAELens's exclude_special_tokens. Needs a hook whose leading axes are [batch, pos]. Null or empty: none.
    /// </summary>
    public IReadOnlyCollection<int>? ExcludeTokens { get; init; }
}

/// <summary>
/// An SAE or (skip-)transcoder spliced in place of a hook point (see the steps at the top of this file),
/// exposing <c>hook_sae_input</c>, <c>hook_sae_acts_pre</c>, <c>hook_sae_acts_post</c>,
/// <c>hook_sae_recons</c>, <c>hook_sae_error</c> (with the error term) and <c>hook_sae_output</c> under
/// the replaced hook's name. Attach it to a model with <see cref="HookedTransformer.AddSplice"/> or to one
/// run with <see cref="RunOptions.AddSplice"/>; it is differentiable (gradient hooks and attribution
/// patching work on its sub-hooks).
/// </summary>
public sealed class SaeSplice : IHookSplice
{
    readonly HashSet<int>? _exclude;
    readonly string[] _subHooks;
    readonly System.Runtime.CompilerServices.ConditionalWeakTable<IComputeBackend, DeviceSaeEncoder> _onDevice = new();

    /// <summary>
    /// Splices <paramref name="dictionary"/> at <paramref name="hook"/> without checking it against a model
    /// (a wrong width fails on the first run); <see cref="ForModel"/> checks first.
    /// </summary>
    /// <exception cref="ArgumentException">The hook name is empty.</exception>
    public SaeSplice(SparseDictionary dictionary, string hook, SaeSpliceOptions? options = null)
    {
        Dictionary = dictionary ?? throw new ArgumentNullException(nameof(dictionary));
        if (string.IsNullOrWhiteSpace(hook)) throw new ArgumentException("the hook to splice at is empty", nameof(hook));
        Options = options ?? new SaeSpliceOptions();
        InputHook = hook;
        OutputHook = string.IsNullOrWhiteSpace(Options.OutputHook) ? hook : Options.OutputHook;
        _exclude = Options.ExcludeTokens is { Count: > 0 } ex ? [.. ex] : null;
        var names = new List<string> { HookNames.SaeInput(OutputHook), HookNames.SaeActsPre(OutputHook), HookNames.SaeActsPost(OutputHook), HookNames.SaeRecons(OutputHook) };
        if (Options.UseErrorTerm) names.Add(HookNames.SaeError(OutputHook));
        names.Add(HookNames.SaeOutput(OutputHook));
        _subHooks = [.. names];
    }

    /// <summary>The dictionary spliced in (its weights go to a device once per backend, at the first run there).</summary>
    public SparseDictionary Dictionary { get; }
    public SaeSpliceOptions Options { get; }
    public string InputHook { get; }
    public string OutputHook { get; }
    public IReadOnlyList<string> SubHookNames => _subHooks;
    /// <summary>Whether input and output hooks differ (a transcoder).</summary>
    public bool IsTranscoder => InputHook != OutputHook;

    /// <summary>The feature activations hook <c>{output hook}.hook_sae_acts_post</c> <c>[batch, pos, d_sae]</c>.</summary>
    public string ActsPostHook => HookNames.SaeActsPost(OutputHook);

    /// <summary>
    /// A splice checked against <paramref name="model"/>: both hooks exist, the dictionary's d_in / d_out
    /// fit the activations there and the input hook comes first (one two-token forward pass).
    /// </summary>
    /// <exception cref="InputError">
    /// A hook is not a hook point of the model (the message lists the closest names), or the dictionary's width
    /// does not fit the hook (the message names the hook, its shape, d_in and d_out).
    /// </exception>
    /// <exception cref="InvalidOperationException">A transcoder's input hook comes after its output hook.</exception>
    public static SaeSplice ForModel(HookedTransformer model, SparseDictionary dictionary, string hook, SaeSpliceOptions? options = null)
    {
        var splice = new SaeSplice(dictionary, hook, options);
        var known = model.HookPointNames;
        foreach (var (name, role) in new[] { (splice.InputHook, "--hook (input)"), (splice.OutputHook, "output hook") })
            if (!known.Contains(name))
                throw new InputError($"{role} {InputError.Show(name)} is not a hook point of this model ({model.Config.Architecture}); closest: {string.Join(", ", HookNames.Closest(name, known))}");
        // A two-token run with the splice checks the widths and that the input hook comes before the output hook.
        int bos = model.Config.BosTokenId is int b && b < model.Config.DVocab ? b : 0;
        model.Run(TokenBatch.Single(bos, bos), new RunOptions { LastPositionLogitsOnly = true }.AddSplice(splice));
        return splice;
    }

    /// <summary>
    /// Loads a dictionary (<see cref="DictionaryFile.Load"/>) and splices it at <paramref name="hook"/>
    /// (default: cfg.json's hook_name). A transcoder's output hook comes from <see cref="SaeSpliceOptions.OutputHook"/>,
    /// else cfg.json's <c>hook_name_out</c> (SAELens's transcoder field, top level or under metadata), else —
    /// when d_in ≠ d_out or it has W_skip — <c>blocks.L.hook_mlp_out</c> for an input at <c>blocks.L.ln2.hook_normalized</c>,
    /// <c>blocks.L.mlp.hook_in</c>, <c>blocks.L.hook_resid_mid</c> or <c>blocks.L.hook_mlp_in</c>.
    /// </summary>
    /// <exception cref="FileNotFoundException">Nothing loadable exists at the path.</exception>
    /// <exception cref="InputError">The files are malformed; no hook was given and cfg.json has none; a transcoder's output hook cannot be found; see <see cref="ForModel"/>.</exception>
    public static (SaeSplice Splice, SaeLensConfig Config) Load(HookedTransformer model, string path, string? hook = null, SaeSpliceOptions? options = null)
    {
        var (dictionary, cfg) = DictionaryFile.Load(path);
        string input = !string.IsNullOrWhiteSpace(hook) ? hook
            : !string.IsNullOrWhiteSpace(cfg.HookName) ? cfg.HookName
            : throw new InputError($"{path}: cfg.json has no hook_name; give the hook to splice at (--hook)");
        options ??= new SaeSpliceOptions();
        if (string.IsNullOrWhiteSpace(options.OutputHook))
        {
            string? output = string.IsNullOrWhiteSpace(cfg.HookNameOut) ? null : cfg.HookNameOut;
            if (output is null && (dictionary.Shape.DIn != dictionary.Shape.DOut || dictionary.Shape.Skip))
                output = MlpOutputFor(input) ?? throw new InputError(
                    $"{path}: a transcoder (d_in {dictionary.Shape.DIn}, d_out {dictionary.Shape.DOut}{(dictionary.Shape.Skip ? ", W_skip" : "")}) reading '{input}' needs the hook it replaces: " +
                    "give it (--hook-out, e.g. blocks.L.hook_mlp_out) or set hook_name_out in cfg.json");
            if (output is not null && output != input) options = options with { OutputHook = output };
        }
        return (ForModel(model, dictionary, input, options), cfg);
    }

    /// <summary><c>blocks.L.hook_mlp_out</c> for an MLP-input hook of block L, else null.</summary>
    static string? MlpOutputFor(string input)
    {
        var m = System.Text.RegularExpressions.Regex.Match(input, @"^blocks\.([0-9]{1,9})\.(ln2\.hook_normalized|hook_resid_mid|hook_mlp_in|mlp\.hook_in)$");
        return m.Success ? HookNames.MlpOut(int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)) : null;
    }

    /// <summary>
    /// The leading axes of <paramref name="activation"/> when its trailing axes multiply to <paramref name="width"/>
    /// (as few trailing axes as possible).
    /// </summary>
    /// <exception cref="InputError">No split fits; the message names the hook, its shape and the width.</exception>
    static int[] RowsOf(Tensor activation, int width, string hook, string what)
    {
        var shape = activation.Shape;
        long product = 1;
        for (int k = shape.Length - 1; k >= 1; k--)
        {
            product *= shape[k];
            if (product == width) return shape[..k].ToArray();
            if (product > width) break;
        }
        throw new InputError(
            $"the dictionary's {what} = {width} does not fit hook '{hook}', whose activation is {activation.ShapeString} " +
            $"(width {shape[^1]} per position); use a dictionary trained on this hook, or the hook it was trained on");
    }

    static int[] WithWidth(int[] rows, int width) => [.. rows, width];

    sealed record Saved(int[] Rows, int[] InputShape, int[] OriginalShape, float[] Pre, float[] Acts, bool[]? Excluded);

    /// <inheritdoc/>
    public SpliceOutput Forward(Tensor input, Tensor original, int layer, ForwardContext ctx)
    {
        var d = Dictionary;
        int dIn = d.Shape.DIn, dSae = d.Shape.DSae, dOut = d.Shape.DOut;
        var rows = RowsOf(input, dIn, InputHook, "d_in");
        var outRows = RowsOf(original, dOut, OutputHook, "d_out");
        if (!rows.AsSpan().SequenceEqual(outRows))
            throw new InvalidOperationException($"transcoder rows differ: '{InputHook}' is {input.ShapeString} but '{OutputHook}' is {original.ShapeString}");
        int n = (int)ShapeUtil.Product(rows);
        var excluded = ExcludedRows(rows, n, ctx);
        if (!ctx.Backend.Device.IsCpu) return DeviceForward(input, original, layer, ctx, rows, n, excluded);

        // 1–2. x = hook_sae_input(input); pre = hook_sae_acts_pre(encoder(x))
        var x = ctx.Hook(HookNames.SaeInput(OutputHook), layer, input.Reshape(WithWidth(rows, dIn)));
        var xIn = new float[n * dIn];                      // [rows, d_in] x − b_dec (scratch)
        var pre = Tensor.Uninitialized(WithWidth(rows, dSae));
        d.EncodePre(x.Span, n, xIn, pre.Span);
        pre = ctx.Hook(HookNames.SaeActsPre(OutputHook), layer, pre);
        // 3. acts = hook_sae_acts_post(f(pre)); the unhooked acts give f' in the backward pass
        var acts = Tensor.Uninitialized(WithWidth(rows, dSae));
        d.Activation.Forward(pre.Span, acts.Span, n, dSae, training: false, d.P);
        float[]? actsForBackward = ctx.RecordsForBackward ? acts.Span.ToArray() : null;
        var actsPost = ctx.Hook(HookNames.SaeActsPost(OutputHook), layer, acts);
        // 4. recons = hook_sae_recons(decoder(acts))
        var recons = Tensor.Uninitialized(WithWidth(rows, dOut));
        d.Decode(actsPost.Span, x.Span, n, recons.Span);
        recons = ctx.Hook(HookNames.SaeRecons(OutputHook), layer, recons);

        var output = Tensor.Uninitialized(WithWidth(rows, dOut));
        recons.Span.CopyTo(output.Span);
        if (Options.UseErrorTerm)
        {
            // 5. error = original − clean reconstruction of the unhooked input (0 at excluded positions)
            var clean = d.Forward(input.Span, n);
            var error = Tensor.Uninitialized(WithWidth(rows, dOut));
            TensorPrimitives.Subtract(original.Span, clean, error.Span);
            if (excluded is not null)
                for (int r = 0; r < n; r++) if (excluded[r]) error.Span.Slice(r * dOut, dOut).Clear();
            error = ctx.Hook(HookNames.SaeError(OutputHook), layer, error);
            TensorPrimitives.Add(output.Span, error.Span, output.Span);
        }
        // 6. excluded positions keep the original; then hook_sae_output
        if (excluded is not null)
            for (int r = 0; r < n; r++)
                if (excluded[r]) original.Span.Slice(r * dOut, dOut).CopyTo(output.Span.Slice(r * dOut, dOut));
        output = ctx.Hook(HookNames.SaeOutput(OutputHook), layer, output);

        object? saved = ctx.RecordsForBackward
            ? new Saved(rows, input.Shape.ToArray(), original.Shape.ToArray(), pre.Span.ToArray(), actsForBackward!, excluded)
            : null;
        return new SpliceOutput(output.Reshape(original.Shape.ToArray()), saved);
    }

    /// <summary>Which rows hold an excluded token, or null when none can.</summary>
    bool[]? ExcludedRows(int[] rows, int n, ForwardContext ctx)
    {
        if (_exclude is null) return null;
        if (rows.Length != 2 || rows[0] != ctx.Batch || rows[1] != ctx.Length || ctx.TokenIds is not { } ids || ids.Length != n)
            throw new InvalidOperationException($"excluding tokens needs an activation with [batch, pos] leading axes; '{InputHook}' has leading axes [{string.Join(", ", rows)}]");
        var excluded = new bool[n];
        bool any = false;
        for (int r = 0; r < n; r++) any |= excluded[r] = _exclude.Contains(ids[r]);
        return any ? excluded : null;
    }

    /// <inheritdoc/>
    public SpliceGradient Backward(object? saved, Tensor dOutput, int layer, ForwardContext ctx)
    {
        if (saved is DeviceSaved onDevice) return DeviceBackward(onDevice, dOutput, layer, ctx);
        var s = saved as Saved ?? throw new InvalidOperationException($"the splice at '{OutputHook}' saved nothing for backward: the forward pass did not record for backward");
        var d = Dictionary;
        int dIn = d.Shape.DIn, dSae = d.Shape.DSae, dOut = d.Shape.DOut;
        int n = (int)ShapeUtil.Product(s.Rows);
        var dOut0 = ctx.GradHook(HookNames.SaeOutput(OutputHook), layer, dOutput.Reshape(WithWidth(s.Rows, dOut)));
        // d output / d recons = d output / d error = 1, except at excluded positions where the original flows on.
        var dRecons = dOut0.Clone();
        Tensor? dOriginal = null;
        if (s.Excluded is { } excluded)
        {
            dOriginal = Tensor.Zeros(WithWidth(s.Rows, dOut));
            for (int r = 0; r < n; r++)
                if (excluded[r])
                {
                    dOut0.Span.Slice(r * dOut, dOut).CopyTo(dOriginal.Span.Slice(r * dOut, dOut));
                    dRecons.Span.Slice(r * dOut, dOut).Clear();
                }
        }
        // The error is a constant: its gradient can be read (attribution to error nodes) but goes no further.
        if (Options.UseErrorTerm) ctx.GradHook(HookNames.SaeError(OutputHook), layer, dRecons.Clone());
        dRecons = ctx.GradHook(HookNames.SaeRecons(OutputHook), layer, dRecons);
        // Forward: recons = acts·W_dec + b_dec (+ x·W_skip)
        var dActs = Tensor.Uninitialized(WithWidth(s.Rows, dSae));
        Gemm.Sgemm(false, true, n, dSae, dOut, 1f, dRecons.Span, dOut, d.P.WDec, dOut, 0f, dActs.Span, dSae);
        dActs = ctx.GradHook(HookNames.SaeActsPost(OutputHook), layer, dActs);
        // Forward: acts = f(pre). The activation's own parameter gradients (JumpReLU θ) land in a scratch buffer.
        var dPre = Tensor.Zeros(WithWidth(s.Rows, dSae));
        d.Activation.Backward(s.Pre, s.Acts, dActs.Span, dPre.Span, n, dSae, d.P, new SaeParameters(new SaeShape(1, dSae, 1, false, false)));
        dPre = ctx.GradHook(HookNames.SaeActsPre(OutputHook), layer, dPre);
        // Forward: pre = (x − b_dec)·W_enc + b_enc
        var dX = Tensor.Uninitialized(WithWidth(s.Rows, dIn));
        Gemm.Sgemm(false, true, n, dIn, dSae, 1f, dPre.Span, dSae, d.P.WEnc, dSae, 0f, dX.Span, dIn);
        if (d.Shape.Skip) Gemm.Sgemm(false, true, n, dIn, dOut, 1f, dRecons.Span, dOut, d.P.WSkip, dOut, 1f, dX.Span, dIn);
        dX = ctx.GradHook(HookNames.SaeInput(OutputHook), layer, dX);
        return new SpliceGradient(dX.Reshape(s.InputShape), dOriginal?.Reshape(s.OriginalShape));
    }

    // ---- on a device (a GPU backend): the same steps with the dictionary's weights on the device --------------------------
    // The numbered steps at the top of the file, as backend ops (DeviceSaeEncoder); nothing is read on the host. Excluded
    // positions are handled as runs of consecutive rows (BOS opens each context: one short run per context).

    sealed record DeviceSaved(int[] Rows, int[] InputShape, int[] OriginalShape, Tensor Acts, (int Start, int Count)[]? Excluded);

    DeviceSaeEncoder EncoderFor(IComputeBackend backend) => _onDevice.GetValue(backend, b => new DeviceSaeEncoder(b, Dictionary));

    static (int Start, int Count)[]? Runs(bool[]? excluded)
    {
        if (excluded is null) return null;
        var runs = new List<(int, int)>();
        for (int r = 0; r < excluded.Length; r++)
        {
            if (!excluded[r]) continue;
            int start = r;
            while (r + 1 < excluded.Length && excluded[r + 1]) r++;
            runs.Add((start, r - start + 1));
        }
        return [.. runs];
    }

    static void ZeroRows(IComputeBackend b, Tensor t, int width, (int Start, int Count)[] runs)
    {
        foreach (var (start, count) in runs)
            b.Fill(new Tensor(t.Storage.Slice((long)start * width, (long)count * width), count * width), 0f);
    }

    static void CopyRowsOf(IComputeBackend b, Tensor from, Tensor to, int width, (int Start, int Count)[] runs)
    {
        foreach (var (start, count) in runs)
            b.CopyRows(from, (long)start * width, width, to, (long)start * width, width, count, width);
    }

    SpliceOutput DeviceForward(Tensor input, Tensor original, int layer, ForwardContext ctx, int[] rows, int n, bool[]? excludedRows)
    {
        var b = ctx.Backend;
        var enc = EncoderFor(b);
        int dIn = enc.Shape.DIn, dSae = enc.Shape.DSae, dOut = enc.Shape.DOut;
        var excluded = Runs(excludedRows);
        Tensor Flat(Tensor t, int width) => b.ToDevice(t).Reshape(n, width);

        // 1–2. x = hook_sae_input(input); pre = hook_sae_acts_pre(encoder(x))
        var x = Flat(ctx.Hook(HookNames.SaeInput(OutputHook), layer, input.Reshape(WithWidth(rows, dIn))), dIn);
        var pre = Flat(ctx.Hook(HookNames.SaeActsPre(OutputHook), layer, enc.EncodePre(x, n).Reshape(WithWidth(rows, dSae))), dSae);
        // 3. acts = hook_sae_acts_post(f(pre)); the unhooked acts give f' in the backward pass
        var acts = enc.Activate(pre, n).Acts;
        Tensor? actsForBackward = ctx.RecordsForBackward ? acts.Clone() : null;
        var actsPost = Flat(ctx.Hook(HookNames.SaeActsPost(OutputHook), layer, acts.Reshape(WithWidth(rows, dSae))), dSae);
        // 4. recons = hook_sae_recons(decoder(acts))
        var recons = Flat(ctx.Hook(HookNames.SaeRecons(OutputHook), layer, enc.Decode(actsPost, x, n).Reshape(WithWidth(rows, dOut))), dOut);

        var output = b.Empty(n, dOut);
        b.CopyRows(recons, 0, n * dOut, output, 0, n * dOut, 1, n * dOut);
        var originalRows = b.ToDevice(original).Reshape(n, dOut);
        if (Options.UseErrorTerm)
        {
            // 5. error = original − clean reconstruction of the unhooked input (0 at excluded positions)
            var unhooked = b.ToDevice(input).Reshape(n, dIn);
            var clean = enc.Decode(enc.Encode(unhooked, n).Acts, unhooked, n);
            b.Scale(clean, -1f, clean);
            var error = b.Empty(n, dOut);
            b.Add(originalRows, clean, error);
            if (excluded is not null) ZeroRows(b, error, dOut, excluded);
            error = Flat(ctx.Hook(HookNames.SaeError(OutputHook), layer, error.Reshape(WithWidth(rows, dOut))), dOut);
            b.Add(output, error, output);
        }
        // 6. excluded positions keep the original; then hook_sae_output
        if (excluded is not null) CopyRowsOf(b, originalRows, output, dOut, excluded);
        var result = ctx.Hook(HookNames.SaeOutput(OutputHook), layer, output.Reshape(WithWidth(rows, dOut)));

        object? saved = ctx.RecordsForBackward
            ? new DeviceSaved(rows, input.Shape.ToArray(), original.Shape.ToArray(), actsForBackward!, excluded)
            : null;
        return new SpliceOutput(result.Reshape(original.Shape.ToArray()), saved);
    }

    SpliceGradient DeviceBackward(DeviceSaved s, Tensor dOutput, int layer, ForwardContext ctx)
    {
        var b = ctx.Backend;
        var enc = EncoderFor(b);
        int dSae = enc.Shape.DSae, dOut = enc.Shape.DOut, dIn = enc.Shape.DIn;
        int n = (int)ShapeUtil.Product(s.Rows);
        Tensor Flat(Tensor t, int width) => b.ToDevice(t).Reshape(n, width);
        var dOut0 = Flat(ctx.GradHook(HookNames.SaeOutput(OutputHook), layer, dOutput.Reshape(WithWidth(s.Rows, dOut))), dOut);
        // d output / d recons = d output / d error = 1, except at excluded positions where the original flows on.
        var dRecons = dOut0.Clone();
        Tensor? dOriginal = null;
        if (s.Excluded is { } excluded)
        {
            dOriginal = b.Zeros(n, dOut);
            CopyRowsOf(b, dOut0, dOriginal, dOut, excluded);
            ZeroRows(b, dRecons, dOut, excluded);
        }
        // The error is a constant: its gradient can be read (attribution to error nodes) but goes no further.
        if (Options.UseErrorTerm) ctx.GradHook(HookNames.SaeError(OutputHook), layer, dRecons.Clone().Reshape(WithWidth(s.Rows, dOut)));
        dRecons = Flat(ctx.GradHook(HookNames.SaeRecons(OutputHook), layer, dRecons.Reshape(WithWidth(s.Rows, dOut))), dOut);
        // Forward: recons = acts·W_dec + b_dec (+ x·W_skip)
        var dActs = Flat(ctx.GradHook(HookNames.SaeActsPost(OutputHook), layer, enc.DecodeBackward(dRecons, n).Reshape(WithWidth(s.Rows, dSae))), dSae);
        // Forward: acts = f(pre); every supported f passes the gradient exactly where acts > 0 (θ > 0 for JumpReLU)
        var dPre = b.Empty(n, dSae);
        b.ActivationBackward("relu", s.Acts, dActs, dPre);
        dPre = Flat(ctx.GradHook(HookNames.SaeActsPre(OutputHook), layer, dPre.Reshape(WithWidth(s.Rows, dSae))), dSae);
        // Forward: pre = (x − b_dec)·W_enc + b_enc
        var dX = ctx.GradHook(HookNames.SaeInput(OutputHook), layer, enc.EncodeBackward(dPre, dRecons, n).Reshape(WithWidth(s.Rows, dIn)));
        return new SpliceGradient(dX.Reshape(s.InputShape), dOriginal?.Reshape(s.OriginalShape));
    }
}
