// Gated SAEs (Rajamanoharan et al. 2024, arXiv 2404.16014), as SAELens ("gated") and dictionary_learning
// (GatedAutoEncoder) save them, read as the JumpReLU SAE they are at inference:
//   u      = (x − b_dec)·W_enc[:, i]                 one encoder, shared by both paths
//   gate   = 1[u + b_gate[i] > 0]
//   f_i    = gate · ReLU(exp(r_mag[i])·u + b_mag[i])
// With W'[:, i] = exp(r_mag[i])·W_enc[:, i] and b'[i] = b_mag[i], pre = (x − b_dec)·W' + b' is the magnitude pre-activation,
// and since exp(r) > 0 the gate u > −b_gate is pre > b_mag − exp(r)·b_gate. The ReLU adds pre > 0, so
//   f_i = pre · 1[pre > max(b_mag − exp(r)·b_gate, 0)]
// — a JumpReLU with that threshold (the JumpReLU paper's own remark on Gated SAEs with tied weights). Same latents, same
// reconstruction; only a pre-activation within float rounding of the threshold can land on the other side.
namespace Loupe.Dictionaries.Sae;

/// <summary>Reads a Gated SAE's magnitude and gate parameters into a JumpReLU <see cref="SparseDictionary"/>.</summary>
public static class GatedSae
{
    /// <summary>
    /// Folds r_mag, b_gate and b_mag into <paramref name="p"/>, whose W_enc [d_in, d_sae] holds the gated encoder's shared
    /// weights on entry: column i of W_enc is scaled by exp(r_mag[i]), b_enc becomes b_mag and log θ = log max(b_mag −
    /// exp(r_mag)·b_gate, 0).
    /// </summary>
    /// <param name="p">The parameters of a JumpReLU dictionary; W_enc, W_dec and b_dec already read.</param>
    /// <param name="rMag">log magnitude scale per latent [d_sae].</param>
    /// <param name="bGate">gate bias per latent [d_sae].</param>
    /// <param name="bMag">magnitude bias per latent [d_sae].</param>
    /// <param name="source">The file, named in errors.</param>
    /// <exception cref="InputError">exp(r_mag) is 0 or infinite in float32 (|r_mag| past ~87), where the gate cannot be
    /// expressed through the magnitude path; the message names the latent.</exception>
    public static void FoldIntoJumpRelu(SaeParameters p, ReadOnlySpan<float> rMag, ReadOnlySpan<float> bGate, ReadOnlySpan<float> bMag, string source)
    {
        ArgumentNullException.ThrowIfNull(p);
        int dIn = p.Shape.DIn, dSae = p.Shape.DSae;
        if (rMag.Length != dSae || bGate.Length != dSae || bMag.Length != dSae)
            throw new ArgumentException($"r_mag, b_gate and b_mag must have d_sae = {dSae} entries");
        var scale = new float[dSae];
        for (int i = 0; i < dSae; i++)
        {
            scale[i] = MathF.Exp(rMag[i]);
            if (!(scale[i] > 0) || float.IsPositiveInfinity(scale[i]))
                throw InputError.Expected(source, $"r_mag[{i}]", "a log scale whose exp is a positive finite float32 (|r_mag| below ~87)", rMag[i]);
        }
        for (int row = 0; row < dIn; row++)
        {
            var w = p.WEnc.AsSpan(row * dSae, dSae);
            for (int i = 0; i < dSae; i++) w[i] *= scale[i];
        }
        for (int i = 0; i < dSae; i++)
        {
            p.BEnc[i] = bMag[i];
            float theta = bMag[i] - scale[i] * bGate[i];
            if (!float.IsFinite(theta))
                throw InputError.Expected(source, $"latent {i}'s gate threshold b_mag − exp(r_mag)·b_gate", "a finite number", theta);
            p.LogThreshold[i] = SaeLensFormat.LogThreshold(Math.Max(theta, 0f));
        }
    }
}
