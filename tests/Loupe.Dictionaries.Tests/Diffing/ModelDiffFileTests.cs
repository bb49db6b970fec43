using Loupe.Dictionaries.Diffing;

namespace Loupe.Dictionaries.Tests.Diffing;

/// <summary>diff.json as the Diff page reads it: bad files are refused naming the file and the field; older files read.</summary>
public sealed class ModelDiffFileTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-diff-file").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    static ModelDiffResult Result(int contextSize = 4) => new()
    {
        ModelA = "a", ModelB = "b", Contexts = 2, ContextSize = contextSize, MeanKl = 0.5, MeanKlByPosition = [0.1, 0.9, 0.5, 0.5],
        KlHistogramEdges = [0, 1, 2], KlHistogramCounts = [6, 2],
        TopPositions = [new DivergentPosition(1, 2, 1.5, 7, 8, 9, 0.1, 0.6) { Before = [5, 6, 7], Next = 3 }],
        Differences = [new ActivationDifference("blocks.0.hook_resid_post", -1, 2, 4, [new(9, 1.5)], [], [new(9, 2.5)], [new(4, -1)])],
    };

    string Write(string text)
    {
        string path = Path.Combine(_root, $"diff-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Token_strings_are_written_for_every_id_the_result_names_and_read_back()
    {
        string path = Path.Combine(_root, "diff.json");
        new ModelDiffFile("base", "chat", Result(), new Dictionary<int, string> { [7] = " cat", [9] = "\n" }).Write(path);
        var read = ModelDiffFile.Read(path);
        Assert.Equal(" cat", read.TokenStrings[7]);
        Assert.Equal("\n", read.TokenStrings[9]);
        Assert.Equal([5, 6, 7], read.Result.TopPositions[0].Before);
        Assert.Equal(3, read.Result.TopPositions[0].Next);
        Assert.Equal(0.5, read.Result.Differences[0].Relative, 1e-12);
    }

    [Fact]
    public void A_file_from_before_windows_and_token_strings_reads_with_none()
    {
        string path = Write("""
            {"model_a":"base","model_b":"chat","result":{"model_a":"x","model_b":"y","contexts":1,"context_size":2,"mean_kl":0.25,
             "mean_kl_by_position":[0,0.5],"kl_histogram_edges":[0,0.5],"kl_histogram_counts":[2],
             "top_positions":[{"context":0,"position":1,"kl":0.5,"token":3,"top_a":4,"top_b":5,"prob_a_of_top_b":0.1,"prob_b_of_top_b":0.2}],
             "differences":[]}}
            """);
        var read = ModelDiffFile.Read(path);
        Assert.Empty(read.TokenStrings);
        Assert.Empty(read.Result.TopPositions[0].Before);
        Assert.Equal(-1, read.Result.TopPositions[0].Next);
    }

    [Theory]
    [InlineData("", "not a model diff")]
    [InlineData("[1, 2]", "not a model diff")]
    [InlineData("""{"format":"something-else","model_a":"a","model_b":"b"}""", "format")]
    [InlineData("""{"format":"loupe-model-diff","version":99,"model_a":"a","model_b":"b"}""", "version")]
    [InlineData("""{"model_a":"a","model_b":"b"}""", "result")]
    [InlineData("""{"model_a":"a","model_b":"b","result":{"model_a":"x","model_b":"y","contexts":1,"context_size":2,"mean_kl":0.25}}""", "mean_kl_by_position")]
    [InlineData("""{"model_a":"a","model_b":"b","result":{"model_a":"x","model_b":"y","contexts":1,"context_size":3,"mean_kl":0.25,"mean_kl_by_position":[0,0.5],"kl_histogram_edges":[0,1],"kl_histogram_counts":[1],"top_positions":[],"differences":[]}}""", "mean_kl_by_position")]
    [InlineData("""{"model_a":"a","model_b":"b","result":{"model_a":"x","model_b":"y","contexts":1,"context_size":2,"mean_kl":"NaN","mean_kl_by_position":[0,0.5],"kl_histogram_edges":[0,1],"kl_histogram_counts":[1],"top_positions":[],"differences":[]}}""", "mean_kl")]
    [InlineData("""{"model_a":"a","model_b":"b","result":{"model_a":"x","model_b":"y","contexts":1,"context_size":2,"mean_kl":0.2,"mean_kl_by_position":[0,0.5],"kl_histogram_edges":[0,1],"kl_histogram_counts":[1],"top_positions":[{"context":0,"position":2,"kl":1,"token":1,"top_a":1,"top_b":1,"prob_a_of_top_b":0,"prob_b_of_top_b":0}],"differences":[]}}""", "top_positions[0]")]
    [InlineData("""{"model_a":"a","model_b":"b","result":{"model_a":"x","model_b":"y","contexts":1,"context_size":2,"mean_kl":0.2,"mean_kl_by_position":[0,0.5],"kl_histogram_edges":[0,1],"kl_histogram_counts":[1],"top_positions":[],"differences":[{"hook":"","position":0,"norm":1,"base_norm":1,"promoted_a":[],"suppressed_a":[],"promoted_b":[],"suppressed_b":[]}]}}""", "differences[0]")]
    [InlineData("""{"model_a":"a","model_b":"b","token_strings":{"x":"y"},"result":{"model_a":"x","model_b":"y","contexts":1,"context_size":2,"mean_kl":0.2,"mean_kl_by_position":[0,0.5],"kl_histogram_edges":[0,1],"kl_histogram_counts":[1],"top_positions":[],"differences":[]}}""", "token_strings")]
    public void Bad_files_are_refused_naming_the_file_and_the_field(string text, string field)
    {
        string path = Write(text);
        var e = Assert.Throws<InputError>(() => ModelDiffFile.Read(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(field, e.Message);
    }

    [Fact]
    public void A_folder_without_diff_json_is_named()
    {
        var e = Assert.Throws<InputError>(() => ModelDiffFile.Read(_root));
        Assert.Contains(Path.Combine(_root, "diff.json"), e.Message);
        Assert.Contains("loupe diff", e.Message);
    }
}
