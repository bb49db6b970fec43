using System.CommandLine;
using System.Diagnostics;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe cache</c>: write the activations of chosen hook points to a safetensors file.</summary>
static class CacheCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var input = CliSupport.InputOptions.Create("Text to run (tokenized with the model's tokenizer, BOS as its template says)");
        var hooks = new Option<string>("--hooks") { Description = "Comma-separated glob patterns over hook names, e.g. \"blocks.*.hook_resid_pre,blocks.*.attn.hook_pattern\"", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "The .safetensors file to write (atomically)", Required = true };
        var saes = new Option<string[]>("--sae")
        {
            Description = "Splice a dictionary (SAELens folder) in at its cfg hook_name; its sub-hooks (…hook_sae_acts_post, …) can then be cached. Repeatable. Or hf:ORG/NAME[/PATH][@REVISION]: that folder or file of a Hugging Face hub repository, fetched into the hub cache; or saelens:RELEASE/SAE_ID, as SAE.from_pretrained names it (SAELens's registry)",
            AllowMultipleArgumentsPerToken = false,
        };
        var errorTerm = new Option<bool>("--use-error-term") { Description = "With --sae: add the reconstruction error back so the model's output is unchanged (SAELens use_error_term)" };
        var command = new Command("cache",
            "Run the model and save every matching hook's activation (under its hook name) plus 'logits' and 'tokens' to a safetensors file.\n" +
            "Shapes follow TransformerLens: hook_resid_pre [batch, pos, d_model], attn.hook_pattern [batch, head, query_pos, key_pos].\n\n" +
            "Examples:\n" +
            "  loupe cache --model ../shared/models/stories260K --prompt \"Once upon a time\" --hooks \"blocks.*.hook_resid_post\" --out acts.safetensors\n" +
            "  loupe cache --model gpt2 --tokens \"464,3290;464,3797\" --hooks \"blocks.*.attn.hook_pattern,ln_final.hook_normalized\" --out pat.safetensors\n" +
            "  loupe cache --model ../shared/models/stories260K --prompt \"Once upon a time\" --sae sae/ --use-error-term --hooks \"*hook_sae_acts_post\" --out feats.safetensors")
        { model, input.Prompt, input.Tokens, hooks, output, saes, errorTerm };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string path = CliSupport.OutputFile(parse.GetValue(output)!);
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true);
            var batch = input.Read(parse, m);
            foreach (var saePath in (parse.GetValue(saes) ?? []).Select(v => CliSupport.LocalPath(v, "--sae")))
            {
                var (splice, config) = Loupe.Dictionaries.Splice.SaeSplice.Load(m, saePath, options: new Loupe.Dictionaries.Splice.SaeSpliceOptions { UseErrorTerm = parse.GetValue(errorTerm) });
                CliSupport.WarnOnProcessing(m, splice.InputHook, config);
                m.AddSplice(splice);
            }
            var selected = CliSupport.SelectHooks(m, parse.GetValue(hooks)!);
            // The size is known from the declared hook points before anything runs.
            long bytes = m.EstimateCacheBytes(selected, batch.Batch, batch.Length, out int uncounted);
            var metadata = new Dictionary<string, string>
            {
                ["model"] = m.Source ?? "",
                ["weight_processing"] = m.Processing.Describe(),
                ["architecture"] = m.Config.Architecture,
                ["hooks"] = string.Join(",", selected),
                ["format"] = "loupe-activation-cache",
            };
            var clock = Stopwatch.StartNew();
            var tokenIds = batch.Ids.Select(i => (long)i).ToArray();
            if (uncounted == 0)
            {
                // Every shape is declared: the file's header is written first and each activation streams to
                // disk as the pass reaches it, so memory holds one activation at a time, not the whole cache.
                CliSupport.Status.WriteLine($"caching {selected.Count} hook points: {Size(bytes)} (run on {m.Backend.Device}, streamed to {path})");
                var declared = m.HookPoints.ToDictionary(h => h.Name, StringComparer.Ordinal);
                var layout = selected.Select(n => (n, DType.F32, declared[n].Shape(batch.Batch, batch.Length).Select(d => (long)d).ToArray()))
                    .Append(("logits", DType.F32, [batch.Batch, batch.Length, m.Config.VocabOut]))
                    .Append(("tokens", DType.I64, [batch.Batch, batch.Length]));
                using var file = new SafeTensorsStreamWriter(path, layout, metadata);
                var streamed = m.Run(batch, new RunOptions { CacheFilter = new HashSet<string>(selected, StringComparer.Ordinal).Contains, CacheSink = file.Write });
                file.Write("logits", streamed.Logits);
                file.Write("tokens", System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokenIds.AsSpan()));
                file.Complete();
            }
            else
            {
                // Splice sub-hooks have no declared shape: keep the cache in host memory, then write it.
                CliSupport.Status.WriteLine($"caching {selected.Count} hook points: {Size(bytes)} + {uncounted} splice hooks (run on {m.Backend.Device}, kept in host memory)");
                var result = m.RunWithCache(batch, parse.GetValue(hooks), new RunOptions { CacheOn = CacheLocation.Host });
                var entries = new List<SafeTensorEntry>();
                foreach (var name in selected)
                {
                    var t = result.Cache[name];
                    entries.Add(SafeTensorEntry.F32(name, t.Shape.ToArray(), t.Data));
                }
                entries.Add(SafeTensorEntry.F32("logits", result.Logits.Shape.ToArray(), result.Logits.ToCpu().Data));
                entries.Add(SafeTensorEntry.I64("tokens", [batch.Batch, batch.Length], tokenIds));
                CliSupport.OutputFile(path); // still not a device, folder or link now that the run is done
                SafeTensorsWriter.Write(path, entries, metadata);
            }
            CliSupport.Status.WriteLine($"wrote {selected.Count} hooks + logits for [{batch.Batch}, {batch.Length}] tokens to {path} in {clock.Elapsed.TotalMilliseconds:F0} ms");
            return 0;
        }));
        return command;
    }

    static string Size(long bytes) => bytes < 1e6 ? $"{bytes / 1e3:F1} kB" : $"{bytes / 1e6:F1} MB";
}
