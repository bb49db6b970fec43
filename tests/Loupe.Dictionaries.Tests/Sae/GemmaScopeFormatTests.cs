using Loupe.Dictionaries.Sae;
using static Loupe.Dictionaries.Tests.Sae.NpyFixtures;

namespace Loupe.Dictionaries.Tests.Sae;

public sealed class GemmaScopeFormatTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "loupe-gemmascope-" + Guid.NewGuid().ToString("N"));

    public GemmaScopeFormatTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    // A Gemma Scope SAE with d_model 3, d_sae 4, in the published layout (W_enc [d_model, d_sae], W_dec [d_sae, d_model]).
    // Every value is a small dyadic rational, so float arithmetic in any order is exact and activations compare bit for bit.
    static readonly float[] s_wEnc = [1, 0, -1, 0.5f, 0, 1, 0.5f, -2, 0.25f, 0, 1, 1];   // [3, 4]
    static readonly float[] s_bEnc = [0.5f, -0.25f, 0, 0.125f];                           // [4]
    static readonly float[] s_wDec = [1, 2, 0, 0, -1, 0.5f, 0.25f, 0, 1, 1, 1, 1];        // [4, 3]
    static readonly float[] s_bDec = [0.5f, 0, -1];                                       // [3]
    static readonly float[] s_theta = [1, 0.5f, 0, 0.25f];                                // [4]

    static (string, byte[])[] Entries() =>
    [
        ("W_enc.npy", NpyFile("<f4", "(3, 4)", F4(s_wEnc))),
        ("W_dec.npy", NpyFile("<f4", "(4, 3)", F4(s_wDec))),
        ("b_enc.npy", NpyFile("<f4", "(4,)", F4(s_bEnc))),
        ("b_dec.npy", NpyFile("<f4", "(3,)", F4(s_bDec))),
        ("threshold.npy", NpyFile("<f4", "(4,)", F4(s_theta))),
    ];

    string Write(byte[] zip, string? folder = null)
    {
        string dir = folder is null ? _dir : Path.Combine(_dir, folder);
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "params.npz");
        File.WriteAllBytes(path, zip);
        return path;
    }

    // The Gemma Scope tutorial's encode: pre = x·W_enc + b_enc; acts = 1[pre > θ]·relu(pre). x [batch, 3] → [batch, 4].
    static float[] ReferenceEncode(float[] x, int batch)
    {
        var acts = new float[batch * 4];
        for (int b = 0; b < batch; b++)
            for (int i = 0; i < 4; i++)
            {
                float pre = s_bEnc[i];
                for (int j = 0; j < 3; j++) pre += x[b * 3 + j] * s_wEnc[j * 4 + i];
                acts[b * 4 + i] = pre > s_theta[i] ? MathF.Max(pre, 0) : 0;
            }
        return acts;
    }

    static float[] Inputs(int batch, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, batch * 3).Select(_ => rng.Next(-24, 25) / 8f).ToArray();   // multiples of 1/8 in [−3, 3]
    }

    static void AssertFixtureTensors(SparseDictionary d)
    {
        Assert.Equal(new SaeShape(3, 4, 3, ApplyBDecToInput: false, Skip: false), d.Shape);
        Assert.IsType<JumpReluActivation>(d.Activation);
        Assert.Equal(s_wEnc, d.P.WEnc);
        Assert.Equal(s_bEnc, d.P.BEnc);
        Assert.Equal(s_wDec, d.P.WDec);
        Assert.Equal(s_bDec, d.P.BDec);
        Assert.Equal(s_theta, d.P.LogThreshold.Select(MathF.Exp));   // θ exactly, through log θ
    }

    [Fact]
    public void StoredNpzLoadsIdenticalTensorsAndActivations()
    {
        var (d, cfg) = GemmaScopeFormat.Load(Write(StoredZip(Entries())));
        AssertFixtureTensors(d);
        Assert.Equal(("jumprelu", 3, 4, 3, false, "none"), (cfg.Architecture, cfg.DIn, cfg.DSae, cfg.DOut, cfg.ApplyBDecToInput, cfg.NormalizeActivations));
        Assert.Equal("", cfg.HookName);   // nothing in the path says which hook

        var x = Inputs(64, seed: 1);
        var acts = d.Encode(x, 64);
        Assert.Equal(ReferenceEncode(x, 64), acts);
        Assert.Contains(acts, a => a != 0);
        Assert.Contains(acts, a => a == 0);
        // recon = acts·W_dec + b_dec
        var recon = d.Forward(x, 64);
        for (int b = 0; b < 64; b++)
            for (int o = 0; o < 3; o++)
            {
                float r = s_bDec[o];
                for (int i = 0; i < 4; i++) r += acts[b * 4 + i] * s_wDec[i * 3 + o];
                Assert.Equal(r, recon[b * 3 + o]);
            }
    }

    [Fact]
    public void ZeroThresholdFiresLikeRelu()
    {
        var (d, _) = GemmaScopeFormat.Load(Write(StoredZip(Entries())));
        Assert.Equal(float.NegativeInfinity, d.P.LogThreshold[2]);
        // Feature 2: pre = −x0 + 0.5·x1 + x2. Any positive pre fires, however small.
        var acts = d.Encode(new float[] { 0, 0, 1f / 1024, 0, 0, -1f / 1024 }, 2);
        Assert.Equal(1f / 1024, acts[2]);
        Assert.Equal(0f, acts[4 + 2]);
    }

    [Fact]
    public void DeflatedEntriesInF8F2BigEndianAndFortranOrderLoadTheSameTensors()
    {
        // W_enc [3, 4] in Fortran order (column-major) as float64; W_dec as float16 (every value is exact in binary16);
        // b_enc big-endian float32; lowercase "w_" names, which SAELens also accepts.
        var wEncColumnMajor = new float[12];
        for (int r = 0; r < 3; r++) for (int c = 0; c < 4; c++) wEncColumnMajor[c * 3 + r] = s_wEnc[r * 4 + c];
        var zip = DeflatedZip(
            ("w_enc.npy", NpyFile("<f8", "(3, 4)", F8(wEncColumnMajor), fortran: true)),
            ("w_dec.npy", NpyFile("<f2", "(4, 3)", F2(s_wDec), major: 2)),
            ("b_enc.npy", NpyFile(">f4", "(4,)", F4BigEndian(s_bEnc))),
            ("b_dec.npy", NpyFile("<f8", "(3,)", F8(s_bDec), major: 3)),
            ("threshold.npy", NpyFile("<f2", "(4,)", F2(s_theta))));
        var (d, _) = GemmaScopeFormat.Load(Write(zip));
        AssertFixtureTensors(d);
        var x = Inputs(16, seed: 2);
        Assert.Equal(ReferenceEncode(x, 16), d.Encode(x, 16));
    }

    [Fact]
    public void SavedAsSaeLensLoadsBackIdentically()
    {
        string npz = Write(StoredZip(Entries()), "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82");
        var (d, cfg) = GemmaScopeFormat.Load(npz);
        string saeLens = Path.Combine(_dir, "as-saelens");
        SaeLensFormat.Save(saeLens, d, cfg);
        var (back, backCfg) = SaeLensFormat.Load(saeLens);

        AssertFixtureTensors(back);
        Assert.Equal(d.P.LogThreshold.Select(MathF.Exp), back.P.LogThreshold.Select(MathF.Exp));
        Assert.Equal(("jumprelu", "blocks.12.hook_resid_post", 12, "gemma-2-2b", false),
            (backCfg.Architecture, backCfg.HookName, backCfg.HookLayer, backCfg.ModelName, backCfg.ApplyBDecToInput));
        var x = Inputs(32, seed: 3);
        Assert.Equal(d.Encode(x, 32), back.Encode(x, 32));
        Assert.Equal(d.Forward(x, 32), back.Forward(x, 32));
        Assert.Equal(ReferenceEncode(x, 32), back.Encode(x, 32));
    }

    [Theory]
    [InlineData("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82", "blocks.12.hook_resid_post", 12, "gemma-2-2b", "none")]
    [InlineData("gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical", "blocks.0.hook_resid_post", 0, "gemma-2-2b", "none")]
    [InlineData("models--google--gemma-scope-9b-it-mlp/snapshots/0123abc/layer_3/width_131k/average_l0_20", "blocks.3.hook_mlp_out", 3, "gemma-2-9b-it", "none")]
    [InlineData("gemma-scope-27b-pt-att/layer_7/width_16k/average_l0_50", "blocks.7.attn.hook_z", 7, "gemma-2-27b", "hook_z")]
    [InlineData("gemma-scope-2b-pt-transcoders/layer_4/width_16k/average_l0_76", "", 4, "gemma-2-2b", "none")]
    [InlineData("gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6", "", 0, "gemma-2-2b", "none")]
    [InlineData("my-saes/layer_5/params", "", 5, "", "none")]
    public void HookIsInferredOnlyWhenTheReleaseFolderSaysWhichSite(string folder, string hook, int layer, string model, string reshape)
    {
        var (_, cfg) = GemmaScopeFormat.Load(Write(StoredZip(Entries()), folder));
        Assert.Equal((hook, layer, model, reshape), (cfg.HookName, cfg.HookLayer, cfg.ModelName, cfg.ReshapeActivations));
    }

    [Fact]
    public void ExplicitHookWins()
    {
        string npz = Write(StoredZip(Entries()), "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82");
        var (_, cfg) = GemmaScopeFormat.Load(npz, hookName: "blocks.9.hook_resid_pre");
        Assert.Equal(("blocks.9.hook_resid_pre", 9), (cfg.HookName, cfg.HookLayer));
    }

    [Fact]
    public void DictionaryFileLoadsNpzFilesAndFoldersWithParamsNpz()
    {
        string npz = Write(StoredZip(Entries()), "gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_9");
        var (fromFile, cfgFile) = DictionaryFile.Load(npz);
        var (fromFolder, cfgFolder) = DictionaryFile.Load(Path.GetDirectoryName(npz)!);
        AssertFixtureTensors(fromFile);
        AssertFixtureTensors(fromFolder);
        Assert.Equal("blocks.1.hook_resid_post", cfgFile.HookName);
        Assert.Equal(cfgFile, cfgFolder);
        Assert.Equal("blocks.2.hook_mlp_out", DictionaryFile.Load(npz, hookName: "blocks.2.hook_mlp_out").Config.HookName);

        // A folder with both prefers SAELens's cfg.json.
        string both = Path.Combine(_dir, "both");
        SaeLensFormat.Save(both, fromFile, cfgFile with { HookName = "blocks.5.hook_resid_post" });
        File.Copy(npz, Path.Combine(both, "params.npz"));
        Assert.Equal("blocks.5.hook_resid_post", DictionaryFile.Load(both).Config.HookName);
        Assert.Throws<InputError>(() => DictionaryFile.Load(both, hookName: "blocks.0.hook_resid_post"));

        var e = Assert.Throws<FileNotFoundException>(() => DictionaryFile.Load(Path.Combine(_dir, "nothing-here")));
        Assert.Contains("params.npz", e.Message);
    }

    public static TheoryData<string, Func<(string, byte[])[], byte[]>, string[]> BadArchives => new()
    {
        { "truncated array", es => StoredZip(Replace(es, "W_dec.npy", NpyFile("<f4", "(4, 3)", F4(s_wDec)[..40]))), ["'W_dec.npy'", "truncated"] },
        { "wrong magic", es => StoredZip(Replace(es, "b_enc.npy", "NOTNUMPY-array-bytes"u8.ToArray())), ["'b_enc.npy'", "magic"] },
        { "pickled objects", es => StoredZip(Replace(es, "threshold.npy", NpyFile("|O", "(4,)", [0x80, 0x04, 0x95, 0x2E]))), ["'threshold.npy'", "pickle"] },
        { "missing tensor", es => StoredZip(es.Where(e => e.Item1 != "threshold.npy").ToArray()), ["missing 'threshold.npy'"] },
        { "unknown tensor", es => StoredZip([.. es, ("W_skip.npy", NpyFile("<f4", "(3, 3)", F4(new float[9])))]), ["'W_skip.npy'", "unexpected"] },
        { "b_enc length", es => StoredZip(Replace(es, "b_enc.npy", NpyFile("<f4", "(5,)", F4(1, 2, 3, 4, 5)))), ["'b_enc.npy'", "(5)", "[4]"] },
        { "W_dec shape", es => StoredZip(Replace(es, "W_dec.npy", NpyFile("<f4", "(3, 4)", F4(s_wDec)))), ["'W_dec.npy'", "(3, 4)", "[4, d_out]"] },
        { "1-D W_enc", es => StoredZip(Replace(es, "W_enc.npy", NpyFile("<f4", "(12,)", F4(s_wEnc)))), ["'W_enc.npy'", "(12)", "2-D"] },
        { "NaN weight", es => StoredZip(Replace(es, "W_dec.npy", NpyFile("<f4", "(4, 3)", F4([.. s_wDec[..5], float.NaN, .. s_wDec[6..]])))), ["'W_dec.npy'", "element 5", "NaN"] },
        { "infinite threshold", es => StoredZip(Replace(es, "threshold.npy", NpyFile("<f4", "(4,)", F4(1, float.PositiveInfinity, 0, 0)))), ["'threshold.npy'", "element 1"] },
        { "not a zip", _ => "just some text, not an archive"u8.ToArray(), ["not a valid .npz"] },
        { "cut-off zip", es => StoredZip(es)[..300], ["not a valid .npz"] },
    };

    [Theory]
    [MemberData(nameof(BadArchives))]
    public void BadInputIsRefusedNamingFileAndEntry(string what, Func<(string, byte[])[], byte[]> build, string[] expected)
    {
        _ = what;
        string path = Write(build(Entries()));
        var e = Assert.Throws<InputError>(() => GemmaScopeFormat.Load(path));
        Assert.Contains(path, e.Message);
        foreach (string s in expected) Assert.Contains(s, e.Message);
    }

    [Fact]
    public void CorruptDeflateDataIsRefusedNamingTheEntry()
    {
        byte[] zip = DeflatedZip(Entries());
        // First local header: 30 fixed bytes, then the name and extra field; the compressed data follows.
        int start = 30 + BitConverter.ToUInt16(zip, 26) + BitConverter.ToUInt16(zip, 28);
        Assert.Equal("W_enc.npy", System.Text.Encoding.ASCII.GetString(zip, 30, BitConverter.ToUInt16(zip, 26)));
        for (int i = start; i < start + 12; i++) zip[i] ^= 0x5A;
        string path = Write(zip);
        var e = Assert.Throws<InputError>(() => GemmaScopeFormat.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'W_enc.npy'", e.Message);
    }

    [Fact]
    public void MissingFileIsReported()
    {
        Assert.Throws<FileNotFoundException>(() => GemmaScopeFormat.Load(Path.Combine(_dir, "absent.npz")));
        Assert.Throws<FileNotFoundException>(() => GemmaScopeFormat.Load(_dir));   // folder without params.npz
    }

    static (string, byte[])[] Replace((string, byte[])[] es, string name, byte[] data) =>
        es.Select(e => e.Item1 == name ? (name, data) : e).ToArray();
}
