using System.CommandLine;
using Loupe.Tensors.Blas;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe info</c>: architecture, sizes, parameter count and hook point names.</summary>
static class InfoCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var command = new Command("info",
            "Describe a model: architecture, sizes, parameter count, and every hook point name.\n\n" +
            "Examples:\n" +
            "  loupe info --model ../shared/models/stories260K\n" +
            "  loupe info --model EleutherAI/pythia-70m")
        { model };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var c = m.Config;
            Console.WriteLine($"model:        {m.Source}");
            Console.WriteLine($"architecture: {c.Architecture}");
            Console.WriteLine($"n_layers {c.NLayers}, d_model {c.DModel}, n_heads {c.NHeads} (key/value heads {c.KvHeads}), d_head {c.DHead}, d_mlp {c.DMlp}, d_vocab {c.DVocab}, d_vocab_out {c.VocabOut}, n_ctx {c.NCtx}");
            Console.WriteLine($"normalization {c.Normalization} (eps {c.NormEps}), activation {c.ActFn ?? "none"}{(c.GatedMlp ? " (gated)" : "")}, " +
                              (c.RotaryDim > 0 ? $"rotary {c.RotaryDim} dims θ={c.RotaryBase}" : c.LearnedPositions ? "learned positions" : "no positions") +
                              (c.ParallelAttnMlp ? ", parallel attention+MLP" : "") +
                              (c.SlidingWindow > 0 ? $", sliding window {c.SlidingWindow}" : "") +
                              (c.AttnSoftCap > 0 ? $", attention soft-cap {c.AttnSoftCap}" : "") +
                              (c.FinalLogitSoftCap > 0 ? $", logit soft-cap {c.FinalLogitSoftCap}" : ""));
            Console.WriteLine($"parameters:   {m.ParameterCount:N0}");
            Console.WriteLine($"tokenizer:    {(m.Tokenizer is { } t ? $"{t.VocabSize} tokens, BOS {(t.AddsBosByDefault ? $"{t.BosTokenId} added" : "not added")}" : "none")}");
            Console.WriteLine($"backend:      {m.Backend.Name}{(OpenBlas.IsAvailable ? $" ({OpenBlas.LibraryName}, {OpenBlas.Threads} threads)" : $" ({OpenBlas.UnavailableReason})")}");
            Console.WriteLine($"hook points ({m.HookPointNames.Count}):");
            foreach (var name in m.HookPointNames) Console.WriteLine($"  {name}");
            return 0;
        }));
        return command;
    }
}
