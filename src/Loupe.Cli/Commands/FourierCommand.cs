using System.CommandLine;
using System.Globalization;
using Loupe.Circuits.Fourier;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe fourier</c>: a modular-addition model in the Fourier basis of Z_p (Nanda et al. 2023).</summary>
static class FourierCommand
{
    public static Command Create()
    {
        var model = CliSupport.ModelOption();
        var p = new Option<int>("--p") { Description = "The modulus (tokens 0…p−1 are the numbers)", DefaultValueFactory = _ => 113 };
        var equals = new Option<int?>("--equals") { Description = "The \"=\" token that ends every input [a, b, =] (default: p)" };
        var share = new Option<double?>("--key-share") { Description = "A frequency is key when it holds at least this share of the logits' Fourier energy (default: the frequencies above the largest drop in the sorted norms)" };
        var output = new Option<string?>("--out", "-o") { Description = "Also write fourier.json into this folder" };
        var command = new Command("fourier",
            "Run a model trained on (a + b) mod p on all p² inputs [a, b, =] and read it in the Fourier basis of Z_p: the key " +
            "frequencies of its logits, the embedding's and the neurons' share on them, and the loss with the logits restricted to " +
            "(or cleaned of) the key-frequency directions cos/sin(2πk(a+b−c)/p).\n\n" +
            "Examples:\n  loupe fourier --model ../shared/models/grokking-modadd-p113-main --out fourier/")
        { model, p, equals, share, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            string? folder = parse.GetValue(output) is string o ? CliSupport.OutputFolder(o) : null;
            using var m = CliSupport.LoadModel(parse.GetValue(model)!, onDevice: true); // the p² forward passes run there; their logits and hooks are read back (ToCpu) for the Fourier analysis
            int modulus = parse.GetValue(p);
            double? keyShare = parse.GetValue(share);
            if (keyShare is double ks && !(ks > 0 && ks <= 1)) throw InputError.Expected("argument", "--key-share", "a share in (0, 1]", ks);
            var report = ModularFourier.Analyze(m, modulus, parse.GetValue(equals) ?? modulus, keyShare);
            string F(double v) => v.ToString("0.####", CultureInfo.InvariantCulture);
            string G(double v) => v.ToString("G4", CultureInfo.InvariantCulture);
            Console.WriteLine($"accuracy {F(report.Accuracy)}, loss {G(report.Loss)} over {modulus}² pairs");
            Console.WriteLine($"key frequencies: {string.Join(", ", report.KeyFrequencies)}");
            Console.WriteLine($"restricted loss (key directions only) {G(report.RestrictedLoss)}; excluded loss (key directions removed) {G(report.ExcludedLoss)}");
            Console.WriteLine($"neurons: {F(report.NeuronKeyFraction)} of their variance in key-frequency terms (mean)");
            Console.WriteLine($"attention from \"=\" to a, per head: {string.Join(", ", report.AttentionKeyFraction.Select((v, h) => $"H{h} {F(v)}"))} of its variance in key-frequency terms");
            var topLogit = Enumerable.Range(1, report.LogitFrequencyNorms.Length - 1).OrderByDescending(k => report.LogitFrequencyNorms[k]).Take(10);
            Console.WriteLine($"logit norm by frequency (top 10): {string.Join(", ", topLogit.Select(k => $"{k}: {F(report.LogitFrequencyNorms[k])}"))}");
            var topEmbed = Enumerable.Range(1, report.EmbeddingNorms.Length - 1).OrderByDescending(k => report.EmbeddingNorms[k]).Take(10);
            Console.WriteLine($"embedding norm by frequency (top 10): {string.Join(", ", topEmbed.Select(k => $"{k}: {F(report.EmbeddingNorms[k])}"))}");
            if (folder is not null)
            {
                string path = Path.Combine(folder, "fourier.json");
                Loupe.Reports.AtomicFile.WriteJson(path, report);
                Console.WriteLine($"wrote {path}");
            }
            return 0;
        }));
        return command;
    }
}
