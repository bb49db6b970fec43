using System.CommandLine;
using System.Globalization;
using System.Text;
using Loupe.Circuits.Toy;
using Loupe.Dictionaries.Sae;
using Loupe.Reports;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe toy</c>: toy models of superposition (Elhage et al. 2022) and a check of Loupe's SAEs on their known features.</summary>
static class ToyCommand
{
    public static Command Create()
    {
        var steps = new Option<int>("--steps") { Description = "Adam steps per toy model", DefaultValueFactory = _ => 3000 };
        var seed = new Option<int>("--seed") { Description = "Seed", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--out", "-o") { Description = "Output folder: toy.json, phase-norm.svg, phase-cosine.svg, geometry.svg", Required = true };
        var command = new Command("toy",
            "Toy models of superposition: the 2-feature, 1-dimension phase diagram over density × relative importance, the geometry of " +
            "5 features in 2 dimensions as they get sparser, how well a TopK SAE trained on a toy model's hidden activations " +
            "recovers the true feature directions (known by construction), and feature absorption on a toy with parent and child " +
            "features (BatchTopK against Matryoshka BatchTopK).\n\nExamples:\n  loupe toy --out toy/")
        { steps, seed, output };
        command.SetAction(parse => CliSupport.Guard(() =>
        {
            // Toy models of a few dozen weights and a tiny SAE: nothing here would gain from a device.
            CliSupport.RequireCpu("it trains toy models of a few dozen weights (in double precision) and a 20-feature SAE on their 5-dimensional activations, on the host; it loads no model");
            string folder = CliSupport.OutputFolder(parse.GetValue(output)!);
            int n = CliSupport.Int(parse, steps, 100, 1_000_000), s = parse.GetValue(seed);
            string F(double v) => v.ToString("0.###", CultureInfo.InvariantCulture);

            double[] densities = [1.0, 0.3, 0.1, 0.03, 0.01], importances = [0.1, 0.3, 1.0, 3.0, 10.0];
            var cells = ToyStudies.PhaseDiagram(densities, importances, n, s);
            Console.WriteLine("phase of feature 2 (2 features, 1 dimension): rows = density, columns = importance of feature 2 relative to feature 1");
            Console.WriteLine("density  " + string.Join("", importances.Select(i => $"{F(i),16}")));
            foreach (double d in densities)
                Console.WriteLine($"{F(d),-8} " + string.Join("", importances.Select(i => $"{cells.Single(c => c.Density == d && c.RelativeImportance == i).Phase,16}")));
            double[][] Grid(Func<ToyPhaseCell, double> value) =>
                [.. densities.Select(d => importances.Select(i => value(cells.Single(c => c.Density == d && c.RelativeImportance == i))).ToArray())];
            string[] rows = [.. densities.Select(F)], cols = [.. importances.Select(F)];
            AtomicFile.WriteAllText(Path.Combine(folder, "phase-norm.svg"), new Heatmap { Title = "‖W₂‖ (feature 2 represented)", Values = Grid(c => c.Norm2), RowLabels = rows, ColumnLabels = cols, RowAxis = "density", ColumnAxis = "relative importance of feature 2" }.ToSvg());
            AtomicFile.WriteAllText(Path.Combine(folder, "phase-cosine.svg"), new Heatmap { Title = "cos(W₁, W₂) (−1: antipodal superposition)", Values = Grid(c => c.Cosine), RowLabels = rows, ColumnLabels = cols, RowAxis = "density", ColumnAxis = "relative importance of feature 2", Limit = 1 }.ToSvg());

            double[] geometryDensities = [1.0, 0.3, 0.1, 0.03];
            var geometry = geometryDensities.Select(d => ToyModel.Train(new ToySettings(5, 2, d, Steps: 2 * n, Seed: s + 2))).ToArray();
            Console.WriteLine("5 features in 2 dimensions: represented features and dimensions per feature by density");
            foreach (var (d, toy) in geometryDensities.Zip(geometry))
                Console.WriteLine($"  density {F(d)}: {Enumerable.Range(0, 5).Count(i => toy.Norm(i) > 0.5)} of 5 represented, {F(toy.DimensionsPerFeature)} dimensions per feature");
            AtomicFile.WriteAllText(Path.Combine(folder, "geometry.svg"), GeometrySvg(geometryDensities, geometry));

            var superposed = ToyModel.Train(new ToySettings(10, 5, 0.05, Steps: n, Seed: s + 3));
            var recovery = ToyStudies.SaeRecovery(superposed, new TopKActivation(2), dSae: 20, steps: Math.Max(500, n / 2), seed: s + 1);
            Console.WriteLine($"SAE check (10 features in 5 dimensions, density 0.05; TopK k=2, 20 features): mean max cosine to the true directions {F(recovery.MeanMaxCosine)} over {recovery.Represented.Count(r => r)} represented features, explained variance {F(recovery.ExplainedVariance)}");

            // Absorption: a BatchTopK and a Matryoshka SAE on the hierarchical toy (parents, exclusive children, others)
            var absorptionToy = new AbsorptionToy();
            int nAbs = absorptionToy.Features;
            int[] levels = [absorptionToy.Parents, absorptionToy.Parents * (1 + absorptionToy.ChildrenPerParent), nAbs];
            int absorptionSteps = Math.Max(1000, n);
            var absorption = new[]
            {
                ToyAbsorptionStudy.Run(absorptionToy, new BatchTopKActivation(2), nAbs, absorptionSteps, seed: s),
                ToyAbsorptionStudy.Run(absorptionToy, new MatryoshkaBatchTopKActivation(2, levels), nAbs, absorptionSteps, seed: s),
            };
            Console.WriteLine($"absorption ({absorptionToy.Parents} parents × {absorptionToy.ChildrenPerParent} exclusive children + {absorptionToy.Others} others in {absorptionToy.DModel} dimensions, " +
                              $"{F(absorptionToy.MeanL0)} features a row; k = 2, {nAbs} latents): parent latent silent when a child fires / children's decoders · parent direction");
            foreach (var r in absorption)
                Console.WriteLine($"  {r.Architecture,-22} absorption {F(r.MeanAbsorption),-6} child-decoder cosine {F(r.MeanChildDecoderParentCosine),-6} explained variance {F(r.ExplainedVariance)}");

            string json = Path.Combine(folder, "toy.json");
            AtomicFile.WriteJson(json, new
            {
                phase_diagram = cells.Select(c => new { c.Density, c.RelativeImportance, c.Norm1, c.Norm2, c.Cosine, Phase = c.Phase.ToString() }),
                geometry = geometryDensities.Zip(geometry, (d, t) => new { density = d, norms = Enumerable.Range(0, 5).Select(t.Norm).ToArray(), dimensions_per_feature = t.DimensionsPerFeature, w = t.W }),
                sae_recovery = new { features = 10, hidden = 5, density = 0.05, k = 2, d_sae = 20, recovery.MaxCosine, recovery.Represented, recovery.MeanMaxCosine, recovery.ExplainedVariance },
                absorption = new
                {
                    toy = absorptionToy, k = 2, d_sae = nAbs, matryoshka_widths = levels, steps = absorptionSteps,
                    results = absorption.Select(r => new
                    {
                        architecture = r.Architecture, mean_absorption = r.MeanAbsorption, mean_child_decoder_parent_cosine = r.MeanChildDecoderParentCosine,
                        explained_variance = r.ExplainedVariance, l0 = r.L0, mean_max_cosine = r.MeanMaxCosine,
                        parents = r.Parents.Select(p => new { parent = p.Parent, latent = p.Latent, cosine = p.Cosine, recall_alone = p.RecallAlone, recall_with_child = p.RecallWithChild, absorption = p.Absorption, child_decoder_parent_cosine = p.ChildDecoderParentCosine }),
                    }),
                },
                steps = n,
                seed = s,
            });
            Console.WriteLine($"wrote {json} and three pictures");
            return 0;
        }));
        return command;
    }

    /// <summary>Each model's five feature directions as arrows from the origin, one panel per density.</summary>
    static string GeometrySvg(double[] densities, ToyModel[] models)
    {
        const int panel = 180, pad = 20;
        int width = densities.Length * panel + pad, height = panel + 60;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{width / 2}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">5 features in 2 dimensions: columns of W by density</text>\n");
        for (int p = 0; p < densities.Length; p++)
        {
            double cx = pad + p * panel + panel / 2.0, cy = 40 + panel / 2.0, r = panel / 2.0 - 15;
            svg.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{cx:0.#}\" cy=\"{cy:0.#}\" r=\"{r:0.#}\" fill=\"none\" stroke=\"#ddd\"/>\n");
            for (int i = 0; i < 5; i++)
            {
                double x = models[p].W[i], y = models[p].W[5 + i];
                svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{cx:0.#}\" y1=\"{cy:0.#}\" x2=\"{cx + x * r:0.#}\" y2=\"{cy - y * r:0.#}\" stroke=\"#1f77b4\" stroke-width=\"2\"><title>feature {i}: ‖W‖ = {Math.Sqrt(x * x + y * y):0.###}</title></line>\n");
            }
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{cx:0.#}\" y=\"{height - 12}\" text-anchor=\"middle\">density {densities[p]}</text>\n");
        }
        svg.Append("</svg>\n");
        return svg.ToString();
    }
}
