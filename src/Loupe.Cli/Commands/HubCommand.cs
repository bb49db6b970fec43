using System.CommandLine;
using System.Globalization;
using Loupe.Models.Loading;

namespace Loupe.Cli.Commands;

/// <summary><c>loupe hub ls</c>: what a hub repository holds under a path, to find the folder an <c>hf:</c> option should name.</summary>
static class HubCommand
{
    public static Command Create()
    {
        var target = new Argument<string>("path") { Description = $"{CliSupport.HubPathSyntax}: the repository, and optionally a folder in it" };
        var ls = new Command("ls",
            "List the folders and files directly under a path of a Hugging Face hub repository, with sizes (a folder's: every file in it), " +
            "from the hub's listing; nothing is downloaded. Pickled files are left out: Loupe never loads them. What it lists is what " +
            "--sae / --transcoders hf:… fetch.\n\n" +
            "Examples:\n" +
            "  loupe hub ls hf:jbloom/GPT2-Small-SAEs-Reformatted\n" +
            "  loupe hub ls hf:google/gemma-scope-2b-pt-res/layer_12/width_16k")
        { target };
        ls.SetAction(parse => CliSupport.Guard(() =>
        {
            CliSupport.NoModelOnDevice("it only lists a repository");
            var (repo, path, revision) = CliSupport.HubSpec(parse.GetValue(target)!, "path");
            using var client = new HubClient();
            var listing = client.ListPathAsync(repo, path, revision).GetAwaiter().GetResult();
            if (listing.Files.Count == 1 && listing.Files[0].File == path)
            {
                Console.WriteLine($"{repo}/{path} at {listing.Commit}: a file, {Size(listing.Files[0].Size)}");
                return 0;
            }
            string prefix = path.Length == 0 ? "" : path + "/";
            var entries = listing.Files
                .GroupBy(f => f.File[prefix.Length..] is var rest && rest.IndexOf('/') is int slash and >= 0 ? rest[..(slash + 1)] : rest)
                .OrderBy(g => g.Key, StringComparer.Ordinal)
                .Select(g => (Name: g.Key, Files: g.Count(), Bytes: g.All(f => f.Size is null) ? (long?)null : g.Sum(f => f.Size ?? 0)))
                .ToList();
            int folders = entries.Count(e => e.Name.EndsWith('/'));
            Console.WriteLine($"{repo}{(path.Length > 0 ? "/" + path : "")} at {listing.Commit}: {folders} folder(s), {entries.Count - folders} file(s), " +
                              $"{CliSupport.FormatBytes(listing.Bytes)} in all");
            int width = Math.Min(60, entries.Max(e => e.Name.Length));
            foreach (var (name, files, bytes) in entries)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {name.PadRight(width)}  {(name.EndsWith('/') ? $"{files,5} file(s)" : ""),-13} {Size(bytes),10}"));
            if (listing.Skipped.Count > 0)
                Console.WriteLine($"  (left out, pickles: {string.Join(", ", listing.Skipped.Take(5).Select(s => s[prefix.Length..]))}{(listing.Skipped.Count > 5 ? ", …" : "")})");
            return 0;
        }));
        return new Command("hub", "Look into Hugging Face hub repositories (dictionaries, transcoders) before naming one with hf:…") { ls };
    }

    static string Size(long? bytes) => bytes is long b ? CliSupport.FormatBytes(b) : "size unknown";
}
