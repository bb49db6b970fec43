namespace Loupe.Tensors.Gpu.Tests;

/// <summary>The weight-memory estimate said before a model is placed on a GPU, and the refusal of one that cannot fit.</summary>
public sealed class WeightMemoryTests
{
    static readonly Device Cuda = Device.Parse("cuda:1", "test");

    [Fact]
    public void TheEstimateIsFourOrTwoBytesAParameterAgainstWhatIsFree()
    {
        const long llama8B = 8_030_261_248;
        Assert.Equal(4 * llama8B, WeightMemory.Bytes(llama8B, ElementType.F32));
        Assert.Equal(2 * llama8B, WeightMemory.Bytes(llama8B, ElementType.BF16));
        string plan = WeightMemory.Plan(Cuda, ElementType.BF16, llama8B, freeBytes: 79L << 30, totalBytes: 80L << 30);
        Assert.Equal("weights on cuda:1: about 14.96 GiB as bf16 (79.00 GiB free), placed on first use", plan);
        Assert.Equal("weights on emulated: about 474.7 MiB as fp32, placed on first use",
            WeightMemory.Plan(new Device(DeviceKind.Emulated), ElementType.F32, 124_439_808, null, null));
    }

    [Fact]
    public void WeightsBeyondTheFreeMemoryAreRefusedNamingDtype()
    {
        var e = Assert.Throws<InputError>(() => WeightMemory.Plan(Cuda, ElementType.F32, 8_030_261_248, freeBytes: 23L << 30, totalBytes: 24L << 30));
        Assert.Contains("device cuda:1", e.Message);
        Assert.Contains("8,030,261,248 parameters need about 29.92 GiB as fp32", e.Message);
        Assert.Contains("23.00 GiB of 24.00 GiB are free", e.Message);
        Assert.Contains("--dtype bf16 keeps them in 14.96 GiB", e.Message);
        var half = Assert.Throws<InputError>(() => WeightMemory.Plan(Cuda, ElementType.BF16, 8_030_261_248, freeBytes: 10L << 30, totalBytes: 12L << 30));
        Assert.Contains("a larger one", half.Message);
        Assert.DoesNotContain("--dtype", half.Message);
    }

    [Fact]
    public void OnTheCpuThereIsNothingToPlan() => Assert.Null(WeightMemory.Plan(Backends.CpuBackend.Instance, 1_000_000));
}
