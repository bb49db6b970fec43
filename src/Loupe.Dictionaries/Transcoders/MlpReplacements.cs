namespace Loupe.Dictionaries.Transcoders;

/// <summary>Loads whatever replaces a model's MLPs from the layouts researchers share, by what the path holds.</summary>
public static class MlpReplacements
{
    /// <summary>
    /// <list type="bullet">
    /// <item>a cross-layer transcoder folder: Loupe's (<c>cfg.json</c> + <c>clt_weights.safetensors</c>) or circuit-tracer's (<c>W_enc_0.safetensors</c>, …);</item>
    /// <item>circuit-tracer per-layer transcoders: <c>layer_0.safetensors</c>, … (+ <c>config.yaml</c>);</item>
    /// <item>SAELens transcoders: a folder of per-layer SAELens folders (<c>layer_0/cfg.json</c>, …), or those folders comma-separated in layer order.</item>
    /// </list>
    /// </summary>
    /// <param name="path">The folder (or comma-separated SAELens folders).</param>
    /// <param name="layers">The model's n_layers (SAELens folders are matched to layers by it).</param>
    /// <exception cref="InputError">The path holds none of these, or the files are bad (the message names the file and field).</exception>
    public static IMlpReplacement Load(string path, int layers)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (path.Contains(',')) return PerLayerTranscoders.LoadSaeLens(path, layers);
        if (!Directory.Exists(path)) throw new InputError($"transcoder folder not found: {Path.GetFullPath(path)}");
        if (File.Exists(Path.Combine(path, "layer_0.safetensors"))) return CircuitTracerTranscoders.Load(path);
        if (File.Exists(Path.Combine(path, "W_enc_0.safetensors")) || File.Exists(Path.Combine(path, "clt_weights.safetensors"))) return CltFiles.Load(path);
        return PerLayerTranscoders.LoadSaeLens(path, layers);
    }
}
