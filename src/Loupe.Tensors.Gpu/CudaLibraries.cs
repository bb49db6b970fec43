using System.Runtime.InteropServices;
using System.Runtime.Loader;

namespace Loupe.Tensors.Gpu;

/// <summary>
/// Finds the native CUDA libraries at run time: the driver (libcuda.so.1) and cuBLAS (libcublas.so.13 or .12,
/// with the libcublasLt of the same major version from the same folder), in <c>$LOUPE_CUDA_LIBS</c>, <c>$LD_LIBRARY_PATH</c>,
/// the usual install folders and the folders of Python <c>nvidia-*</c> wheels.
/// </summary>
static class CudaLibraries
{
    const string Driver = "libcuda.so.1";
    // The entry points used (cublasSgemm_v2, cublasGemmEx, the strided-batched forms) and their enums are the same in
    // cuBLAS 12 and 13; CUDA 13 machines ship only .so.13, CUDA 12 ones only .so.12.
    static readonly string[] BlasMajors = ["13", "12"];
    static string BlasFile(string major) => $"libcublas.so.{major}";
    static string BlasLtFile(string major) => $"libcublasLt.so.{major}";

    static readonly object s_gate = new();
    static string? s_driverPath;
    static nint s_driverHandle;
    static bool s_resolverInstalled;

    static IEnumerable<string> PathList(string? variable) =>
        (Environment.GetEnvironmentVariable(variable ?? "") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    static IEnumerable<string> Glob(string parent, string pattern)
    {
        try { return Directory.Exists(parent) ? Directory.GetDirectories(parent, pattern).Order() : []; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    /// <summary>Where the driver is looked for, in order.</summary>
    public static IReadOnlyList<string> DriverFolders()
    {
        var list = new List<string>();
        list.AddRange(PathList("LOUPE_CUDA_LIBS"));
        list.AddRange(PathList("LD_LIBRARY_PATH"));
        list.AddRange(["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/wsl/lib", "/usr/lib"]);
        foreach (var cuda in Glob("/usr/local", "cuda*")) list.Add(Path.Combine(cuda, "compat"));
        return list.Distinct().ToList();
    }

    /// <summary>Where cuBLAS is looked for, in order.</summary>
    public static IReadOnlyList<string> BlasFolders()
    {
        var list = new List<string>();
        list.AddRange(PathList("LOUPE_CUDA_LIBS"));
        list.AddRange(PathList("LD_LIBRARY_PATH"));
        foreach (var cuda in Glob("/usr/local", "cuda*"))
        {
            list.Add(Path.Combine(cuda, "lib64"));
            list.Add(Path.Combine(cuda, "targets", "x86_64-linux", "lib"));
        }
        list.AddRange(["/usr/lib/x86_64-linux-gnu", "/usr/lib64"]);
        foreach (var site in SitePackages())
        {
            list.Add(Path.Combine(site, "nvidia", "cublas", "lib")); // nvidia-cublas-cu12
            list.Add(Path.Combine(site, "nvidia", "cu13", "lib"));   // CUDA 13 wheels share one folder
        }
        return list.Distinct().ToList();
    }

    /// <summary>Python site-packages folders: the usual ones, the active environments, and a shallow search of /opt, /usr and $HOME.</summary>
    static IEnumerable<string> SitePackages()
    {
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var roots = new List<string>();
        foreach (var prefix in new[] { "/usr/lib", "/usr/local/lib", Path.Combine(home, ".local", "lib") })
            foreach (var py in Glob(prefix, "python3*"))
            {
                roots.Add(Path.Combine(py, "site-packages"));
                roots.Add(Path.Combine(py, "dist-packages"));
            }
        foreach (var env in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
            if (Environment.GetEnvironmentVariable(env) is { Length: > 0 } prefix)
                foreach (var py in Glob(Path.Combine(prefix, "lib"), "python3*")) roots.Add(Path.Combine(py, "site-packages"));
        foreach (var top in new[] { "/opt", "/usr", home })
            roots.AddRange(FindSitePackages(top, depth: 6));
        return roots.Distinct().Where(Directory.Exists);
    }

    static IEnumerable<string> FindSitePackages(string folder, int depth)
    {
        if (depth < 0 || !Directory.Exists(folder)) yield break;
        string[] children;
        try { children = Directory.GetDirectories(folder); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { yield break; }
        foreach (var child in children)
        {
            string name = Path.GetFileName(child);
            if (name is "site-packages" or "dist-packages")
            {
                if (Directory.Exists(Path.Combine(child, "nvidia", "cublas")) || Directory.Exists(Path.Combine(child, "nvidia", "cu13"))) yield return child;
                continue;
            }
            if (name.StartsWith('.') && name != ".local" || name is "proc" or "sys" or "share" or "include" or "src" or "node_modules") continue;
            try { if (new DirectoryInfo(child).LinkTarget is not null) continue; }
            catch (IOException) { continue; }
            foreach (var found in FindSitePackages(child, depth - 1)) yield return found;
        }
    }

    static string? FindIn(IEnumerable<string> folders, string file) =>
        folders.Select(f => Path.Combine(f, file)).FirstOrDefault(File.Exists);

    static string Looked(IReadOnlyList<string> folders) =>
        string.Join(", ", folders.Take(12)) + (folders.Count > 12 ? $", … ({folders.Count} folders)" : "");

    /// <summary>Loads the CUDA driver and makes it findable by ILGPU (which asks for "cuda"/"nvcuda").</summary>
    /// <exception cref="InputError">No driver library was found or it does not load.</exception>
    public static void LoadDriver(Device device)
    {
        lock (s_gate)
        {
            if (s_driverPath is not null) return;
            var folders = DriverFolders();
            string? path = FindIn(folders, Driver);
            nint handle;
            if (path is not null)
            {
                if (!NativeLibrary.TryLoad(path, out handle))
                    throw new InputError($"device {device}: the CUDA driver at {path} does not load (wrong architecture or a broken install); reinstall the NVIDIA driver or use --device cpu");
            }
            else if (NativeLibrary.TryLoad(Driver, out handle)) path = Driver; // the loader's own cache (ldconfig)
            else
                throw new InputError($"device {device}: no CUDA driver ({Driver} not found in {Looked(folders)} nor the loader's cache); install the NVIDIA driver or use --device cpu");
            s_driverPath = path;
            s_driverHandle = handle;
            if (!s_resolverInstalled)
            {
                // Only consulted when the normal probe fails: a machine with libcuda.so.1 but no libcuda.so symlink.
                AssemblyLoadContext.Default.ResolvingUnmanagedDll += (_, name) =>
                    name is "cuda" or "nvcuda" or "libcuda" or "libcuda.so" && s_driverPath is { } p && NativeLibrary.TryLoad(p, out var h) ? h : 0;
                s_resolverInstalled = true;
            }
        }
    }

    /// <summary>
    /// Asks the driver itself how many GPUs it sees (<c>cuInit</c>, <c>cuDeviceGetCount</c>), to tell "no GPU" from
    /// "ILGPU could not use the driver"; the status is a CUresult (0 = success, 100 = no device, 35 = driver too old).
    /// </summary>
    public static unsafe (int Status, int Count, string? Path) ProbeDevices()
    {
        if (s_driverHandle == 0 || !NativeLibrary.TryGetExport(s_driverHandle, "cuInit", out var init)
            || !NativeLibrary.TryGetExport(s_driverHandle, "cuDeviceGetCount", out var count))
            return (-1, 0, s_driverPath);
        int status = ((delegate* unmanaged<uint, int>)init)(0);
        if (status != 0) return (status, 0, s_driverPath);
        int n;
        status = ((delegate* unmanaged<int*, int>)count)(&n);
        return (status, status == 0 ? n : 0, s_driverPath);
    }

    /// <summary>Loads cuBLAS (after cuBLASLt from the same folder) and returns its handle and path.</summary>
    /// <exception cref="InputError">cuBLAS is not found or does not load.</exception>
    public static (nint Handle, string Path) LoadBlas(Device device)
    {
        var folders = BlasFolders();
        // Folder order first (LOUPE_CUDA_LIBS wins), then the newer major version within a folder.
        string? path = null, major = null;
        foreach (var folder in folders)
        {
            major = BlasMajors.FirstOrDefault(m => File.Exists(Path.Combine(folder, BlasFile(m))));
            if (major is not null) { path = Path.Combine(folder, BlasFile(major)); break; }
        }
        if (path is null)
        {
            foreach (var m in BlasMajors)
                if (NativeLibrary.TryLoad(BlasFile(m), out var cached)) return (cached, BlasFile(m));
            throw new InputError($"device {device}: cuBLAS not found ({string.Join(" or ", BlasMajors.Select(BlasFile))} not in {Looked(folders)}); install the CUDA 12 or 13 toolkit or `pip install nvidia-cublas-cu12`, or set LOUPE_CUDA_LIBS to the folder that holds it");
        }
        string lt = Path.Combine(Path.GetDirectoryName(path)!, BlasLtFile(major!));
        if (File.Exists(lt)) NativeLibrary.TryLoad(lt, out _);
        if (!NativeLibrary.TryLoad(path, out var handle))
            throw new InputError($"device {device}: cuBLAS at {path} does not load (is {BlasLtFile(major!)} beside it?); reinstall it or set LOUPE_CUDA_LIBS");
        return (handle, path);
    }
}
