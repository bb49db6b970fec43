namespace Loupe.Dictionaries.Transcoders;

/// <summary>
/// The dictionaries that replace every MLP of a model in a replacement model: one transcoder per
/// layer (each writes its own layer's MLP output) or a cross-layer transcoder (features of layer ℓ
/// read that layer's MLP input and write the MLP outputs of layers ℓ…L−1). Attribution graphs,
/// loss-recovered evaluation and interventions see both through this interface.
/// Vectors are host <c>float</c> spans; matrices are row-major.
/// </summary>
public interface IMlpReplacement
{
    /// <summary>Number of layers replaced (the model's n_layers).</summary>
    int Layers { get; }

    /// <summary>Width of what the features read (the MLP input: d_model).</summary>
    int DIn { get; }

    /// <summary>Width of what they write (the MLP output: d_model).</summary>
    int DOut { get; }

    /// <summary>Number of features of <paramref name="layer"/>.</summary>
    int Features(int layer);

    /// <summary>The hook the features of <paramref name="layer"/> read, e.g. <c>blocks.3.ln2.hook_normalized</c>.</summary>
    string InputHook(int layer);

    /// <summary>The hook the reconstruction of <paramref name="layer"/> replaces, e.g. <c>blocks.3.hook_mlp_out</c>.</summary>
    string OutputHook(int layer);

    /// <summary>The last layer whose MLP output a feature of <paramref name="layer"/> writes: the layer itself for a per-layer transcoder, L−1 for a cross-layer transcoder.</summary>
    int LastTarget(int layer);

    /// <summary>
    /// Pre-activations (<c>x·W_enc + b_enc</c>, after any input normalisation the dictionary applies) and
    /// activations (after its nonlinearity: ReLU, JumpReLU, TopK…) of <paramref name="layer"/>'s features for
    /// inputs <paramref name="x"/> <c>[rows, d_in]</c>; both outputs are <c>[rows, Features(layer)]</c>.
    /// </summary>
    void Encode(int layer, ReadOnlySpan<float> x, int rows, Span<float> pre, Span<float> acts);

    /// <summary>
    /// The input direction of one feature: the vector whose dot product with the MLP input gives the
    /// feature's pre-activation minus its bias (<c>W_enc[:, feature]</c>), length d_in.
    /// </summary>
    void EncoderDirection(int layer, int feature, Span<float> into);

    /// <summary>
    /// What one unit of activation of feature <paramref name="feature"/> of <paramref name="layer"/> adds to
    /// the MLP output of <paramref name="targetLayer"/> (layer ≤ target ≤ <see cref="LastTarget"/>), length d_out.
    /// </summary>
    void DecoderDirection(int layer, int feature, int targetLayer, Span<float> into);

    /// <summary>
    /// The reconstruction of MLP output <paramref name="targetLayer"/> <c>[rows, d_out]</c> from the
    /// activations of every source layer that writes it (<paramref name="acts"/>[ℓ] is <c>[rows, Features(ℓ)]</c>
    /// for ℓ = 0…target; earlier entries may be ignored by per-layer transcoders), plus decoder biases
    /// (and a skip connection from <paramref name="inputs"/>[target] <c>[rows, d_in]</c> where there is one).
    /// </summary>
    void Reconstruct(int targetLayer, IReadOnlyList<float[]> acts, IReadOnlyList<float[]> inputs, int rows, Span<float> recon);

    /// <summary>True when some layer has a linear skip path from its input to its output (skip transcoders).</summary>
    bool HasSkip { get; }

    /// <summary>
    /// The skip path of <paramref name="layer"/>, <c>[d_in, d_out]</c> applied as <c>x·W_skip</c>, or null when the layer has none.
    /// Attribution and frozen interventions keep it live (a wrapper that dropped it would silently change graphs: no default).
    /// </summary>
    float[]? SkipWeights(int layer);

    /// <summary>A stable fingerprint of the weights (hex SHA-256 prefix), recorded in every artifact made with them.</summary>
    string Fingerprint { get; }

    /// <summary>Where it was loaded from (a folder or file), or a name.</summary>
    string Source { get; }
}
