using System.Text;

namespace Loupe;

/// <summary>
/// An exclusive lock on an output folder for a long job (harvest, training), so two runs into the
/// same folder cannot interleave their files. The lock is the kernel's advisory lock on
/// <c>.loupe.lock</c> (taken by opening it with <see cref="FileShare.None"/>), so it is released the
/// moment the process ends, even by SIGKILL: a killed job can be resumed at once. The holder writes
/// who it is to <c>.loupe.lock.owner</c> so the refusal can name the other process.
/// </summary>
public sealed class OutputLock : IDisposable
{
    public const string LockFileName = ".loupe.lock";
    public const string OwnerFileName = ".loupe.lock.owner";

    readonly FileStream _lock;
    readonly string _ownerPath;

    OutputLock(FileStream held, string ownerPath) => (_lock, _ownerPath) = (held, ownerPath);

    /// <summary>Takes the lock on <paramref name="folder"/> (created if missing) for <paramref name="job"/>.</summary>
    /// <exception cref="InputError">Another process holds the folder; the message names it.</exception>
    public static OutputLock Acquire(string folder, string job)
    {
        OutputFiles.EnsureFolder(folder);
        string lockPath = Path.Combine(folder, LockFileName), ownerPath = Path.Combine(folder, OwnerFileName);
        OutputFiles.EnsureReplaceable(lockPath);
        FileStream held;
        try
        {
            held = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException) when (File.Exists(lockPath))
        {
            string owner = "";
            try { owner = File.ReadAllText(ownerPath).Trim(); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            if (owner.Length == 0) owner = "another process";
            throw new InputError($"{folder}: the output folder is in use by {owner}; wait for it to finish, stop it, or choose another --out");
        }
        OutputFiles.EnsureReplaceable(ownerPath);
        string who = $"{job} (pid {Environment.ProcessId}, started {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC)";
        File.WriteAllText(ownerPath, who + "\n", new UTF8Encoding(false));
        return new OutputLock(held, ownerPath);
    }

    /// <summary>Releases the lock; the files stay (deleting them would let a third process lock a new inode while a second holds the old one).</summary>
    /// The owner file is emptied so a finished output folder is the same after every run.
    public void Dispose()
    {
        try { File.WriteAllText(_ownerPath, ""); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        _lock.Dispose();
    }

    /// <summary>True for the lock's own files, which listings and comparisons of an output folder skip.</summary>
    public static bool IsLockFile(string name) =>
        Path.GetFileName(name) is LockFileName or OwnerFileName;

}
