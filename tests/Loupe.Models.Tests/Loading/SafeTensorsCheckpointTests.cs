using System.Runtime.InteropServices;
using Loupe.Models.Loading;

namespace Loupe.Models.Tests.Loading;

public class SafeTensorsCheckpointTests
{
    static void WriteShards(TempDir dir)
    {
        SafeTensorsWriter.Write(dir.File("model-00001-of-00002.safetensors"),
        [
            ("embed.weight", [2, 3], (ReadOnlyMemory<float>)new float[] { 1, 2, 3, 4, 5, 6 }),
            ("blocks.0.ln.weight", [3], (ReadOnlyMemory<float>)new float[] { 7, 8, 9 }),
        ]);
        SafeTensorsWriter.Write(dir.File("model-00002-of-00002.safetensors"),
            [("unembed.weight", [3, 2], (ReadOnlyMemory<float>)new float[] { -1, -2, -3, -4, -5, -6 })]);
    }

    static string WriteIndex(TempDir dir, string weightMap)
    {
        string path = dir.File(SafeTensorsCheckpoint.IndexFileName);
        File.WriteAllText(path, $"{{\"metadata\": {{\"total_size\": 60, \"format\": \"pt\"}}, \"weight_map\": {{{weightMap}}}}}");
        return path;
    }

    const string GoodMap =
        "\"embed.weight\": \"model-00001-of-00002.safetensors\", " +
        "\"unembed.weight\": \"model-00002-of-00002.safetensors\", " +
        "\"blocks.0.ln.weight\": \"model-00001-of-00002.safetensors\"";

    [Fact]
    public void ShardedFolder_DispatchesEachTensorToItsShard()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        string index = WriteIndex(dir, GoodMap);

        using var c = SafeTensorsCheckpoint.Open(dir.Path);
        Assert.True(c.IsSharded);
        Assert.Equal(index, c.Path);
        Assert.Equal(["embed.weight", "unembed.weight", "blocks.0.ln.weight"], c.Names);
        Assert.Equal([dir.File("model-00001-of-00002.safetensors"), dir.File("model-00002-of-00002.safetensors")], c.Files);
        Assert.Equal("60", c.Metadata["total_size"]);
        Assert.Equal("pt", c.Metadata["format"]);
        Assert.True(c.Contains("unembed.weight"));
        Assert.False(c.Contains("missing"));

        Assert.Equal([3L, 2], c.GetInfo("unembed.weight").Shape);
        Assert.Equal([-1f, -2, -3, -4, -5, -6], c.GetFloat32("unembed.weight").ToArray());
        Assert.Equal([7f, 8, 9], c.GetFloat32("blocks.0.ln.weight").ToArray());
        var embed = c.GetFloat32("embed.weight");
        Assert.True(MemoryMarshal.TryGetMemoryManager<float, NativeMemoryManager<float>>(embed, out var m));
        Assert.Same(c.FileOf("blocks.0.ln.weight"), m!.Owner); // one mapping per shard
        Assert.Equal(24, c.GetBytes("embed.weight").Length);

        var e = Assert.Throws<InputError>(() => c.GetFloat32("embed.weigth"));
        Assert.Contains(index, e.Message);
        Assert.Contains("'embed.weight'", e.Message);
    }

    [Fact]
    public void IndexFilePath_AndSingleFilePath_AreAccepted()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        string index = WriteIndex(dir, GoodMap);
        using (var c = SafeTensorsCheckpoint.Open(index))
            Assert.Equal([1f, 2, 3, 4, 5, 6], c.GetFloat32("embed.weight").ToArray());
        using (var c = SafeTensorsCheckpoint.Open(dir.File("model-00002-of-00002.safetensors")))
        {
            Assert.False(c.IsSharded);
            Assert.Equal(["unembed.weight"], c.Names);
        }
    }

    [Fact]
    public void SingleModelSafetensors_IsPreferredOverAnIndex()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        WriteIndex(dir, GoodMap);
        SafeTensorsWriter.Write(dir.File("model.safetensors"), [("only", [1], (ReadOnlyMemory<float>)new float[] { 42 })]);
        using var c = SafeTensorsCheckpoint.Open(dir.Path);
        Assert.False(c.IsSharded);
        Assert.Equal(["only"], c.Names);
        Assert.Equal(42f, c.GetFloat32("only").Span[0]);
    }

    [Fact]
    public void MissingShard_NamesTheIndexAndTheShard()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        File.Delete(dir.File("model-00002-of-00002.safetensors"));
        string index = WriteIndex(dir, GoodMap);
        var e = Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path));
        Assert.Contains(index, e.Message);
        Assert.Contains("'model-00002-of-00002.safetensors'", e.Message);
        Assert.Contains("unembed.weight", e.Message);
    }

    [Fact]
    public void TensorNotInTheShardTheIndexNames_IsInputError()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        string index = WriteIndex(dir, GoodMap + ", \"ghost.weight\": \"model-00002-of-00002.safetensors\"");
        using var c = SafeTensorsCheckpoint.Open(dir.Path);
        Assert.Equal([1f, 2, 3, 4, 5, 6], c.GetFloat32("embed.weight").ToArray()); // shard 1 is fine
        var e = Assert.Throws<InputError>(() => c.GetFloat32("unembed.weight"));
        Assert.Contains(index, e.Message);
        Assert.Contains("'ghost.weight'", e.Message);
        Assert.Contains("model-00002-of-00002.safetensors", e.Message);
    }

    [Theory]
    [InlineData("\"w\": \"../outside.safetensors\"", "expected a file name")]
    [InlineData("\"w\": 3", "not a string")]
    [InlineData("\"w\": \"/etc/passwd\"", "expected a file name")]
    [InlineData("\"w\": \"sub/dir.safetensors\"", "expected a file name")]
    [InlineData("\"w\": \"..\"", "expected a file name")]
    [InlineData("\"w\": \"\"", "expected a file name")]
    [InlineData("\"w\": \"a.safetensors\", \"w\": \"a.safetensors\"", "twice")]
    [InlineData("\"w\": \"absent.safetensors\"", "does not exist")]
    public void BadIndexEntries_AreInputErrors(string map, string expected)
    {
        using var dir = new TempDir();
        string index = WriteIndex(dir, map);
        var e = Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path));
        Assert.Contains(index, e.Message);
        Assert.Contains("'w'", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void EmptyOrNonUtf8OrHugeIndex_IsInputError()
    {
        using var dir = new TempDir();
        string index = dir.File(SafeTensorsCheckpoint.IndexFileName);
        File.WriteAllText(index, "{\"weight_map\": {}}");
        Assert.Contains("empty", Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path)).Message);
        File.WriteAllBytes(index, [.. "{\"weight_map\": {\"w"u8, 0xFF, 0xFE, .. "\": \"a.safetensors\"}}"u8]);
        var e = Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path));
        Assert.Contains(index, e.Message);
        Assert.Contains("UTF-8", e.Message);
        File.WriteAllText(index, "{\"weight_map\": {\"w\\ud800\": \"a.safetensors\"}}");
        Assert.Contains(index, Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path)).Message);
        using (var fs = new FileStream(index, FileMode.Create)) fs.SetLength(SafeTensorsCheckpoint.MaxIndexBytes + 1);
        Assert.Contains("at most", Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path)).Message);
    }

    [Fact]
    public void IndexWithoutWeightMap_OrNotJson_IsInputError()
    {
        using var dir = new TempDir();
        string index = dir.File(SafeTensorsCheckpoint.IndexFileName);
        File.WriteAllText(index, "{\"metadata\": {}}");
        Assert.Contains("weight_map", Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path)).Message);
        File.WriteAllText(index, "{oops");
        Assert.Contains(index, Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path)).Message);
    }

    [Fact]
    public void FolderWithoutWeights_NamesEveryFileItLookedFor_AndAPickleThatIsNotTorchSaveIsRefused()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), "{}");
        var e = Assert.Throws<FileNotFoundException>(() => SafeTensorsCheckpoint.Open(dir.Path));
        Assert.Contains(dir.Path, e.Message);
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("pytorch_model.bin.index.json", e.Message);
        File.WriteAllBytes(dir.File("pytorch_model.bin"), [0x80, 0x02, 0x7D, 0x71, 0x00, 0x2E, 0, 0, 0]);
        var bad = Assert.Throws<InputError>(() => SafeTensorsCheckpoint.Open(dir.Path));
        Assert.Contains(dir.File("pytorch_model.bin"), bad.Message);
        Assert.Contains("not one torch.save wrote", bad.Message);
        Assert.Throws<FileNotFoundException>(() => SafeTensorsCheckpoint.Open(dir.File("absent.safetensors")));
    }

    [Fact]
    public void Dispose_UnmapsShards()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        WriteIndex(dir, GoodMap);
        var c = SafeTensorsCheckpoint.Open(dir.Path);
        var embed = c.GetFloat32("embed.weight");
        c.Dispose();
        Assert.Throws<ObjectDisposedException>(() => embed.Span[0]);
        Assert.Throws<ObjectDisposedException>(() => c.GetFloat32("unembed.weight"));
    }
}
