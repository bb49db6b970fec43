using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;

namespace Loupe.Dictionaries.Tests.Transcoders;

/// <summary>The memory a CLT training run is estimated to hold, and the refusal of one that cannot fit, before allocation.</summary>
public sealed class CltMemoryEstimateTests
{
    [Fact]
    public void TheEstimateCountsEveryDecoderBlockAndTheBatchBuffers()
    {
        var shape = new CltShape(Layers: 3, DIn: 4, DSae: 5, DOut: 6);
        // per layer 4·5 encoder + 2·5 (bias, threshold) + 6 (target bias) = 36; decoders 3·4/2 = 6 blocks of 5·6 = 180
        Assert.Equal(3 * 36 + 180, CltTrainingOptions.ParameterCount(shape));
        // 4× parameters + batch 2 × 3 layers × (5·5 + 3·(4 + 6)) = 4·288 + 330 floats
        Assert.Equal((4 * 288 + 330) * 4, CltTrainingOptions.EstimateTrainingBytes(shape, 2));
        // Llama-3.2-1B-sized: 16 layers, d 2048, 16,384 features a layer: 5.1e9 parameters, 4.6e9 of them in the 136
        // decoder blocks; with gradients and Adam moments about 76 GiB before a batch
        double llama = CltTrainingOptions.ParameterCount(new CltShape(16, 2048, 16384, 2048));
        Assert.InRange(llama, 5.09e9, 5.11e9);
    }

    [Fact]
    public void ARunBeyondTheMemoryIsRefusedNamingTheOptionThatMakesItLarge()
    {
        var big = new CltShape(16, 2048, 16384, 2048);
        var options = new CltTrainingOptions { Base = new SaeTrainingOptions { BatchSize = 64 } };
        var e = Assert.Throws<InputError>(() => options.Validate(big, "--expansion", memoryLimitBytes: 40L << 30));
        Assert.Contains("--expansion", e.Message);
        Assert.Contains("16 layers, d_in 2048, d_sae 16384 per layer", e.Message);
        var wide = new CltTrainingOptions { Base = new SaeTrainingOptions { BatchSize = 1 << 20 } };
        Assert.Contains("--batch-size", Assert.Throws<InputError>(() => wide.Validate(new CltShape(2, 8, 64, 8), "--d-sae", memoryLimitBytes: 1L << 30)).Message);
        options.Validate(new CltShape(2, 8, 64, 8), "--d-sae", memoryLimitBytes: 1L << 30); // a small one passes
    }
}
