using System.Runtime.InteropServices;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Models.Tests.Loading;

/// <summary>Reads the Hugging Face-written files in ../shared/fixtures/reference (skipped when absent).</summary>
public class SafeTensorsFixtureTests
{
    [RequiresSharedFact("fixtures/reference/gpt2/model.safetensors")]
    public void Gpt2Weights_HaveTheHfNamesAndShapes_AndAreMappedWithoutCopying()
    {
        string path = SharedData.Require("fixtures/reference/gpt2/model.safetensors");
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(40, f.Names.Count);
        Assert.Equal("pt", f.Metadata["format"]);

        var wte = f.GetInfo("transformer.wte.weight");
        Assert.Equal(DType.F32, wte.DType);
        Assert.Equal([512L, 64], wte.Shape);
        Assert.Equal([64L, 192], f.GetInfo("transformer.h.0.attn.c_attn.weight").Shape);
        Assert.Equal(new SafeTensorInfo("transformer.h.0.attn.c_attn.bias", DType.F32, [192], 0, 768).ToString(),
            f.GetInfo("transformer.h.0.attn.c_attn.bias").ToString());

        var data = f.GetFloat32("transformer.wte.weight");
        Assert.Equal(512 * 64, data.Length);
        Assert.True(MemoryMarshal.TryGetMemoryManager<float, NativeMemoryManager<float>>(data, out _));
        var span = data.Span;
        double sumSq = 0;
        foreach (var x in span)
        {
            Assert.True(float.IsFinite(x));
            sumSq += x * x;
        }
        // initializer_range 0.1: the rms of the embedding is close to 0.1.
        Assert.InRange(Math.Sqrt(sumSq / span.Length), 0.08, 0.12);
        Assert.Equal(MemoryMarshal.AsBytes(span).ToArray(), f.GetBytes("transformer.wte.weight").ToArray());
    }

    [RequiresSharedFact("fixtures/reference/gpt2/reference.safetensors")]
    public void Gpt2Reference_InputIdsAndMetadata()
    {
        using var f = SafeTensorsFile.Open(SharedData.Require("fixtures/reference/gpt2/reference.safetensors"));
        var ids = f.GetInfo("input_ids");
        Assert.Equal(DType.I64, ids.DType);
        Assert.Equal([2L, 12], ids.Shape);
        Assert.Equal(
            [82L, 87, 74, 39, 184, 175, 214, 409, 305, 33, 71, 171, 84, 200, 158, 186, 380, 257, 94, 24, 110, 113, 240, 83],
            f.GetInt64("input_ids"));
        Assert.Equal([17L, 42], f.GetInt64("metric_tokens"));
        Assert.Equal([2L, 12, 512], f.GetInfo("logits").Shape);
        Assert.Equal([2L, 4, 12, 12], f.GetInfo("attn_probs.0").Shape);
        Assert.Equal("gpt2", f.Metadata["arch"]);

        // attention rows sum to one: a cheap check that the float data is read at the right offset.
        var probs = f.GetFloat32("attn_probs.1").Span;
        for (int row = 0; row < probs.Length / 12; row++)
        {
            float s = 0;
            for (int k = 0; k < 12; k++) s += probs[row * 12 + k];
            Assert.InRange(s, 0.999f, 1.001f);
        }
    }

    [RequiresSharedFact("fixtures/reference/gpt2")]
    public void Gpt2Folder_OpensAsACheckpoint()
    {
        using var c = SafeTensorsCheckpoint.Open(SharedData.Require("fixtures/reference/gpt2"));
        Assert.False(c.IsSharded);
        Assert.True(c.Contains("transformer.ln_f.weight"));
        Assert.Equal([64L], c.GetInfo("transformer.ln_f.weight").Shape);
        Assert.Equal(64, c.GetFloat32("transformer.ln_f.weight").Length);
        Assert.Single(c.Files);
    }

    [RequiresSharedFact("models/stories260K/model.safetensors")]
    public void Stories260K_AllTensorsReadable()
    {
        using var c = SafeTensorsCheckpoint.Open(SharedData.Require("models/stories260K"));
        Assert.Equal([512L, 64], c.GetInfo("model.embed_tokens.weight").Shape);
        foreach (var name in c.Names)
        {
            var info = c.GetInfo(name);
            Assert.Equal(info.ElementCount, c.GetFloat32(name).Length);
        }
    }
}
