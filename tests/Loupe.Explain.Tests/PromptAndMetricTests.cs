namespace Loupe.Explain.Tests;

public class PromptAndMetricTests
{
    [Fact]
    public void Runs_of_marked_tokens_become_one_span()
    {
        var e = new TextExample([" the", " big", " dog", " ran"], [false, true, true, false]);
        Assert.Equal(" the<< big dog>> ran", e.Render());
        var last = new TextExample([" a", " b"], [true, true]);
        Assert.Equal("<< a b>>", last.Render());
    }

    [Fact]
    public void Explainer_prompt_lists_examples_levels_and_logit_tokens()
    {
        var messages = Prompts.Explainer([new TextExample([" a", " cat"], [false, true], [0, 7])], [" mat"], []);
        Assert.Equal("system", messages[0].Role);
        Assert.Contains("[EXPLANATION]:", messages[0].Content);
        Assert.Contains("Example 1:  a<< cat>>", messages[1].Content);
        Assert.Contains("Activations: (\" cat\", 7)", messages[1].Content);
        Assert.Contains("more likely next: \" mat\"", messages[1].Content);
        Assert.DoesNotContain("less likely", messages[1].Content);
    }

    [Theory]
    [InlineData("Thinking.\n[EXPLANATION]: the word \"cat\" after articles", "the word \"cat\" after articles")]
    [InlineData("[EXPLANATION]:   \"plural nouns\"  ", "plural nouns")]
    [InlineData("no marker\nlast line here\n", "last line here")]
    public void Explanation_is_parsed(string answer, string expected) => Assert.Equal(expected, Prompts.ParseExplanation(answer));

    [Fact]
    public void Answers_parse_only_as_a_list_of_the_right_length()
    {
        Assert.Equal(new[] { 1, 0, 1 }, Prompts.ParseAnswers("Sure: [1, 0, 1]", 3)!);
        Assert.Equal(new[] { 0, 1 }, Prompts.ParseAnswers("[3] then [0,1]", 2)!);
        Assert.Null(Prompts.ParseAnswers("[1, 0]", 3));
        Assert.Null(Prompts.ParseAnswers("[1, 2, 0]", 3));
        Assert.Null(Prompts.ParseAnswers("yes", 1));
    }

    [Fact]
    public void Probabilities_come_from_the_digit_tokens()
    {
        var lp = new List<TokenLogprob>
        {
            new("[", 0, new Dictionary<string, double>()),
            new("1", Math.Log(0.6), new Dictionary<string, double> { ["1"] = Math.Log(0.6), ["0"] = Math.Log(0.2) }),
            new(", ", 0, new Dictionary<string, double>()),
            new(" 0", Math.Log(0.5), new Dictionary<string, double> { [" 0"] = Math.Log(0.5) }),
        };
        var p = Prompts.AnswerProbabilities(lp, 2)!;
        Assert.InRange(p[0], 0.75 - 1e-9, 0.75 + 1e-9);
        Assert.InRange(p[1], -1e-12, 1e-12);
        Assert.Null(Prompts.AnswerProbabilities(lp, 3));
        Assert.Null(Prompts.AnswerProbabilities(null, 1));
    }

    [Fact]
    public void Metrics_match_hand_counts()
    {
        bool[] labels = [true, true, true, false, false];
        bool[] predicted = [true, true, false, true, false];
        var m = ScoreMetrics.Compute(labels, predicted, [0.9, 0.8, 0.4, 0.8, 0.1], 0);
        Assert.InRange(m.Accuracy, 0.6 - 1e-12, 0.6 + 1e-12);
        Assert.InRange(m.Precision, 2.0 / 3 - 1e-12, 2.0 / 3 + 1e-12);
        Assert.InRange(m.Recall, 2.0 / 3 - 1e-12, 2.0 / 3 + 1e-12);
        Assert.InRange(m.F1, 2.0 / 3 - 1e-12, 2.0 / 3 + 1e-12);
        // Pairs (pos, neg): 0.9>0.8, 0.9>0.1, 0.8=0.8 (half), 0.8>0.1, 0.4<0.8, 0.4>0.1 → 4.5 of 6.
        Assert.InRange(m.Auroc!.Value, 0.75 - 1e-12, 0.75 + 1e-12);
        Assert.Null(ScoreMetrics.AreaUnderRoc([true, true], [0.1, 0.2]));
    }

    [Fact]
    public void Price_table_is_written_on_first_use_and_read_back()
    {
        using var folder = new TestFolder();
        string path = folder.File("prices.json");
        var defaults = PriceTable.Load(path);
        Assert.True(File.Exists(path));
        Assert.Equal(PriceTable.Defaults["gpt-4o-mini"], defaults.For("gpt-4o-mini"));
        File.WriteAllText(path, """{"mine": {"input_per_million": 2, "output_per_million": 8}}""");
        var table = PriceTable.Load(path);
        Assert.InRange(table.For("mine")!.Cost(1_000_000, 500_000), 6 - 1e-9, 6 + 1e-9);
        Assert.Null(table.For("gpt-4o-mini"));
        File.WriteAllText(path, """{"mine": {"input_per_million": -1, "output_per_million": 8}}""");
        Assert.Contains("input_per_million", Assert.Throws<InputError>(() => PriceTable.Load(path)).Message);
        File.WriteAllText(path, "{oops");
        Assert.Contains("expected valid JSON", Assert.Throws<InputError>(() => PriceTable.Load(path)).Message);
        File.WriteAllText(path, """{"mine": {"input_per_million": 2, "input_per_million": 3, "output_per_million": 8}}""");
        Assert.Contains("repeated keys", Assert.Throws<InputError>(() => PriceTable.Load(path)).Message); // found by the fuzzer: an ArgumentException before
    }

    [Fact]
    public void Endpoint_url_accepts_a_base_or_the_full_path()
    {
        Assert.Equal("http://h:1/v1/chat/completions", new EndpointOptions { Endpoint = "http://h:1/v1/", Model = "m" }.ChatUrl.ToString());
        Assert.Equal("http://h:1/v1/chat/completions", new EndpointOptions { Endpoint = "http://h:1/v1/chat/completions", Model = "m" }.ChatUrl.ToString());
        Assert.Throws<InputError>(() => new EndpointOptions { Endpoint = "ftp://h", Model = "m" }.Validate());
    }
}
