using Loupe.Probes.Corpus;
using Loupe.Testing;

namespace Loupe.Probes.Tests;

/// <summary>Reading the Brown corpus (NLTK layout) and mapping its tags to the universal tagset.</summary>
public class BrownCorpusTests
{
    /// <summary>A corpus folder written from snippets: cats.txt plus one file per entry.</summary>
    static string WriteCorpus(params (string FileId, string Category, string Text)[] files)
    {
        string folder = Directory.CreateTempSubdirectory("loupe-brown").FullName;
        File.WriteAllLines(Path.Combine(folder, "cats.txt"), files.Select(f => $"{f.FileId} {f.Category}"));
        foreach (var f in files) File.WriteAllText(Path.Combine(folder, f.FileId), f.Text);
        return folder;
    }

    [Fact]
    public void ReadsSentencesPerLineSkippingBlankLinesAndSplittingAtTheLastSlash()
    {
        string folder = WriteCorpus(
            ("ca01", "news", "\n\n\tThe/at Fulton/np-tl County/nn-tl jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\n\tIt/pps took/vbd 1-1/2/cd days/nns ./.\n"),
            ("ck01", "fiction", "\n\tI'll/ppss+md go/vb ./.\n\tdon't/do* !/.\n"));
        var corpus = BrownCorpus.Open(folder);
        Assert.Equal(["fiction", "news"], corpus.Categories);
        Assert.Equal(["ca01"], corpus.FileIds(["news"]));
        Assert.Equal("fiction", corpus.CategoryOf("ck01"));

        var news = corpus.Sentences(["news"]).ToList();
        Assert.Equal(2, news.Count);
        Assert.Equal(("ca01", 3), (news[0].Source, news[0].Line));
        Assert.Equal(("ca01", 6), (news[1].Source, news[1].Line));
        Assert.Equal(["The", "Fulton", "County", "jury", "said", "``", "no", "''", "."], news[0].Words.Select(w => w.Text));
        Assert.Equal(["DET", "NOUN", "NOUN", "NOUN", "VERB", ".", "DET", ".", "."], news[0].Words.Select(w => w.Tag));
        Assert.Equal("np-tl", news[0].Words[1].BrownTag);
        Assert.Equal("1-1/2", news[1].Words[2].Text);
        Assert.Equal("NUM", news[1].Words[2].Tag);

        var all = corpus.Sentences().ToList();
        Assert.Equal(4, all.Count);
        Assert.Equal(("I'll", "ppss+md", "PRT"), (all[2].Words[0].Text, all[2].Words[0].BrownTag, all[2].Words[0].Tag));
        Assert.Equal(("don't", "VERB"), (all[3].Words[0].Text, all[3].Words[0].Tag));
    }

    [Theory]
    [InlineData("at", "DET")]
    [InlineData("nn-tl", "NOUN")]
    [InlineData("NN-TL", "NOUN")]
    [InlineData("vbd", "VERB")]
    [InlineData("np$", "NOUN")]
    [InlineData("nns$-tl", "NOUN")]
    [InlineData("jj-tl-hl", "ADJ")]
    [InlineData(".", ".")]
    [InlineData(".-hl", ".")]
    [InlineData("--", ".")]
    [InlineData("---hl", ".")]
    [InlineData("``", ".")]
    [InlineData("''", ".")]
    [InlineData("fw-nn", "X")]
    [InlineData("fw-in+at-tl", "X")]
    [InlineData("nil", "X")]
    [InlineData("md*", "VERB")]
    [InlineData("dod*", "VERB")]
    [InlineData("*", "ADV")]
    [InlineData("ppss+md", "PRT")]
    [InlineData("pps+bez-hl", "PRT")]
    [InlineData("pp$", "DET")]
    [InlineData("pp$$", "PRON")]
    [InlineData("ppo", "PRON")]
    [InlineData("wp$", "DET")]
    [InlineData("wps", "PRON")]
    [InlineData("wdt", "DET")]
    [InlineData("wrb", "ADV")]
    [InlineData("cs", "ADP")]
    [InlineData("in-tl", "ADP")]
    [InlineData("cc", "CONJ")]
    [InlineData("cd-tl", "NUM")]
    [InlineData("od", "ADJ")]
    [InlineData("ap", "ADJ")]
    [InlineData("abn", "PRT")]
    [InlineData("abx", "DET")]
    [InlineData("ex", "PRT")]
    [InlineData("rp", "PRT")]
    [InlineData("to", "PRT")]
    [InlineData("uh", "PRT")]
    [InlineData("ql", "ADV")]
    [InlineData("rbr", "ADV")]
    [InlineData("pn", "NOUN")]
    [InlineData("nr", "NOUN")]
    public void MapsBrownTagsToTheUniversalTagset(string brown, string universal) =>
        Assert.Equal(universal, UniversalTagset.FromBrown(brown));

    [Theory]
    [InlineData("xyz")]
    [InlineData("")]
    [InlineData("nn-zz")]
    [InlineData("$")]
    public void UnknownTagsAreRejected(string brown)
    {
        Assert.False(UniversalTagset.TryFromBrown(brown, out _));
        var e = Assert.Throws<InputError>(() => UniversalTagset.FromBrown(brown));
        Assert.Contains($"'{brown}'", e.Message);
    }

    [Fact]
    public void TagIndicesFollowTheFixedOrder()
    {
        Assert.Equal(12, UniversalTagset.Tags.Count);
        Assert.Equal(0, UniversalTagset.IndexOf("NOUN"));
        Assert.Equal(10, UniversalTagset.IndexOf("."));
        Assert.Throws<InputError>(() => UniversalTagset.IndexOf("INTJ"));
    }

    [Theory]
    [InlineData("The/at jury", "'jury'")]
    [InlineData("The/at jury/", "'jury/'")]
    [InlineData("The/at /nn", "'/nn'")]
    [InlineData("The/at jury/zz", "unknown Brown tag 'zz'")]
    public void MalformedTokensNameTheFileAndLine(string badLine, string expected)
    {
        string folder = WriteCorpus(("ca01", "news", $"\n\tThe/at jury/nn ./.\n\n\t{badLine}\n"));
        var e = Assert.Throws<InputError>(() => BrownCorpus.Open(folder).Sentences().ToList());
        Assert.Contains(Path.Combine(folder, "ca01") + ":4:", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MissingFoldersFilesAndCategoriesAreClearErrors()
    {
        string missing = Path.Combine(Path.GetTempPath(), "loupe-no-such-brown-" + Guid.NewGuid().ToString("N"));
        var notFound = Assert.Throws<DirectoryNotFoundException>(() => BrownCorpus.Open(missing));
        Assert.Contains(missing, notFound.Message);

        string empty = Directory.CreateTempSubdirectory("loupe-brown").FullName;
        Assert.Contains("cats.txt", Assert.Throws<FileNotFoundException>(() => BrownCorpus.Open(empty)).Message);

        File.WriteAllText(Path.Combine(empty, "cats.txt"), "ca01 news\nca02\n");
        Assert.Contains("cats.txt:2:", Assert.Throws<InputError>(() => BrownCorpus.Open(empty)).Message);

        string folder = WriteCorpus(("ca01", "news", "\tA/at ./.\n"));
        var unknown = Assert.Throws<InputError>(() => BrownCorpus.Open(folder).Sentences(["poetry"]));
        Assert.Contains("'poetry'", unknown.Message);
        Assert.Contains("news", unknown.Message);

        File.AppendAllText(Path.Combine(folder, "cats.txt"), "cb01 editorial\n");
        var gone = Assert.Throws<FileNotFoundException>(() => BrownCorpus.Open(folder).Sentences().ToList());
        Assert.Contains("cb01", gone.Message);
    }

    /// <summary>
    /// The table reproduces the standard mapping: on the news category it gives the counts NLTK
    /// publishes (NLTK book, ch. 5, <c>brown.tagged_words(categories='news', tagset='universal')</c>)
    /// to within the 14 tokens NLTK's reader splits differently. Every tag in the corpus maps.
    /// </summary>
    [RequiresSharedFact("datasets/brown-corpus")]
    public void NewsTagCountsMatchNltksPublishedUniversalCounts()
    {
        var corpus = BrownCorpus.Open(SharedData.Require("datasets/brown-corpus"));
        var counts = corpus.Sentences(["news"]).SelectMany(s => s.Words).GroupBy(w => w.Tag).ToDictionary(g => g.Key, g => g.Count());
        var nltk = new Dictionary<string, int>
        {
            ["NOUN"] = 30640, ["VERB"] = 14399, ["ADP"] = 12355, ["."] = 11928, ["DET"] = 11389, ["ADJ"] = 6706,
            ["ADV"] = 3349, ["CONJ"] = 2717, ["PRON"] = 2535, ["PRT"] = 2264, ["NUM"] = 2166, ["X"] = 92,
        };
        foreach (var (tag, expected) in nltk)
            Assert.True(Math.Abs(counts.GetValueOrDefault(tag) - expected) <= 15, $"{tag}: {counts.GetValueOrDefault(tag)} here, {expected} in NLTK");
        Assert.Equal(500, corpus.FileIds().Count);
        Assert.Equal(1_161_192, corpus.Sentences().Sum(s => s.Words.Count)); // every token of every file parses and maps
    }
}
