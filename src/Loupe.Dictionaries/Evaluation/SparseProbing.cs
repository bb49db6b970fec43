using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Probes.Alignment;
using Loupe.Probes.Classifiers;
using Loupe.Probes.Corpus;
using Loupe.Probes.Experiment;
using Loupe.Probes.Harvest;

namespace Loupe.Dictionaries.Evaluation;

// k-sparse probing of a dictionary's latents (Gurnee et al. 2023, "Finding Neurons in a Haystack"; SAEBench's
// sparse_probing): does a handful of latents carry a concept a linear probe can read? Per concept — here each universal
// part-of-speech tag of the Brown corpus, one against the rest, on the tokens of sentences the model reads:
// 1. Balance the classes (SAEBench's datasets are balanced): all positives of the split, as many negatives drawn at random
//    (seeded), separately for the training and held-out sentences (whole sentences held out, as the POS probes do).
// 2. Rank the latents by |mean over positives − mean over negatives| on the balanced training tokens; for each k take the
//    top k and fit a logistic probe (L-BFGS, L2, standardized features) on those k alone; score it on the held-out tokens.
// 3. The same with the dictionary's input neurons (the top k dimensions of the activation it reads: the neuron baseline
//    of Gurnee et al.), and one dense probe on every input dimension (the ceiling a linear probe reaches).
// Latents are encoded in chunks and only the columns some class selects are kept, so [tokens × d_sae] is never held.
// The genre task is SAEBench's text classification: passages of consecutive sentences of one Brown file (up to
// PassageTokens tokens), labelled by the file's category; a passage's features are the mean over its tokens (BOS left out)
// of the activation, and of the latents (each token encoded, then averaged, as SAEBench pools). Whole files are held out.

/// <summary>Settings of <see cref="SparseProbing"/>.</summary>
public sealed record SparseProbingSettings
{
    /// <summary>Brown categories to read (empty: all).</summary>
    public IReadOnlyList<string> Categories { get; init; } = [];
    /// <summary>Sentences sampled (seeded); null: all.</summary>
    public int? MaxSentences { get; init; } = 2000;
    /// <summary>The probe sizes, ascending.</summary>
    public IReadOnlyList<int> Ks { get; init; } = [1, 2, 5, 10, 20, 50];
    /// <summary>At most this many tags, the most frequent first, among those with enough examples.</summary>
    public int MaxClasses { get; init; } = 12;
    /// <summary>A tag needs this many positives in each split to be probed.</summary>
    public int MinExamples { get; init; } = 20;
    public double HeldOutFraction { get; init; } = 0.2;
    public int Seed { get; init; }
    public LogisticOptions Logistic { get; init; } = new();
    public int BatchSize { get; init; } = 32;
    /// <summary>What is probed: part-of-speech tags on tokens, or the genre (Brown category) of passages, mean-pooled.</summary>
    public SparseProbingTask Task { get; init; } = SparseProbingTask.PartOfSpeech;
    /// <summary>Genre task: tokens per passage (SAEBench reads 128), BOS apart.</summary>
    public int PassageTokens { get; init; } = 128;

    /// <exception cref="InputError">A setting is out of range (naming it).</exception>
    public void Validate()
    {
        if (Ks.Count == 0) throw new InputError("argument: --ks: give at least one probe size");
        for (int i = 0; i < Ks.Count; i++)
        {
            Check.InRange(Ks[i], 1, 100_000, "argument", "--ks");
            if (i > 0 && Ks[i] <= Ks[i - 1]) throw InputError.Expected("argument", "--ks", "ascending sizes", string.Join(",", Ks));
        }
        Check.InRange(MaxClasses, 1, 1000, "argument", "--classes");
        Check.InRange(MinExamples, 2, int.MaxValue, "argument", "--min-examples");
        if (!(HeldOutFraction > 0 && HeldOutFraction < 1)) throw InputError.Expected("argument", "--held-out", "a fraction in (0, 1)", HeldOutFraction);
        if (MaxSentences is int m) Check.InRange(m, 2, int.MaxValue, "argument", "--max-sentences");
        Check.InRange(BatchSize, 1, 4096, "argument", "--batch-size");
        Check.InRange(PassageTokens, 8, 1 << 20, "argument", "--passage-tokens");
    }
}

/// <summary>The concepts <see cref="SparseProbing"/> probes.</summary>
public enum SparseProbingTask
{
    /// <summary>Each universal part-of-speech tag, on the tokens of sentences.</summary>
    PartOfSpeech,
    /// <summary>Each Brown category (news, fiction, …), on passages of one file, features mean-pooled over their tokens.</summary>
    Genre,
}

/// <summary>One concept: its held-out accuracy with the top k latents and the top k input neurons for each k, and densely.</summary>
public sealed record SparseProbeClass(string Name, int TrainPositives, int HeldOutPositives, double[] LatentAccuracy, double[] NeuronAccuracy, double DenseAccuracy,
    int[] TopLatents);

/// <summary>The result of <see cref="SparseProbing"/>; accuracies are on balanced held-out tokens (chance 0.5).</summary>
/// <remarks>For the genre task, <paramref name="Sentences"/> counts passages, and each class is a Brown category.</remarks>
public sealed record SparseProbingResult(string Hook, int DIn, int DSae, int Tokens, int Sentences, int[] Ks, IReadOnlyList<SparseProbeClass> Classes)
{
    public SparseProbingTask Task { get; init; } = SparseProbingTask.PartOfSpeech;
    /// <summary>The mean over classes of the latent probes' accuracy at each k.</summary>
    public double[] MeanLatentAccuracy => [.. Ks.Select((_, i) => Classes.Average(c => c.LatentAccuracy[i]))];
    /// <summary>The mean over classes of the neuron probes' accuracy at each k.</summary>
    public double[] MeanNeuronAccuracy => [.. Ks.Select((_, i) => Classes.Average(c => c.NeuronAccuracy[i]))];
    public double MeanDenseAccuracy => Classes.Average(c => c.DenseAccuracy);
}

/// <summary>k-sparse probing of a dictionary's latents against its input neurons (steps at the top of this file).</summary>
public static class SparseProbing
{
    const int EncodeChunk = 1024;

    /// <summary>The experiment from the corpus: sample and align sentences, read the dictionary's hook, then <see cref="Probe"/>.</summary>
    /// <exception cref="InputError">A setting is out of range, the model has no tokenizer, the hook is not the model's, or too few examples remain.</exception>
    public static SparseProbingResult Run(HookedTransformer model, SparseDictionary dictionary, string hook, BrownCorpus corpus, SparseProbingSettings settings,
        IProgress<string>? progress = null)
    {
        settings.Validate();
        var tokenizer = model.Tokenizer ?? throw new InputError($"the model at {model.Source} has no tokenizer; word tags cannot be put on tokens without one");
        var hooks = ActivationHarvester.ResolveHooks(model, hook);
        if (hooks.Count != 1 || hooks[0] != hook) throw new InputError($"the dictionary's hook '{hook}' is not one hook point of the model");
        if (settings.Task == SparseProbingTask.Genre) return RunGenre(model, tokenizer, dictionary, hooks, corpus, settings, progress);
        progress?.Report("reading");
        var chosen = PosProbeExperiment.Sample(corpus.Sentences(settings.Categories).ToList(), settings.MaxSentences, settings.Seed);
        progress?.Report("aligning");
        var aligned = new TokenAligner(tokenizer, LabelPolicy.LastToken).AlignAll(chosen, model.Config.NCtx, out _);
        if (aligned.Count < 2) throw new InputError($"only {aligned.Count} of {chosen.Count} sentences could be aligned within n_ctx = {model.Config.NCtx}; probing needs at least 2");
        progress?.Report("caching");
        var data = ActivationHarvester.Harvest(model, aligned, hooks, new HarvestOptions(settings.BatchSize));
        if (data.Widths[0] != dictionary.Shape.DIn)
            throw new InputError($"{hook} has width {data.Widths[0]}; the dictionary reads d_in = {dictionary.Shape.DIn}");
        progress?.Report("probing");
        return Probe(dictionary, data, 0, settings);
    }

    // The genre task: passages of each file, every token but BOS harvested, pooled per passage (see the top of this file).
    static SparseProbingResult RunGenre(HookedTransformer model, Loupe.Tokenizers.ITokenizer tokenizer, SparseDictionary dictionary, IReadOnlyList<string> hooks,
        BrownCorpus corpus, SparseProbingSettings settings, IProgress<string>? progress)
    {
        progress?.Report("reading");
        var categories = corpus.Categories;
        var passages = new List<AlignedSentence>();
        var fileOf = new List<int>();
        var files = corpus.FileIds(settings.Categories);
        // Tokens the tokenizer puts before the text (BOS), which are left out of the pooling; a token it appends (EOS) is a token of the passage.
        int[] withSpecial = tokenizer.Encode("a", addSpecialTokens: true), plain = tokenizer.Encode("a", addSpecialTokens: false);
        int bos = 0;
        while (bos < withSpecial.Length - plain.Length && (plain.Length == 0 || withSpecial[bos] != plain[0])) bos++;
        int length = Math.Min(settings.PassageTokens, model.Config.NCtx - bos);
        if (length < 8) throw new InputError($"the model's context (n_ctx = {model.Config.NCtx}) leaves fewer than 8 tokens for a passage");
        for (int f = 0; f < files.Count; f++)
        {
            int label = IndexOf(categories, corpus.CategoryOf(files[f]));
            var words = new List<string>();
            TaggedSentence? first = null;
            int estimate = 0;
            foreach (var sentence in BrownCorpus.ReadFile(Path.Combine(corpus.Folder, files[f]), files[f]))
            {
                first ??= sentence;
                words.AddRange(sentence.Words.Select(w => w.Text));
                estimate += sentence.Words.Count;
                if (estimate < length) continue;
                Add(first, words, label, f);
                (words, first, estimate) = ([], null, 0);
            }
            if (first is not null && estimate >= length / 2) Add(first, words, label, f);
        }
        if (passages.Count < 2) throw new InputError($"only {passages.Count} passages of {length} tokens could be made; probing needs at least 2");
        var chosen = Enumerable.Range(0, passages.Count).ToArray();
        if (settings.MaxSentences is int max && max < chosen.Length)
        {
            var rng = new Random(settings.Seed);
            rng.Shuffle(chosen);
            chosen = [.. chosen.Take(max).Order()];
        }
        var sample = chosen.Select(i => passages[i]).ToList();
        // Files are the split unit, renumbered over the sample.
        var unitOf = new Dictionary<int, int>();
        int[] units = [.. chosen.Select(i => unitOf.TryGetValue(fileOf[i], out int u) ? u : unitOf[fileOf[i]] = unitOf.Count)];

        progress?.Report("caching");
        var data = ActivationHarvester.Harvest(model, sample, hooks, new HarvestOptions(settings.BatchSize));
        int dIn = dictionary.Shape.DIn, n = sample.Count;
        if (data.Widths[0] != dIn) throw new InputError($"{hooks[0]} has width {data.Widths[0]}; the dictionary reads d_in = {dIn}");
        var tokens = data.Features(0);
        // Each passage's token rows are contiguous, in passage order.
        var start = new int[n + 1];
        for (int r = 0; r < data.Count; r++) start[data.Sentences[r] + 1]++;
        for (int p = 0; p < n; p++) start[p + 1] += start[p];
        var pooled = new float[(long)n * dIn];
        for (int p = 0; p < n; p++)
        {
            var mean = pooled.AsSpan(p * dIn, dIn);
            for (int r = start[p]; r < start[p + 1]; r++) System.Numerics.Tensors.TensorPrimitives.Add(mean, tokens.AsSpan(r * dIn, dIn), mean);
            System.Numerics.Tensors.TensorPrimitives.Multiply(mean, 1f / (start[p + 1] - start[p]), mean);
        }
        int[] labels = [.. sample.Select(a => a.Labels.First(l => l >= 0))];

        // A passage's latents: its tokens encoded, then averaged.
        void ForEachPooled(int[] list, Action<int, float[]> visit)
        {
            int dSae = dictionary.Shape.DSae;
            var mean = new float[dSae];
            for (int i = 0; i < list.Length; i++)
            {
                int p = list[i], count = start[p + 1] - start[p];
                var latents = dictionary.Encode(tokens.AsSpan(start[p] * dIn, count * dIn), count);
                Array.Clear(mean);
                for (int t = 0; t < count; t++) System.Numerics.Tensors.TensorPrimitives.Add(mean, latents.AsSpan(t * dSae, dSae), mean);
                System.Numerics.Tensors.TensorPrimitives.Multiply(mean, 1f / count, mean);
                visit(i, mean);
            }
        }

        progress?.Report("probing");
        var rows = new ProbeRows(pooled, labels, units, unitOf.Count, categories, ForEachPooled);
        return ProbeRowsOf(dictionary, rows, settings) with { Hook = hooks[0], Tokens = data.Count, Sentences = n };

        void Add(TaggedSentence source, List<string> words, int label, int file)
        {
            string text = Detokenizer.Join(words, out _);
            int[] ids = tokenizer.Encode(text, addSpecialTokens: true);
            if (ids.Length > bos + length) ids = ids[..(bos + length)];
            if (ids.Length - bos < 2) return;
            int[] tokenLabels = [.. ids.Select((_, t) => t < bos ? -1 : label)];
            passages.Add(new AlignedSentence(source, text, ids, [], [], tokenLabels, 0));
            fileOf.Add(file);
        }

        static int IndexOf(IReadOnlyList<string> list, string item)
        {
            for (int i = 0; i < list.Count; i++) if (list[i] == item) return i;
            throw new InvalidOperationException($"category {item} is not among the corpus's");
        }
    }

    /// <summary>Probes on activations already read (<paramref name="data"/>'s set <paramref name="set"/>, labels and sentences).</summary>
    /// <exception cref="InputError">A setting is out of range or no class has enough examples.</exception>
    public static SparseProbingResult Probe(SparseDictionary dictionary, LabelledActivations data, int set, SparseProbingSettings settings)
    {
        settings.Validate();
        int dIn = dictionary.Shape.DIn;
        var x = data.Features(set);
        if (data.Widths[set] != dIn) throw new InputError($"the activations have width {data.Widths[set]}; the dictionary reads d_in = {dIn}");
        var rows = new ProbeRows(x, data.Labels, data.Sentences, data.SentenceCount, data.ClassNames, (list, visit) => ForEachEncoded(dictionary, x, dIn, list, visit));
        return ProbeRowsOf(dictionary, rows, settings) with { Hook = data.Hooks[set], Tokens = data.Count, Sentences = data.SentenceCount };
    }

    /// <summary>
    /// Examples to probe: features <c>[n, d_in]</c>, a class and a split unit (sentence, file) each, and the latents of any listed
    /// examples, handed to a visitor one row at a time (so the caller decides how a row's latents come about: encoded, or pooled).
    /// </summary>
    sealed record ProbeRows(float[] X, int[] Labels, int[] Units, int UnitCount, IReadOnlyList<string> ClassNames, Action<int[], Action<int, float[]>> ForEachLatents);

    static SparseProbingResult ProbeRowsOf(SparseDictionary dictionary, ProbeRows data, SparseProbingSettings settings)
    {
        int dIn = dictionary.Shape.DIn, dSae = dictionary.Shape.DSae, n = data.Labels.Length;
        var x = data.X;
        var split = SentenceSplit.Create(data.UnitCount, settings.HeldOutFraction, settings.Seed);
        var heldOut = data.Units.Select(s => split.HeldOut[s]).ToArray();

        // The tags with enough positives in both splits (and no more than the split's other tokens), most frequent first.
        int heldSize = heldOut.Count(h => h), trainSize = n - heldSize;
        var tags = Enumerable.Range(0, data.ClassNames.Count)
            .Select(c => (Class: c, Train: Count(c, false), Held: Count(c, true)))
            .Where(t => t.Train >= settings.MinExamples && t.Held >= settings.MinExamples && 2 * t.Train <= trainSize && 2 * t.Held <= heldSize)
            .OrderByDescending(t => t.Train + t.Held).ThenBy(t => t.Class).Take(settings.MaxClasses).ToList();
        if (tags.Count == 0)
            throw new InputError($"no {(settings.Task == SparseProbingTask.Genre ? "category" : "tag")} has {settings.MinExamples} positives (and more negatives) in both splits of {data.UnitCount} {(settings.Task == SparseProbingTask.Genre ? "files" : "sentences")}; read more (--max-sentences) or lower --min-examples");

        var random = new Random(settings.Seed);
        var balanced = tags.ToDictionary(t => t.Class, t => (Train: Balance(t.Class, false, random), Held: Balance(t.Class, true, random)));
        int kMax = settings.Ks[^1];

        // Latent means over each class's balanced training positives and negatives, one encoding pass over the tokens they use.
        var trainRows = balanced.Values.SelectMany(b => b.Train).Distinct().Order().ToArray();
        var latentScore = tags.ToDictionary(t => t.Class, _ => new double[dSae]); // Σ positives − Σ negatives (equal counts)
        var active = new List<int>();
        data.ForEachLatents(trainRows, (rowIndex, latents) =>
        {
            int example = trainRows[rowIndex];
            active.Clear();
            for (int j = 0; j < dSae; j++) if (latents[j] != 0f) active.Add(j); // latents are sparse: visit the active ones per class
            foreach (var t in tags)
            {
                if (!balanced[t.Class].Train.Contains(example)) continue;
                double sign = data.Labels[example] == t.Class ? 1 : -1;
                var score = latentScore[t.Class];
                foreach (int j in active) score[j] += sign * latents[j];
            }
        });
        var topLatents = tags.ToDictionary(t => t.Class, t => TopK(latentScore[t.Class], Math.Min(kMax, dSae)));
        var topNeurons = tags.ToDictionary(t => t.Class, t => TopK(NeuronScore(x, dIn, t.Class, balanced[t.Class].Train), Math.Min(kMax, dIn)));

        // The selected latents' values for every token any class uses, in a second pass.
        var used = balanced.Values.SelectMany(b => b.Train.Concat(b.Held)).Distinct().Order().ToArray();
        var columns = topLatents.Values.SelectMany(c => c).Distinct().Order().ToArray();
        var columnOf = new Dictionary<int, int>(columns.Length);
        for (int i = 0; i < columns.Length; i++) columnOf[columns[i]] = i;
        var usedOf = new Dictionary<int, int>(used.Length);
        for (int i = 0; i < used.Length; i++) usedOf[used[i]] = i;
        var selected = new float[(long)used.Length * columns.Length];
        data.ForEachLatents(used, (rowIndex, latents) =>
        {
            for (int c = 0; c < columns.Length; c++) selected[(long)rowIndex * columns.Length + c] = latents[columns[c]];
        });

        var classes = new List<SparseProbeClass>();
        foreach (var t in tags)
        {
            var (train, held) = balanced[t.Class];
            int[] yTrain = [.. train.Select(i => data.Labels[i] == t.Class ? 1 : 0)], yHeld = [.. held.Select(i => data.Labels[i] == t.Class ? 1 : 0)];
            var latentAccuracy = new double[settings.Ks.Count];
            var neuronAccuracy = new double[settings.Ks.Count];
            for (int ki = 0; ki < settings.Ks.Count; ki++)
            {
                int[] latentColumns = [.. topLatents[t.Class].Take(settings.Ks[ki]).Select(j => columnOf[j])];
                latentAccuracy[ki] = Accuracy(Gather(selected, columns.Length, train.Select(i => usedOf[i]), latentColumns), yTrain,
                    Gather(selected, columns.Length, held.Select(i => usedOf[i]), latentColumns), yHeld, latentColumns.Length, settings.Logistic);
                int[] neurons = [.. topNeurons[t.Class].Take(settings.Ks[ki])];
                neuronAccuracy[ki] = Accuracy(Gather(x, dIn, train, neurons), yTrain, Gather(x, dIn, held, neurons), yHeld, neurons.Length, settings.Logistic);
            }
            int[] all = [.. Enumerable.Range(0, dIn)];
            double dense = Accuracy(Gather(x, dIn, train, all), yTrain, Gather(x, dIn, held, all), yHeld, dIn, settings.Logistic);
            classes.Add(new SparseProbeClass(data.ClassNames[t.Class], t.Train, t.Held, latentAccuracy, neuronAccuracy, dense, [.. topLatents[t.Class].Take(Math.Min(10, kMax))]));
        }
        return new SparseProbingResult("", dIn, dSae, n, data.UnitCount, [.. settings.Ks], classes) { Task = settings.Task };

        int Count(int c, bool held)
        {
            int count = 0;
            for (int i = 0; i < n; i++) if (heldOut[i] == held && data.Labels[i] == c) count++;
            return count;
        }

        // Every positive of the split and as many negatives drawn without replacement (seeded), in example order.
        HashSet<int> Balance(int c, bool held, Random rng)
        {
            var positives = new List<int>();
            var negatives = new List<int>();
            for (int i = 0; i < n; i++)
                if (heldOut[i] == held) (data.Labels[i] == c ? positives : negatives).Add(i);
            for (int i = 0; i < positives.Count; i++)
            {
                int j = i + rng.Next(negatives.Count - i);
                (negatives[i], negatives[j]) = (negatives[j], negatives[i]);
            }
            return [.. positives, .. negatives.Take(positives.Count)];
        }

        double[] NeuronScore(float[] features, int width, int c, HashSet<int> rows)
        {
            var score = new double[width];
            foreach (int i in rows)
            {
                double sign = data.Labels[i] == c ? 1 : -1;
                var row = features.AsSpan(i * width, width);
                for (int j = 0; j < width; j++) score[j] += sign * row[j];
            }
            return score;
        }
    }

    // Calls back with each listed row's latents [d_sae], encoding EncodeChunk rows at a time.
    static void ForEachEncoded(SparseDictionary dictionary, float[] x, int dIn, int[] rows, Action<int, float[]> visit)
    {
        int dSae = dictionary.Shape.DSae;
        var row = new float[dSae];
        for (int start = 0; start < rows.Length; start += EncodeChunk)
        {
            int count = Math.Min(EncodeChunk, rows.Length - start);
            var batch = new float[count * dIn];
            for (int r = 0; r < count; r++) x.AsSpan(rows[start + r] * dIn, dIn).CopyTo(batch.AsSpan(r * dIn, dIn));
            var latents = dictionary.Encode(batch, count);
            for (int r = 0; r < count; r++)
            {
                latents.AsSpan(r * dSae, dSae).CopyTo(row);
                visit(start + r, row);
            }
        }
    }

    // The k largest |score| (ties by index), as indices.
    static int[] TopK(double[] score, int k) =>
        [.. Enumerable.Range(0, score.Length).OrderByDescending(j => Math.Abs(score[j])).ThenBy(j => j).Take(k)];

    static float[] Gather(float[] source, int width, IEnumerable<int> rows, int[] columns)
    {
        var list = rows.ToArray();
        var result = new float[list.Length * columns.Length];
        for (int r = 0; r < list.Length; r++)
            for (int c = 0; c < columns.Length; c++) result[r * columns.Length + c] = source[(long)list[r] * width + columns[c]];
        return result;
    }

    static double Accuracy(float[] train, int[] yTrain, float[] held, int[] yHeld, int width, LogisticOptions options)
    {
        var probe = LogisticProbe.Train(train, yTrain, width, 2, options);
        int correct = 0;
        for (int i = 0; i < yHeld.Length; i++)
            if (probe.Predict(held.AsSpan(i * width, width)) == yHeld[i]) correct++;
        return (double)correct / yHeld.Length;
    }
}

/// <summary><c>sparse_probing.json</c> and <c>sparse_probing.svg</c> (mean held-out accuracy against k: latents, neurons, dense).</summary>
public static class SparseProbingReport
{
    public const string JsonFile = "sparse_probing.json", ChartFile = "sparse_probing.svg";

    /// <returns>The JSON file's path.</returns>
    public static string Write(string folder, SparseProbingResult result, IReadOnlyDictionary<string, string?> args)
    {
        OutputFiles.EnsureFolder(folder);
        string json = Path.Combine(folder, JsonFile);
        Loupe.Reports.AtomicFile.WriteJson(json, new
        {
            args,
            note = (result.Task == SparseProbingTask.Genre
                       ? "per Brown category, one against the rest on balanced passages (features mean-pooled over each passage's tokens; whole files held out; chance 0.5)"
                       : "per part-of-speech tag, one against the rest on balanced tokens (chance 0.5)") +
                   ": held-out accuracy of a logistic probe on the top k latents (ranked by |mean difference| on the training examples), on the top k input neurons, " +
                   "and on every input dimension (dense)",
            task = result.Task == SparseProbingTask.Genre ? "genre" : "pos",
            result.Hook, result.DIn, result.DSae, result.Tokens, result.Sentences, result.Ks,
            mean = new { latents = result.MeanLatentAccuracy, neurons = result.MeanNeuronAccuracy, dense = result.MeanDenseAccuracy },
            result.Classes,
        });
        new Loupe.Reports.LineChart
        {
            Title = $"k-sparse probing at {result.Hook}: mean held-out accuracy over {result.Classes.Count} {(result.Task == SparseProbingTask.Genre ? "categories" : "tags")}",
            X = [.. result.Ks.Select(k => Math.Log2(k))],
            Series =
            [
                ("top-k latents", result.MeanLatentAccuracy),
                ("top-k neurons", result.MeanNeuronAccuracy),
                ("dense probe", [.. result.Ks.Select(_ => result.MeanDenseAccuracy)]),
            ],
            XAxis = $"log2 k (k = {string.Join(", ", result.Ks)})",
            YAxis = "accuracy (balanced, chance 0.5)",
        }.Save(Path.Combine(folder, ChartFile));
        return json;
    }
}
