// Gemma Scope's params.npz (Lieberum et al. 2024, huggingface.co/google/gemma-scope): a JumpReLU SAE saved by
// np.savez, one .npy entry per tensor (entries stored or deflated):
//   W_enc.npy     [d_model, d_sae]     b_enc.npy [d_sae]
//   W_dec.npy     [d_sae, d_model]     b_dec.npy [d_model]
//   threshold.npy [d_sae]              θ itself, not its log
// Encoding, as in the Gemma Scope tutorial and SAELens's gemma_2 loader (apply_b_dec_to_input = false):
//   pre   = x·W_enc + b_enc            b_dec is NOT subtracted from the input
//   acts  = relu(pre)·1[pre > θ]       (= pre·1[pre > θ] for θ ≥ 0)
//   recon = acts·W_dec + b_dec
// The hook point is not in the file. It is taken from the caller, or read off the published layout
//   …/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att}[-canonical]/layer_{L}/width_{W}/average_l0_{N}/params.npz
// (a Hugging Face cache folder "models--google--gemma-scope-2b-pt-res" counts too).
//
// Loading:
//   1. open the zip and map entry names to tensors ("w_enc" is read as "W_enc", as SAELens does); refuse unknown entries;
//   2. read every header first: shapes must agree (d_in, d_sae from W_enc; d_out from W_dec);
//   3. read each array straight into the dictionary's buffers (f2/f4/f8 → float32); refuse NaN and ±∞;
//   4. θ → log θ (the JumpReLU activation stores log θ); θ ≤ 0 gives −∞, which fires exactly like θ = 0.
using System.IO.Compression;
using System.Text.RegularExpressions;
using Loupe.Models.Hooks;

namespace Loupe.Dictionaries.Sae;

/// <summary>Loads Gemma Scope JumpReLU SAEs from their published <c>params.npz</c>.</summary>
public static partial class GemmaScopeFormat
{
    /// <summary>The file name Gemma Scope uses in every SAE folder.</summary>
    public const string ParamsFile = "params.npz";

    static readonly string[] s_required = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"];

    /// <summary>
    /// Loads a Gemma Scope SAE from a <c>params.npz</c> file or a folder holding one.
    /// </summary>
    /// <param name="path">The .npz file, or its folder.</param>
    /// <param name="hookName">
    /// The hook the SAE reads (e.g. <c>blocks.12.hook_resid_post</c>). When null, it is inferred from the path
    /// (see <see cref="ConfigFromPath"/>) and left empty when the path does not tell.
    /// </param>
    /// <returns>
    /// The dictionary (JumpReLU, <c>apply_b_dec_to_input</c> false, d_out = W_dec's width) and a config in SAELens
    /// terms (architecture "jumprelu"), so it can be saved with <see cref="SaeLensFormat.Save"/>.
    /// </returns>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/> (or no params.npz in the folder).</exception>
    /// <exception cref="InputError">
    /// The file is not a zip archive, an entry is missing, unknown, duplicated or not a float .npy array (pickles are
    /// refused), its header declares more (or fewer) bytes than the entry holds, shapes disagree, a tensor has more
    /// elements than a float[] can hold, or a value is NaN or infinite. Messages name the file and the entry.
    /// </exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string path, string? hookName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string file = Directory.Exists(path) ? Path.Combine(path, ParamsFile) : path;
        if (!File.Exists(file)) throw new FileNotFoundException($"Gemma Scope parameters not found: {file}", file);
        file = Path.GetFullPath(file);

        ZipArchive zip;
        IReadOnlyCollection<ZipArchiveEntry> directory;
        InputFiles.EnsureRegularFile(file);
        var fs = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            zip = new ZipArchive(fs, ZipArchiveMode.Read, leaveOpen: false);
            try { directory = zip.Entries; } // the central directory is read lazily, here
            catch { zip.Dispose(); throw; }
        }
        catch (InvalidDataException e)
        {
            fs.Dispose();
            throw new InputError($"{file} is not a valid .npz (zip) archive: {e.Message}", e);
        }
        using (zip)
        {
            // 1. Entry names → tensors.
            var entries = new Dictionary<string, ZipArchiveEntry>(StringComparer.Ordinal);
            foreach (var entry in directory)
            {
                string name = entry.FullName;
                if (!name.EndsWith(".npy", StringComparison.Ordinal))
                    throw new InputError($"{file}: entry '{name}' is not a .npy array; a params.npz holds {string.Join(", ", s_required.Select(r => r + ".npy"))}");
                string key = name[..^4];
                if (key.StartsWith("w_", StringComparison.Ordinal)) key = "W_" + key[2..];
                if (!s_required.Contains(key))
                    throw new InputError($"{file}: unexpected entry '{name}'; a Gemma Scope params.npz holds exactly {string.Join(", ", s_required.Select(r => r + ".npy"))}");
                if (!entries.TryAdd(key, entry))
                    throw new InputError($"{file}: tensor '{key}' appears twice (entries '{entries[key].FullName}' and '{name}')");
            }
            var missing = s_required.Where(r => !entries.ContainsKey(r)).ToList();
            if (missing.Count > 0)
                throw new InputError($"{file}: missing {string.Join(", ", missing.Select(m => $"'{m}.npy'"))} (found {(entries.Count == 0 ? "no entries" : string.Join(", ", entries.Values.Select(e => $"'{e.FullName}'")))})");

            // 2. Headers and shapes.
            var headers = entries.ToDictionary(kv => kv.Key, kv => Read(file, kv.Value, (s, src, length) => Npy.ReadHeader(s, src, length)));
            long[] wEnc = headers["W_enc"].Shape, wDec = headers["W_dec"].Shape;
            if (wEnc.Length != 2) throw ShapeError(file, entries["W_enc"], wEnc, "[d_in, d_sae] (2-D)");
            if (wDec.Length != 2) throw ShapeError(file, entries["W_dec"], wDec, "[d_sae, d_out] (2-D)");
            long dIn = wEnc[0], dSae = wEnc[1], dOut = wDec[1];
            if (dIn <= 0 || dSae <= 0 || dOut <= 0)
                throw new InputError($"{file}: W_enc is [{dIn}, {dSae}] and W_dec [{wDec[0]}, {dOut}]; dimensions must be positive");
            if (wDec[0] != dSae) throw ShapeError(file, entries["W_dec"], wDec, $"[{dSae}, d_out]: one row per feature of W_enc [{dIn}, {dSae}]");
            // Each header was checked against its entry's declared length, so these sizes are backed by the archive.
            Check.Product($"{file}, entry '{entries["W_enc"].FullName}'", "W_enc [d_in, d_sae]", Check.MaxArrayElements, dIn, dSae);
            Check.Product($"{file}, entry '{entries["W_dec"].FullName}'", "W_dec [d_sae, d_out]", Check.MaxArrayElements, dSae, dOut);
            void Expect(string key, params long[] shape)
            {
                if (!headers[key].Shape.SequenceEqual(shape))
                    throw ShapeError(file, entries[key], headers[key].Shape, $"[{string.Join(", ", shape)}] to match W_enc [{dIn}, {dSae}] and W_dec [{wDec[0]}, {dOut}]");
            }
            Expect("b_enc", dSae);
            Expect("b_dec", dOut);
            Expect("threshold", dSae);

            // 3. Data straight into the dictionary.
            var dict = new SparseDictionary(new SaeShape((int)dIn, (int)dSae, (int)dOut, ApplyBDecToInput: false, Skip: false), new JumpReluActivation());
            var theta = new float[dSae];                                 // [d_sae]
            foreach (var (key, into) in new (string, float[])[]
                     { ("W_enc", dict.P.WEnc), ("b_enc", dict.P.BEnc), ("W_dec", dict.P.WDec), ("b_dec", dict.P.BDec), ("threshold", theta) })
            {
                Read(file, entries[key], (s, src, length) =>
                {
                    var h = Npy.ReadHeader(s, src, length);
                    Npy.ReadData(s, h, into, src);
                    return h;
                });
                SaeLensFormat.ThrowIfNotFinite(into, $"{file}, entry '{entries[key].FullName}'");
            }

            // 4. θ → log θ.
            for (int i = 0; i < theta.Length; i++) dict.P.LogThreshold[i] = SaeLensFormat.LogThreshold(theta[i]);

            var cfg = ConfigFromPath(file) with
            {
                Architecture = "jumprelu", DIn = (int)dIn, DSae = (int)dSae, DOut = (int)dOut, ApplyBDecToInput = false,
                NormalizeActivations = "none", Dtype = "float32",
            };
            if (hookName is not null)
                cfg = cfg with { HookName = hookName, HookLayer = SaeLensFormat.LayerOf(hookName) ?? cfg.HookLayer };
            return (dict, cfg);
        }
    }

    /// <summary>
    /// What the published Gemma Scope folder layout says about an SAE: for
    /// <c>…/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz</c> the hook
    /// <c>blocks.12.hook_resid_post</c>, layer 12, model <c>gemma-2-2b</c>, context 1024.
    /// </summary>
    /// <remarks>
    /// The hook is named only when a path segment names the release: <c>-res</c> ⇒ <c>hook_resid_post</c>,
    /// <c>-mlp</c> ⇒ <c>hook_mlp_out</c>, <c>-att</c> ⇒ <c>attn.hook_z</c> (with <see cref="SaeLensConfig.ReshapeActivations"/>
    /// "hook_z": the SAE reads z flattened to n_heads·d_head), and a <c>layer_L</c> folder gives the layer. Anything
    /// else (transcoder releases, the <c>embedding</c> SAEs, renamed folders) leaves the hook empty: the caller must
    /// say. Model names follow SAELens (<c>gemma-2-9b</c>, <c>gemma-2-9b-it</c>).
    /// </remarks>
    public static SaeLensConfig ConfigFromPath(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var segments = Path.GetFullPath(path).Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries);
        int? layer = null;
        Match? release = null;
        foreach (string seg in segments)
        {
            if (LayerFolder().Match(seg) is { Success: true } lm
                && int.TryParse(lm.Groups[1].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int at)) layer = at;
            if (ReleaseFolder().Match(seg) is { Success: true } rm) release = rm;
        }
        var cfg = new SaeLensConfig { Architecture = "jumprelu", ApplyBDecToInput = false, ContextSize = 1024, PrependBos = true };
        if (release is null) return cfg with { HookLayer = layer ?? 0 };
        string size = release.Groups["size"].Value, variant = release.Groups["variant"].Value, site = release.Groups["site"].Value;
        cfg = cfg with { ModelName = variant == "it" ? $"gemma-2-{size}-it" : $"gemma-2-{size}" };
        if (layer is not int l) return cfg;
        return site switch
        {
            "res" => cfg with { HookName = HookNames.ResidPost(l), HookLayer = l },
            "mlp" => cfg with { HookName = HookNames.MlpOut(l), HookLayer = l },
            "att" => cfg with { HookName = HookNames.Z(l), HookLayer = l, ReshapeActivations = "hook_z" },
            _ => cfg with { HookLayer = l },
        };
    }

    [GeneratedRegex(@"^layer_([0-9]{1,9})$")]
    private static partial Regex LayerFolder();

    [GeneratedRegex(@"(?:^|--)gemma-scope-(?<size>[0-9]+b)-(?<variant>pt|it)-(?<site>res|mlp|att|transcoders)(?:-canonical)?$")]
    private static partial Regex ReleaseFolder();

    // Deflate never expands more than about 1032:1; a declared length past that is a lie about the entry.
    const long MaxDeflateRatio = 1100;

    // Reads one entry with its declared uncompressed length as the .npy's size, so a header can never make Loupe
    // allocate for bytes the entry does not declare; reading stops at the real end of the stream (truncation is reported).
    static NpyHeader Read(string file, ZipArchiveEntry entry, Func<Stream, string, long, NpyHeader> read)
    {
        string source = $"{file}, entry '{entry.FullName}'";
        long length = entry.Length, compressed = entry.CompressedLength;
        if (length < 0 || compressed < 0 || length > compressed * MaxDeflateRatio + 4096)
            throw new InputError($"{source}: declares {length} uncompressed bytes from {compressed} compressed bytes; more than deflate can produce (the archive's directory is corrupt)");
        try
        {
            using var s = entry.Open();
            return read(s, source, length);
        }
        catch (InvalidDataException e)
        {
            // The zip layer itself failed (bad deflate data, CRC mismatch, an entry longer than declared).
            throw new InputError($"{source} cannot be read from the archive: {e.Message}", e);
        }
        catch (NotSupportedException e)
        {
            throw new InputError($"{source} cannot be read from the archive: {e.Message}", e);
        }
    }

    static InputError ShapeError(string file, ZipArchiveEntry entry, long[] shape, string expected) =>
        new($"{file}, entry '{entry.FullName}' has shape ({string.Join(", ", shape)}); expected {expected}");
}
