using System.CommandLine;
using Loupe.Dictionaries.Sae;

namespace Loupe.Cli.Commands;

/// <summary>
/// <c>loupe sae convert</c>: any dictionary Loupe reads, written in SAELens's layout (cfg.json + sae_weights.safetensors), so
/// SAELens, SAEBench or Neuronpedia tools read it as Loupe does: a dictionary_learning BatchTopK, Matryoshka or JumpReLU SAE
/// keeps its threshold (SAELens's dictionary_learning_1 converter calls them standard ReLU SAEs), a Gemma Scope or sparsify one its hook.
/// </summary>
static class SaeConvertVerb
{
    public static Command Create()
    {
        var sae = new Option<string>("--sae") { Description = "The dictionary: a SAELens, Gemma Scope (params.npz), Gemma Scope 2, sparsify or dictionary_learning (ae.pt + config.json) folder or file. Or hf:ORG/NAME[/PATH][@REVISION], or saelens:RELEASE/SAE_ID", Required = true };
        var hook = new Option<string?>("--hook") { Description = "The hook it reads, where its files do not say (Gemma Scope, a config-less ae.pt); written as hook_name" };
        var output = new Option<string>("--out", "-o") { Description = "Folder for cfg.json + sae_weights.safetensors", Required = true };
        var command = new Command("convert",
            "Write a dictionary in SAELens's layout (cfg.json + sae_weights.safetensors): its encoder, decoder, biases, threshold and hook as\n" +
            "Loupe reads them, so the files give the same latents in SAELens (JumpReLU and BatchTopK as SAELens's jumprelu, TopK as topk).\n\n" +
            "Examples:\n" +
            "  loupe sae convert --sae hf:ORG/saebench_pythia-70m-deduped/…/resid_post_layer_3/trainer_0 --out sae/\n" +
            "  loupe sae convert --sae ae.pt --hook blocks.3.hook_resid_post --out sae/")
        { sae, hook, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            string saePath = CliSupport.LocalPath(parse.GetValue(sae)!, "--sae");
            var (dictionary, config) = DictionaryFile.Load(saePath, parse.GetValue(hook));
            if (string.IsNullOrWhiteSpace(config.HookName))
                throw new InputError($"{saePath} names no hook; give the hook it reads (--hook), which SAELens's cfg.json needs");
            SaeLensFormat.Save(folder, dictionary, config);
            var written = SaeLensFormat.ConfigFor(dictionary, config);
            Console.WriteLine($"{written.Architecture} SAE, d_in {written.DIn}, d_sae {written.DSae}, at {written.HookName}" +
                (written.ModelName.Length > 0 ? $" of {written.ModelName}" : "") + (written.K > 0 ? $", k {written.K}" : ""));
            Console.WriteLine($"wrote {Path.Combine(folder, SaeLensFormat.ConfigFile)} and {SaeLensFormat.WeightsFile}");
            return 0;
        }));
        return command;
    }
}
