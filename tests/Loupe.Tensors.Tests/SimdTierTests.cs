using System.Runtime.Intrinsics;
using Xunit.Abstractions;

namespace Loupe.Tensors.Tests;

/// <summary>
/// CI re-runs this project with <c>DOTNET_EnableAVX512=0</c> (.NET 10's switch; <c>DOTNET_EnableAVX512F</c> is ignored there), <c>DOTNET_EnableAVX2=0</c> and
/// <c>DOTNET_EnableHWIntrinsic=0</c>; no test assumes a tier, and this one prints which tier ran.
/// </summary>
public class SimdTierTests(ITestOutputHelper output)
{
    [Fact]
    public void ReportsTheVectorTier()
    {
        output.WriteLine($"Vector512.IsHardwareAccelerated = {Vector512.IsHardwareAccelerated}");
        output.WriteLine($"Vector256.IsHardwareAccelerated = {Vector256.IsHardwareAccelerated}");
        output.WriteLine($"Vector128.IsHardwareAccelerated = {Vector128.IsHardwareAccelerated}");
        foreach (var name in new[] { "DOTNET_EnableAVX512", "DOTNET_EnableAVX2", "DOTNET_EnableHWIntrinsic" })
            output.WriteLine($"{name} = {Environment.GetEnvironmentVariable(name) ?? "(unset)"}");

        // A wider tier implies the narrower ones.
        if (Vector512.IsHardwareAccelerated) Assert.True(Vector256.IsHardwareAccelerated);
        if (Vector256.IsHardwareAccelerated) Assert.True(Vector128.IsHardwareAccelerated);
        // The switches CI uses must take effect, or the tier runs would all test the same code.
        if (Environment.GetEnvironmentVariable("DOTNET_EnableHWIntrinsic") == "0") Assert.False(Vector128.IsHardwareAccelerated);
        if (Environment.GetEnvironmentVariable("DOTNET_EnableAVX2") == "0") Assert.False(Vector256.IsHardwareAccelerated);
        if (Environment.GetEnvironmentVariable("DOTNET_EnableAVX512") == "0") Assert.False(Vector512.IsHardwareAccelerated);
    }
}
