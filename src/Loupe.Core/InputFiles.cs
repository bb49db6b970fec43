using System.Runtime.InteropServices;

namespace Loupe;

/// <summary>
/// Opening files Loupe reads: a path named as a file must be a regular file (or a link to one). A FIFO
/// would block a read for ever and a device would stream garbage, so both are refused before they are opened.
/// </summary>
public static class InputFiles
{
    /// <summary>Refuses a device, pipe, socket or folder, also behind a symbolic link; a missing path passes (the caller reports it).</summary>
    /// <exception cref="InputError">The path is not a regular file.</exception>
    public static void EnsureRegularFile(string path)
    {
        var kind = OutputFiles.KindOf(path);
        if (kind == OutputFiles.EntryKind.SymbolicLink && RealPath(path) is { } target) kind = OutputFiles.KindOf(target);
        if (kind is not (OutputFiles.EntryKind.RegularFile or OutputFiles.EntryKind.Missing or OutputFiles.EntryKind.SymbolicLink))
            throw InputError.Expected(path, "file type", "a regular file", kind == OutputFiles.EntryKind.Directory ? "a folder" : "a device, pipe or socket");
    }

    /// <summary>The canonical path (every symbolic link resolved), or null when it does not exist.</summary>
    public static string? RealPath(string path)
    {
        if (OperatingSystem.IsWindows())
            return File.Exists(path) || Directory.Exists(path) ? Path.GetFullPath(new FileInfo(path).ResolveLinkTarget(true)?.FullName ?? path) : null;
        IntPtr p = SystemNativeRealPath(path);
        if (p == IntPtr.Zero) return null;
        try { return Marshal.PtrToStringUTF8(p); }
        finally { Marshal.FreeHGlobal(p); } // malloc'd by realpath; FreeHGlobal is free() on Unix
    }

    /// <summary>All bytes of a regular file of at most <paramref name="maxBytes"/>, refused (naming it) otherwise.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InputError">It is not a regular file, or it is larger than <paramref name="maxBytes"/>.</exception>
    public static byte[] ReadAllBytes(string path, long maxBytes)
    {
        EnsureRegularFile(path);
        long length = new FileInfo(path).Length;
        if (length > maxBytes) throw InputError.Expected(path, "size", $"at most {maxBytes:N0} bytes", $"{length:N0} bytes");
        return File.ReadAllBytes(path);
    }

    [DllImport("libSystem.Native", EntryPoint = "SystemNative_RealPath")]
    static extern IntPtr SystemNativeRealPath([MarshalAs(UnmanagedType.LPUTF8Str)] string path);
}
