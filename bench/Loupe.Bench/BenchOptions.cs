namespace Loupe.Bench;

/// <summary>Command line: <c>Loupe.Bench [forward|sgemm|causal|eap|monitors|probes|sae|attribution|all|fixtures] [options]</c>.</summary>
public sealed class BenchOptions
{
    /// <summary>Tokens per sequence in every forward configuration.</summary>
    public const int SequenceLength = 128;

    public const string Usage = """
        Loupe.Bench — forward-pass, cache and sgemm benchmarks on GPT-2 small and Pythia-160m shapes.

        usage: Loupe.Bench [forward|sgemm|causal|eap|monitors|probes|sae|attribution|all|fixtures] [options]
          forward        load each model, time Run and RunWithCache (every hook), profile by hook point
          sgemm          Gemm.Sgemm at the forward pass's shapes and a large square product
          all            both (default)
          causal         gradients and patching sweeps on the first model: forward vs forward+backward,
                         attribution vs (extrapolated) exhaustive activation patching; then, for every model and
                         --batches size, forward and forward + backward to every resid_pre (min and median)
          eap            edge attribution patching over every edge of GPT-2 small (32 prompt pairs × 64 tokens) against
                         one edge at a time (timed on a sample, extrapolated): edges/s and the speed-up
          monitors       the OpenAI endpoint's live monitors: tok/s of a 100-token greedy completion with 0 and 4 monitors
          probes         logistic-probe fitting: one objective evaluation and a whole L-BFGS fit, host double loop vs backend products
          sae            SAE training steps (TopK k=32, ReLU-L1; d_in 768, d_sae 16384, batch 4096) against
                         sgemm at the encoder shape, and harvest tok/s against plain forward tok/s
          attribution    attribution graphs on a GPT-2-small-sized random Llama (n_ctx 4096) with a random
                         cross-layer transcoder (8192 features/layer, TopK 16): time, pass equivalents, estimated
                         vs peak memory at 64, 512 and 2048 tokens, each length in its own child process
          fixtures       only write the random-weight model folders into the cache

        options:
          --quick            tiny models (2 layers, d_model 128, d_vocab 1024), fewer repetitions; < 30 s (CI; attribution:
                             llama-tiny, n_ctx 512, 256 CLT features per layer — not run in CI)
          --json FILE        also write every number to FILE
          --reps N           timed repetitions per measurement (default 5; --quick 3)
          --warmup N         untimed runs first (default 1; at least 1.5 s, --quick 0.4 s, per configuration)
          --models A,B       model names (default gpt2-small,pythia-160m; --quick gpt2-tiny,pythia-tiny)
          --batches 1,8      batch sizes, 128 tokens each (default 1,8)
          --tokens 64,512    attribution: prompt lengths (default 64,512,2048; --quick 64,256)
          --timeout S        attribution: stop a length's child after S seconds and report it as stopped
          --gc-heap-limit GIB  attribution: run each child with DOTNET_GCHeapHardLimit (the GC collects instead of growing)
          --max-rss GIB      attribution: stop a length's child above this RSS (default MemAvailable at start − 2 GiB)
          --stored-clt memory,mapped  attribution: also run each length with the random CLT written to disk (Loupe's layout,
                             in the cache) and loaded with its decoders in memory and/or mapped; plt-memory, plt-mapped:
                             its diagonal as circuit-tracer's per-layer transcoders (layer_ℓ.safetensors), likewise
          --no-profile       skip the per-hook-point time breakdown
          --cache DIR        fixture folder (default $LOUPE_BENCH_CACHE or /tmp/loupe-bench-models)
          --threads N        OpenBLAS threads (default: OpenBLAS's own, usually the core count)
          --managed          use the managed GEMM instead of OpenBLAS
          --baseline DLL     forward: also time another build (e.g. the previous commit's Loupe.Bench.dll) in this
                             run, alternating with this one, and print the ratios

        example:
          dotnet bench/Loupe.Bench/bin/Release/net10.0/Loupe.Bench.dll all --json bench-results.json
        """;

    public string Verb { get; private set; } = "all";
    public bool Quick { get; private set; }
    public string? JsonPath { get; private set; }
    public int Reps { get; private set; }
    public int Warmup { get; private set; } = 1;
    /// <summary>Repetitions of the hook profile (each mode): about half of --reps, at least 3.</summary>
    public int ProfileReps => Quick ? 1 : Math.Max(3, (Reps + 1) / 2);
    /// <summary>Minimum warm-up time per configuration: tiered JIT promotes a method after 30 calls plus a short delay.</summary>
    public double WarmupSeconds => Warmup == 0 ? 0 : Quick ? 0.4 : 1.5;
    public IReadOnlyList<int> Batches { get; private set; } = [1, 8];
    /// <summary>Attribution prompt lengths.</summary>
    public IReadOnlyList<int> Tokens { get; private set; } = [];
    /// <summary>Attribution: seconds after which a length's child process is stopped (null = none).</summary>
    public double? TimeoutSeconds { get; private set; }
    /// <summary>Attribution: GiB of RSS above which a length's child process is stopped (null = MemAvailable − 2 GiB).</summary>
    public double? MaxRssGib { get; private set; }
    /// <summary>Attribution: the children's GC heap hard limit in GiB (null = the runtime's default, sized by the machine's memory).</summary>
    public double? GcHeapLimitGib { get; private set; }
    public bool Profile { get; private set; } = true;
    public string CacheRoot { get; private set; } = Fixtures.DefaultCacheRoot;
    public int? Threads { get; private set; }
    public bool Managed { get; private set; }
    /// <summary>attribution: how the stored CLT is loaded in the extra runs ("memory", "mapped"); empty: the random CLT only.</summary>
    public IReadOnlyList<string> StoredClt { get; private set; } = [];
    public string? Baseline { get; private set; }
    public bool Help { get; private set; }
    public IReadOnlyList<BenchModel> Models { get; private set; } = [];

    public bool RunsForward => Verb is "forward" or "all";
    public bool RunsSgemm => Verb is "sgemm" or "all";

    /// <summary>Largest square product timed as the peak (smaller in --quick so CI without BLAS stays fast).</summary>
    public int PeakSize => Quick ? 1024 : 2048;

    /// <exception cref="ArgumentException">An unknown verb or option, or a malformed value.</exception>
    public static BenchOptions Parse(string[] args)
    {
        var o = new BenchOptions();
        string? models = null;
        int? reps = null;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            double Gib() => double.TryParse(Value(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double g) && g > 0
                ? g : throw new ArgumentException($"{a} needs a positive number of GiB");
            int Int() => int.TryParse(Value(), out int v) && v >= 0 ? v : throw new ArgumentException($"{a} needs a non-negative integer");
            switch (a)
            {
                case "forward" or "sgemm" or "causal" or "eap" or "monitors" or "probes" or "sae" or "attribution" or "attribution-run" or "all" or "fixtures": o.Verb = a; break;
                case "--quick": o.Quick = true; break;
                case "--json": o.JsonPath = Value(); break;
                case "--reps": reps = Math.Max(1, Int()); break;
                case "--warmup": o.Warmup = Int(); break;
                case "--models": models = Value(); break;
                case "--batches":
                    o.Batches = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                        .Select(s => int.TryParse(s, out int b) && b > 0 ? b : throw new ArgumentException($"--batches: '{s}' is not a positive integer")).ToArray();
                    break;
                case "--tokens":
                    o.Tokens = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                        .Select(s => int.TryParse(s, out int t) && t > 0 ? t : throw new ArgumentException($"--tokens: '{s}' is not a positive integer")).ToArray();
                    break;
                case "--timeout": o.TimeoutSeconds = Math.Max(1, Int()); break;
                case "--max-rss": o.MaxRssGib = Gib(); break;
                case "--gc-heap-limit": o.GcHeapLimitGib = Gib(); break;
                case "--no-profile": o.Profile = false; break;
                case "--cache": o.CacheRoot = Value(); break;
                case "--threads": o.Threads = Math.Max(1, Int()); break;
                case "--managed": o.Managed = true; break;
                case "--stored-clt":
                    o.StoredClt = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                    if (o.StoredClt.Any(v => v is not ("memory" or "mapped" or "plt-memory" or "plt-mapped")))
                        throw new ArgumentException("--stored-clt takes memory, mapped, plt-memory or plt-mapped (comma-separated)");
                    break;
                case "--baseline": o.Baseline = Value(); break;
                case "-h" or "--help" or "help": o.Help = true; break;
                default: throw new ArgumentException($"unknown argument '{a}' (see --help)");
            }
        }
        o.Reps = reps ?? (o.Quick ? 3 : 5);
        var all = BenchModel.All;
        o.Models = models is null
            ? BenchModel.Defaults(o.Quick)
            : models.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(name => all.FirstOrDefault(m => m.Name == name)
                    ?? throw new ArgumentException($"unknown model '{name}'; known: {string.Join(", ", all.Select(m => m.Name))}"))
                .ToArray();
        if (o.Tokens.Count == 0) o.Tokens = o.Quick ? [64, 256] : [64, 512, 2048];
        if ((o.RunsForward || o.RunsSgemm) && o.Models.FirstOrDefault(m => m.ModelType == "llama") is { } llama)
            throw new ArgumentException($"{llama.Name} is for the attribution verb (the forward FLOP model counts neither SwiGLU's gate nor grouped-query attention)");
        return o;
    }
}
