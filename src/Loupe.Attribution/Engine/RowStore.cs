using System.Runtime.InteropServices;

namespace Loupe.Attribution.Engine;

/// <summary>
/// The attribution rows computed so far (one per target node, each as wide as every node), kept in memory
/// when they fit the budget, else appended to a scratch file and read back row by row: peak memory is
/// then one batch of rows, whatever the prompt length. The file is unlinked as soon as it is open (on
/// Windows: deleted on close), so no run, finished or killed, leaves it behind.
/// </summary>
internal sealed class RowStore : IDisposable
{
    readonly int _width;
    readonly List<float[]>? _memory;
    readonly FileStream? _file;
    readonly byte[]? _buffer;

    /// <param name="width">Floats per row.</param>
    /// <param name="capacity">Rows that will be stored.</param>
    /// <param name="budgetBytes">Bytes the rows may take in memory; above it they go to a scratch file.</param>
    /// <param name="scratchDirectory">Where the scratch file goes.</param>
    public RowStore(int width, int capacity, long budgetBytes, string scratchDirectory)
    {
        _width = width;
        long bytes = 4L * width * capacity;
        if (bytes <= budgetBytes)
        {
            _memory = new List<float[]>(capacity);
            return;
        }
        Directory.CreateDirectory(scratchDirectory);
        string path = Path.Combine(scratchDirectory, $".loupe-attribution-rows-{Environment.ProcessId}-{Guid.NewGuid():N}.tmp");
        _file = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20, FileOptions.DeleteOnClose | FileOptions.RandomAccess);
        // Unlinked at once where the OS allows it (the open handle keeps the data): a killed run leaves nothing behind.
        if (!OperatingSystem.IsWindows()) File.Delete(path);
        _buffer = new byte[4 * width];
        ScratchPath = path;
    }

    /// <summary>The scratch file, when the rows are on disk.</summary>
    public string? ScratchPath { get; }

    public bool OnDisk => _file is not null;
    public int Width => _width;
    public int Count { get; private set; }

    public void Append(ReadOnlySpan<float> row)
    {
        if (_memory is not null) _memory.Add(row[.._width].ToArray());
        else
        {
            _file!.Seek((long)Count * 4 * _width, SeekOrigin.Begin);
            _file.Write(MemoryMarshal.AsBytes(row[.._width]));
        }
        Count++;
    }

    /// <summary>Row <paramref name="index"/>; the span is valid until the next call.</summary>
    public ReadOnlySpan<float> Row(int index)
    {
        if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index));
        if (_memory is not null) return _memory[index];
        _file!.Seek((long)index * 4 * _width, SeekOrigin.Begin);
        _file.ReadExactly(_buffer!);
        return MemoryMarshal.Cast<byte, float>(_buffer);
    }

    public void Dispose() => _file?.Dispose();
}
