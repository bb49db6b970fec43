// A feature store (features.db: density, top-K contexts, interval samples, histograms per latent) for a crosscoder: the
// same two-pass build as an SAE's (FeatureDashboardBuilder), with each batch's activations taken from every model on the
// same tokens (PairedActivations) and encoded by the crosscoder. `loupe features top`, `loupe explain` and the web app then
// read a crosscoder's latents as they read an SAE's — what model diffing needs once `diff` has named the exclusive latents.
// The store's hook records every source ("base:blocks.6.hook_resid_post+chat:blocks.6.hook_resid_post"); logit effects are
// not computed (a latent has one decoder vector per model, not one residual direction); contexts are shown with the first
// model's tokenizer. With every model on one device the rows are concatenated there, encoded by the crosscoder in model units
// (uploaded once) and only the nonzero latents come back (DeviceSaeEncoder.EncodeSparse).
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>Builds a crosscoder's feature store (see the file header).</summary>
public static class CrosscoderFeatures
{
    /// <exception cref="InputError">Options out of range, BOS kept (a crosscoder reads positions past it only), contexts longer
    /// than a model's n_ctx, a latent that is NaN or +∞, or the output path not a regular file.</exception>
    public static FeatureBuildSummary Build(Crosscoder crosscoder, PairedActivations paired, HarvestContexts contexts, string outputPath,
        FeatureBuildOptions? options = null, string? crosscoderPath = null, IProgress<FeatureBuildProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(crosscoder);
        ArgumentNullException.ThrowIfNull(paired);
        ArgumentNullException.ThrowIfNull(contexts);
        var o = (options ?? new FeatureBuildOptions()) with { LogitCount = 0 };
        o.Validate();
        if (!o.SkipBos) throw new InputError("argument: --keep-bos: a crosscoder reads the positions past BOS only");
        OutputFiles.EnsureReplaceable(Path.GetFullPath(outputPath));
        int n = contexts.ContextSize, f = crosscoder.DSae;
        if (n < 2) throw InputError.Expected("argument", "context size", "at least 2 (BOS plus one token)", n);
        foreach (var (label, model) in paired.Models)
            if (n > model.Config.NCtx) throw InputError.Expected("argument", "context size", $"at most model {label}'s n_ctx = {model.Config.NCtx}", n);

        string hook = string.Join("+", crosscoder.Sources.Select(s => s.ToString()));
        var device = paired.Backend is { } backend ? new DeviceSaeEncoder(backend, crosscoder.InModelUnits()) : null;
        SparseActivations Encode(int[] ids, int b, int c0)
        {
            if (device is not null)
            {
                var (onDevice, _) = paired.RunOnDevice(ids, b, n);
                return device.EncodeSparse(onDevice, b * (n - 1), (row, latent, value) => throw NotFinite(latent, value, c0 + row / (n - 1), row % (n - 1) + 1));
            }
            var (x, _) = paired.Run(ids, b, n);
            int rows = b * (n - 1);
            var dense = crosscoder.Encode(x, rows); // [b·(n − 1), F], context-major
            for (long i = 0; i < dense.Length; i++)
                if (float.IsNaN(dense[i]) || float.IsPositiveInfinity(dense[i]))
                {
                    long row = i / f;
                    throw NotFinite((int)(i % f), dense[i], c0 + row / (n - 1), row % (n - 1) + 1);
                }
            return SparseActivations.FromDense(dense, rows, f);
        }
        var meta = new Dictionary<string, string>
        {
            ["model"] = string.Join(",", paired.Models.Select(kv => $"{kv.Key}={(kv.Value.Source is string s ? Path.GetFullPath(s) : "(in memory)")}")),
            ["hook"] = hook,
            ["sae_path"] = crosscoderPath is null ? "(in memory)" : Path.GetFullPath(crosscoderPath),
            ["normalize_activations"] = $"crosscoder input scales {string.Join(", ", crosscoder.InputScales.Select(c => c.ToString("R", System.Globalization.CultureInfo.InvariantCulture)))}",
        };
        string fingerprint = string.Join(",", paired.Models.Select(kv => $"{kv.Key}={HarvestManifest.Fingerprint(kv.Value)}"));
        static InputError NotFinite(int latent, float value, long context, long position) =>
            new($"latent {latent} is {value} at context {context}, position {position}: the activations or the crosscoder's weights hold NaN or ∞");
        return FeatureDashboardBuilder.BuildCore(paired.First, crosscoder.Dictionary, hook, fingerprint, meta, contexts, outputPath, o, Encode, progress, cancellationToken);
    }
}
