using System.Runtime.InteropServices;
using Loupe.Models.Loading;

namespace Loupe.Models.Tests.Loading;

/// <summary>The streaming writer: the header from declared shapes first, tensors as they come, the file in place only when complete.</summary>
public class SafeTensorsStreamWriterTests
{
    static string TempPath(string name) => Path.Combine(Directory.CreateTempSubdirectory("loupe-stream").FullName, name);

    [Fact]
    public void WritesTheSameBytesAsTheWholeFileWriter()
    {
        float[] a = [1, 2, 3, 4, 5, 6];
        long[] ids = [7, 8];
        var meta = new Dictionary<string, string> { ["format"] = "test" };
        string whole = TempPath("whole.safetensors"), streamed = TempPath("streamed.safetensors");
        SafeTensorsWriter.Write(whole, [SafeTensorEntry.F32("a", [2, 3], a), SafeTensorEntry.I64("ids", [2], ids)], meta);
        using (var w = new SafeTensorsStreamWriter(streamed, [("a", DType.F32, [2, 3]), ("ids", DType.I64, [2])], meta))
        {
            Assert.Equal("a", w.Next);
            w.Write("a", Tensors.Tensor.FromArray(a, 2, 3));
            w.Write("ids", MemoryMarshal.AsBytes(ids.AsSpan()));
            Assert.Null(w.Next);
            w.Complete();
        }
        Assert.Equal(File.ReadAllBytes(whole), File.ReadAllBytes(streamed));
    }

    [Fact]
    public void OutOfOrderWrongSizeAndUnfinishedFilesAreRefused()
    {
        string path = TempPath("x.safetensors");
        using (var w = new SafeTensorsStreamWriter(path, [("a", DType.F32, [2]), ("b", DType.F32, [1])]))
        {
            Assert.Contains("expects 'a'", Assert.Throws<InvalidOperationException>(() => w.Write("b", Tensors.Tensor.FromArray([1f], 1))).Message);
            Assert.Contains("needs 8", Assert.Throws<InvalidOperationException>(() => w.Write("a", Tensors.Tensor.FromArray([1f], 1))).Message);
            w.Write("a", Tensors.Tensor.FromArray([1f, 2f], 2));
            Assert.Contains("'b'", Assert.Throws<InvalidOperationException>(w.Complete).Message);
        }
        // Disposed before Complete: nothing at the path, no temporary file left beside it.
        Assert.False(File.Exists(path));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!));
    }
}
