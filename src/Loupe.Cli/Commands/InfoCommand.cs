using System.CommandLine;
using Loupe.Models.Hooks;
using Loupe.Tensors.Blas;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe info</c>: architecture, sizes, parameter count and hook points with their axes (declared, no forward pass).</summary>
static class InfoCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var hooks = new Option<string?>("--hooks")
        {
            Description = "List every hook point matching these comma-separated globs, one per line with its axes (\"*\" for all); " +
                          "without it, each block's hook points are shown once",
        };
        var command = new Command("info",
            "Describe a model: architecture, sizes, parameter count, and its hook points with their axes\n" +
            "(e.g. blocks.0.attn.hook_q [batch, pos, head_index=4, d_head=16]), read from the config without running the model.\n\n" +
            "Examples:\n" +
            "  loupe info --model ../shared/models/stories260K\n" +
            "  loupe info --model EleutherAI/pythia-70m --hooks 'blocks.3.*'\n" +
            "  loupe info --model gpt2 --hooks '*'")
        { model, hooks };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var c = m.Config;
            string? patterns = parse.GetValue(hooks);
            var selected = patterns is null ? null : new HashSet<string>(CliSupport.SelectHooks(m, patterns), StringComparer.Ordinal);
            Console.WriteLine($"model:        {m.Source}");
            Console.WriteLine($"architecture: {c.Architecture}");
            Console.WriteLine($"n_layers {c.NLayers}, d_model {c.DModel}, n_heads {c.NHeads} (key/value heads {c.KvHeads}), d_head {c.DHead}, d_mlp {c.DMlp}, d_vocab {c.DVocab}, d_vocab_out {c.VocabOut}, n_ctx {c.NCtx}");
            Console.WriteLine($"normalization {c.Normalization} (eps {c.NormEps}), activation {c.ActFn ?? "none"}{(c.GatedMlp ? " (gated)" : "")}, " +
                              (c.RotaryDim > 0 ? $"rotary {c.RotaryDim} dims θ={c.RotaryBase}{(c.RopeScaling is { } rope ? $", {rope.Describe()}" : "")}" : c.ShortformerPositions ? "shortformer positions (added to queries and keys)" : c.LearnedPositions ? "learned positions" : "no positions") +
                              (c.ParallelAttnMlp ? ", parallel attention+MLP" : "") +
                              (c.SlidingWindow > 0 ? $", sliding window {c.SlidingWindow}" : "") +
                              (c.AttnSoftCap > 0 ? $", attention soft-cap {c.AttnSoftCap}" : "") +
                              (c.FinalLogitSoftCap > 0 ? $", logit soft-cap {c.FinalLogitSoftCap}" : ""));
            Console.WriteLine($"parameters:   {m.ParameterCount:N0}");
            Console.WriteLine($"weights:      {(m.Processing.IsNone ? "as stored (no processing; --process fold_ln,... to fold and centre as TransformerLens does)" : $"processed on load: {m.Processing.Describe()}")}");
            Console.WriteLine($"tokenizer:    {(m.Tokenizer is { } t ? $"{t.VocabSize} tokens, BOS {(t.AddsBosByDefault ? $"{t.BosTokenId} added" : "not added")}" : "none")}");
            var device = Loupe.Tensors.Gpu.ComputeBackends.Describe(m.Backend);
            Console.WriteLine($"device:       {device.Device} — {device.Name}{MemoryText(device)}{(device.ComputeCapability is { } cc ? $", compute capability {cc}" : "")}");
            Console.WriteLine(m.Backend.Device.IsCpu
                ? $"backend:      {m.Backend.Name}{(OpenBlas.IsAvailable ? $" ({OpenBlas.LibraryName}, {OpenBlas.CoreName ?? "?"} kernels, {OpenBlas.Threads} threads)" : $" ({OpenBlas.UnavailableReason})")}"
                : $"backend:      {m.Backend.Name}, matrix weights in {m.Backend.WeightElementType}{(device.Libraries is { } libs ? $" ({libs})" : "")}");
            if (selected is not null)
            {
                var matching = m.HookPoints.Where(p => selected.Contains(p.Name)).ToArray();
                Console.WriteLine($"hook points matching {patterns} ({matching.Length} of {m.HookPoints.Count}):");
                PrintAligned(matching.Select(p => (p.Name, p.AxesText())));
            }
            else
            {
                var perBlock = PerBlock(m.HookPoints);
                int outside = m.HookPoints.Count(p => p.Layer < 0);
                Console.WriteLine($"hook points ({m.HookPoints.Count}: {(m.HookPoints.Count - outside) / Math.Max(c.NLayers, 1)} in each of {c.NLayers} blocks, {outside} outside; --hooks PATTERN lists them one by one):");
                PrintAligned(perBlock);
                if (m.HookPoints.Any(p => HookNames.IsPerHeadInput(p.Name)))
                    Console.WriteLine("  (hook_attn_in, hook_q_input, hook_k_input, hook_v_input: one copy of hook_resid_pre per head; a cache of everything and globs such as * leave them out: name them, e.g. blocks.*.hook_q_input)");
            }
            // Where TransformerLens's norm hooks sit differs by norm kind; say so where it matters.
            if (m.FinalNormLayer is { HooksBeforeWeight: true })
                Console.WriteLine("  (RMSNorm: *.hook_normalized is x/σ before the norm's weight, as in TransformerLens; blocks.L.mlp.hook_in is the MLP's input)");
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// The hook points with each block's listed once: <c>blocks.{0..11}.attn.hook_q</c> stands for the
    /// same hook (same axes) in blocks 0 to 11; hooks outside blocks are listed as they are. Forward order.
    /// </summary>
    static IEnumerable<(string Name, string Axes)> PerBlock(IReadOnlyList<HookPoint> points)
    {
        // Keyed by (name within the block, axes); a hook outside blocks keys by its full name and layer −1.
        var groups = new List<(string Name, string Axes, List<int> Layers)>();
        var index = new Dictionary<(int, string, string), int>();
        foreach (var point in points)
        {
            string prefix = $"blocks.{point.Layer}.";
            bool inBlock = point.Layer >= 0 && point.Name.StartsWith(prefix, StringComparison.Ordinal);
            string name = inBlock ? point.Name[prefix.Length..] : point.Name;
            var key = (inBlock ? 0 : -1, name, point.AxesText());
            if (!index.TryGetValue(key, out int i))
            {
                index[key] = i = groups.Count;
                groups.Add((name, key.Item3, []));
            }
            if (inBlock) groups[i].Layers.Add(point.Layer);
        }
        foreach (var (name, axes, blocks) in groups)
            yield return (blocks.Count == 0 ? name : $"blocks.{LayerSet(blocks)}.{name}", axes);
    }

    /// <summary><c>{0..11}</c> for a run of layers, <c>3</c> for one, <c>{0,2,5}</c> otherwise.</summary>
    static string LayerSet(List<int> blocks)
    {
        if (blocks.Count == 1) return blocks[0].ToString(System.Globalization.CultureInfo.InvariantCulture);
        bool run = blocks.Zip(blocks.Skip(1)).All(pair => pair.Second == pair.First + 1);
        return run ? $"{{{blocks[0]}..{blocks[^1]}}}" : "{" + string.Join(",", blocks) + "}";
    }

    static void PrintAligned(IEnumerable<(string Name, string Axes)> rows)
    {
        var list = rows.ToList();
        int width = list.Count == 0 ? 0 : list.Max(r => r.Name.Length);
        foreach (var (name, axes) in list) Console.WriteLine($"  {name.PadRight(width)}  {axes}");
    }

    static string MemoryText(Loupe.Tensors.Gpu.DeviceInfo d) => d.TotalMemoryBytes is not long total ? ""
        : $", {total / (1024.0 * 1024 * 1024):F1} GiB{(d.FreeMemoryBytes is long free ? $" ({free / (1024.0 * 1024 * 1024):F1} GiB free)" : "")}";
}
