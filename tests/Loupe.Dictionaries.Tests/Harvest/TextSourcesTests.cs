using Loupe.Dictionaries.Harvest;
using Loupe.Testing;

namespace Loupe.Dictionaries.Tests.Harvest;

public sealed class TextSourcesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loupe-text-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void PlainText_OneDocumentPerFile_OrPerParagraph()
    {
        File.WriteAllText(Path.Combine(_dir, "b.txt"), "Second file.\n");
        File.WriteAllText(Path.Combine(_dir, "a.txt"), "First para\nstill first.\n\n  \nSecond para.\r\n\r\nThird.");
        File.WriteAllText(Path.Combine(_dir, "skip.md"), "not text");

        var perFile = new PlainTextSource(_dir).Documents().ToList();
        Assert.Equal(2, perFile.Count);
        Assert.StartsWith("First para", perFile[0]);
        Assert.Equal("Second file.", perFile[1]);

        var perPara = new PlainTextSource(_dir, splitParagraphs: true).Documents().ToList();
        Assert.Equal(["First para\nstill first.", "Second para.", "Third.", "Second file."], perPara);
        Assert.Throws<FileNotFoundException>(() => new PlainTextSource(Path.Combine(_dir, "nope.txt")));
    }

    [Fact]
    public void JsonLines_ReadsTextField_AndNamesFileAndLineOfABadLine()
    {
        string path = Path.Combine(_dir, "d.jsonl");
        File.WriteAllText(path, "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n{\"text\": oops}\n");
        var source = new JsonLinesSource(path);
        var e = Assert.Throws<InputError>(() => source.Documents().ToList());
        Assert.Contains("d.jsonl:4", e.Message);
        Assert.Equal(["one", "two"], source.Documents().Take(2).ToList());

        File.WriteAllText(path, "{\"body\": \"x\"}\n");
        var missing = Assert.Throws<InputError>(() => new JsonLinesSource(path).Documents().ToList());
        Assert.Contains("d.jsonl:1", missing.Message);
        Assert.Contains("\"text\"", missing.Message);
        Assert.Equal(["x"], new JsonLinesSource(path, "body").Documents().ToList());
    }

    [Fact]
    public void Brown_StripsTagsAndIgnoresOtherFiles()
    {
        File.WriteAllText(Path.Combine(_dir, "ca01"), "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, he/pps said/vbd ./.\n\n\tIt/pps did/dod n't/* ./.\n");
        File.WriteAllText(Path.Combine(_dir, "cb02"), "\tHello/uh ./.\n");
        File.WriteAllBytes(Path.Combine(_dir, "categories.pickle"), [0x80, 0x04, 0xff, 0x00]);
        File.WriteAllText(Path.Combine(_dir, "cats.txt"), "ca01 news\n");
        File.WriteAllText(Path.Combine(_dir, "README"), "readme/xx");
        File.WriteAllText(Path.Combine(_dir, "CONTENTS"), "contents/xx");

        var docs = new BrownCorpusSource(_dir).Documents().ToList();
        Assert.Equal(["The jury said \"no evidence\", he said. It didn't.", "Hello."], docs);
    }

    [RequiresSharedFact("datasets/brown-corpus")]
    public void Brown_RealCorpus_Has500UntaggedDocuments()
    {
        var docs = new BrownCorpusSource(SharedData.Require("datasets/brown-corpus")).Documents().ToList();
        Assert.Equal(500, docs.Count);
        Assert.StartsWith("The Fulton County Grand Jury said Friday", docs[0]);
        Assert.DoesNotContain("/at ", docs[0]);
        Assert.DoesNotContain("/nn", docs[^1]);
    }
}
