using System.Diagnostics;

namespace Loupe.Core.Tests;

public sealed class OutputFilesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-out-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void WritesANewFileAndReplacesARegularOne()
    {
        string path = Path.Combine(_dir, "a.txt");
        OutputFiles.WriteAtomic(path, s => s.Write("one"u8));
        OutputFiles.WriteAtomic(path, s => s.Write("two"u8));
        Assert.Equal("two", File.ReadAllText(path));
        Assert.Equal(["a.txt"], Directory.GetFiles(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void KindsOfEntriesAreToldApart()
    {
        string file = Path.Combine(_dir, "f"), link = Path.Combine(_dir, "l");
        File.WriteAllText(file, "x");
        File.CreateSymbolicLink(link, file);
        Assert.Equal(OutputFiles.EntryKind.RegularFile, OutputFiles.KindOf(file));
        Assert.Equal(OutputFiles.EntryKind.SymbolicLink, OutputFiles.KindOf(link));
        Assert.Equal(OutputFiles.EntryKind.Directory, OutputFiles.KindOf(_dir));
        Assert.Equal(OutputFiles.EntryKind.Missing, OutputFiles.KindOf(Path.Combine(_dir, "none")));
        if (!OperatingSystem.IsWindows()) Assert.Equal(OutputFiles.EntryKind.Other, OutputFiles.KindOf("/dev/null"));
    }

    [Fact]
    public void RefusesToReplaceADeviceAFolderOrALink()
    {
        if (!OperatingSystem.IsWindows())
        {
            var e = Assert.Throws<InputError>(() => OutputFiles.WriteAtomic("/dev/null", s => s.Write("x"u8)));
            Assert.Contains("/dev/null", e.Message);
            Assert.Contains("not a regular file", e.Message);
            Assert.Equal(OutputFiles.EntryKind.Other, OutputFiles.KindOf("/dev/null"));
        }
        Assert.Throws<InputError>(() => OutputFiles.WriteAtomic(_dir, s => s.Write("x"u8)));
        string target = Path.Combine(_dir, "target"), link = Path.Combine(_dir, "link");
        File.WriteAllText(target, "keep");
        File.CreateSymbolicLink(link, target);
        Assert.Throws<InputError>(() => OutputFiles.WriteAtomic(link, s => s.Write("x"u8)));
        Assert.Equal("keep", File.ReadAllText(target));
        Assert.Equal(OutputFiles.EntryKind.SymbolicLink, OutputFiles.KindOf(link));
    }

    [Fact]
    public void AFailedWriteLeavesTheOldFileAndNoTemp()
    {
        string path = Path.Combine(_dir, "a.bin");
        File.WriteAllText(path, "old");
        Assert.Throws<InvalidOperationException>(() => OutputFiles.WriteAtomic(path, s => { s.Write("partial"u8); throw new InvalidOperationException("writer failed"); }));
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Single(Directory.GetFiles(_dir));
    }

    [Fact]
    public void AFolderPathThatIsAFileIsRefused()
    {
        string file = Path.Combine(_dir, "file");
        File.WriteAllText(file, "x");
        var e = Assert.Throws<InputError>(() => OutputFiles.EnsureFolder(file));
        Assert.Contains("not a folder", e.Message);
    }
}

public sealed class OutputLockTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-lock-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ASecondHolderIsRefusedWithTheFirstOnesName()
    {
        using (OutputLock.Acquire(_dir, "loupe harvest"))
        {
            var e = Assert.Throws<InputError>(() => OutputLock.Acquire(_dir, "loupe harvest"));
            Assert.Contains($"pid {Environment.ProcessId}", e.Message);
            Assert.Contains("loupe harvest", e.Message);
            Assert.Contains(_dir, e.Message);
        }
        using (OutputLock.Acquire(_dir, "again")) { } // released on dispose
    }

    [Fact]
    public void AnotherProcessHoldingTheFolderIsNamed()
    {
        if (OperatingSystem.IsWindows() || !File.Exists("/usr/bin/flock")) return;
        // flock(1) takes the same kernel lock .NET takes for FileShare.None, so it stands in for another Loupe process.
        string lockFile = Path.Combine(_dir, OutputLock.LockFileName);
        string owner = Path.Combine(_dir, OutputLock.OwnerFileName);
        using var holder = Process.Start(new ProcessStartInfo("/usr/bin/flock", ["-x", "-o", lockFile, "sh", "-c", $"echo 'loupe sae train (pid 4242)' > '{owner}'; sleep 30"]) { UseShellExecute = false })!;
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(10);
            InputError? refused = null;
            while (refused is null && DateTime.UtcNow < deadline)
            {
                try { OutputLock.Acquire(_dir, "test").Dispose(); Thread.Sleep(50); }
                catch (InputError e) when (e.Message.Contains("4242")) { refused = e; }
                catch (InputError) { Thread.Sleep(50); } // locked, owner not written yet
            }
            Assert.NotNull(refused);
            Assert.Contains("pid 4242", refused!.Message);
        }
        finally
        {
            holder.Kill(entireProcessTree: true);
            holder.WaitForExit();
        }
        using (OutputLock.Acquire(_dir, "after kill")) { } // the kernel released it with the process
    }

    [Fact]
    public void LockFilesAreRecognized()
    {
        Assert.True(OutputLock.IsLockFile(Path.Combine(_dir, ".loupe.lock")));
        Assert.True(OutputLock.IsLockFile(".loupe.lock.owner"));
        Assert.False(OutputLock.IsLockFile("manifest.json"));
    }
}

public class CheckTests
{
    [Fact]
    public void RangesNameTheFieldAndTheValue()
    {
        var e = Assert.Throws<InputError>(() => Check.InRange(0, 1, int.MaxValue, "config.json", "num_attention_heads"));
        Assert.Equal("config.json: num_attention_heads: expected an integer ≥ 1, found 0", e.Message);
        Assert.Equal(4, Check.InRange(4, 1, 8, "a", "b"));
        Assert.Throws<InputError>(() => Check.Finite(double.NaN, 0, 1, "argument", "--temperature"));
        Assert.Throws<InputError>(() => Check.Above(0, 0, "config.json", "rope_theta"));
        Assert.Equal(2.5, Check.Finite(2.5, 0, double.PositiveInfinity, "a", "b"), 0.0);
    }

    [Fact]
    public void ProductsRefuseOverflow()
    {
        Assert.Equal(6, Check.Product("cfg.json", "W_enc", Check.MaxArrayElements, 2, 3));
        var e = Assert.Throws<InputError>(() => Check.Product("cfg.json", "W_enc", Check.MaxArrayElements, 2304, 40_000_000));
        Assert.Contains("2304 × 40000000", e.Message);
        Assert.Throws<InputError>(() => Check.Product("x", "y", long.MaxValue, long.MaxValue, 3));
        Assert.Throws<InputError>(() => Check.Product("x", "y", long.MaxValue, -1, 3));
    }

    [Fact]
    public void ShowQuotesAndCutsStrings()
    {
        Assert.Equal("\"ab\"", InputError.Show("ab"));
        Assert.Equal("null", InputError.Show(null));
        Assert.Equal(80, InputError.Show(new string('x', 500)).Length - 2);
        Assert.Equal("NaN", InputError.Show(double.NaN));
    }
}

public sealed class InputFilesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-in-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void APipeOrDeviceIsRefusedBeforeItIsOpened()
    {
        if (OperatingSystem.IsWindows() || !File.Exists("/usr/bin/mkfifo")) return;
        string fifo = Path.Combine(_dir, "config.json"), link = Path.Combine(_dir, "link.json");
        using (var p = Process.Start("/usr/bin/mkfifo", [fifo])!) p.WaitForExit();
        File.CreateSymbolicLink(link, fifo);
        foreach (var path in new[] { fifo, link, "/dev/zero" })
        {
            var e = Assert.Throws<InputError>(() => InputFiles.EnsureRegularFile(path));
            Assert.Contains(path, e.Message);
            Assert.Contains("a device, pipe or socket", e.Message);
        }
        Assert.Throws<InputError>(() => InputFiles.ReadAllBytes(fifo, 100)); // would block for ever if opened
    }

    [Fact]
    public void RegularFilesAndLinksToThemPass()
    {
        string file = Path.Combine(_dir, "a.json"), link = Path.Combine(_dir, "b.json");
        File.WriteAllText(file, "{}");
        File.CreateSymbolicLink(link, file);
        InputFiles.EnsureRegularFile(file);
        InputFiles.EnsureRegularFile(link);
        InputFiles.EnsureRegularFile(Path.Combine(_dir, "missing.json"));
        Assert.Equal("{}"u8.ToArray(), InputFiles.ReadAllBytes(link, 100));
        Assert.Equal(InputFiles.RealPath(file), InputFiles.RealPath(link));
        Assert.Null(InputFiles.RealPath(Path.Combine(_dir, "missing.json")));
        var e = Assert.Throws<InputError>(() => InputFiles.ReadAllBytes(file, 1));
        Assert.Contains("at most 1 bytes", e.Message);
    }
}
