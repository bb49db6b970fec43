using System.Runtime.InteropServices;

namespace Loupe;

/// <summary>
/// Writing outputs safely: a path is only ever replaced when it is a regular file (or absent), by
/// writing a temp file beside it and renaming it over the target, so a reader never sees half a
/// file and a device node, folder, pipe or link named by mistake is never clobbered (the rename
/// would otherwise swap <c>/dev/null</c> for a regular file when run as root).
/// </summary>
public static class OutputFiles
{
    /// <summary>What a path names on disk, without following a final symbolic link.</summary>
    public enum EntryKind { Missing, RegularFile, Directory, SymbolicLink, Other }

    /// <summary>Refuses a target that exists and is not a regular file.</summary>
    /// <exception cref="InputError">The path names a folder, link, device, pipe or socket.</exception>
    public static void EnsureReplaceable(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new InputError("output path: expected a file name, found an empty path");
        switch (KindOf(path))
        {
            case EntryKind.Missing or EntryKind.RegularFile: return;
            case EntryKind.Directory: throw new InputError($"{path}: is a folder; name a file to write");
            case EntryKind.SymbolicLink: throw new InputError($"{path}: is a symbolic link; refusing to replace it with an output file (name the file it points to, or a new file)");
            default: throw new InputError($"{path}: is not a regular file (a device, pipe or socket); refusing to replace it with an output file");
        }
    }

    /// <summary>Refuses an output folder path that exists as something other than a folder.</summary>
    public static void EnsureFolder(string path)
    {
        var kind = KindOf(path);
        if (kind is EntryKind.Missing) { Directory.CreateDirectory(path); return; }
        if (kind is EntryKind.Directory) return;
        if (kind is EntryKind.SymbolicLink && Directory.Exists(path)) return; // a link to a folder is a folder to write into
        throw new InputError($"{path}: exists and is not a folder; name a folder for the output");
    }

    /// <summary>Moves a finished temp file over <paramref name="target"/> after checking the target may be replaced.</summary>
    public static void Replace(string temp, string target)
    {
        EnsureReplaceable(target);
        File.Move(temp, target, overwrite: true);
    }

    /// <summary>Writes <paramref name="write"/>'s bytes to a temp file beside <paramref name="path"/>, then renames it over the target.</summary>
    public static void WriteAtomic(string path, Action<FileStream> write)
    {
        string full = Path.GetFullPath(path);
        EnsureReplaceable(full);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string temp = TempPathFor(full);
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            Replace(temp, full);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>A temp name beside <paramref name="fullPath"/> that no other writer picks.</summary>
    public static string TempPathFor(string fullPath) => fullPath + ".tmp-" + Guid.NewGuid().ToString("N")[..8];

    /// <summary>The kind of entry at <paramref name="path"/> (lstat: a final link is reported as a link).</summary>
    public static EntryKind KindOf(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            var info = new FileInfo(path);
            if (info.LinkTarget is not null) return EntryKind.SymbolicLink;
            if (Directory.Exists(path)) return EntryKind.Directory;
            return info.Exists ? EntryKind.RegularFile : EntryKind.Missing;
        }
        // The runtime's own lstat shim: its status record starts (Flags, Mode) on every .NET for Unix,
        // with Mode's type bits normalized to the POSIX values below.
        var status = new byte[256];
        if (LStat(path, status) != 0) return EntryKind.Missing;
        int type = BitConverter.ToInt32(status, 4) & 0xF000;
        return type switch
        {
            0x8000 => EntryKind.RegularFile,
            0x4000 => EntryKind.Directory,
            0xA000 => EntryKind.SymbolicLink,
            _ => EntryKind.Other,
        };
    }

    [DllImport("libSystem.Native", EntryPoint = "SystemNative_LStat")]
    static extern int LStat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] status);
}
