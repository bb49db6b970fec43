using System.CommandLine;
using Loupe.Tokenizers;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe tokenize</c>: text to ids, as a JSON array on stdout.</summary>
static class TokenizeCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var text = new Option<string>("--text") { Description = "The text to tokenize", Required = true };
        var noSpecial = new Option<bool>("--no-special") { Description = "Do not add special tokens such as BOS" };
        var command = new Command("tokenize",
            "Print the token ids of a text as a JSON array (BOS included when the tokenizer adds it).\n\n" +
            "Examples:\n" +
            "  loupe tokenize --model ../shared/models/stories260K --text \"Once upon a time\"\n" +
            "  loupe tokenize --model ../shared/models/gpt2-tokenizer --text \"Hello world\"")
        { model, text, noSpecial };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string path = parse.GetValue(model)!;
            CliSupport.NoModelOnDevice("it only reads the tokenizer");
            // A folder with only tokenizer files (no weights) is enough to tokenize.
            ITokenizer tokenizer;
            if (Directory.Exists(path) && !File.Exists(Path.Combine(path, "config.json"))) tokenizer = TokenizerLoader.FromFolder(path);
            else
            {
                var loaded = CliSupport.LoadModel(path, deviceForOtherWork: true);
                tokenizer = loaded.Tokenizer ?? throw new InputError($"argument: --model: the model at {path} has no tokenizer (tokenizer.json or vocab.json + merges.txt){CliSupport.TokenizerHint(loaded)}");
            }
            var ids = tokenizer.Encode(parse.GetValue(text)!, addSpecialTokens: !parse.GetValue(noSpecial));
            Console.WriteLine("[" + string.Join(", ", ids) + "]");
            return 0;
        }));
        return command;
    }
}
