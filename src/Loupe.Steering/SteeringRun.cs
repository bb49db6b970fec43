using Loupe.Models;
using Loupe.Models.Generation;

namespace Loupe.Steering;

/// <summary>One sample of a steering run: its seed and both continuations (decoded, prompt left out).</summary>
/// <param name="Seed">The sampling seed.</param>
/// <param name="Unsteered">The continuation without the edit.</param>
/// <param name="Steered">The continuation with the edit.</param>
public sealed record SteerSample(int Seed, string Unsteered, string Steered);

/// <summary>What <c>loupe steer --out</c> writes as steer.json.</summary>
/// <param name="Model">The model folder.</param>
/// <param name="Prompt">The prompt text.</param>
/// <param name="Hook">The edited hook point.</param>
/// <param name="Vector">Where the direction came from.</param>
/// <param name="Mode"><c>add</c> or <c>project_out</c>.</param>
/// <param name="Coefficient">The coefficient.</param>
/// <param name="VectorNorm">‖v‖.</param>
/// <param name="Positions">Which positions were edited.</param>
/// <param name="MaxNewTokens">Tokens generated at most.</param>
/// <param name="Temperature">The sampling temperature (0 = greedy).</param>
/// <param name="TopK">Top-k sampling (0 = all).</param>
/// <param name="TopP">Nucleus sampling mass.</param>
/// <param name="Direction">The direction v.</param>
/// <param name="Samples">The samples.</param>
public sealed record SteerReport(string Model, string Prompt, string Hook, string Vector, string Mode, float Coefficient, float VectorNorm,
    string Positions, int MaxNewTokens, float Temperature, int TopK, float TopP, float[] Direction, IReadOnlyList<SteerSample> Samples);

/// <summary>
/// A steering run: a prompt continued with and without one activation edit. <c>loupe steer</c> and <c>loupe serve</c>'s
/// Steering page both call this, so the terminal and the page show the same tokens.
/// </summary>
public static class SteeringRun
{
    /// <summary>The edit: add <paramref name="coefficient"/> × the direction, or project it out.</summary>
    /// <param name="hook">The hook point to edit.</param>
    /// <param name="direction">The direction v.</param>
    /// <param name="coefficient">The coefficient c.</param>
    /// <param name="projectOut">Remove c × the component along v instead of adding c·v.</param>
    /// <param name="positions">Where to edit.</param>
    public static IActivationEdit Edit(string hook, float[] direction, float coefficient, bool projectOut, SteeringPositions positions) =>
        projectOut ? new ProjectOut(hook, direction, coefficient, positions) : new SteeringVector(hook, direction, coefficient, positions);

    /// <summary>How the run's edit reads for a person, e.g. "add 4 × the vector from x (‖v‖ = 1, ‖c·v‖ = 4)".</summary>
    /// <param name="direction">The direction v.</param>
    /// <param name="coefficient">The coefficient c.</param>
    /// <param name="projectOut">Whether the component is removed rather than added.</param>
    /// <param name="source">Where the direction came from.</param>
    public static string Describe(float[] direction, float coefficient, bool projectOut, string source)
    {
        float norm = Norm(direction);
        return projectOut ? $"project out {coefficient:G4} × the component along the {source} (‖v‖ = {norm:G4})"
            : $"add {coefficient:G4} × the {source} (‖v‖ = {norm:G4}, ‖c·v‖ = {MathF.Abs(coefficient) * norm:G4})";
    }

    public static float Norm(float[] direction) => MathF.Sqrt(direction.Sum(x => x * x));

    /// <summary>New tokens to ask for: <paramref name="requested"/>, at most what still fits in n_ctx.</summary>
    /// <param name="model">The model.</param>
    /// <param name="input">The prompt's ids.</param>
    /// <param name="requested">Tokens asked for.</param>
    public static int NewTokens(HookedTransformer model, int[] input, int requested) => Math.Min(requested, model.Config.NCtx - input.Length);

    /// <summary>One continuation of <paramref name="input"/>, with <paramref name="edit"/> active (null: unsteered); only the new tokens.</summary>
    /// <param name="model">The model.</param>
    /// <param name="input">The prompt's ids.</param>
    /// <param name="generation">Length and sampling.</param>
    /// <param name="edit">The edit, or null for the unsteered continuation.</param>
    /// <param name="onToken">Sees each new token as it is picked.</param>
    /// <param name="cancel">Checked before every token.</param>
    public static int[] Continue(HookedTransformer model, int[] input, GenerationOptions generation, IActivationEdit? edit,
        Action<int>? onToken = null, CancellationToken cancel = default) =>
        model.Generate([input], onToken is null ? generation : generation with { OnToken = t => { onToken(t.Token); return true; } },
            edit is null ? null : ActivationEdits.Options(model, edit), cancel)[0];

    /// <summary>Decodes with the prompt in front, so the first new token keeps its leading space (newlines as spaces).</summary>
    /// <param name="model">The model (needs a tokenizer).</param>
    /// <param name="ids">The ids to decode.</param>
    public static string Decode(HookedTransformer model, int[] ids) =>
        (model.Tokenizer ?? throw new InputError("this model has no tokenizer")).Decode(ids, skipSpecialTokens: true).ReplaceLineEndings(" ");
}
