namespace Loupe.Dictionaries.Sae;

/// <summary>
/// Loads a dictionary from whichever published layout a path holds, so every verb takes one <c>--sae PATH</c>:
/// a SAELens folder (<c>cfg.json</c> + <c>sae_weights.safetensors</c>) or either of its files, a Gemma Scope
/// <c>params.npz</c> or a folder holding one (and no cfg.json), a Gemma Scope 2 <c>params.safetensors</c> (+ <c>config.json</c>)
/// or its folder, an EleutherAI sparsify hookpoint folder (<c>cfg.json</c> + <c>sae.safetensors</c>) or either of its files, or a
/// saprmarks/dictionary_learning trainer folder (<c>ae.pt</c> + <c>config.json</c>) or its <c>ae.pt</c>.
/// </summary>
public static class DictionaryFile
{
    /// <summary>Loads the dictionary at <paramref name="path"/>; the config carries the hook name and SAELens fields.</summary>
    /// <param name="path">A SAELens folder, its cfg.json or sae_weights.safetensors, a .npz file, or a folder with params.npz.</param>
    /// <param name="hookName">
    /// Gemma Scope (the hook is not stored in a .npz) and Gemma Scope 2 only: the hook the SAE reads. When null it is inferred from the
    /// published folder layout where that is unambiguous (see <see cref="GemmaScopeFormat.ConfigFromPath"/>).
    /// </param>
    /// <exception cref="FileNotFoundException">Nothing loadable exists at the path.</exception>
    /// <exception cref="InputError">
    /// The path names a file of another kind, the files are malformed (see <see cref="SaeLensFormat.Load"/> and
    /// <see cref="GemmaScopeFormat.Load"/>), or <paramref name="hookName"/> is given for a SAELens folder, whose cfg.json names its hook.
    /// </exception>
    public static (SparseDictionary Dictionary, SaeLensConfig Config) Load(string path, string? hookName = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (File.Exists(path))
        {
            string name = Path.GetFileName(path);
            string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
            if (name == SparsifyFormat.WeightsFile || (name == SparsifyFormat.ConfigFile && SparsifyFormat.IsSparsifyFolder(folder)))
                return SparsifyFormat.Load(folder, hookName);
            if (name is SaeLensFormat.ConfigFile or SaeLensFormat.WeightsFile)
                return SaeLens(folder, hookName);
            if (name == DictionaryLearningFormat.WeightsFile) return DictionaryLearningFormat.Load(folder, hookName);
            if (path.EndsWith(".npz", StringComparison.OrdinalIgnoreCase)) return GemmaScopeFormat.Load(path, hookName);
            if (GemmaScope2Format.IsGemmaScope2File(path)) return GemmaScope2Format.Load(path, hookName);
            throw new InputError(
                $"'{path}' is not a dictionary file: expected a SAELens {SaeLensFormat.ConfigFile} or {SaeLensFormat.WeightsFile}, a Gemma Scope .npz, a Gemma Scope 2 {GemmaScope2Format.ParamsFile}, a sparsify {SparsifyFormat.WeightsFile} or a dictionary_learning {DictionaryLearningFormat.WeightsFile}");
        }
        if (Directory.Exists(path))
        {
            if (SparsifyFormat.IsSparsifyFolder(path)) return SparsifyFormat.Load(path, hookName);
            if (File.Exists(Path.Combine(path, SaeLensFormat.ConfigFile))) return SaeLens(path, hookName);
            if (File.Exists(Path.Combine(path, GemmaScopeFormat.ParamsFile))) return GemmaScopeFormat.Load(path, hookName);
            if (File.Exists(Path.Combine(path, GemmaScope2Format.ParamsFile))) return GemmaScope2Format.Load(path, hookName);
            if (DictionaryLearningFormat.IsDictionaryLearningFolder(path)) return DictionaryLearningFormat.Load(path, hookName);
            if (Crosscoders.CrosscoderFiles.IsCrosscoder(path)) throw Crosscoders.CrosscoderFiles.NotAnSae(path);
            throw new FileNotFoundException(
                $"no dictionary in folder '{path}': expected a SAELens {SaeLensFormat.ConfigFile} + {SaeLensFormat.WeightsFile}, a Gemma Scope {GemmaScopeFormat.ParamsFile}, a Gemma Scope 2 {GemmaScope2Format.ParamsFile}, a sparsify {SparsifyFormat.ConfigFile} + {SparsifyFormat.WeightsFile} or a dictionary_learning {DictionaryLearningFormat.WeightsFile} (+ config.json)" +
                (Directory.EnumerateDirectories(path).Any(d => SparsifyFormat.IsSparsifyFolder(d)) ? " (this looks like a sparsify run: name one of its hookpoint folders, e.g. layers.6)" : ""), path);
        }
        throw new FileNotFoundException(
            $"no dictionary at '{path}': expected a SAELens folder (cfg.json + sae_weights.safetensors), a Gemma Scope params.npz or a Gemma Scope 2 params.safetensors", path);
    }

    static (SparseDictionary, SaeLensConfig) SaeLens(string folder, string? hookName) =>
        hookName is null ? SaeLensFormat.Load(folder)
            : throw new InputError($"{folder}: a hook name ({InputError.Show(hookName)}) is only taken for Gemma Scope, sparsify and dictionary_learning files; this SAELens folder names its own hook in cfg.json");
}
