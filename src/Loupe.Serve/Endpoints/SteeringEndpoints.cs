using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Steering;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Loupe.Serve;

/// <summary>A steering or persona vector file among the served artifacts.</summary>
/// <param name="Id">Its id (16 hex digits of a SHA-256 of its path relative to --graphs); the only way requests name it.</param>
/// <param name="Name">Its relative path, for a person.</param>
/// <param name="Hook">The hook it records (null: give one).</param>
/// <param name="Norm">‖v‖.</param>
/// <param name="Width">Its length.</param>
public sealed record VectorView(string Id, string Name, string? Hook, double Norm, int Width);

/// <summary>What can steer: vector files, and the features of the served stores (their decoder directions).</summary>
/// <param name="Vectors">Steering and persona vector files (.safetensors under --graphs).</param>
/// <param name="Stores">Feature stores whose dictionary is available.</param>
/// <param name="Hooks">Residual-stream hook points of the model.</param>
public sealed record SteeringSourcesView(VectorView[] Vectors, FeatureStoreView[] Stores, string[] Hooks);

/// <summary>The Steering page's API: sources, and a steered vs. unsteered generation streamed token by token.</summary>
public static class SteeringEndpoints
{
    public static void Map(WebApplication app, ModelGate gate, ServedStores stores, ServeOptions options)
    {
        var model = gate.Model;
        var api = app.MapGroup("/api/steering");
        api.MapGet("/sources", () => new SteeringSourcesView(
            [.. VectorFiles(options.GraphsDir).Select(v => Describe(v.Id, v.Rel, v.Full)).OfType<VectorView>()],
            [.. stores.All.Where(s => s.SaePath is not null).Select(s => s.Read(st => new FeatureStoreView(s.Id, s.Name, st.Hook, st.DSae, st.Tokens, 0, true, s.SaePath!)))],
            [.. Enumerable.Range(0, model.Config.NLayers).SelectMany(l => new[] { $"blocks.{l}.hook_resid_pre", $"blocks.{l}.hook_resid_post" })]))
            .WithSummary("Steering sources: vector files among the served artifacts (by id), feature stores whose SAE decoder directions can steer, and hook points");

        api.MapGet("/stream", async (HttpContext context, string text, string source, string? hook, float? coeff, int? n, string? positions,
            [Microsoft.AspNetCore.Mvc.FromQuery(Name = "project_out")] bool? projectOut, float? temperature, int? seed) =>
        {
            // Everything is checked before the stream starts, so a bad request is a plain 400.
            int[] input = Analyses.Tokens(model, text, null, options);
            var (direction, hookName, what, persona) = Direction(source, hook, stores, options);
            float c = coeff ?? 4f;
            if (!float.IsFinite(c)) throw new InputError("coeff must be a finite number");
            var where = SteeringPositions.Parse(positions ?? "all", "positions");
            var edit = SteeringRun.Edit(hookName, direction, c, projectOut ?? false, where);
            ActivationEdits.Validate(model, edit);
            float temp = Math.Clamp(temperature ?? 0f, 0f, 2f);
            int newTokens = SteeringRun.NewTokens(model, input, Math.Clamp(n ?? 40, 1, 256));
            if (newTokens <= 0) throw new InputError($"the prompt already fills the context (n_ctx = {model.Config.NCtx})");
            var generation = new GenerationOptions(newTokens, temp, 0, 1f, seed ?? 0);

            var response = context.Response;
            response.ContentType = "text/event-stream";
            response.Headers.CacheControl = "no-cache";
            var aborted = context.RequestAborted;
            var events = Channel.CreateUnbounded<(string Type, object Data)>();
            string description = SteeringRun.Describe(direction, c, projectOut ?? false, what);
            events.Writer.TryWrite(("start", new
            {
                hook = hookName, description, positions = where.ToString(), max_new_tokens = newTokens,
                prompt = input.Select(id => new TokenView(id, Analyses.Text(model, id))).ToArray(), prompt_text = SteeringRun.Decode(model, input),
            }));
            var run = gate.RunAsync(m =>
            {
                var sides = new Dictionary<string, int[]>();
                foreach (var (side, sideEdit) in new[] { ("unsteered", (IActivationEdit?)null), ("steered", edit) })
                {
                    var sofar = new List<int>();
                    string before = SteeringRun.Decode(m, input);
                    sides[side] = SteeringRun.Continue(m, input, generation, sideEdit, id =>
                    {
                        sofar.Add(id);
                        // The piece this token adds to the decoded text (SentencePiece spaces depend on the neighbours).
                        string after = SteeringRun.Decode(m, [.. input, .. sofar]);
                        string piece = after.StartsWith(before, StringComparison.Ordinal) ? after[before.Length..] : Analyses.Text(m, id);
                        before = after;
                        events.Writer.TryWrite(("token", new { side, index = sofar.Count - 1, id, text = piece }));
                    }, aborted);
                }
                // A persona vector file: both continuations scored as `loupe persona` scores its sweep (mean projection on the persona).
                var trait = persona is null ? null : new
                {
                    hook = persona.HookName, threshold = persona.Threshold,
                    unsteered = PersonaReport.TraitProjection(m, persona, input, sides["unsteered"]),
                    steered = PersonaReport.TraitProjection(m, persona, input, sides["steered"]),
                };
                return (Sides: sides, Trait: trait);
            }, aborted);
            _ = run.ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully)
                    events.Writer.TryWrite(("done", new
                    {
                        unsteered = t.Result.Sides["unsteered"], steered = t.Result.Sides["steered"],
                        unsteered_text = SteeringRun.Decode(model, t.Result.Sides["unsteered"]), steered_text = SteeringRun.Decode(model, t.Result.Sides["steered"]),
                        trait = t.Result.Trait,
                    }));
                else if (!aborted.IsCancellationRequested)
                    events.Writer.TryWrite(("failure", new { error = t.Exception?.InnerException is InputError or ServerBusyException ? t.Exception.InnerException.Message : "generation failed" }));
                events.Writer.TryComplete();
            }, TaskScheduler.Default);
            try
            {
                await foreach (var (type, data) in events.Reader.ReadAllAsync(aborted))
                {
                    await response.WriteAsync($"event: {type}\ndata: {JsonSerializer.Serialize(data, ServeHost.Json)}\n\n", aborted);
                    await response.Body.FlushAsync(aborted);
                }
            }
            catch (OperationCanceledException) { } // the page closed the stream: generation stops at its next token
        }).WithSummary("Generates the unsteered, then the steered continuation of a prompt, as server-sent events: start, token (side, id, text) …, then done (with both continuations' persona projections for a persona vector) or failure; closing the stream cancels");
    }

    /// <summary>The direction named by <paramref name="source"/>: <c>vector:ID</c> (a served file) or <c>feature:STORE:F</c> (W_dec[F] of the store's dictionary).</summary>
    /// <exception cref="InputError">Unknown source, id, store or feature; no hook known; or the dictionary is unavailable.</exception>
    static (float[] Direction, string Hook, string What, PersonaVector? Persona) Direction(string source, string? hook, ServedStores stores, ServeOptions options)
    {
        string[] parts = source.Split(':');
        if (parts is ["vector", var id])
        {
            var file = VectorFiles(options.GraphsDir).FirstOrDefault(v => v.Id == id);
            if (file.Full is null) throw new InputError("no steering vector with that id");
            var loaded = SteeringVector.Load(file.Full, null, string.IsNullOrEmpty(hook) ? null : hook);
            PersonaVector? persona = null;
            try { persona = PersonaVector.Load(file.Full); }
            catch (InputError) { } // a plain steering vector: no trait to score
            return (loaded.Direction.ToArray(), loaded.HookName, $"vector {file.Rel}", persona);
        }
        if (parts is ["feature", var storeId, var f] && int.TryParse(f, NumberStyles.None, CultureInfo.InvariantCulture, out int feature))
        {
            var store = stores.Find(storeId) ?? throw new InputError("no feature store with that id");
            store.Read(st => { st.CheckFeature(feature); return 0; });
            var dictionary = store.Dictionary;
            int d = dictionary.Shape.DOut;
            float[] direction = dictionary.P.WDec.AsSpan(feature * d, d).ToArray();
            return (direction, string.IsNullOrEmpty(hook) ? store.Read(st => st.Hook) : hook, $"decoder direction of feature {feature} ({store.Name})", null);
        }
        throw new InputError("source: expected vector:ID or feature:STORE:FEATURE");
    }

    static VectorView? Describe(string id, string rel, string full)
    {
        try
        {
            var v = SteeringVector.Load(full, null, null);
            return new VectorView(id, rel, v.HookName, v.Norm, v.Direction.Length);
        }
        catch (InputError e) when (e.Message.Contains("hook", StringComparison.Ordinal))
        {
            try
            {
                var v = SteeringVector.Load(full, null, "blocks.0.hook_resid_post");
                return new VectorView(id, rel, null, v.Norm, v.Direction.Length);
            }
            catch (InputError) { return null; }
        }
        catch (InputError) { return null; } // not a vector (e.g. a model's weights): not listed
    }

    /// <summary>The .safetensors files under the served folder, walked without following links; ids as the workspace makes them.</summary>
    static List<(string Id, string Rel, string Full)> VectorFiles(string? root)
    {
        var found = new List<(string, string, string)>();
        if (root is null || !Directory.Exists(root)) return found;
        string full = Path.GetFullPath(root);
        void Walk(DirectoryInfo dir, int depth)
        {
            if (depth > 16) return;
            foreach (var f in dir.EnumerateFiles("*.safetensors"))
                if (f.LinkTarget is null && f.Length < 64 << 20)
                {
                    string rel = Path.GetRelativePath(full, f.FullName);
                    found.Add((Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(rel)))[..16], rel, f.FullName));
                }
            foreach (var sub in dir.EnumerateDirectories())
                if (sub.LinkTarget is null && !sub.Name.StartsWith('.')) Walk(sub, depth + 1);
        }
        Walk(new DirectoryInfo(full), 0);
        return found;
    }
}
