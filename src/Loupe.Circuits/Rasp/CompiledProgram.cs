using Loupe.Models;
using Loupe.Tensors;

namespace Loupe.Circuits.Rasp;

/// <summary>A RASP program compiled to a transformer, with what is known about it by construction.</summary>
public sealed class CompiledProgram
{
    readonly Dictionary<object, int> _tokenIds;
    readonly Dictionary<object, int>? _outputIds;

    internal CompiledProgram(HookedTransformer model, SOp output, IReadOnlyList<object> vocabulary, int maxSeqLen,
        IReadOnlyList<object>? outputValues, IReadOnlyList<string> residualDimensions, IReadOnlyDictionary<string, string> components,
        IReadOnlySet<string> readEdges, IReadOnlySet<string> trueEdges, int layers, int heads, int dMlp)
    {
        Model = model;
        Output = output;
        Vocabulary = vocabulary;
        MaxSeqLen = maxSeqLen;
        OutputValues = outputValues;
        ResidualDimensions = residualDimensions;
        Components = components;
        ReadEdges = readEdges;
        TrueEdges = trueEdges;
        Layers = layers;
        Heads = heads;
        DMlp = dMlp;
        _tokenIds = vocabulary.Select((v, i) => (v, i)).ToDictionary(x => x.v, x => x.i);
        _outputIds = outputValues?.Select((v, i) => (v, i)).ToDictionary(x => x.v, x => x.i);
    }

    /// <summary>The compiled model (TransformerLens layout; position 0 must hold <see cref="BosId"/>).</summary>
    public HookedTransformer Model { get; }

    /// <summary>The program's output SOp.</summary>
    public SOp Output { get; }

    /// <summary>The input values; token id i is value i, and <see cref="BosId"/> comes last.</summary>
    public IReadOnlyList<object> Vocabulary { get; }

    /// <summary>The token id of BOS.</summary>
    public int BosId => Vocabulary.Count;

    /// <summary>The longest input (BOS not counted).</summary>
    public int MaxSeqLen { get; }

    /// <summary>The output's values in logit order (null for a numerical output: logit 0 is the value, logit 1 is 0).</summary>
    public IReadOnlyList<object>? OutputValues { get; }

    /// <summary>The name of every residual dimension in order (<c>bos</c>, <c>tokens:a</c>, <c>indices:3</c>, <c>map_1:x</c>, …).</summary>
    public IReadOnlyList<string> ResidualDimensions { get; }

    /// <summary>For each SOp label, the component that computes it: <c>a0.h1</c>, <c>m1</c>, <c>a1.h0+m1</c> (selector width), <c>embed</c>.</summary>
    public IReadOnlyDictionary<string, string> Components { get; }

    /// <summary>EAP-IG edge names along which a component reads a space another writes: the wiring by construction.</summary>
    public IReadOnlySet<string> ReadEdges { get; }

    /// <summary>
    /// The circuit by construction: the <see cref="ReadEdges"/> whose upstream value depends on the tokens (an edge carrying a function of
    /// positions alone is the same in every input of a length, so no equal-length clean/corrupted pair can show it).
    /// </summary>
    public IReadOnlySet<string> TrueEdges { get; }

    public int Layers { get; }
    public int Heads { get; }
    public int DMlp { get; }

    /// <summary>Token ids for <paramref name="input"/>, BOS first.</summary>
    /// <exception cref="RaspCompileException">The input is longer than <see cref="MaxSeqLen"/> or holds a value outside the vocabulary.</exception>
    public int[] Encode(IReadOnlyList<object> input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.Count > MaxSeqLen)
            throw new RaspCompileException($"the input has {input.Count} values but '{Output.Label}' was compiled for at most {MaxSeqLen}");
        var ids = new int[input.Count + 1];
        ids[0] = BosId;
        for (int i = 0; i < input.Count; i++)
            ids[i + 1] = input[i] is not null && _tokenIds.TryGetValue(input[i], out int id) ? id
                : throw new RaspCompileException($"input value '{input[i]}' at position {i} is not in the vocabulary [{string.Join(", ", Vocabulary)}]");
        return ids;
    }

    /// <summary>The logit index of output value <paramref name="value"/>.</summary>
    /// <exception cref="KeyNotFoundException">The value is not one the output can take (or the output is numerical).</exception>
    public int OutputId(object value) => _outputIds is not null && _outputIds.TryGetValue(value, out int i) ? i
        : throw new KeyNotFoundException($"'{value}' is not an output value of '{Output.Label}'");

    /// <summary>
    /// The output at every RASP position (BOS dropped) of row <paramref name="row"/> of <paramref name="logits"/> <c>[batch, pos, d_vocab_out]</c>:
    /// the argmax value, or null where no output logit is on (an empty categorical selection); numerical: logit 0.
    /// </summary>
    public object?[] Decode(Tensor logits, int row = 0)
    {
        ArgumentNullException.ThrowIfNull(logits);
        int positions = logits.Shape[1], vocab = logits.Shape[2];
        var span = logits.Span.Slice(row * positions * vocab, positions * vocab);
        var result = new object?[positions - 1];
        for (int p = 1; p < positions; p++)
        {
            var at = span.Slice(p * vocab, vocab);
            if (OutputValues is null) { result[p - 1] = (double)at[0]; continue; }
            int best = 0;
            for (int j = 1; j < vocab; j++) if (at[j] > at[best]) best = j;
            result[p - 1] = at[best] > 0.5f ? OutputValues[best] : null;
        }
        return result;
    }

    /// <summary>Runs the model on one input and decodes its output.</summary>
    public object?[] Run(IReadOnlyList<object> input) => Decode(Model.Run(Encode(input)).Logits);
}
